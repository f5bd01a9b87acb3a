#!/usr/bin/env python3
"""Combines the JSON files onnx/bench_cpu.sh writes (<case>.sdspool.json from `sdspool bench
--no-rerank`, <case>.reference.json from onnx/bench_reference.py) into summary.json and
summary.md in the same folder, and prints the table.

The ratio is the reference's wall time per image over sdspool's (above 1: sdspool is faster).
Both sides do the same work, which is checked here: the same prompts, images, UNet batch and
number of UNet calls (guidance doubles the batch on both sides), a VAE decode of every image.
sdspool runs without CLIP rerank (the reference has none); its wall time still includes PNG
encoding and writing every image (fsync and rename), which the reference does not do.

    python3 onnx/bench_summary.py local/bench/cpu-<time>
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def load(p: Path):
    return json.loads(p.read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    rows = []
    problems = []
    for s_path in sorted(out.glob("*.sdspool.json"), key=lambda p: p.stat().st_mtime):
        name = s_path.name[: -len(".sdspool.json")]
        r_path = out / f"{name}.reference.json"
        if not r_path.exists():
            problems.append(f"{name}: no {r_path.name}")
            continue
        s, r = load(s_path), load(r_path)
        sw, rw = s["workload"], r["workload"]
        for key in ("prompt_texts", "images", "unet_batch", "steps", "width", "height", "candidates"):
            if sw[key] != rw[key]:
                problems.append(f"{name}: {key} differs: sdspool {sw[key]!r}, reference {rw[key]!r}")
        if s["mean"]["unet_calls"] != r["mean"]["unet_calls"]:
            problems.append(
                f"{name}: UNet calls differ: sdspool {s['mean']['unet_calls']}, reference {r['mean']['unet_calls']}"
            )
        if sw["rerank"]:
            problems.append(f"{name}: sdspool ran with CLIP rerank; run it with --no-rerank")
        sm, rm = s["mean"], r["mean"]
        rows.append(
            {
                "case": name,
                "model": Path(sw["model_path"]).name,
                "reference_impl": r.get("impl", ""),
                "size": f"{sw['width']}x{sw['height']}",
                "images": sw["images"],
                "unet_batch": sw["unet_batch"],
                "unet_calls": sm["unet_calls"],
                "scheduler": sw["scheduler"],
                "steps": sw["steps"],
                "threads": sw["intra_threads"],
                "runs": sw["runs"],
                "sdspool_s_per_image": sm["seconds_per_image"],
                "reference_s_per_image": rm["seconds_per_image"],
                "ratio_reference_over_sdspool": rm["seconds_per_image"] / sm["seconds_per_image"],
                "sdspool_images_per_s": sm["images_per_s"],
                "reference_images_per_s": rm["images_per_s"],
                "sdspool_unet_s_per_call": sm["unet_s_per_call"],
                "reference_unet_s_per_call": rm["unet_s_per_call"],
                "sdspool_overhead_pct": sm["overhead_pct"],
                "sdspool_png_s_per_run": sm["phases"]["png_encode"] + sm["phases"]["png_write"],
                "sdspool_peak_rss_mib": s["peak_rss_kib"] / 1024,
                "reference_peak_rss_mib": r["peak_rss_kib"] / 1024,
                "sdspool_first_image_cold_s": s["cold"]["first_image_s"],
                "sdspool_first_image_warm_s": sm["first_image_s"],
            }
        )
    summary = {
        "folder": str(out),
        "host": platform.node(),
        "cpus": rows and load(out / f"{rows[0]['case']}.sdspool.json")["cpus"],
        "onnxruntime": rows and load(out / f"{rows[0]['case']}.sdspool.json")["onnxruntime_version"],
        "cases": rows,
        "problems": problems,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    head = (
        "| case | images | UNet batch x calls | sdspool s/image | reference s/image | ratio (ref / sdspool) "
        "| sdspool UNet s/call | reference UNet s/call | sdspool overhead | sdspool PNG s/run "
        "| peak RSS MiB (sdspool / ref) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for x in rows:
        lines.append(
            f"| {x['case']} | {x['images']} | {x['unet_batch']} x {x['unet_calls']:.0f} "
            f"| {x['sdspool_s_per_image']:.4f} | {x['reference_s_per_image']:.4f} "
            f"| **{x['ratio_reference_over_sdspool']:.3f}** "
            f"| {x['sdspool_unet_s_per_call']:.5f} | {x['reference_unet_s_per_call']:.5f} "
            f"| {x['sdspool_overhead_pct']:.2f} % | {x['sdspool_png_s_per_run']:.3f} "
            f"| {x['sdspool_peak_rss_mib']:.0f} / {x['reference_peak_rss_mib']:.0f} |"
        )
    md = "\n".join(lines) + "\n"
    if problems:
        md += "\nNot equal work:\n" + "".join(f"- {p}\n" for p in problems)
    (out / "summary.md").write_text(md)
    print(md, end="")
    print(f"(written: {out / 'summary.json'}, {out / 'summary.md'})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
