#!/usr/bin/env python3
"""Write tests/golden/noise/: torch CPU-generator normals for sdspool's noise tests.

randn.json:

Each case seeds a fresh generator, g = torch.Generator("cpu").manual_seed(seed), then makes one
or more successive draws torch.randn(shape, generator=g, dtype=torch.float32) on it. For every
draw the file keeps the float32 bit patterns (u32): all of them for tensors of up to 512
elements, otherwise the first and last 64, the float64 sum of all values added in index order
(as f64 bits) and an FNV-1a 64 hash over the u32 bit patterns.

box_muller_tables.json: torch's float32 Box-Muller transform on every possible input. The
vectorised randn path maps 16 uniforms u = k / 2^24 (k a 24-bit integer) to 8 pairs
r(u1) * cos(2 pi u2), r(u1) * sin(2 pi u2) with r(u) = sqrt(-2 log(1 - u)). The script sets the
generator's MT19937 state (Generator.set_state) so that the next outputs are chosen words, and
has torch transform all 2^24 values of k: r(k) with u2 = 0 (cos = 1), then cos(k) and sin(k)
with a u1 whose r is exactly 1.0. It stores FNV-1a 64 hashes of each table in chunks of 65536.

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

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "noise"
OUT = GOLDEN / "randn.json"
TABLES_OUT = GOLDEN / "box_muller_tables.json"
TABLE_CHUNK = 1 << 16
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


def untemper(y):
    """Inverse of MT19937's output tempering (uint64 arrays holding 32-bit words)."""
    y = y.astype(np.uint64) & 0xFFFFFFFF
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(4):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & 0xFFFFFFFF
    t = y
    for _ in range(2):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


class CraftedStream:
    """A CPU generator whose next random() outputs are words of our choosing.

    Generator.get_state() is a CPUGeneratorImplState: u64 seed at byte 0, i32 left at 8,
    i32 seeded at 12, u64 next at 16, u64 state[624] at 24, ... With left = 624 and next = 0
    the engine returns tempered state[0], state[1], ... for 623 calls before regenerating.
    """

    CHUNKS = 38  # 608 uniforms per randn call, within the 623 controllable outputs

    def __init__(self):
        self.g = torch.Generator("cpu").manual_seed(1)
        self.base = self.g.get_state().numpy().copy()
        assert self.base.size == 5056, f"unexpected generator state size {self.base.size}"
        self.n = self.CHUNKS * 16

    def randn_bits(self, words):
        st = self.base.copy()
        st[8:12] = np.frombuffer(np.int32(624).tobytes(), np.uint8)
        st[16:24] = 0
        full = np.zeros(624, np.uint64)
        full[: len(words)] = untemper(np.asarray(words, np.uint64))
        st[24 : 24 + 624 * 8] = np.frombuffer(full.astype("<u8").tobytes(), np.uint8)
        self.g.set_state(torch.from_numpy(st))
        return torch.randn(self.n, generator=self.g).numpy().view(np.uint32).copy()

    def table(self, first_half, second_half, take_second):
        """Transforms every k in [0, 2^24): k goes to the first (u1) or second (u2) half of the
        chunks, the other half holds the given constant; returns the outputs for each k."""
        k_all = np.arange(1 << 24, dtype=np.uint64)
        per = self.CHUNKS * 8
        lanes = np.arange(per)
        lo = (lanes // 8) * 16 + lanes % 8
        out = np.zeros(1 << 24, np.uint32)
        for start in range(0, 1 << 24, per):
            kk = k_all[start : start + per]
            words = np.zeros(self.n, np.uint64)
            words[lo] = first_half if first_half is not None else 0
            words[lo + 8] = second_half if second_half is not None else 0
            if first_half is None:
                words[lo[: len(kk)]] = kk
            else:
                words[lo[: len(kk)] + 8] = kk
            bits = self.randn_bits(words)
            out[start : start + len(kk)] = bits[lo[: len(kk)] + (8 if take_second else 0)]
        return out


def chunk_hashes(table):
    """FNV-1a 64 of each TABLE_CHUNK-long chunk, vectorised across chunks."""
    chunks = table.reshape(-1, TABLE_CHUNK).astype(np.uint64)
    h = np.full(chunks.shape[0], 0xCBF29CE484222325, np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for i in range(TABLE_CHUNK):
            h = (h ^ chunks[:, i]) * prime
    return [int(x) for x in h]


def box_muller_tables(capability):
    stream = CraftedStream()
    # The crafted state must reproduce an ordinary seeded stream (raw MT19937 words for seed
    # 5489 come from numpy's RandomState, which seeds MT19937 the same way).
    raw = np.random.RandomState(5489).randint(0, 2**32, stream.n, dtype=np.uint64)
    want = torch.randn(stream.n, generator=torch.Generator("cpu").manual_seed(5489))
    assert (stream.randn_bits(raw) == want.numpy().view(np.uint32)).all(), "crafted state"

    radius = stream.table(None, 0, take_second=False)  # r(k) * cos(0) = r(k)
    unit = np.float32(1.0).view(np.uint32)
    k_unit = int(np.nonzero(radius == unit)[0][0])  # a u1 with r exactly 1.0
    cos = stream.table(k_unit, None, take_second=False)
    sin = stream.table(k_unit, None, take_second=True)
    spots = [0, 1, 2, 3, 1 << 22, 1 << 23, 12582912, (1 << 24) - 1]
    doc = {
        "transform": "u = k / 2^24; radius[k] = randn output for u1 = u, u2 = 0; "
                     "cos[k], sin[k] = randn outputs for u1 = k_unit / 2^24, u2 = u",
        "torch_version": torch.__version__,
        "cpu_capability": capability,
        "k_unit": k_unit,
        "chunk": TABLE_CHUNK,
        "hash": "FNV-1a 64 over the u32 bit patterns of each chunk",
        "spot_k": spots,
        "spot_radius_bits": [int(radius[k]) for k in spots],
        "spot_cos_bits": [int(cos[k]) for k in spots],
        "spot_sin_bits": [int(sin[k]) for k in spots],
        "radius_fnv": chunk_hashes(radius),
        "cos_fnv": chunk_hashes(cos),
        "sin_fnv": chunk_hashes(sin),
    }
    TABLES_OUT.write_text(json.dumps(doc, indent=0) + "\n")
    print(f"wrote {TABLES_OUT} ({TABLES_OUT.stat().st_size} bytes, k_unit {k_unit})")


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

    box_muller_tables(capability)


if __name__ == "__main__":
    main()
