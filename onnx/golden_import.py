#!/usr/bin/env python3
"""Real import runs of the tiny single-file fixtures, and diffusers' pictures of the same files (issue 22).

For each case below:
  1. runs onnx/import_checkpoint.py as `sdspool import` runs it (a subprocess; its JSON-lines stdout is
     kept as tests/fixtures/import/transcripts/<case>.jsonl, the transcript the Rust stage driver replays)
     and keeps the imported ONNX folder as tests/fixtures/import/models/<case>/ for the cases marked kept;
  2. renders the same single file with diffusers' PyTorch pipeline: `from_single_file` with the configs
     import_checkpoint.py generates, LoRAs fused by diffusers' `load_lora_weights` + `set_adapters` +
     `fuse_lora` (import_checkpoint.apply_loras), from torch CPU generators seeded per candidate;
     the pixels go to tests/golden/import/<case>.pixels.npy (uint8 [candidates, h, w, 3], as
     diffusers' numpy_to_pil rounds them) and tests/golden/import/index.json lists the settings.
It also checks diffusers' fusion against the LoRA formula itself on one UNet layer and one layer of
each text encoder (the refiner's only one is text_encoder_2):
W' = W + sum(weight * alpha / rank * up @ down) (alpha = rank when a file has none).

It also renders the base + refiner hand-offs (HANDOFFS) from the two single files as sdspool's
`refiner:` / `refiner_start:` job fields ask: index.json "handoffs", <case>.handoff.pixels.npy.

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/golden_import.py [--only sd15,sdxl-lora] [--handoffs sdxl-refiner]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import import_checkpoint as ic  # noqa: E402  (sets the offline environment)
import numpy as np  # noqa: E402
import torch  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "import"
GOLDEN = ROOT / "tests" / "golden" / "import"
PROMPT = "a photo of a cat"
SEEDS = [42, 43]
STEPS, GUIDANCE, SIZE = 4, 7.5, 64

# case -> (checkpoint, [(lora, weight)], sdspool scheduler name of the family's default, keep the folder)
CASES = {
    "sd15": ("sd15.safetensors", [], "pndm", True),
    "sd15-lora": ("sd15.safetensors", [("lora-sd15-kohya.safetensors", 0.8), ("lora-sd15-peft.safetensors", 0.5)], "pndm", True),
    "sd2-v": ("sd2-v.safetensors", [], "ddim", True),
    "sd2-v-lora": ("sd2-v.safetensors", [("lora-sd2-kohya.safetensors", 0.8), ("lora-sd2-peft.safetensors", 0.5)], "ddim", True),
    "sdxl": ("sdxl.safetensors", [], "euler", True),
    "sdxl-lora": ("sdxl.safetensors", [("lora-sdxl-kohya.safetensors", 0.7), ("lora-sdxl-peft.safetensors", 0.4)], "euler", True),
    "sdxl-refiner": ("sdxl-refiner.safetensors", [], None, True),
    # the refiner's pictures are its hand-offs (HANDOFFS)
    "sdxl-refiner-lora": ("sdxl-refiner.safetensors", [("lora-sdxl-refiner-kohya.safetensors", 1.0), ("lora-sdxl-refiner-peft.safetensors", 0.8)], None, True),
    # checked against the sd15 golden (tests/import_parity.rs), so no pictures of their own
    "sd15-fp16": ("sd15.safetensors", [], None, True),
    "sd15-optimized": ("sd15.safetensors", [], None, True),
    # sd15.safetensors' tensors as a pickled .ckpt ({"state_dict": ...}): the same weights, so the sd15 golden
    "sd15-ckpt": ("sd15.ckpt", [], None, True),
}

# import_checkpoint.py options of a case beyond its checkpoint and LoRAs
OPTIONS = {
    "sd15-fp16": ["--fp16"],
    "sd15-optimized": ["--optimize", "--target", "cpu"],
}


# Base + refiner hand-offs (diffusers' ensemble of experts, sdspool's `refiner:` / `refiner_start:`):
# case -> (base case, refiner case, refiner_start, scheduler, steps). Both folders come from CASES.
HANDOFFS = {
    "sdxl-refiner": ("sdxl", "sdxl-refiner", 0.8, "euler", 10),
    # The base without LoRAs, the refiner with its own two. The refiner starts at 0.2: in the last two of
    # ten steps the tiny refiner moves the pixels by 1/255 at most, LoRAs or not; from 0.2 its LoRAs
    # change them by up to 11/255 (mean 1.2), so a refiner without them fails the 1/255 parity.
    "sdxl-refiner-lora": ("sdxl", "sdxl-refiner-lora", 0.2, "euler", 10),
}


# Real runs that the conversion refuses (transcripts only): case -> (checkpoint, loras, expected error kind)
ERROR_CASES = {
    "ckpt-truncated": ("sd15-truncated.ckpt", [], "truncated"),
}


def record_error(case: str) -> None:
    checkpoint, loras, kind = ERROR_CASES[case]
    cmd = [sys.executable, str(HERE / "import_checkpoint.py"), "--checkpoint", str(FIX / checkpoint), "--out", "/nonexistent/out", "--name", case]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    if done.returncode != 2 or events[-1].get("kind") != kind:
        sys.exit(f"[{case}] expected exit 2 with a {kind} error, got {done.returncode}: {done.stdout}")
    # the file as the replaying test names it (relative to the repository root)
    text = done.stdout.replace(str(FIX / checkpoint), f"tests/fixtures/import/{checkpoint}")
    (FIX / "transcripts" / f"{case}.jsonl").write_text(text)
    print(f"[{case}] refused: {events[-1]['message'][:100]}", flush=True)


def run_import(case: str, checkpoint: str, loras, out: Path) -> tuple[list[dict], float]:
    cmd = [sys.executable, str(HERE / "import_checkpoint.py"), "--checkpoint", str(FIX / checkpoint), "--out", str(out), "--name", case]
    for lora, weight in loras:
        cmd += ["--lora", f"{FIX / lora}:{weight}"]
    cmd += OPTIONS.get(case, [])
    t0 = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"[{case}] import failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines()], seconds


def transcript_text(events: list[dict], out: Path) -> str:
    """The transcript with the output folder written as the placeholder the replaying test substitutes."""
    lines = []
    for e in events:
        if e.get("event") == "done":
            e = dict(e, out="$OUT")
        lines.append(json.dumps(e))
    return "\n".join(lines) + "\n"


def reference_pipeline(checkpoint: str, loras):
    family, shapes = ic.detect(FIX / checkpoint, None)
    pipe, prediction = ic.load_pipeline(FIX / checkpoint, family, None, shapes)
    if loras:
        ic.apply_loras(pipe, [(FIX / p, w) for p, w in loras], family)
    return pipe, family, prediction


def render(pipe) -> np.ndarray:
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    with torch.no_grad():
        images = pipe(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            width=SIZE,
            height=SIZE,
            num_images_per_prompt=len(SEEDS),
            generator=generators,
            output_type="np",
        ).images
    return (images * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil


def render_handoff(case: str) -> dict:
    """The base single file denoises to `denoising_end`, the refiner single file goes on from
    `denoising_start` with the base's latents and the same generators (Euler draws no noise)."""
    base_case, refiner_case, start, scheduler, steps = HANDOFFS[case]
    base, _, _ = reference_pipeline(CASES[base_case][0], CASES[base_case][1])
    refiner, _, _ = reference_pipeline(CASES[refiner_case][0], CASES[refiner_case][1])
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    common = dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, num_images_per_prompt=len(SEEDS), generator=generators)
    with torch.no_grad():
        latents = base(**common, width=SIZE, height=SIZE, denoising_end=start, output_type="latent").images
        images = refiner(**common, image=latents, denoising_start=start, output_type="np").images
    np.save(GOLDEN / f"{case}.handoff.pixels.npy", (images * 255).round().astype(np.uint8))
    return {
        "model": base_case,
        "refiner": refiner_case,
        "refiner_start": start,
        "aesthetic_score": 6.0,
        "negative_aesthetic_score": 2.5,
        "prompt": PROMPT,
        "seeds": SEEDS,
        "steps": steps,
        "guidance": GUIDANCE,
        "width": SIZE,
        "height": SIZE,
        "scheduler": scheduler,
        "pixels": f"{case}.handoff.pixels.npy",
    }


