#!/usr/bin/env python3
"""Turns the results.jsonl that onnx/gpu/bench_gpu.py writes into the BENCHMARKS.md rows:

    python3 onnx/gpu/summarize.py DIR            # prints the markdown (DIR/results.jsonl)
    python3 onnx/gpu/summarize.py DIR --check    # also exits 1 when a target is missed

Standard library only (no reference stack needed). One table per architecture: sdspool's rows
(graph plain/opt, I/O binding, CUDA graph) and diffusers' per batch, with seconds per step (for
sdspool the UNet session time per call, for diffusers the median gap between step callbacks),
images per second over the whole render, and the ratio of images per second to diffusers' at
the same batch. Then the issue's targets: SD 1.5 512x512, 50 steps, batch 1 under 0.55 s per
image, and at batch 8 at least diffusers' images per second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_B1_S = 0.55


def load(d: Path):
    start, rows, errors = None, [], []
    for line in (d / "results.jsonl").read_text().splitlines():
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        if e.get("event") == "start":
            start, rows, errors = e, [], []  # the last run in the file counts
        elif e.get("event") == "row":
            rows.append(e)
        elif e.get("event") == "error":
            errors.append(e)
    if start is None:
        raise SystemExit(f"{d / 'results.jsonl'}: no start event (not bench_gpu.py output?)")
    return start, rows, errors


def label(r) -> str:
    if r["impl"] == "diffusers":
        return f"diffusers {r.get('dtype', '')} ({r.get('attention', '')})"
    return f"sdspool {r['graph']}, binding {'on' if r['io_binding'] else 'off'}, CUDA graph {'on' if r['cuda_graph'] else 'off'}"


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def table(arch: str, rows: list[dict]) -> list[str]:
    mine = [r for r in rows if r["arch"] == arch]
    if not mine:
        return []
    ref = {r["batch"]: r for r in mine if r["impl"] == "diffusers" and r["status"] == "ok"}
    size, steps = mine[0]["size"], mine[0]["steps"]
    out = [f"#### {arch}, {size}x{size}, {steps} steps", "",
           "| implementation | batch | s/step | images/s | s/image | images/s vs diffusers | status |",
           "|---|---|---|---|---|---|---|"]
    for r in mine:
        if r["status"] != "ok":
            out.append(f"| {label(r)} | {r['batch']} | | | | | {r['status']}: {r.get('message', '')} |")
            continue
        step = r.get("unet_s_per_call") if r["impl"] == "sdspool" else r.get("s_per_step")
        base = ref.get(r["batch"])
        ratio = r["images_per_s"] / base["images_per_s"] if base and r["impl"] == "sdspool" else None
        note = f"ok ({r['note']})" if r.get("note") else "ok"
        out.append(f"| {label(r)} | {r['batch']} | {fmt(step, '.4f')} | {fmt(r['images_per_s'], '.3f')} | "
                   f"{fmt(r['s_per_image'], '.3f')} | {fmt(ratio, '.2f')} | {note} |")
    return out + [""]


def targets(rows: list[dict]) -> tuple[list[str], bool]:
    ok_rows = [r for r in rows if r["arch"] == "sd15" and r["status"] == "ok"]
    sd = [r for r in ok_rows if r["impl"] == "sdspool"]
    lines, met = [], True
    b1 = [r for r in sd if r["batch"] == 1 and r["steps"] == 50]
    if b1:
        best = min(b1, key=lambda r: r["s_per_image"])
        hit = best["s_per_image"] < TARGET_B1_S
        met &= hit
        lines.append(f"- SD 1.5 512x512, 50 steps, batch 1 under {TARGET_B1_S} s: {'met' if hit else 'missed'}, "
                     f"{best['s_per_image']:.3f} s ({label(best)})")
    else:
        met = False
        lines.append("- SD 1.5 512x512, 50 steps, batch 1: no sdspool result")
    ref8 = [r for r in ok_rows if r["impl"] == "diffusers" and r["batch"] == 8]
    b8 = [r for r in sd if r["batch"] == 8]
    if ref8 and b8:
        best = max(b8, key=lambda r: r["images_per_s"])
        hit = best["images_per_s"] >= ref8[0]["images_per_s"]
        met &= hit
        lines.append(f"- SD 1.5 batch 8 at least diffusers' images/s: {'met' if hit else 'missed'}, "
                     f"{best['images_per_s']:.3f} against {ref8[0]['images_per_s']:.3f} ({label(best)})")
    else:
        met = False
        lines.append("- SD 1.5 batch 8 against diffusers: no result for both")
    return lines, met


def summarize(d: Path) -> tuple[str, bool]:
    start, rows, errors = load(d)
    m = start.get("machine", {})
    head = [
        f"### {start.get('date', '?')}{' (dry run on the CPU: tiny models, not a measurement)' if start.get('dry_run') else ''}",
        "",
        f"Command: `{start.get('command', '?')}`. Machine: {m.get('gpu') or 'no GPU'}, {m.get('cpus')} CPUs; "
        f"torch {m.get('torch')}, diffusers {m.get('diffusers')}, transformers {m.get('transformers')}, "
        f"onnx {m.get('onnx')}, onnxruntime (Python, for onnx/optimize.py) {m.get('onnxruntime')}; "
        f"sdspool's ONNX Runtime {next((r['onnxruntime'] for r in rows if r.get('onnxruntime')), '?')}.",
        "",
    ]
    body = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        body += table(arch, rows)
    for e in errors:
        body.append(f"- error{' (' + e['arch'] + ')' if e.get('arch') else ''}: {e['message']}")
    t, met = targets(rows)
    return "\n".join(head + body + ["Targets:", *t, ""]), met


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    text, met = summarize(Path(argv[0]))
    print(text)
    return 1 if "--check" in argv[1:] and not met else 0


if __name__ == "__main__":
    sys.exit(main())
