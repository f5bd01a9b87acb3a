#!/usr/bin/env python3
"""Build the import template of a single-file checkpoint's architecture (issue 22, template route).

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/build_import_template.py CHECKPOINT OUT_TEMPLATES_DIR \
        [--family sd15|sd2|sdxl|sdxl-refiner] [--prediction-type epsilon|v_prediction] [--replace] \
        [--check [--reference IMPORTED_MODEL_DIR]] [--keep-work DIR]

A template (format 1, onnx/README.md "Import templates") is the folder import_checkpoint.py writes for
CHECKPOINT's architecture with every initializer in one external data file per part, plus a
template.json naming the checkpoint tensor each initializer is made of. It is built from CHECKPOINT's
shapes only:

1. random: the diffusers configs import_checkpoint.py generates from the shapes, a random model of
   them with EVERY parameter perturbed (LayerNorm/GroupNorm too), so that no two tensors are equal
   and the exporter merges nothing; written as a float32 single file in CHECKPOINT's key layout
   (build_checkpoint_fixtures.to_single_file);
2. load + export: that file through import_checkpoint.py's own load_pipeline and export; externalize:
   every initializer moved to `<part>/model.onnx_data` (size threshold 0; the graph is checked equal);
3. map: each initializer found by VALUE among the single file's tensors (as is / reshaped, 2-D
   transposed, row thirds of OpenCLIP's in_proj), and its diffusers parameter by value among the
   loaded pipeline's state dicts; it fails when a tensor the pipeline uses is in no initializer or
   an initializer matches two tensors;
4. write: the folder with zeros in place of the mapped bytes and template.json, as
   OUT_TEMPLATES_DIR/<family>-<sig> (written under a temporary name, then renamed).

--check fills the template (template_fill.py, pure numpy) with the random file of step 1 and compares
every data file byte for byte with the export; with --reference it also fills it with CHECKPOINT and
compares each part's ONNX Runtime outputs (fixed random inputs) with the Python route's import of the
same checkpoint (within 1e-5). Progress: one JSON line per stage on stdout, as import_checkpoint.py.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import import_checkpoint as ic  # noqa: E402  (sets the offline environment variables)
import checkpoint_layout as cl  # noqa: E402
import template_fill as tf  # noqa: E402

FORMAT = 1
DATA = "model.onnx_data"
PERTURB = 0.02
SEED = 4200
TE_PREFIXES = (cl.SD1_TE, cl.SD2_TE, cl.XL_TE1, cl.XL_TE2, cl.REFINER_TE)
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")


class TemplateError(Exception):
    pass


def digest(b) -> bytes:
    return hashlib.blake2b(b, digest_size=20).digest()


# --------------------------------------------------------------------------- 1. random single file


def random_models(shapes: dict, family: str, prediction: str, root: Path) -> dict:
    """Random diffusers / transformers models of the configs generated from the shapes, every parameter perturbed."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ic.write_configs(shapes, family, prediction, root)
    torch.manual_seed(SEED)
    config = lambda part: json.loads((root / part / "config.json").read_text())  # noqa: E731
    models = {"unet": UNet2DConditionModel.from_config(config("unet")), "vae": AutoencoderKL.from_config(config("vae"))}
    if (root / "text_encoder").is_dir():
        models["te"] = CLIPTextModel(CLIPTextConfig.from_json_file(root / "text_encoder" / "config.json"))
    if (root / "text_encoder_2").is_dir():
        models["te2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(root / "text_encoder_2" / "config.json"))
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in models.values():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * PERTURB)
    return models


def write_random_file(checkpoint_shapes: dict, family: str, models: dict, path: Path) -> None:
    """The models as a float32 single file; every key must be one of the checkpoint's, with its shape."""
    import build_checkpoint_fixtures as bcf
    from safetensors.torch import save_file

    tensors = bcf.to_single_file(family, models, SEED)
    out, wrong = {}, []
    for k, v in tensors.items():
        if not v.is_floating_point():
            continue  # buffers such as position_ids
        if checkpoint_shapes.get(k) != list(v.shape):
            wrong.append(f"{k} {list(v.shape)} vs {checkpoint_shapes.get(k)}")
        out[k] = v.float().contiguous()
    if wrong:
        raise TemplateError(f"the random model of the generated configs does not have the checkpoint's tensors: {wrong[:6]}")
    save_file(out, str(path), metadata={"format": "pt"})


