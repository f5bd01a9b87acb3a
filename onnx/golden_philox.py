#!/usr/bin/env python3
"""Write philox_cuda.json: torch's CUDA-generator normals, for sdspool's `rng: philox` work.

AUTOMATIC1111's "GPU" seeds are torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed))
on an NVIDIA GPU. Each case here seeds a fresh CUDA generator and makes one or more successive
draws on it (as ancestral samplers do). For every draw the file keeps, from torch itself:

* the shape, the generator's Philox offset before and after the draw (Generator.get_offset()),
* an FNV-1a 64 hash over all the float32 bit patterns of the result (u32, index order),
* the bit patterns of all elements (small draws) or of chosen indices (first and last 64, the
  edges of the kernel's grid-stride layout, 64 pseudo-random ones), base64 of little-endian u32.

What torch's kernel computes per element (aten/src/ATen/native/cuda/DistributionTemplates.h and
curand_kernel.h / curand_normal.h, confirmed on the sm_90 SASS of torch's normal kernel):
curand_init(seed, subsequence = thread index, offset) on Philox4x32-10, curand_normal4 (Box-Muller on
two pairs of 32-bit words: u = x * 2^-32 + 2^-33, v = y * 2pi*2^-32 + pi*2^-32 (fused multiply-add),
s = sqrtf(-2 logf(u)), __sincosf(v)), thread idx writing elements idx + k * threads for k = 0..3.
__sincosf is the GPU's special function unit (MUFU.SIN / MUFU.COS after a round-toward-zero
multiply by 1/(2pi)): an approximation whose exact bits NVIDIA does not specify. So the file also
keeps, for every stored element, the bits the GPU's __sinf/__cosf give for that element's v
("sfu_bits", computed here with torch.cuda.jiterator), which lets a port check everything else
bit for bit, and a probe of the special function unit ("sfu_probe"): __sinf and __cosf on every
float v that curand can produce, and whether their results depend only on t = v * (1/2pi)
(rounded toward zero) cut to k fractional bits (then a table of 2^k values would reproduce them).

Run on a machine with an NVIDIA GPU, from the repository root:
    python onnx/golden_philox.py            # writes tests/golden/noise/philox_cuda.json
    OUT=/some/dir python onnx/golden_philox.py
Needs torch with CUDA (checked with torch 2.11+cu130 on an H100) and numpy.
"""

import base64
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

