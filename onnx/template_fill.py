#!/usr/bin/env python3
"""Reference filler for import templates (format 1, see onnx/README.md "Import templates").

    onnx/.venv/bin/python onnx/template_fill.py TEMPLATE_DIR CHECKPOINT.safetensors OUT_DIR

Pure numpy, what the Rust filler does: copy the template folder (all files but template.json), then
write each part's data file anew (its size from the template's) with the checkpoint's tensors at the offsets template.json gives
(rows sliced, 2-D transposed where `transpose`, widened to float32); constants (source null) keep the
template's bytes. OUT_DIR appears atomically (written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class SafetensorsFile:
    """The tensors of a .safetensors file, read one at a time as float32."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            self.header = {k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}
        self.data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)

    def shape(self, key: str) -> list[int]:
        return list(self.header[key]["shape"])

    def float32(self, key: str) -> np.ndarray:
        entry = self.header[key]
        start, end = entry["data_offsets"]
        raw = self.data[start:end]
        if entry["dtype"] == "BF16":
            wide = raw.view(np.uint16).astype(np.uint32) << 16
            values = wide.view(np.float32)
        elif entry["dtype"] in _DTYPES:
            values = raw.view(_DTYPES[entry["dtype"]]).astype(np.float32)
        else:
            raise ValueError(f"{self.path}: {key} has dtype {entry['dtype']}, not a float")
        return values.reshape(entry["shape"])


def tensor_bytes(ckpt: SafetensorsFile, source: dict) -> bytes:
    """The initializer's bytes from the checkpoint tensor `source` names (rows, then transpose)."""
    t = ckpt.float32(source["key"])
    if source["rows"] is not None:
        start, end = source["rows"]
        t = t[start:end]
    if source["transpose"]:
        t = t.reshape(t.shape[0], -1).T
    return np.ascontiguousarray(t, dtype=np.float32).tobytes()


def check_fits(template: dict, ckpt: SafetensorsFile) -> None:
    wrong = [k for k, shape in template["checkpoint"]["required"].items() if k not in ckpt.header or ckpt.shape(k) != shape]
    if wrong:
        raise ValueError(f"{ckpt.path} does not fit the template: {len(wrong)} required tensors missing or of another shape, e.g. {wrong[:4]}")


def fill_part(template_dir: Path, part: dict, ckpt: SafetensorsFile, dest: Path) -> None:
    """A new data file of the template's size: constants copied from the template, the rest from the checkpoint."""
    src = template_dir / part["data"]
    with open(src, "rb") as constants, open(dest / part["data"], "wb") as f:
        f.truncate(src.stat().st_size)  # bytes no tensor covers stay zero, as in the template
        for t in part["tensors"]:
            if t["source"] is None:
                constants.seek(t["offset"])
                b = constants.read(t["length"])
            else:
                b = tensor_bytes(ckpt, t["source"])
            if len(b) != t["length"]:
                raise ValueError(f"{t['name']}: {len(b)} bytes for the template's {t['length']}")
            f.seek(t["offset"])
            f.write(b)


def fill(template_dir: Path, checkpoint: Path, out_dir: Path) -> None:
    template_dir, out_dir = Path(template_dir), Path(out_dir)
    template = json.loads((template_dir / "template.json").read_text())
    ckpt = SafetensorsFile(Path(checkpoint))
    check_fits(template, ckpt)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        dest = tmp / "model"
        data_files = {p["data"] for p in template["parts"].values()}
        shutil.copytree(template_dir, dest, ignore=lambda d, names: [n for n in names if Path(d, n) == template_dir / "template.json" or str(Path(d, n).relative_to(template_dir)) in data_files])
        for part in template["parts"].values():
            fill_part(template_dir, part, ckpt, dest)
        dest.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    fill(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