# --------------------------------------------------------------------------- 2. load, export, externalize


def diffusers_index(pipe) -> dict[bytes, tuple[str, str, str]]:
    """Digest of each float parameter's bytes -> (component, module, param) of the loaded pipeline."""
    index = {}
    for comp in COMPONENTS:
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                module, _, param = k.rpartition(".")
                index[digest(v.float().contiguous().numpy().tobytes())] = (comp, module, param)
    return index


def graph_fingerprint(model) -> str:
    """Digest of a loaded ModelProto's graph and initializer values (not of where the bytes are stored)."""
    from onnx import numpy_helper

    h = hashlib.sha256()
    g = model.graph
    for part in (model.opset_import, g.input, g.output, g.node, g.value_info):
        for item in part:
            h.update(item.SerializeToString(deterministic=True))
    for t in g.initializer:
        h.update(f"{t.name}|{t.data_type}|{list(t.dims)}|".encode())
        h.update(numpy_helper.to_array(t).tobytes())
    return h.hexdigest()


def externalize(part: Path) -> None:
    """Re-save part/model.onnx with every initializer in part/model.onnx_data (threshold 0); graph checked equal."""
    import onnx

    src = part / "model.onnx"
    old = onnx.load(str(src), load_external_data=False)
    old_files = {e.value for t in old.graph.initializer for e in t.external_data if e.key == "location"}
    del old
    model = onnx.load(str(src))
    before = graph_fingerprint(model)
    staging = part / ".external"
    staging.mkdir()
    onnx.save_model(model, str(staging / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA, size_threshold=0, convert_attribute=False)
    del model
    gc.collect()
    after = graph_fingerprint(onnx.load(str(staging / "model.onnx")))
    if after != before:
        raise TemplateError(f"{part.name}: the graph changed when its initializers were moved to {DATA}")
    for name in old_files | {"model.onnx"}:
        (part / name).unlink()
    for f in staging.iterdir():
        f.rename(part / f.name)
    staging.rmdir()


def model_parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file())


# --------------------------------------------------------------------------- 3. map by value


def ldm_index(random_file: Path, dindex: dict) -> tuple[dict, dict]:
    """(digest of an initializer's possible bytes -> [(key, rows, transpose)], {(key, rows): diffusers id} of the
    slices the pipeline uses). A slice is the whole tensor or a third of an OpenCLIP in_proj tensor."""
    ckpt = tf.SafetensorsFile(random_file)
    index, used = {}, {}
    for key in ckpt.header:
        t = ckpt.float32(key)
        slices = [(None, t)]
        if key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            n = t.shape[0] // 3
            slices += [([i * n, (i + 1) * n], t[i * n : (i + 1) * n]) for i in range(3)]
        for rows, s in slices:
            plain = digest(s.tobytes())
            index.setdefault(plain, []).append((key, rows, False))
            wide = s.reshape(s.shape[0], -1) if s.ndim >= 2 else None
            flipped = digest(wide.T.copy().tobytes()) if wide is not None and min(wide.shape) > 1 else None
            if flipped is not None:
                index.setdefault(flipped, []).append((key, rows, True))
            slot = (key, tuple(rows) if rows else None)
            if plain in dindex:
                used[slot] = dindex[plain]
            elif flipped in dindex:
                # OpenCLIP's text_projection: the checkpoint holds the transpose of diffusers' parameter
                used[slot] = None
    return index, used


