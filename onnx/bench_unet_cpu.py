#!/usr/bin/env python3
"""Paired CPU timing of UNet graphs: one UNet call (guided batch) per graph in turn, the order
alternating between rounds, so that load from other processes falls on every graph alike.

    onnx/.venv/bin/python onnx/bench_unet_cpu.py local/models/mid-sd local/models/mid-sd-cpu \\
        --sizes 256,512 --batch 2 --rounds 10 --threads 2

Each argument is a model folder (its unet/model.onnx) or an .onnx file; the first is the
baseline. Per size it prints, and with --json writes, each graph's median seconds per call, its
ratio to the baseline (baseline / graph: above 1 is faster), the range of the per-round ratios,
and the largest difference of its output from the baseline's relative to the baseline's largest
magnitude (same inputs: random latents and hidden states, timestep 500).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def unet_file(p: str) -> Path:
    path = Path(p)
    return path if path.suffix == ".onnx" else path / "unet" / "model.onnx"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders or UNet .onnx files; the first is the baseline")
    ap.add_argument("--sizes", default="256,512", help="image sizes in pixels (square)")
    ap.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with guidance)")
    ap.add_argument("--rounds", type=int, default=8, help="measured rounds (one call per graph each)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    files = [unet_file(m) for m in args.models]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sessions = [ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"]) for f in files]
    inputs = {i.name: i for i in sessions[0].get_inputs()}
    hidden = inputs["encoder_hidden_states"].shape[-1]
    rng = np.random.default_rng(0)
    results = []
    for px in (int(s) for s in args.sizes.split(",")):
        lat = px // 8
        feed = {
            "sample": rng.standard_normal((args.batch, 4, lat, lat), dtype=np.float32),
            "timestep": np.array(500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((args.batch, 77, hidden), dtype=np.float32),
        }
        outs = [s.run(None, feed)[0] for s in sessions]  # warm-up, and the outputs compared
        scale = float(np.abs(outs[0]).max())
        times = [[] for _ in sessions]
        for r in range(args.rounds):
            order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
            for k in order:
                t0 = time.perf_counter()
                sessions[k].run(None, feed)
                times[k].append(time.perf_counter() - t0)
        base = statistics.median(times[0])
        for f, t, o in zip(files, times, outs):
            pair = [a / b for a, b in zip(times[0], t)]
            row = {
                "size": px, "batch": args.batch, "graph": str(f), "median_s": round(statistics.median(t), 4),
                "ratio": round(base / statistics.median(t), 3),
                "pair_ratio_range": [round(min(pair), 3), round(max(pair), 3)],
                "max_rel_diff": float(np.abs(o - outs[0]).max() / scale), "rounds": args.rounds,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