def lora_down_up(state: dict, family: str, part: str, module: str, unet) -> tuple:
    """(down, up, alpha) of `module` of component `part` (unet, text_encoder, text_encoder_2) in a LoRA file."""
    if any(k.startswith("lora_") for k in state):
        if part == "unet":
            path = module
            if family.startswith("sdxl"):  # kohya SDXL files name the UNet by its single-file blocks
                import checkpoint_layout as cl

                ldm = cl.unet_key_to_ldm(module + ".weight", unet.config.layers_per_block, [t.startswith("CrossAttn") for t in unet.config.up_block_types])
                path = ldm.removeprefix(cl.UNET).removesuffix(".weight")
            key = "lora_unet_" + path.replace(".", "_")
        else:
            prefix = {"text_encoder": "lora_te1" if family == "sdxl" else "lora_te", "text_encoder_2": "lora_te2"}[part]
            key = prefix + "_" + module.replace(".", "_")
        return state[key + ".lora_down.weight"], state[key + ".lora_up.weight"], float(state[key + ".alpha"])
    down, up = state[f"{part}.{module}.lora_A.weight"], state[f"{part}.{module}.lora_B.weight"]
    return down, up, down.shape[0]


def check_fusion_formula(checkpoint: str, loras) -> None:
    """diffusers' fused weight of the first UNet to_q and the first q_proj of each text encoder equals
    W + sum(weight * alpha/rank * up @ down)."""
    from safetensors.torch import load_file

    plain, family, _ = reference_pipeline(checkpoint, [])
    fused, _, _ = reference_pipeline(checkpoint, loras)
    states = [(load_file(str(FIX / lora)), weight) for lora, weight in loras]
    checked = []
    for part in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(plain, part, None)
        if model is None:
            continue
        suffix = "attn1.to_q" if part == "unet" else "self_attn.q_proj"
        name = next(n for n, _ in model.named_modules() if n.endswith(suffix))
        want = model.get_submodule(name).weight.detach().clone()
        for state, weight in states:
            down, up, alpha = lora_down_up(state, family, part, name, plain.unet)
            want += weight * alpha / down.shape[0] * (up @ down)
        got = getattr(fused, part).get_submodule(name).weight.detach()
        err = float((got - want).abs().max())
        if err > 1e-6:
            sys.exit(f"{checkpoint}: diffusers' fused {part}.{name} differs from the LoRA formula by {err}")
        checked.append(f"{part}.{name} ({err:.1e})")
    print(f"[{checkpoint}] fused = W + sum(w*alpha/r*up@down): {', '.join(checked)}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join([*CASES, *ERROR_CASES]))
    ap.add_argument("--handoffs", default=",".join(HANDOFFS), help="hand-off goldens to render ('' for none)")
    args = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    (FIX / "transcripts").mkdir(parents=True, exist_ok=True)
    (FIX / "models").mkdir(parents=True, exist_ok=True)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    index_path = GOLDEN / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"cases": {}}
    for case in filter(None, args.only.split(",")):
        if case in ERROR_CASES:
            record_error(case)
            continue
        checkpoint, loras, scheduler, keep = CASES[case]
        if loras:
            check_fusion_formula(checkpoint, loras)
        out = FIX / "models" / case
        if out.exists():
            shutil.rmtree(out)
        events, seconds = run_import(case, checkpoint, loras, out)
        (FIX / "transcripts" / f"{case}.jsonl").write_text(transcript_text(events, out))
        print(f"[{case}] imported in {seconds:.1f} s", flush=True)
        if not keep:
            shutil.rmtree(out)
        entry = {"checkpoint": checkpoint, "loras": [[p, w] for p, w in loras], "options": OPTIONS.get(case, []), "import_seconds": round(seconds, 1)}
        if scheduler:
            pipe, family, prediction = reference_pipeline(checkpoint, loras)
            pixels = render(pipe)
            np.save(GOLDEN / f"{case}.pixels.npy", pixels)
            entry.update(
                family=family,
                prediction_type=prediction,
                prompt=PROMPT,
                seeds=SEEDS,
                steps=STEPS,
                guidance=GUIDANCE,
                width=SIZE,
                height=SIZE,
                scheduler=scheduler,
                pixels=f"{case}.pixels.npy",
            )
        index["cases"][case] = entry
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    for case in filter(None, args.handoffs.split(",")):
        index.setdefault("handoffs", {})[case] = render_handoff(case)
        index_path.write_text(json.dumps(index, indent=2) + "\n")
        print(f"[{case}] hand-off golden rendered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