OUT_DIR = Path(os.environ.get("OUT") or Path(__file__).resolve().parent.parent / "tests" / "golden" / "noise")
MASK = np.uint64(0xFFFFFFFF)
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
BLOCK = 256
FULL_MAX = 16384
EDGE = 64


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on arrays of counters (uint64 arrays holding 32-bit words)."""
    c0, c1, c2, c3, k0, k1 = (np.asarray(a, dtype=np.uint64) & MASK for a in (c0, c1, c2, c3, k0, k1))
    for r in range(10):
        p0 = c0 * M0
        p1 = c2 * M1
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < 9:
            k0 = (k0 + W0) & MASK
            k1 = (k1 + W1) & MASK
    return c0, c1, c2, c3


def check_philox():
    """Known-answer tests of Random123 (philox4x32_10)."""
    zero = philox4x32_10(0, 0, 0, 0, 0, 0)
    ones = philox4x32_10(*(0xFFFFFFFF,) * 6)
    pi = philox4x32_10(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0)
    got = [[int(w) for w in v] for v in (zero, ones, pi)]
    want = [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
            [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]]
    return got == want, got


def grid_blocks(props, n):
    blocks_per_sm = props.max_threads_per_multi_processor // BLOCK
    return min((n + BLOCK - 1) // BLOCK, props.multi_processor_count * blocks_per_sm)


def element_words(seed, offset, n, blocks, indices):
    """For the given element indices of a draw: the two 32-bit words of its Box-Muller pair and
    whether it takes the cosine (second) output, in torch's layout."""
    threads = BLOCK * blocks
    li = np.asarray(indices, dtype=np.int64)
    it = li // (4 * threads)
    r = li % (4 * threads)
    k = r // threads
    idx = r % threads
    base = np.uint64(offset // 4) + it.astype(np.uint64)
    o = philox4x32_10(base & MASK, base >> np.uint64(32), idx.astype(np.uint64) & MASK,
                      idx.astype(np.uint64) >> np.uint64(32), np.uint64(seed) & MASK,
                      np.uint64(seed) >> np.uint64(32))
    x = np.where(k < 2, o[0], o[2])
    y = np.where(k < 2, o[1], o[3])
    return x, y, (k % 2) == 1


def offset_of(g):
    try:
        return int(g.get_offset())
    except Exception:  # an older torch: the offset is not readable
        return None


def b64(bits):
    return base64.b64encode(np.asarray(bits, dtype="<u4").tobytes()).decode()


def fnv1a64(bits):
    h = 0xCBF29CE484222325
    for b in np.asarray(bits, dtype="<u4").tobytes():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    t0 = time.time()
    report = {"script": "onnx/golden_philox.py", "errors": []}
    ok, got = check_philox()
    report["philox_known_answers"] = ok
    if not ok:
        report["errors"].append(f"numpy Philox failed its known-answer test: {got}")
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    report.update({
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": props.name,
        "capability": list(torch.cuda.get_device_capability(0)),
        "multiprocessors": props.multi_processor_count,
        "max_threads_per_multiprocessor": props.max_threads_per_multi_processor,
    })
    jit = torch.cuda.jiterator._create_jit_fn
    # The special function unit, as curand's Box-Muller reaches it (__sincosf = __sinf, __cosf).
    fast_sin = jit("template <typename T> T fast_sin(T x) { return __sinf(x); }")
    fast_cos = jit("template <typename T> T fast_cos(T x) { return __cosf(x); }")
    # v = y * CURAND_2POW32_INV_2PI + CURAND_2POW32_INV_2PI / 2, contracted to one FMA.
    curand_v = jit("template <typename T> T curand_v(T y) { return __fmaf_rn(y, __int_as_float(0x30C90FDB), __int_as_float(0x30490FDB)); }")
    mul_rz = jit("template <typename T> T mul_rz(T x) { return __fmul_rz(x, __int_as_float(0x3E22F983)); }")

    def sfu(y_words, use_cos):
        yf = torch.from_numpy(y_words.astype(np.int64)).to(dev).to(torch.float32)
        v = curand_v(yf)
        s = fast_sin(v)
        c = fast_cos(v)
        out = torch.where(torch.from_numpy(use_cos).to(dev), c, s)
        return out.cpu().numpy().view(np.uint32), v

    def uniform_s(x_words):
        # s = sqrtf(-2 logf(u)), u = x * 2^-32 + 2^-33 (exact product, one rounding): torch's CUDA
        # log and sqrt are logf and the correctly rounded sqrtf.
        xf = torch.from_numpy(x_words.astype(np.int64)).to(dev).to(torch.float32)
        u = xf * (2.0 ** -32) + (2.0 ** -33)
        return torch.sqrt(-2.0 * torch.log(u))

    cases_spec = [
        (0, [[3, 4]]),
        (0, [[1, 4, 64, 64]]),
        (42, [[1, 4, 64, 64]]),
        (1234, [[1, 4, 8, 8]] * 4),
        (7, [[2, 4, 8, 8], [2, 4, 8, 8]]),
        (1, [[1], [3], [7], [17], [1, 4, 5, 5]]),
        (2**32 - 1, [[1], [3], [7], [17], [1, 4, 5, 5]]),
        (2**40 + 7, [[1], [3], [7], [17], [1, 4, 5, 5]]),
        (2**64 - 1, [[1], [3], [7], [17], [1, 4, 5, 5]]),
        (99, [[5], [1, 4, 64, 64], [3]]),
        (2**63, [[1, 4, 128, 128]]),
        (5, [[1, 4, 300, 300], [2]]),
        (6, [[1, 4, 600, 600], [2]]),
    ]
    rng = np.random.default_rng(20261124)
    cases = []
    selfcheck = {"elements": 0, "equal": 0, "max_abs_diff": 0.0}
    for seed, shapes in cases_spec:
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
        draws = []
        for shape in shapes:
            offset = offset_of(g)
            t = torch.randn(shape, generator=g, device=dev, dtype=torch.float32)
            after = offset_of(g)
            bits = t.contiguous().view(-1).cpu().numpy().view(np.uint32)
            n = int(bits.size)
            blocks = grid_blocks(props, n)
            threads = BLOCK * blocks
            if n <= FULL_MAX and (n <= 4096 or (seed == 0)):
                indices = np.arange(n)
                stored = "all"
            else:
                pick = set(range(min(EDGE, n))) | set(range(max(0, n - EDGE), n))
                for m in range(1, 9):
                    edge = m * threads
                    pick |= {i for i in range(edge - 8, edge + 8) if 0 <= i < n}
                pick |= set(int(i) for i in rng.integers(0, n, 64))
                indices = np.array(sorted(pick))
                stored = [int(i) for i in indices]
            if offset is None:
                offset = draws[-1]["offset_after_computed"] if draws else 0
            x, y, use_cos = element_words(seed, offset, n, blocks, indices)
            sfu_bits, _ = sfu(y, use_cos)
            # Self-check: with the GPU's sine/cosine, everything else as torch computes it.
            s = uniform_s(x)
            trig = torch.from_numpy(sfu_bits.view(np.float32).copy()).to(dev)
            mine = (trig * s).cpu().numpy()
            torch_vals = bits[indices].view(np.float32)
            selfcheck["elements"] += int(indices.size)
            selfcheck["equal"] += int((mine.view(np.uint32) == bits[indices]).sum())
            selfcheck["max_abs_diff"] = max(selfcheck["max_abs_diff"], float(np.max(np.abs(mine - torch_vals))))
            draws.append({
                "shape": shape,
                "numel": n,
                "offset_before": offset,
                "offset_after": after,
                "offset_after_computed": offset + ((n - 1) // (4 * threads) + 1) * 4,
                "fnv1a64": fnv1a64(bits),
                "indices": stored,
                "bits": b64(bits[indices]),
                "sfu_bits": b64(sfu_bits),
            })
        cases.append({"seed": seed, "draws": draws})
    report["selfcheck"] = selfcheck
    report["cases"] = cases
    report["seconds_goldens"] = round(time.time() - t0, 1)

    # The special function unit on every v curand can produce.
    try:
        probe = {}
        lo = 0x30490FDB  # v for y = 0
        hi = 0x40C90FDB  # 2pi rounded: above every v
        xs = torch.arange(lo, hi, dtype=torch.int32, device=dev).view(torch.float32)
        probe["count"] = int(xs.numel())
        t = mul_rz(xs)
        probe["t_nondecreasing"] = bool((t[1:] >= t[:-1]).all().item())
        results = {}
        for name, fn in (("sin", fast_sin), ("cos", fast_cos)):
            r = fn(xs).view(torch.int32)
            viol = {}
            for k in range(16, 33):
                q = torch.floor(t.double() * (2.0 ** k)).to(torch.int64)
                same = q[1:] == q[:-1]
                viol[k] = int((same & (r[1:] != r[:-1])).sum().item())
                del q, same
            results[name] = {"violations_by_bits": viol}
            del r
        probe["functions"] = results
        # The smallest cut that explains both.
        k0 = next((k for k in range(16, 33) if all(results[f]["violations_by_bits"][k] == 0 for f in results)), None)
        probe["bits_needed"] = k0
        if k0 is not None and k0 <= 24:
            for name, fn in (("sin", fast_sin), ("cos", fast_cos)):
                r = fn(xs).view(torch.int32)
                q = torch.floor(t.double() * (2.0 ** k0)).to(torch.int64)
                table = torch.zeros(1 << k0, dtype=torch.int32, device=dev)
                hit = torch.zeros(1 << k0, dtype=torch.bool, device=dev)
                table[q] = r
                hit[q] = True
                ref = torch.sin(2 * np.pi * (torch.arange(1 << k0, device=dev, dtype=torch.float64) + 0.5) / (1 << k0)) if name == "sin" else torch.cos(2 * np.pi * (torch.arange(1 << k0, device=dev, dtype=torch.float64) + 0.5) / (1 << k0))
                delta = (table.view(torch.float32).double() - ref).cpu().numpy()
                probe[f"{name}_table"] = {"covered": int(hit.sum().item()), "size": 1 << k0,
                                          "max_abs_error": float(np.max(np.abs(delta)))}
                np.savez_compressed(OUT_DIR / f"sfu_{name}_k{k0}.npz", bits=table.cpu().numpy(), hit=hit.cpu().numpy())
                del r, q, table, hit
        report["sfu_probe"] = probe
    except Exception:
        report["errors"].append(traceback.format_exc())
    report["seconds_total"] = round(time.time() - t0, 1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "philox_cuda.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=1))
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