def initializer_entries(part: Path) -> list[dict]:
    """Name, offset, length, dtype, shape and bytes digest of each initializer of part/model.onnx (all external)."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(part / "model.onnx"), load_external_data=False)
    data = np.memmap(part / DATA, dtype=np.uint8, mode="r")
    out = []
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if t.data_location != onnx.TensorProto.EXTERNAL or ext.get("location") != DATA:
            raise TemplateError(f"{part.name}: initializer {t.name} is not in {DATA}")
        offset, length = int(ext.get("offset", 0)), int(ext["length"])
        out.append(
            {
                "name": t.name,
                "offset": offset,
                "length": length,
                "dtype": np.dtype(tensor_dtype_to_np_dtype(t.data_type)).name,
                "shape": list(t.dims),
                "digest": digest(data[offset : offset + length].tobytes()),
            }
        )
    return out


def map_part(part: Path, index: dict, used: dict, covered: set) -> list[dict]:
    entries = []
    for e in initializer_entries(part):
        found = index.get(e.pop("digest"), [])
        if len(found) > 1:
            raise TemplateError(f"{part.name}: initializer {e['name']} matches {len(found)} checkpoint tensors: {found[:4]}")
        source = None
        if found:
            key, rows, transpose = found[0]
            ident = used.get((key, tuple(rows) if rows else None))
            comp, module, param = ident or (None, None, None)
            source = {"key": key, "rows": rows, "transpose": transpose, "component": comp, "module": module, "param": param}
            covered.add((key, tuple(rows) if rows else None))
        entries.append({**e, "source": source})
    return entries


def map_all(folder: Path, random_file: Path, dindex: dict) -> dict:
    index, used = ldm_index(random_file, dindex)
    covered: set = set()
    parts = {p.name: {"data": f"{p.name}/{DATA}", "tensors": map_part(p, index, used, covered)} for p in model_parts(folder)}
    missing = sorted(f"{k}{list(r) if r else ''}" for k, r in set(used) - covered)
    if missing:
        raise TemplateError(f"{len(missing)} checkpoint tensors the pipeline uses are in no initializer of the export: {missing[:8]}")
    return parts


# --------------------------------------------------------------------------- 4. write


def template_json(family: str, shapes: dict, parts: dict) -> dict:
    required_keys = sorted({t["source"]["key"] for p in parts.values() for t in p["tensors"] if t["source"]})
    required = {k: shapes[k] for k in required_keys}
    prefixes = [p for p in (cl.UNET, cl.VAE, *TE_PREFIXES) if any(k.startswith(p) for k in required)]
    ignored = sorted(k for k in shapes if k.startswith(tuple(prefixes)) and k not in required)
    return {
        "format": FORMAT,
        "family": family,
        "dtype": "float32",
        "checkpoint": {"required": required, "ignored": ignored},
        "scheduler_config": "scheduler/scheduler_config.json",
        "parts": parts,
    }


def signature(required: dict) -> str:
    lines = sorted(f"{k}\t{','.join(str(d) for d in shape)}\n" for k, shape in required.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:12]


def zero_mapped(folder: Path, parts: dict) -> None:
    for part in parts.values():
        with open(folder / part["data"], "r+b") as f:
            for t in part["tensors"]:
                if t["source"] is not None:
                    f.seek(t["offset"])
                    f.write(bytes(t["length"]))


def write_template(export_dir: Path, meta: dict, out_root: Path, replace: bool) -> Path:
    dest = out_root / f"{meta['family']}-{signature(meta['checkpoint']['required'])}"
    if dest.exists() and not replace:
        raise TemplateError(f"{dest} exists (--replace to rebuild it)")
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=out_root))
    try:
        folder = tmp / "template"
        shutil.copytree(export_dir, folder, ignore=shutil.ignore_patterns("sdspool-source.json"))
        zero_mapped(folder, meta["parts"])
        (folder / "template.json").write_text(json.dumps(meta, indent=1) + "\n")
        if dest.exists():
            dest.rename(tmp / "old")
        folder.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- self-check


def check_random(template: Path, random_file: Path, export_dir: Path, work: Path) -> None:
    """The template filled with the random file is the export, byte for byte (every file)."""
    filled = work / "filled-random"
    tf.fill(template, random_file, filled)
    files = sorted(p.relative_to(export_dir) for p in export_dir.rglob("*") if p.is_file() and p.name != "sdspool-source.json")
    got = sorted(p.relative_to(filled) for p in filled.rglob("*") if p.is_file())
    if files != got:
        raise TemplateError(f"filled template has files {sorted(set(got) ^ set(files))[:6]} differing from the export")
    for rel in files:
        if ic.sha256(export_dir / rel) != ic.sha256(filled / rel):
            raise TemplateError(f"filled template: {rel} differs from the export")
    shutil.rmtree(filled)
    ic.emit(event="check", check="random_round_trip", files=len(files), equal=True)


def feeds(session, seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if "batch" in str(d) else 77 if "sequence" in str(d) else 16) for d in i.shape]
        if "int" in i.type:
            out[i.name] = rng.integers(0, 300, size=shape).astype(np.int64 if "int64" in i.type else np.int32)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def check_reference(template: Path, checkpoint: Path, reference: Path, work: Path, atol: float = 1e-5) -> None:
    """The template filled with CHECKPOINT gives the outputs of the Python route's import, part by part."""
    import numpy as np
    import onnxruntime as ort

    filled = work / "filled-checkpoint"
    tf.fill(template, checkpoint, filled)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    for part in model_parts(reference):
        outputs = []
        for folder in (reference, filled):  # one session at a time: a full-size UNet twice is a lot of memory
            session = ort.InferenceSession(str(folder / part.name / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            outputs.append(session.run(None, feeds(session, 7)))
            del session
        worst = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) for a, b in zip(*outputs) if a.size), default=0.0)
        if not worst <= atol:
            raise TemplateError(f"{part.name}: filled template differs from {reference / part.name} by {worst}")
        ic.emit(event="check", check="reference_outputs", part=part.name, max_abs_diff=worst)
    shutil.rmtree(filled)


