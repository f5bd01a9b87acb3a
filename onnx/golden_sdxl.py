"""Golden files for the SDXL, SDXL refiner, SDXL-Turbo and LCM parity tests (issue 18).

Runs optimum's ORT pipelines (diffusers' StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline
and LatentConsistencyModelPipeline __call__ over ONNX Runtime sessions) on the committed tiny models
of onnx/build_sdxl_models.py and writes tests/golden/sdxl/: index.json and .npy files, in the format
of tests/golden/pipeline (onnx/golden_pipeline.py, whose scheduler table, seeds, prompts, initial
latents and noise recorder this script reuses):

- every case has `initial` (the initial latents drawn per seed with torch CPU generators, as
  `generator=[torch.Generator().manual_seed(s) for s in seeds]` does), `latents` (the final latents,
  the ones decoded), `pixels` (uint8 [n, H, W, 3], as diffusers' numpy_to_pil rounds) and, for
  stochastic schedulers, `noise` (every noise draw of the scheduler, in order; the generators continue
  from where the initial latents left them);
- the conditioning the UNet received on its first call, one row per prompt ([1, ...]; the pipeline
  repeats it for each seed): `prompt_embeds` [1, 77, 80] (the penultimate hidden states of both text
  encoders concatenated; SDXL: 2048), `pooled_prompt_embeds` [1, 40] (`text_embeds`; SDXL: 1280) and
  `add_time_ids` [1, 6] (refiner [1, 5]), and with guidance the `negative_*` three; LCM:
  `prompt_embeds` [1, 77, 32] and `timestep_cond` [1, 32] (the guidance-scale embedding of w = g - 1).
  Identical tensors are written once and shared between cases (the file name is the first case's);
- `timesteps`: the timestep of every UNet call.

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/golden_sdxl.py   # writes tests/golden/sdxl/
"""

