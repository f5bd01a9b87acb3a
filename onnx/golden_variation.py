#!/usr/bin/env python3
"""Golden file for AUTOMATIC1111's seed options (sdspool's src/engine/noise/variation.rs).

AUTOMATIC1111's ``ImageRNG.first()`` (modules/rng.py), restated here on torch's CPU generator
(its "CPU" random source): the seed's noise, spherically interpolated with a variation seed's
noise by ``subseed_strength`` (its ``slerp``: vectors along dim 1 of a ``[c, h, w]`` tensor,
linear fallback ``low * val + high * (1 - val)`` when the mean cosine is above 0.9995), and
``seed_resize_from_w/h``: the noise drawn at the old size and pasted, centred, into the seed's
noise at the new size. Then, with ENSD, the next draw comes from a generator seeded
``seed + ENSD``; without, from the seed's generator continuing.

Output: tests/golden/noise/variation.json (float32 values as lists).

Usage: onnx/.venv/bin/python onnx/golden_variation.py
"""

from __future__ import annotations

import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "noise", "variation.json")


def randn(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def first(seed, shape, subseed=None, strength=0.0, resize=None, ensd=0):
    """One image's initial noise ([c, h, w]) and the next draw of its step-noise generator."""
    gen = torch.Generator("cpu").manual_seed(seed)
    noise_shape = shape if not resize else (shape[0], resize[1] // 8, resize[0] // 8)
    if noise_shape != shape:
        noise = randn(seed, noise_shape)
    else:
        noise = torch.randn(shape, generator=gen)
    if subseed is not None and strength != 0:
        noise = slerp(strength, noise, randn(subseed, noise_shape))
    if noise_shape != shape:
        x = torch.randn(shape, generator=gen)
        dx = (shape[2] - noise_shape[2]) // 2
        dy = (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        x[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
        noise = x
    if ensd:
        gen = torch.Generator("cpu").manual_seed(seed + ensd)
    step = torch.randn(shape, generator=gen)
    return noise, step


CASES = [
    # name, seed, subseed, strength, resize (w, h) in pixels, ensd, size (w, h)
    ("variation_0.3", 42, 7, 0.3, None, 0, (64, 64)),
    ("variation_1", 42, 7, 1.0, None, 0, (64, 64)),
    ("variation_same_seed", 42, 42, 0.5, None, 0, (64, 64)),
    ("resize_smaller_and_wider", 1234, None, 0.0, (96, 48), 0, (64, 64)),
    ("resize_larger", 1234, None, 0.0, (32, 40), 0, (64, 48)),
    ("resize_and_variation", 5, 9, 0.6, (80, 80), 0, (64, 64)),
    ("ensd", 42, None, 0.0, None, 31337, (64, 64)),
    ("ensd_and_variation", 42, 3, 0.25, None, 31337, (64, 64)),
]


def main() -> None:
    out = []
    for name, seed, subseed, strength, resize, ensd, (w, h) in CASES:
        shape = (4, h // 8, w // 8)
        noise, step = first(seed, shape, subseed, strength, resize, ensd)
        out.append({
            "name": name, "seed": seed, "subseed": subseed, "subseed_strength": strength,
            "resize_from": list(resize) if resize else None, "eta_noise_seed_delta": ensd,
            "width": w, "height": h,
            "noise": noise.flatten().tolist(), "next": step.flatten().tolist(),
        })
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "onnx/golden_variation.py", "torch": torch.__version__, "cases": out}, f)
        f.write("\n")
    print(f"wrote {len(out)} cases")


if __name__ == "__main__":
    main()