# --------------------------------------------------------------------------- driver


def build(args, work: Path) -> Path:
    with ic.stage("detect"):
        family, shapes = ic.detect(args.checkpoint, args.family)
        prediction = args.prediction_type or ("v_prediction" if family == "sd2" else "epsilon")
    ic.emit(event="detected", family=family, prediction_type=prediction)
    random_file = work / "random.safetensors"
    with ic.stage("random"):
        models = random_models(shapes, family, prediction, work / "config")
        write_random_file(shapes, family, models, random_file)
        del models
        gc.collect()
    with ic.stage("load"):
        pipe, _ = ic.load_pipeline(random_file, family, prediction, shapes)
        dindex = diffusers_index(pipe)
    export_dir = work / "export"
    with ic.stage("export"):
        ic.export(pipe, export_dir, False)
        del pipe
        gc.collect()
    with ic.stage("externalize"):
        for part in model_parts(export_dir):
            externalize(part)
    with ic.stage("map"):
        meta = template_json(family, shapes, map_all(export_dir, random_file, dindex))
    with ic.stage("write"):
        dest = write_template(export_dir, meta, args.out.resolve(), args.replace)
    ic.emit(event="template", out=str(dest), required=len(meta["checkpoint"]["required"]), ignored=len(meta["checkpoint"]["ignored"]))
    if args.check:
        with ic.stage("check_random"):
            check_random(dest, random_file, export_dir, work)
        if args.reference:
            with ic.stage("check_reference"):
                check_reference(dest, args.checkpoint, args.reference, work)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path, help="the templates folder; the template is written to OUT/<family>-<sig>")
    ap.add_argument("--family", choices=cl.FAMILIES)
    ap.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), help="default: v_prediction for sd2, else epsilon")
    ap.add_argument("--replace", action="store_true", help="rebuild a template that exists")
    ap.add_argument("--check", action="store_true", help="fill the template with the random file and compare with the export")
    ap.add_argument("--reference", type=Path, help="with --check: the Python route's import of CHECKPOINT, compared part by part")
    ap.add_argument("--keep-work", type=Path, help="work here (random file, export) and keep it")
    args = ap.parse_args(argv)
    ic.STDOUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        if args.keep_work:
            args.keep_work.mkdir(parents=True, exist_ok=False)
            dest = build(args, args.keep_work.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="sdspool-template-") as tmp:
                dest = build(args, Path(tmp))
    except (TemplateError, ic.ImportError_) as e:
        ic.emit(event="error", kind=getattr(e, "kind", "template_failed"), file=str(args.checkpoint), message=str(e), keys=getattr(e, "keys", []))
        return 2
    ic.emit(event="done", out=str(dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