import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import numpy as np
import onnxruntime as ort
import torch
from diffusers import LCMScheduler
from optimum.onnxruntime import (
    ORTLatentConsistencyModelPipeline,
    ORTStableDiffusionXLImg2ImgPipeline,
    ORTStableDiffusionXLPipeline,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_pipeline as gp  # noqa: E402  (installs the noise recorder in diffusers' scheduler modules)

ROOT = gp.ROOT
MODELS = gp.MODELS
OUT = ROOT / "tests" / "golden" / "sdxl"

# sdspool scheduler name -> (diffusers class, extra config, extra __call__ kwargs): golden_pipeline's
# table plus the LCM scheduler (also usable on a model without timestep_cond, as with LCM-LoRA).
SCHEDULERS = {**gp.SCHEDULERS, "lcm": (LCMScheduler, {}, {})}
PROMPT = gp.PROMPT
NEGATIVE = gp.NEGATIVE
SEEDS = gp.SEEDS
SIZE = 64  # the tiny models' default (unet sample_size 8 x VAE scale factor 8)
GUIDANCE = 5.0  # SDXL's usual
LCM_GUIDANCE = 8.5  # LatentConsistencyModelPipeline's default: w = 7.5
HANDOFF = 0.8  # denoising_end of the base = denoising_start of the refiner
PIPE_CLASSES = {
    "StableDiffusionXLPipeline": ORTStableDiffusionXLPipeline,
    "StableDiffusionXLImg2ImgPipeline": ORTStableDiffusionXLImg2ImgPipeline,
    "LatentConsistencyModelPipeline": ORTLatentConsistencyModelPipeline,
}


class UnetTap:
    """Wraps an ORT pipeline's UNet: the timestep of every call and the inputs of the first one."""

    def __init__(self, unet):
        self.timesteps = []
        self.first = None
        original = unet.forward

        def forward(sample, timestep, encoder_hidden_states, timestep_cond=None, added_cond_kwargs=None, **kw):
            self.timesteps.append(float(timestep))
            if self.first is None:
                inputs = {"encoder_hidden_states": encoder_hidden_states, "timestep_cond": timestep_cond}
                inputs.update(added_cond_kwargs or {})
                self.first = {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items() if v is not None}
            return original(
                sample,
                timestep,
                encoder_hidden_states,
                timestep_cond=timestep_cond,
                added_cond_kwargs=added_cond_kwargs,
                **kw,
            )

        unet.forward = forward

    def reset(self):
        self.timesteps = []
        self.first = None


class Pipelines:
    """One ORT pipeline per (model, replacement VAE decoder), with its tap and its own scheduler config."""

    def __init__(self):
        self.cache = {}

    def get(self, model, vae_from=None):
        key = (model, vae_from)
        if key not in self.cache:
            folder = MODELS / model
            index = json.loads((folder / "model_index.json").read_text())
            kwargs = {}
            if vae_from is not None:
                # A replacement VAE (a float32 one for a float16 folder), as diffusers' `vae=`.
                for part in ("vae_decoder", "vae_encoder"):
                    path = MODELS / vae_from / part / "model.onnx"
                    kwargs[f"{part}_session"] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            pipe = PIPE_CLASSES[index["_class_name"]].from_pretrained(folder, provider="CPUExecutionProvider", **kwargs)
            pipe.set_progress_bar_config(disable=True)
            self.cache[key] = (pipe, dict(pipe.scheduler.config), UnetTap(pipe.unet))
        return self.cache[key]


PIPES = Pipelines()


class Writer:
    """Writes the .npy files; conditioning tensors with the same content are written once."""

    def __init__(self):
        self.shared = {}

    def save(self, files, case, key, array, shared=False):
        array = np.ascontiguousarray(array)
        if shared:
            digest = hashlib.sha256(f"{key}{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()
            if digest in self.shared:
                files[key] = self.shared[digest]
                return
        fname = f"{case}.{key}.npy"
        np.save(OUT / fname, array)
        files[key] = fname
        if shared:
            self.shared[digest] = fname


WRITER = Writer()


def one_row(array, name):
    """The per-prompt row of a conditioning batch (the pipeline repeats it for every seed)."""
    assert all(np.array_equal(array[0], row) for row in array), f"{name}: rows differ"
    return array[:1]


def save_conditioning(files, case, first, cfg, prefix=""):
    """Splits the first UNet call's inputs into the negative ([:n]) and positive ([n:]) halves."""
    n = len(SEEDS)
    names = {
        "encoder_hidden_states": "prompt_embeds",
        "text_embeds": "pooled_prompt_embeds",
        "time_ids": "add_time_ids",
        "timestep_cond": "timestep_cond",
    }
    values = {}
    for onnx_name, key in names.items():
        if onnx_name not in first:
            continue
        x = first[onnx_name]
        if onnx_name == "timestep_cond":  # never doubled: guidance is folded in, no unconditional batch
            assert x.shape[0] == n, x.shape
            WRITER.save(files, case, prefix + key, one_row(x, key), shared=True)
            continue
        assert x.shape[0] == (2 * n if cfg else n), (onnx_name, x.shape)
        pos = one_row(x[n:] if cfg else x, key)
        WRITER.save(files, case, prefix + key, pos, shared=True)
        values[key] = pos
        if cfg:
            neg = one_row(x[:n], "negative_" + key)
            WRITER.save(files, case, prefix + "negative_" + key, neg, shared=True)
            values["negative_" + key] = neg
    return values


def generators_after_initial(shape):
    """The seeds' CPU generators, advanced past the initial latents (as in diffusers)."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    for g in generators:
        torch.randn((1, *shape), generator=g)
    return generators


def set_scheduler(pipe, base_config, scheduler):
    cls, config_extra, call_extra = SCHEDULERS[scheduler]
    pipe.scheduler = cls.from_config(base_config, **config_extra)
    return cls, call_extra


class Run:
    """One pipeline call with the latents, noise and UNet inputs recorded."""

    def __init__(self, pipe, tap, **call):
        final = {}
        keys = ["latents", "denoised"] if isinstance(pipe, ORTLatentConsistencyModelPipeline) else ["latents"]

        def on_step_end(pipe_, i, t, kwargs):
            for k in keys:
                final[k] = kwargs[k].detach().cpu().numpy().astype(np.float32)
            return kwargs

        tap.reset()
        gp.RECORDER.draws = []
        gp.RECORDER.active = True
        try:
            out = pipe(callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=keys, **call)
        finally:
            gp.RECORDER.active = False
        self.images = out.images
        self.latents = final["latents"]
        if "denoised" in final:  # LCM decodes `denoised`; on the last step the scheduler returns it as is
            assert np.array_equal(final["denoised"], final["latents"])
        self.noise = list(gp.RECORDER.draws)
        self.timesteps = list(tap.timesteps)
        self.first = tap.first


def pixels_of(images):
    return (np.asarray(images, dtype=np.float32) * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil


def base_record(name, model, scheduler, cls, steps, guidance, negative, width, height, description):
    return {
        "name": name,
        "description": description,
        "model": model,
        "scheduler": scheduler,
        "scheduler_class": cls.__name__,
        "eta": SCHEDULERS[scheduler][2].get("eta", 0.0),
        "steps": steps,
        "guidance": guidance,
        "prompt": PROMPT,
        "negative": negative or "",
        "negative_prompt_arg": negative,
        "width": width,
        "height": height,
        "seeds": SEEDS,
    }


def time_ids_record(values):
    out = {"time_ids": values["add_time_ids"][0].tolist()}
    if "negative_add_time_ids" in values:
        out["negative_time_ids"] = values["negative_add_time_ids"][0].tolist()
    return out


def run_xl(cases, name, description, model="tiny-sdxl", scheduler="euler", steps=4, guidance=GUIDANCE,
           negative=None, width=SIZE, height=SIZE, force_zeros=None, call_extra=None, fp16_vae_pixels=False):
    """A text-to-image case on an SDXL folder (tiny-sdxl, tiny-sdxl-turbo, tiny-sdxl-fp16)."""
    vae_from = "tiny-sdxl" if fp16_vae_pixels else None
    pipe, base_config, tap = PIPES.get(model, vae_from)
    cls, sched_call = set_scheduler(pipe, base_config, scheduler)
    shape = (4, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents0 = gp.initial_latents(SEEDS, shape)
    saved_force_zeros = pipe.config.force_zeros_for_empty_prompt
    if force_zeros is not None:
        pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    call = dict(
        prompt=PROMPT,
        negative_prompt=negative,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        output_type="np",
        **sched_call,
        **(call_extra or {}),
    )
    try:
        run = Run(pipe, tap, latents=latents0.clone(), generator=generators_after_initial(shape), **call)
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=saved_force_zeros)
    record = base_record(name, model, scheduler, cls, steps, guidance, negative, width, height, description)
    record["force_zeros_for_empty_prompt"] = pipe.config.force_zeros_for_empty_prompt if force_zeros is None else force_zeros
    for k, v in (call_extra or {}).items():
        record[k] = list(v) if isinstance(v, tuple) else v
    files = {}
    WRITER.save(files, name, "initial", latents0.numpy().astype(np.float32))
    WRITER.save(files, name, "latents", run.latents)
    if fp16_vae_pixels:
        # Decoded by tiny-sdxl's float32 VAE decoder (the same weights before the float16 export), as
        # a replacement VAE folder would; optimum's pipeline cannot upcast an ONNX float16 VAE itself.
        WRITER.save(files, name, "pixels", pixels_of(run.images))
        fp16_pipe, _, _ = PIPES.get(model)
        vae = fp16_pipe.vae_decoder
        saved_upcast = vae.config.force_upcast
        vae.register_to_config(force_upcast=False)  # decode with the folder's own float16 VAE
        try:
            set_scheduler(fp16_pipe, base_config, scheduler)
            if force_zeros is not None:
                fp16_pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
            own = Run(fp16_pipe, PIPES.get(model)[2], latents=latents0.clone(),
                      generator=generators_after_initial(shape), **call)
        finally:
            vae.register_to_config(force_upcast=saved_upcast)
            fp16_pipe.register_to_config(force_zeros_for_empty_prompt=saved_force_zeros)
        assert np.array_equal(own.latents, run.latents)
        WRITER.save(files, name, "pixels_fp16_vae", pixels_of(own.images))
        record["vae_decoder_from"] = vae_from
    else:
        WRITER.save(files, name, "pixels", pixels_of(run.images))
    if run.noise:
        WRITER.save(files, name, "noise", np.stack(run.noise))
    values = save_conditioning(files, name, run.first, guidance > 1)
    record.update(time_ids_record(values))
    record.update(
        {
            "dtype": "float16" if model.endswith("fp16") else "float32",
            "unet_calls": len(run.timesteps),
            "timesteps": run.timesteps,
            "noise_draws": len(run.noise),
            "files": files,
        }
    )
    cases.append(record)
    print(f"{name}: {len(run.timesteps)} UNet calls, {len(run.noise)} noise draws")


def run_refiner(cases, name, description, scheduler="euler", steps=20, guidance=GUIDANCE, negative=None):
    """The ensemble of experts: the base denoises to `HANDOFF`, the refiner takes the latents from there."""
    base, base_config, base_tap = PIPES.get("tiny-sdxl")
    refiner, refiner_config, refiner_tap = PIPES.get("tiny-sdxl-refiner")
    cls, sched_call = set_scheduler(base, base_config, scheduler)
    set_scheduler(refiner, refiner_config, scheduler)
    shape = (4, SIZE // base.vae_scale_factor, SIZE // base.vae_scale_factor)
    latents0 = gp.initial_latents(SEEDS, shape)
    generators = generators_after_initial(shape)  # the same generators go on into the refiner
    common = dict(
        prompt=PROMPT,
        negative_prompt=negative,
        num_images_per_prompt=len(SEEDS),
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        **sched_call,
    )
    first = Run(base, base_tap, latents=latents0.clone(), denoising_end=HANDOFF, output_type="latent",
                width=SIZE, height=SIZE, **common)
    handoff = np.asarray(first.images, dtype=np.float32)
    assert np.array_equal(handoff, first.latents)
    second = Run(refiner, refiner_tap, image=torch.from_numpy(handoff.copy()), denoising_start=HANDOFF,
                 aesthetic_score=6.0, negative_aesthetic_score=2.5, output_type="np", **common)
    record = base_record(name, "tiny-sdxl", scheduler, cls, steps, guidance, negative, SIZE, SIZE, description)
    record.update(
        {
            "refiner": "tiny-sdxl-refiner",
            "denoising_end": HANDOFF,
            "refiner_start": HANDOFF,
            "aesthetic_score": 6.0,
            "negative_aesthetic_score": 2.5,
            "force_zeros_for_empty_prompt": base.config.force_zeros_for_empty_prompt,
            "refiner_force_zeros_for_empty_prompt": refiner.config.force_zeros_for_empty_prompt,
        }
    )
    files = {}
    WRITER.save(files, name, "initial", latents0.numpy().astype(np.float32))
    WRITER.save(files, name, "handoff", handoff)
    WRITER.save(files, name, "latents", second.latents)
    WRITER.save(files, name, "pixels", pixels_of(second.images))
    if first.noise:
        WRITER.save(files, name, "noise", np.stack(first.noise))
    if second.noise:
        WRITER.save(files, name, "refiner_noise", np.stack(second.noise))
    values = save_conditioning(files, name, first.first, guidance > 1)
    record.update(time_ids_record(values))
    refiner_values = save_conditioning(files, name, second.first, guidance > 1, prefix="refiner_")
    record.update({"refiner_" + k: v for k, v in time_ids_record(refiner_values).items()})
    record.update(
        {
            "dtype": "float32",
            "unet_calls": len(first.timesteps),
            "timesteps": first.timesteps,
            "noise_draws": len(first.noise),
            "refiner_unet_calls": len(second.timesteps),
            "refiner_timesteps": second.timesteps,
            "refiner_noise_draws": len(second.noise),
            "files": files,
        }
    )
    cases.append(record)
    print(f"{name}: {len(first.timesteps)} + {len(second.timesteps)} UNet calls, "
          f"{len(first.noise)} + {len(second.noise)} noise draws")


def run_lcm(cases, name, description, steps, guidance=LCM_GUIDANCE):
    """ORTLatentConsistencyModelPipeline: guidance only through timestep_cond, no unconditional batch."""
    pipe, base_config, tap = PIPES.get("tiny-lcm")
    cls, _ = set_scheduler(pipe, base_config, "lcm")
    shape = (4, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor)
    latents0 = gp.initial_latents(SEEDS, shape)
    run = Run(pipe, tap, prompt=PROMPT, num_images_per_prompt=len(SEEDS), num_inference_steps=steps,
              guidance_scale=guidance, width=SIZE, height=SIZE, latents=latents0.clone(),
              generator=generators_after_initial(shape), output_type="np")
    record = base_record(name, "tiny-lcm", "lcm", cls, steps, guidance, None, SIZE, SIZE, description)
    record["w"] = guidance - 1.0
    files = {}
    WRITER.save(files, name, "initial", latents0.numpy().astype(np.float32))
    WRITER.save(files, name, "latents", run.latents)
    WRITER.save(files, name, "pixels", pixels_of(run.images))
    if run.noise:
        WRITER.save(files, name, "noise", np.stack(run.noise))
    save_conditioning(files, name, run.first, cfg=False)
    record.update(
        {
            "dtype": "float32",
            "unet_calls": len(run.timesteps),
            "timesteps": run.timesteps,
            "noise_draws": len(run.noise),
            "files": files,
        }
    )
    cases.append(record)
    print(f"{name}: {len(run.timesteps)} UNet calls, {len(run.noise)} noise draws")


def model_facts(model):
    """What a folder says about itself (so the Rust tests need not re-derive it)."""
    pipe, config, _ = PIPES.get(model)
    facts = {
        "pipeline": type(pipe).__name__.removeprefix("ORT"),
        "scheduler_config": {k: v for k, v in config.items() if not k.startswith("_")},
        "scheduler_class": config["_class_name"],
        "vae_scaling_factor": pipe.vae_decoder.config.scaling_factor,
        "vae_force_upcast": pipe.vae_decoder.config.get("force_upcast"),
        "vae_scale_factor": pipe.vae_scale_factor,
    }
    for key in ("force_zeros_for_empty_prompt", "requires_aesthetics_score"):
        if key in pipe.config:
            facts[key] = pipe.config[key]
    if pipe.unet.config.get("time_cond_proj_dim"):
        facts["time_cond_proj_dim"] = pipe.unet.config.time_cond_proj_dim
    return facts


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.npy"):
        old.unlink()
    torch.set_num_threads(1)
    cases = []
    xl = "tiny-sdxl"
    for scheduler in gp.SCHEDULERS:
        for steps in (1, 4, 20):
            run_xl(cases, f"xl-{scheduler}-{steps}",
                   f"SDXL base, {scheduler} from the folder's Euler config (leading spacing, steps_offset 1), "
                   f"{steps} steps, guidance {GUIDANCE}, no negative prompt: zero negative embeddings "
                   "(force_zeros_for_empty_prompt)", xl, scheduler, steps)
    for scheduler in ("euler", "euler_a", "dpmpp_2m"):
        run_xl(cases, f"xl-{scheduler}-4-noguide",
               f"SDXL base, {scheduler}, guidance 1.0: no unconditional batch (UNet batch = seeds)",
               xl, scheduler, 4, guidance=1.0)
    for scheduler in ("euler", "dpmpp_2m"):
        run_xl(cases, f"xl-{scheduler}-4-negative", f"SDXL base, {scheduler}, negative prompt '{NEGATIVE}'",
               xl, scheduler, 4, negative=NEGATIVE)
    run_xl(cases, "xl-euler-4-nozeros",
           "SDXL base with force_zeros_for_empty_prompt false (model_index.json override; the folder says "
           "true): no negative prompt encodes the empty string '' through both text encoders",
           xl, "euler", 4, force_zeros=False)
    run_xl(cases, "xl-euler-4-w64h48",
           "SDXL base, non-square 64 wide x 48 high (latents 8 x 6): time_ids (48, 64, 0, 0, 48, 64)",
           xl, "euler", 4, width=64, height=48)
    run_xl(cases, "xl-euler_a-4-w48h64", "SDXL base, non-square 48 wide x 64 high (latents 6 x 8), Euler ancestral",
           xl, "euler_a", 4, width=48, height=64)
    run_xl(cases, "xl-euler-4-sizecond",
           "SDXL base with size conditioning: original_size (96, 128), crops_coords_top_left (8, 4), "
           "target_size (64, 64) (height, width order); the negative time ids default to the same values",
           xl, "euler", 4, call_extra={"original_size": (96, 128), "crops_coords_top_left": (8, 4),
                                        "target_size": (64, 64)})
    run_xl(cases, "xl-lcm-4", "SDXL base with the LCM scheduler and CFG (as with LCM-LoRA: no timestep_cond), "
           "guidance 1.5", xl, "lcm", 4, guidance=1.5)
    run_xl(cases, "xl-lcm-1", "SDXL base with the LCM scheduler, 1 step, guidance 1.0 (no unconditional batch)",
           xl, "lcm", 1, guidance=1.0)
    for scheduler, steps in (("euler", 4), ("euler_a", 4), ("dpmpp_2m", 20)):
        run_xl(cases, f"xl16-{scheduler}-{steps}",
               f"tiny-sdxl-fp16 (float16 text encoders, UNet and VAE), {scheduler}, {steps} steps, guidance "
               f"{GUIDANCE}: latents are float16 values (stored as float32); `pixels` decoded by tiny-sdxl's "
               "float32 VAE decoder (a replacement VAE folder), `pixels_fp16_vae` by the folder's own "
               "float16 VAE decoder", "tiny-sdxl-fp16", scheduler, steps, fp16_vae_pixels=True)
    for steps in (1, 4):
        run_xl(cases, f"turbo-euler_a-{steps}",
               f"tiny-sdxl-turbo: the folder's Euler ancestral, trailing spacing, {steps} step(s), guidance 0 "
               "(no unconditional batch)", "tiny-sdxl-turbo", "euler_a", steps, guidance=0.0)
    run_refiner(cases, "refiner-euler-20",
                f"ensemble of experts: tiny-sdxl with denoising_end {HANDOFF} (output_type latent, `handoff`), "
                f"then tiny-sdxl-refiner with denoising_start {HANDOFF} (no noise added), aesthetic scores "
                "6.0 / 2.5, Euler, 20 steps, guidance 5; refiner force_zeros_for_empty_prompt is false, so its "
                "negative is the encoded empty string")
    run_refiner(cases, "refiner-euler_a-10-negative",
                "as refiner-euler-20 with Euler ancestral, 10 steps and a negative prompt; the same "
                "generators continue into the refiner (`refiner_noise`)", scheduler="euler_a", steps=10,
                negative=NEGATIVE)
    for steps in (1, 4, 8):
        run_lcm(cases, f"lcm-lcm-{steps}",
                f"tiny-lcm (LCM-distilled UNet, timestep_cond), LCMScheduler, {steps} step(s), guidance "
                f"{LCM_GUIDANCE} (w {LCM_GUIDANCE - 1}): no unconditional batch; the final `denoised` is decoded",
                steps)
    run_lcm(cases, "lcm-lcm-4-g1", "tiny-lcm, 4 steps, guidance 1.0 (w 0: timestep_cond embeds 0)", 4, guidance=1.0)

    models = {m: model_facts(m) for m in ("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sdxl-fp16", "tiny-sdxl-turbo",
                                          "tiny-lcm")}
    index = {
        "generator": "onnx/golden_sdxl.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "optimum_onnx": importlib.metadata.version("optimum-onnx"),
        "onnxruntime": ort.__version__,
        "notes": [
            "Conditioning files hold one row per prompt ([1, ...]); the UNet gets it repeated for each seed and, "
            "with guidance > 1, concatenated as [negative, positive]. prompt_embeds = concat(text_encoder "
            "hidden_states.2, text_encoder_2 hidden_states.3) (the penultimate hidden states, diffusers' "
            "hidden_states[-2]); pooled_prompt_embeds = text_encoder_2 text_embeds.",
            "negative_prompt_arg is what was passed to diffusers: null means no negative prompt, which with "
            "force_zeros_for_empty_prompt gives zero negative embeddings; diffusers encodes an explicit '' "
            "instead, even with force_zeros_for_empty_prompt.",
            "Float16 cases: latents and conditioning are float16 values stored as float32.",
        ],
        "models": models,
        "cases": cases,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"{len(cases)} cases, {total / 1e6:.2f} MB written to {OUT}")


if __name__ == "__main__":
    main()
