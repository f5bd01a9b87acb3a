#!/usr/bin/env python3
"""Write tests/golden/noise/randn.json: torch CPU-generator normals for sdspool's noise tests.

Each case seeds a fresh generator, g = torch.Generator("cpu").manual_seed(seed), then makes one
or more successive draws torch.randn(shape, generator=g, dtype=torch.float32) on it. For every
draw the file keeps the float32 bit patterns (u32): all of them for tensors of up to 512
elements, otherwise the first and last 64, the float64 sum of all values added in index order
(as f64 bits) and an FNV-1a 64 hash over the u32 bit patterns.

Run from the repository root:  onnx/.venv/bin/python onnx/golden_noise.py
torch must run its AVX2 kernels (x86-64 with AVX2 or AVX-512): that is what sdspool reproduces;
torch's DEFAULT kernels (no AVX2, aarch64) differ in the last bits, so the script refuses them.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "noise" / "randn.json"
FULL_MAX = 512
EDGE = 64

SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 42, 2**63 - 1, 2**64 - 1, 12345678901234567890]
SHAPES = [[], [1], [3, 5, 7], [15], [16], [17], [33], [1, 4, 8, 8], [2, 4, 8, 8], [1, 4, 9, 9],
          [1, 4, 64, 64]]


def fnv1a64(words):
    h = 0xCBF29CE484222325
    for w in words:
        h ^= int(w)
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def draw_record(t):
    values = t.contiguous().view(-1).numpy()
    bits = values.view(np.uint32)
    rec = {"shape": list(t.shape), "numel": int(values.size)}
    if values.size <= FULL_MAX:
        rec["bits"] = [int(b) for b in bits]
    else:
        s = 0.0
        for v in values.tolist():
            s += v
        rec["head_bits"] = [int(b) for b in bits[:EDGE]]
        rec["tail_bits"] = [int(b) for b in bits[-EDGE:]]
        rec["sum_f64"] = s
        rec["sum_f64_bits"] = struct.unpack("<Q", struct.pack("<d", s))[0]
        rec["fnv1a64"] = fnv1a64(bits)
    return rec


def case(name, seed, shapes, note=None):
    g = torch.Generator("cpu").manual_seed(seed)
    draws = [draw_record(torch.randn(shape, generator=g, dtype=torch.float32)) for shape in shapes]
    c = {"name": name, "seed": seed, "draws": draws}
    if note:
        c["note"] = note
    return c


def main():
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        sys.exit(f"torch runs its {capability} kernels here; goldens need AVX2 or AVX512")
    torch.set_num_threads(1)

    cases = []
    for seed in SEEDS:
        for shape in SHAPES:
            cases.append(case(f"seed {seed} shape {shape}", seed, [shape]))

    cases.append(case("ancestral 8x8", 42, [[1, 4, 8, 8]] * 6,
                      "initial latents, then 5 per-step noise draws on the same generator"))
    cases.append(case("ancestral 9x9", 1234, [[1, 4, 9, 9]] * 6,
                      "numel % 16 != 0: each draw re-draws its last 16 values"))
    cases.append(case("ancestral 64x64", 7, [[1, 4, 64, 64]] * 6))
    cases.append(case("ancestral batch 2", 3, [[2, 4, 8, 8]] * 3,
                      "one generator for a batch of two"))
    cases.append(case("mixed small and large", 3,
                      [[3], [15], [1], [32], [1], [17], [2], []],
                      "draws under 16 elements share a cached second normal that survives "
                      "the vectorised draws in between"))
    cases.append(case("mixed with empty draws", 99, [[0], [5], [0, 3], [16], [1]]))
    cases.append(case("small then latents", 2024, [[1], [1, 4, 8, 8], [1]]))

    doc = {
        "generator": "g = torch.Generator('cpu').manual_seed(seed); "
                     "torch.randn(shape, generator=g, dtype=torch.float32) per draw",
        "torch_version": torch.__version__,
        "cpu_capability": capability,
        "full_max_numel": FULL_MAX,
        "edge": EDGE,
        "hash": "FNV-1a 64 over the u32 bit patterns (offset 0xcbf29ce484222325, "
                "prime 0x100000001b3, one u32 per step)",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One case per line keeps diffs readable.
    cases_json = ",\n".join(json.dumps(c, separators=(",", ":")) for c in doc.pop("cases"))
    head = json.dumps(doc, indent=1)[:-2]
    OUT.write_text(f'{head},\n "cases": [\n{cases_json}\n ]\n}}\n')
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
