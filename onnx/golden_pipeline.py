"""Golden files for sdspool's pipeline parity tests, produced by the reference implementation.

Runs optimum's ORTStableDiffusionPipeline (diffusers' StableDiffusionPipeline.__call__ over
ONNX Runtime sessions) on the committed small models with fixed initial latents, for every
scheduler sdspool offers, at 1, 7 and 20 steps, with and without guidance, with a negative
prompt, and on the v-prediction model. Initial latents come from torch CPU generators seeded
per candidate (the same as passing `generator=[torch.Generator().manual_seed(s) for s in seeds]`),
and the per-step noise that stochastic schedulers draw is recorded, so the Rust tests can replay a
case from the .npy files alone or from the seeds.

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/golden_pipeline.py   # writes tests/golden/pipeline/
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from optimum.onnxruntime import ORTStableDiffusionPipeline

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "onnx" / "models"
OUT = ROOT / "tests" / "golden" / "pipeline"

# sdspool scheduler name -> (diffusers class, extra config, extra __call__ kwargs)
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}, {}),
    "ddim_eta": (DDIMScheduler, {}, {"eta": 0.6}),
    "pndm": (PNDMScheduler, {}, {}),
    "lms": (LMSDiscreteScheduler, {}, {}),
    "euler": (EulerDiscreteScheduler, {}, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, {}),
    "ddpm": (DDPMScheduler, {}, {}),
    "unipc": (UniPCMultistepScheduler, {}, {}),
}

PROMPT = "a photo of a cat"
NEGATIVE = "blurry, low quality"
WIDTH = HEIGHT = 64
SEEDS = [42, 43]
SHAPES_PROMPT = "a large red circle in the center on a blue background"


class NoiseRecorder:
    """Wraps diffusers' randn_tensor in the scheduler modules to record the per-step noise."""

    def __init__(self):
        self.draws = []
        self.active = False
        self.modules = [
            m
            for m in (
                diffusers.schedulers.scheduling_ddim,
                diffusers.schedulers.scheduling_ddpm,
                diffusers.schedulers.scheduling_euler_ancestral_discrete,
                diffusers.schedulers.scheduling_euler_discrete,
                diffusers.schedulers.scheduling_dpmsolver_multistep,
                diffusers.schedulers.scheduling_unipc_multistep,
                diffusers.schedulers.scheduling_lms_discrete,
                diffusers.schedulers.scheduling_pndm,
                diffusers.schedulers.scheduling_lcm,  # used by onnx/golden_sdxl.py
            )
            if hasattr(m, "randn_tensor")
        ]
        for m in self.modules:
            original = m.randn_tensor

            def recording(*args, _original=original, **kwargs):
                out = _original(*args, **kwargs)
                if self.active:
                    self.draws.append(out.detach().cpu().numpy().astype(np.float32))
                return out

            m.randn_tensor = recording


RECORDER = NoiseRecorder()
PIPES = {}


def pipeline(model):
    """The pipeline of a model and its own scheduler configuration."""
    if model not in PIPES:
        pipe = ORTStableDiffusionPipeline.from_pretrained(MODELS / model, provider="CPUExecutionProvider")
        PIPES[model] = (pipe, dict(pipe.scheduler.config))
    return PIPES[model]


def initial_latents(seeds, shape):
    """What diffusers draws with a list of CPU generators: one [1, ...] tensor per generator."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


def run_case(name, model, scheduler, steps, guidance, negative, cases, prompt=PROMPT):
    pipe, base_config = pipeline(model)
    cls, config_extra, call_extra = SCHEDULERS[scheduler]
    pipe.scheduler = cls.from_config(base_config, **config_extra)

    # diffusers: vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1); 4 for shapes-sd
    shape = (4, HEIGHT // pipe.vae_scale_factor, WIDTH // pipe.vae_scale_factor)
    latents0 = initial_latents(SEEDS, shape)
    # The generators continue from where the initial latents left them, as in diffusers.
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    for g in generators:
        torch.randn((1, *shape), generator=g)
    final = {}

    def on_step_end(pipe_, i, t, kwargs):
        final["latents"] = kwargs["latents"].detach().cpu().numpy().astype(np.float32)
        return kwargs

    RECORDER.draws = []
    RECORDER.active = True
    out = pipe(
        prompt=prompt,
        negative_prompt=negative,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=WIDTH,
        height=HEIGHT,
        latents=latents0.clone(),
        generator=generators,
        output_type="np",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        **call_extra,
    )
    RECORDER.active = False
    images = np.asarray(out.images, dtype=np.float32)  # [n, H, W, 3] in [0, 1]
    pixels = (images * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil

    files = {}

    def save(key, array):
        fname = f"{name}.{key}.npy"
        np.save(OUT / fname, array)
        files[key] = fname

    save("initial", latents0.numpy().astype(np.float32))
    save("latents", final["latents"])
    save("pixels", pixels)
    if RECORDER.draws:
        save("noise", np.stack(RECORDER.draws))
    cases.append(
        {
            "name": name,
            "model": model,
            "scheduler": scheduler,
            "scheduler_class": cls.__name__,
            "eta": call_extra.get("eta", 0.0),
            "steps": steps,
            "guidance": guidance,
            "prompt": prompt,
            "negative": negative or "",
            "width": WIDTH,
            "height": HEIGHT,
            "seeds": SEEDS,
            "unet_calls": len(pipe.scheduler.timesteps),
            "noise_draws": len(RECORDER.draws),
            "files": files,
        }
    )
    print(f"{name}: {len(pipe.scheduler.timesteps)} UNet calls, {len(RECORDER.draws)} noise draws")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.npy"):
        old.unlink()
    cases = []
    for scheduler in SCHEDULERS:
        for steps in (1, 7, 20):
            run_case(f"sd-{scheduler}-{steps}", "tiny-sd", scheduler, steps, 7.5, None, cases)
    for scheduler in ("pndm", "euler_a", "dpmpp_2m"):
        run_case(f"sd-{scheduler}-7-noguide", "tiny-sd", scheduler, 7, 1.0, None, cases)
    for scheduler in ("euler", "ddim"):
        run_case(f"sd-{scheduler}-7-negative", "tiny-sd", scheduler, 7, 7.5, NEGATIVE, cases)
    for scheduler in ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc"):
        run_case(f"v-{scheduler}-7", "tiny-sd-v", scheduler, 7, 5.0, None, cases)
    run_case("fp16-pndm-7", "tiny-sd-fp16", "pndm", 7, 7.5, None, cases)
    # The trained demo model (onnx/train_demo_model.py): VAE with 4x downsampling, 24 tokens.
    if (MODELS / "shapes-sd").is_dir():
        for scheduler, steps in (("pndm", 20), ("euler_a", 20), ("dpmpp_2m", 7)):
            run_case(f"shapes-{scheduler}-{steps}", "shapes-sd", scheduler, steps, 7.5, None, cases, prompt=SHAPES_PROMPT)
    index = {
        "generator": "onnx/golden_pipeline.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "cases": cases,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{len(cases)} cases written to {OUT}")


if __name__ == "__main__":
    main()
