#!/usr/bin/env python3
"""The Python reference for `sdspool bench` on the CPU: optimum's ORTStableDiffusionPipeline
(diffusers' StableDiffusionPipeline.__call__ over ONNX Runtime sessions), or for an SDXL folder
(model_index.json's `_class_name` StableDiffusionXLPipeline) its ORTStableDiffusionXLPipeline
(diffusers' StableDiffusionXLPipeline: both text encoders, no negative prompt means zero negative
embeddings, as sdspool does), on the same model folder with the same workload, timed the same
way.

Workload, as `sdspool bench` defines it: `--prompts` prompts (the texts read from the
`sdspool bench --json` file given with `--prompts-from`, so both render the same), `--candidates` images per prompt (num_images_per_prompt; initial
latents from torch CPU generators seeded seed + i, as sdspool draws them), `--steps`,
`--guidance` (classifier-free guidance: the UNet runs on 2 x candidates), `--scheduler` (the
diffusers class sdspool's name stands for, built from the model's own scheduler_config.json),
`--size`, `--batch` candidates per pipeline call, no negative prompt. ONNX Runtime gets
`--threads` intra-op threads (0: its default) and graph optimisation level "all" (sdspool's
default), the CPU provider; torch gets the same thread count for the pipeline's tensor work.
Images come out as PIL images (decoded by the VAE and converted to 8 bits, as sdspool does);
nothing is written to disk and nothing is scored (sdspool's PNG writing and CLIP rerank have no
counterpart here: compare with `sdspool bench --no-rerank`, whose wall time still includes PNG
encoding and writing).

Reports per run: wall time, seconds per image, UNet calls and their session time (each
session's `run` is wrapped with a timer: text_encoder, text_encoder_2 when the model has it,
unet, vae_decoder), as JSON (`--json`) and a line on stdout.

    onnx/.venv/bin/python onnx/bench_reference.py --model onnx/models/tiny-sd --size 64x64 \\
        --prompts 4 --prompts-from sdspool.json --candidates 2 --steps 20 --threads 2 --runs 3 \\
        --warmup 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

def prompt_texts(sdspool_json: Path, n: int) -> list[str]:
    """The first n prompt texts of the workload an `sdspool bench --json` file records (its
    `workload.prompt_texts`): the reference renders exactly what sdspool rendered."""
    texts = json.loads(sdspool_json.read_text())["workload"]["prompt_texts"]
    if len(texts) < n:
        raise SystemExit(f"{sdspool_json}: workload.prompt_texts has {len(texts)} prompts, --prompts asks for {n}")
    return texts[:n]


def parse_size(s: str) -> tuple[int, int]:
    if "x" in s.lower():
        w, h = s.lower().split("x", 1)
        return int(w), int(h)
    return int(s), int(s)


def scheduler_class(name: str | None):
    """sdspool's scheduler name -> (diffusers class, extra config); None: the model's own."""
    import diffusers as d

    table = {
        "ddim": (d.DDIMScheduler, {}),
        "pndm": (d.PNDMScheduler, {}),
        "lms": (d.LMSDiscreteScheduler, {}),
        "euler": (d.EulerDiscreteScheduler, {}),
        "euler_a": (d.EulerAncestralDiscreteScheduler, {}),
        "dpmpp_2m": (d.DPMSolverMultistepScheduler, {}),
        "dpmpp_2m_karras": (d.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
        "ddpm": (d.DDPMScheduler, {}),
        "unipc": (d.UniPCMultistepScheduler, {}),
    }
    if name is None:
        return None
    key = name.strip().lower().replace("-", "_")
    if key not in table:
        raise SystemExit(f"--scheduler {name!r}: one of {', '.join(table)}")
    return table[key]


class TimedSession:
    """An onnxruntime InferenceSession whose run / run_with_iobinding are timed."""

    def __init__(self, inner):
        self._inner = inner
        self.calls = 0
        self.seconds = 0.0

    def run(self, *a, **k):
        t = time.perf_counter()
        try:
            return self._inner.run(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1

    def run_with_iobinding(self, *a, **k):
        t = time.perf_counter()
        try:
            return self._inner.run_with_iobinding(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1

    def __getattr__(self, name):
        return getattr(self._inner, name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model folder (optimum export)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument(
        "--prompts-from",
        type=Path,
        required=True,
        metavar="JSON",
        help="an `sdspool bench --json` file: the prompt texts come from its workload",
    )
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--scheduler", default=None, help="sdspool scheduler name (default: the model's own)")
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--batch", type=int, default=None, help="candidates per pipeline call (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline, ORTStableDiffusionXLPipeline

    index = json.loads((args.model / "model_index.json").read_text())
    sdxl = index.get("_class_name") == "StableDiffusionXLPipeline"
    pipeline_class = ORTStableDiffusionXLPipeline if sdxl else ORTStableDiffusionPipeline
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.threads > 0:
        so.intra_op_num_threads = args.threads
    pipe = pipeline_class.from_pretrained(str(args.model), provider="CPUExecutionProvider", session_options=so)
    pipe.set_progress_bar_config(disable=True)
    sched = scheduler_class(args.scheduler)
    if sched is not None:
        cls, extra = sched
        pipe.scheduler = cls.from_config(dict(pipe.scheduler.config), **extra)
    timed = {}
    for name in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
        part = getattr(pipe, name, None)
        if part is None:
            continue
        part.session = TimedSession(part.session)
        timed[name] = part.session
    load_s = time.perf_counter() - t_start

    width, height = parse_size(args.size)
    batch = args.batch or args.candidates
    vae_factor = 2 ** (len(pipe.vae_decoder.config.block_out_channels) - 1)
    shape = (4, height // vae_factor, width // vae_factor)
    prompts = prompt_texts(args.prompts_from, args.prompts)
    images = args.prompts * args.candidates

    def one_run():
        for p in prompts:
            for first in range(0, args.candidates, batch):
                seeds = [args.seed + i for i in range(first, min(first + batch, args.candidates))]
                latents = torch.cat(
                    [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
                )
                out = pipe(
                    prompt=p,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    height=height,
                    width=width,
                    num_images_per_prompt=len(seeds),
                    latents=latents,
                    output_type="pil",
                )
                assert len(out.images) == len(seeds)

    runs = []
    for k in range(args.warmup + args.runs):
        before = {n: (s.calls, s.seconds) for n, s in timed.items()}
        t0 = time.perf_counter()
        one_run()
        total = time.perf_counter() - t0
        sessions = {n: {"calls": s.calls - before[n][0], "seconds": s.seconds - before[n][1]} for n, s in timed.items()}
        unet = sessions["unet"]
        r = {
            "total_s": total,
            "images": images,
            "images_per_s": images / total,
            "seconds_per_image": total / images,
            "unet_calls": unet["calls"],
            "unet_s_per_call": unet["seconds"] / max(unet["calls"], 1),
            "sessions": sessions,
            "session_s": sum(s["seconds"] for s in sessions.values()),
        }
        warm = k < args.warmup
        label = f"warmup-{k + 1}" if warm else f"run-{k - args.warmup + 1}"
        print(f"{label}: {total:.2f} s, {images / total:.3f} images/s", file=sys.stderr, flush=True)
        if not warm:
            runs.append(r)

    def mean(key):
        return statistics.fmean(r[key] for r in runs)

    total = mean("total_s")
    report = {
        "impl": f"optimum-{pipeline_class.__name__}",
        "onnxruntime_version": ort.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "started_unix": int(time.time()),
        "workload": {
            "model_path": str(args.model),
            "prompts": args.prompts,
            "prompt_texts": prompts,
            "candidates": args.candidates,
            "images": images,
            "steps": args.steps,
            "guidance": args.guidance,
            "scheduler": type(pipe.scheduler).__name__,
            "width": width,
            "height": height,
            "batch": batch,
            "unet_batch": batch * (2 if args.guidance > 1 else 1),
            "intra_threads": args.threads,
            "graph_optimization": "all",
            "seed": args.seed,
            "runs": args.runs,
            "warmup": args.warmup,
        },
        "load_s": load_s,
        "mean": {
            "total_s": total,
            "images": images,
            "images_per_s": images / total,
            "seconds_per_image": total / images,
            "unet_calls": mean("unet_calls"),
            "unet_s_per_call": mean("unet_s_per_call"),
            "session_s": mean("session_s"),
        },
        "runs": runs,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(
        f"reference: {images} images in {total:.3f} s ({total / images:.4f} s per image, "
        f"{images / total:.4f} images/s), UNet {report['mean']['unet_s_per_call']:.5f} s per call"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
