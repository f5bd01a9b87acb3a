#!/usr/bin/env python3
"""Golden files for the Rust schedulers (src/scheduler), produced by diffusers itself.

Run from the repository root with the reference venv:

    onnx/.venv/bin/python onnx/golden_schedulers.py

It writes tests/golden/schedulers/: index.json (every case and the config it used),
init_latents.npy, noise_bank.npy, alphas_cumprod.npy and one cases/<name>.npy per case.
tests/scheduler_parity.rs replays every case in Rust and compares.

Each case runs the whole denoising loop of a diffusers scheduler class (built with
`from_config`, as pipelines do) with a deterministic synthetic "model" in place of the UNet:

    a = f32(0.3 * cos(t / 300))
    b = f32(0.25 + 0.1 * sin(t / 170))
    p[i] = f32(0.2 * sin(i / 7 + t / 100))      (i = flat element index)
    model(x, t) = x * a + (x / (1 + x * x)) * b + p      (element-wise, float32)

where x is the scaled model input and t the timestep the UNet would receive. The
initial latents are init_latents * init_noise_sigma (float32, like the pipelines).
Stochastic steps (DDIM eta > 0, Euler ancestral, DDPM) get their noise from
noise_bank.npy: the k-th noise draw of a run uses noise_bank[k]. diffusers' own draws
are intercepted by replacing `randn_tensor` in each scheduler module, so the golden
file also records which steps draw noise.

Per case, cases/<name>.npy holds a [3, 2, 4, 8, 8] float32 array: the scaled model
input of the first UNet call, the latents after the first step, the final latents.

LCMScheduler (issue 18) is written apart, to lcm.json and lcm/<name>.npy, with the same initial
latents, noise bank and synthetic model: lcm/<name>.npy is [steps, 2, 2, 4, 8, 8], per step the
`denoised` prediction (what the LCM pipeline decodes after the last step) and `prev_sample`
(the next step's input: denoised re-noised to the next timestep with a fresh noise draw, or
denoised itself after the last step). LCMScheduler's scale_model_input is the identity and its
init_noise_sigma 1, so the first model input is init_latents.
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

import diffusers
from diffusers import (
    DDIMScheduler,
    LCMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import (
    scheduling_ddim,
    scheduling_ddpm,
    scheduling_dpmsolver_multistep,
    scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
    scheduling_lcm,
    scheduling_lms_discrete,
    scheduling_pndm,
    scheduling_unipc_multistep,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "schedulers"
SHAPE = (2, 4, 8, 8)
STEPS = (1, 7, 20)
MAX_NOISE_DRAWS = 20

# SD 1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5), used with every class.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# SD 2.1-768's scheduler_config.json (v-prediction).
SD21V = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def sd15(**kw):
    return {**SD15, **kw}


def sd21v(**kw):
    return {**SD21V, **kw}


CLASSES = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": DPMSolverMultistepScheduler,
    "ddpm": DDPMScheduler,
    "unipc": UniPCMultistepScheduler,
}
# What a scheduler name forces on top of the config (the Rust side does the same).
KIND_OVERRIDES = {"dpmpp_2m_karras": {"use_karras_sigmas": True}}

# Why the zero-SNR Euler cases get the pipeline's 1e-4 instead of 1e-5: with zero terminal SNR
# the largest sigma is sqrt(2**24 - 1), 2e-11 below a float32 rounding tie. torch's CPU sqrt
# (MKL, not correctly rounded) gives 4096.0, IEEE sqrt 4095.99976; the first Euler step then
# subtracts two numbers of size ~4096 to get an O(1) result, which turns that 1-ulp difference
# into ~2e-5. (With sigma_max forced to 4096.0 the Rust port agrees to 3e-7.)
ZSNR_WHY = (
    "zero-SNR sigma_max = sqrt(2^24 - 1) is 2e-11 from a float32 rounding tie: torch's CPU sqrt "
    "gives 4096.0, IEEE sqrt 4095.99976, and the first Euler step cancels values of size 4096"
)

# (case prefix, kind, config, extra) -- extra: {"eta": float} for DDIM, {"steps": [...]},
# {"tolerance": float, "why": str} to loosen the relative L2 tolerance of one config.
CONFIGS = [
    # DDIM
    ("ddim_sd15", "ddim", sd15(), {}),
    ("ddim_sd15_eta05", "ddim", sd15(), {"eta": 0.5}),
    ("ddim_sd21v", "ddim", sd21v(), {}),
    ("ddim_sd15_trailing", "ddim", sd15(timestep_spacing="trailing"), {}),
    ("ddim_sd15_linspace", "ddim", sd15(timestep_spacing="linspace"), {}),
    ("ddim_defaults", "ddim", {}, {}),  # linear betas, clip_sample true, set_alpha_to_one true
    (
        "ddim_zsnr_v_trailing_eta03",
        "ddim",
        sd21v(rescale_betas_zero_snr=True, timestep_spacing="trailing"),
        {"eta": 0.3},
    ),
    (
        "ddim_sample_clip05",
        "ddim",
        sd15(prediction_type="sample", clip_sample=True, clip_sample_range=0.5),
        {},
    ),
    ("ddim_cosine", "ddim", {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False}, {}),
    # PNDM
    ("pndm_sd15", "pndm", sd15(), {}),
    ("pndm_sd15_prk", "pndm", sd15(skip_prk_steps=False), {"steps": [7, 20]}),
    ("pndm_sd21v", "pndm", sd21v(), {}),
    ("pndm_sd15_linspace", "pndm", sd15(timestep_spacing="linspace"), {}),
    ("pndm_sd15_trailing", "pndm", sd15(timestep_spacing="trailing"), {}),
    ("pndm_defaults_prk", "pndm", {}, {"steps": [7, 20]}),  # linear, PRK warm-up
    # LMS
    ("lms_sd15", "lms", sd15(), {}),
    ("lms_sd21v", "lms", sd21v(), {}),
    ("lms_sd15_leading", "lms", sd15(timestep_spacing="leading"), {}),
    ("lms_sd15_trailing", "lms", sd15(timestep_spacing="trailing"), {}),
    ("lms_defaults", "lms", {}, {}),
    ("lms_sd15_karras", "lms", sd15(use_karras_sigmas=True), {}),
    ("lms_sample", "lms", sd15(prediction_type="sample"), {}),
    # Euler
    ("euler_sd15", "euler", sd15(), {}),
    ("euler_sd21v", "euler", sd21v(), {}),
    ("euler_sd15_leading", "euler", sd15(timestep_spacing="leading"), {}),
    # 61 trailing steps: np.arange's float length gives 62 timesteps, the last one -1.
    ("euler_sd15_trailing", "euler", sd15(timestep_spacing="trailing"), {"steps": [1, 7, 20, 61]}),
    ("euler_defaults", "euler", {}, {}),
    ("euler_sd15_karras", "euler", sd15(use_karras_sigmas=True), {}),
    (
        "euler_sd15_karras_sigma_range",
        "euler",
        sd15(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0),
        {},
    ),
    ("euler_sd15_final_sigma_min", "euler", sd15(final_sigmas_type="sigma_min"), {}),
    ("euler_sd21v_continuous", "euler", sd21v(timestep_type="continuous"), {}),
    (
        "euler_zsnr_v_trailing",
        "euler",
        sd21v(rescale_betas_zero_snr=True, timestep_spacing="trailing"),
        {"tolerance": 1e-4, "why": ZSNR_WHY},
    ),
    ("euler_sample", "euler", sd15(prediction_type="sample"), {}),
    # Euler ancestral
    ("euler_a_sd15", "euler_a", sd15(), {}),
    ("euler_a_sd21v", "euler_a", sd21v(), {}),
    ("euler_a_sd15_leading", "euler_a", sd15(timestep_spacing="leading"), {}),
    ("euler_a_sd15_trailing", "euler_a", sd15(timestep_spacing="trailing"), {}),
    ("euler_a_defaults", "euler_a", {}, {}),
    (
        "euler_a_zsnr_v_trailing",
        "euler_a",
        sd21v(rescale_betas_zero_snr=True, timestep_spacing="trailing"),
        {"tolerance": 1e-4, "why": ZSNR_WHY},
    ),
    # DPM-Solver++ (multistep)
    ("dpmpp_2m_sd15", "dpmpp_2m", sd15(), {}),
    ("dpmpp_2m_karras_sd15", "dpmpp_2m_karras", sd15(), {}),
    ("dpmpp_2m_sd21v", "dpmpp_2m", sd21v(), {}),
    ("dpmpp_2m_karras_sd21v", "dpmpp_2m_karras", sd21v(), {}),
    ("dpmpp_2m_sd15_leading", "dpmpp_2m", sd15(timestep_spacing="leading"), {}),
    ("dpmpp_2m_sd15_trailing", "dpmpp_2m", sd15(timestep_spacing="trailing"), {"steps": [1, 7, 20, 61]}),
    ("dpmpp_2m_defaults", "dpmpp_2m", {}, {}),
    ("dpmpp_2m_sd15_final_sigma_min", "dpmpp_2m", sd15(final_sigmas_type="sigma_min"), {}),
    (
        "dpmpp_2m_karras_sd15_no_lower_order_final_sigma_min",
        "dpmpp_2m_karras",
        sd15(lower_order_final=False, final_sigmas_type="sigma_min"),
        {},
    ),
    ("dpmpp_2m_sd15_euler_at_final", "dpmpp_2m", sd15(euler_at_final=True), {}),
    ("dpmpp_2m_sd15_lambda_clipped", "dpmpp_2m", sd15(lambda_min_clipped=-2.0), {}),
    ("dpmpp_2m_karras_sd15_sigma_min", "dpmpp_2m_karras", sd15(sigma_min=0.05), {}),
    ("dpmpp_3m_heun_sd15", "dpmpp_2m", sd15(solver_order=3, solver_type="heun"), {}),
    ("dpmpp_2m_cosine", "dpmpp_2m", {"beta_schedule": "squaredcos_cap_v2"}, {}),
    ("dpmpp_2m_sample", "dpmpp_2m", sd15(prediction_type="sample"), {}),
    (
        "dpmpp_2m_zsnr_v_trailing",
        "dpmpp_2m",
        sd21v(rescale_betas_zero_snr=True, timestep_spacing="trailing"),
        {},
    ),
    # DDPM
    ("ddpm_sd15", "ddpm", sd15(), {}),
    ("ddpm_sd21v", "ddpm", sd21v(), {}),
    ("ddpm_defaults", "ddpm", {}, {}),  # linear, clip_sample true
    ("ddpm_sd15_linspace", "ddpm", sd15(timestep_spacing="linspace"), {}),
    ("ddpm_sd15_trailing", "ddpm", sd15(timestep_spacing="trailing"), {}),
    ("ddpm_sd15_fixed_small_log", "ddpm", sd15(variance_type="fixed_small_log"), {}),
    ("ddpm_sd15_fixed_large", "ddpm", sd15(variance_type="fixed_large"), {}),
    # UniPC
    ("unipc_sd15", "unipc", sd15(), {}),
    ("unipc_sd21v", "unipc", sd21v(), {}),
    ("unipc_sd15_karras", "unipc", sd15(use_karras_sigmas=True), {}),
    ("unipc_sd15_leading", "unipc", sd15(timestep_spacing="leading"), {}),
    ("unipc_sd15_trailing", "unipc", sd15(timestep_spacing="trailing"), {}),
    ("unipc_defaults", "unipc", {}, {}),
    ("unipc_sd15_bh1_sigma_min", "unipc", sd15(solver_type="bh1", final_sigmas_type="sigma_min"), {}),
    ("unipc_sd15_order3", "unipc", sd15(solver_order=3), {}),
    ("unipc_sd15_noise_pred_sigma_min", "unipc", sd15(predict_x0=False, final_sigmas_type="sigma_min"), {}),
    ("unipc_sd15_disable_corrector", "unipc", sd15(disable_corrector=[0, 2]), {}),
    ("unipc_sd15_final_sigma_min", "unipc", sd15(final_sigmas_type="sigma_min"), {}),
]

# SDXL base's scheduler_config.json (stabilityai/stable-diffusion-xl-base-1.0).
SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# LCMScheduler cases: (case prefix, config). LCM-LoRA users build it with
# LCMScheduler.from_config(pipe.scheduler.config), hence the SD 1.5 / SDXL / SD 2.1 ones.
LCM_CONFIGS = [
    ("lcm_defaults", {}),  # the class defaults: SD betas, original_inference_steps 50, timestep_scaling 10
    ("lcm_sd15", sd15()),
    ("lcm_sdxl", SDXL),
    ("lcm_sd21v", sd21v()),  # v_prediction
    ("lcm_sample_clip05", {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.5}),
    # zero terminal SNR needs v-prediction (epsilon divides by sqrt(alphas_cumprod[999]) = 0)
    ("lcm_v_zsnr_orig25_scaling5", sd21v(rescale_betas_zero_snr=True, original_inference_steps=25, timestep_scaling=5.0)),
]
LCM_STEPS = (1, 3, 4, 8)

# One add_noise golden per scheduler: (name, kind, config, steps, step_index).
ADD_NOISE = [
    ("add_noise_ddim", "ddim", sd15(), 20, 5),
    ("add_noise_pndm", "pndm", sd15(), 20, 6),
    ("add_noise_lms", "lms", sd15(), 20, 5),
    ("add_noise_euler", "euler", sd15(), 20, 5),
    ("add_noise_euler_a", "euler_a", sd15(), 20, 5),
    ("add_noise_dpmpp_2m_karras", "dpmpp_2m_karras", sd15(), 20, 5),
    ("add_noise_ddpm", "ddpm", sd15(), 20, 5),
    ("add_noise_unipc", "unipc", sd15(), 20, 5),
]

# alphas_cumprod of the beta schedules, for the Rust unit test of the beta tables.
SCHEDULES = [
    ("scaled_linear", DDIMScheduler, sd15()),
    ("linear", DDIMScheduler, {}),
    ("squaredcos_cap_v2", DDIMScheduler, {"beta_schedule": "squaredcos_cap_v2"}),
    ("scaled_linear_zero_snr", DDIMScheduler, sd15(rescale_betas_zero_snr=True)),
]


def synthetic_model(x: np.ndarray, t: float) -> np.ndarray:
    """The stand-in for the UNet, in float32 (see the module docstring)."""
    assert x.dtype == np.float32
    a = np.float32(0.3 * math.cos(t / 300.0))
    b = np.float32(0.25 + 0.1 * math.sin(t / 170.0))
    p = np.array(
        [0.2 * math.sin(i / 7.0 + t / 100.0) for i in range(x.size)], dtype=np.float64
    ).astype(np.float32)
    p = p.reshape(x.shape)
    one = np.float32(1.0)
    return x * a + (x / (one + x * x)) * b + p


class NoiseFeeder:
    """Replaces diffusers' randn_tensor: hands out noise_bank[k] for the k-th draw."""

    def __init__(self, bank):
        self.bank = bank
        self.draws = 0
        self.current_step = None
        self.steps = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == SHAPE, shape
        assert self.draws < len(self.bank), "noise bank exhausted"
        self.steps.append(self.current_step)
        noise = torch.from_numpy(self.bank[self.draws].copy())
        self.draws += 1
        return noise.to(dtype or torch.float32)


NOISE_MODULES = [
    scheduling_ddim,
    scheduling_ddpm,
    scheduling_dpmsolver_multistep,
    scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
    scheduling_lms_discrete,
    scheduling_pndm,
    scheduling_unipc_multistep,
    scheduling_lcm,
]


def install_feeder(feeder):
    for module in NOISE_MODULES:
        if hasattr(module, "randn_tensor"):
            module.randn_tensor = feeder


def make_scheduler(kind, config):
    cls = CLASSES[kind]
    cfg = {**config, **KIND_OVERRIDES.get(kind, {})}
    return cls.from_config(cfg)


def as_float(t) -> float:
    return float(t.item()) if isinstance(t, torch.Tensor) else float(t)


def run_case(kind, config, steps, extra, init, bank):
    sched = make_scheduler(kind, config)
    sched.set_timesteps(steps)
    timesteps = [as_float(t) for t in sched.timesteps]
    sigma = sched.init_noise_sigma
    init_sigma = as_float(sigma)
    latents = torch.from_numpy(init.copy()) * sigma
    assert latents.dtype == torch.float32
    feeder = NoiseFeeder(bank)
    install_feeder(feeder)
    first_input = after_first = None
    step_kwargs = {"eta": extra["eta"]} if "eta" in extra else {}
    for i, t in enumerate(sched.timesteps):
        feeder.current_step = i
        model_input = sched.scale_model_input(latents, t)
        if i == 0:
            first_input = model_input.numpy().copy()
        out = torch.from_numpy(synthetic_model(model_input.numpy(), as_float(t)))
        latents = sched.step(out, t, latents, **step_kwargs).prev_sample
        assert latents.dtype == torch.float32, latents.dtype
        if i == 0:
            after_first = latents.numpy().copy()
    final = latents.numpy().copy()
    for arr in (first_input, after_first, final):
        assert np.all(np.isfinite(arr)), "non-finite values"
    return {
        "timesteps": timesteps,
        "init_noise_sigma": init_sigma,
        "noise_steps": feeder.steps,
        "arrays": np.stack([first_input, after_first, final]).astype(np.float32),
    }


def run_lcm_case(config, steps, init, bank):
    """The LCM loop of LatentConsistencyModelPipeline with the synthetic model: per step the
    denoised prediction and the next sample, plus the boundary-condition scalings."""
    sched = LCMScheduler.from_config(config)
    sched.set_timesteps(steps)
    latents = torch.from_numpy(init.copy()) * sched.init_noise_sigma
    feeder = NoiseFeeder(bank)
    install_feeder(feeder)
    per_step, scalings = [], []
    for i, t in enumerate(sched.timesteps):
        feeder.current_step = i
        model_input = sched.scale_model_input(latents, t)
        assert torch.equal(model_input, latents)
        out = torch.from_numpy(synthetic_model(model_input.numpy(), as_float(t)))
        c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(t)
        scalings.append([as_float(c_skip), as_float(c_out)])
        latents, denoised = sched.step(out, t, latents, return_dict=False)
        assert latents.dtype == torch.float32 and denoised.dtype == torch.float32
        per_step.append(np.stack([denoised.numpy(), latents.numpy()]))
    arrays = np.stack(per_step).astype(np.float32)
    assert np.all(np.isfinite(arrays)), "non-finite values"
    assert np.array_equal(arrays[-1, 0], arrays[-1, 1]), "the last step returns denoised"
    return {
        "timesteps": [as_float(t) for t in sched.timesteps],
        "init_noise_sigma": as_float(sched.init_noise_sigma),
        "noise_steps": feeder.steps,
        "scalings": scalings,
        "arrays": arrays,
    }


def write_lcm(init, bank):
    """lcm.json and lcm/<name>.npy (see the module docstring)."""
    lcm_dir = OUT / "lcm"
    lcm_dir.mkdir(exist_ok=True)
    for old in lcm_dir.glob("*.npy"):
        old.unlink()
    cases = []
    for prefix, config in LCM_CONFIGS:
        for steps in LCM_STEPS:
            name = f"{prefix}_{steps}"
            result = run_lcm_case(config, steps, init, bank)
            file = f"lcm/{name}.npy"
            np.save(OUT / file, result["arrays"])
            cases.append(
                {
                    "name": name,
                    "kind": "lcm",
                    "class_name": "LCMScheduler",
                    "config": config,
                    "steps": steps,
                    "timesteps": result["timesteps"],
                    "init_noise_sigma": result["init_noise_sigma"],
                    "noise_steps": result["noise_steps"],
                    "scalings_c_skip_c_out": result["scalings"],
                    "file": file,
                }
            )
            print(f"{name}: timesteps {result['timesteps']}, noise draws {len(result['noise_steps'])}")
    index = {
        "generator": "onnx/golden_schedulers.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "shape": list(SHAPE),
        "init_latents": "init_latents.npy",
        "noise_bank": "noise_bank.npy",
        "arrays": "per step: [denoised, prev_sample], each of `shape`; the k-th noise draw is noise_bank[k]",
        "cases": cases,
    }
    with open(OUT / "lcm.json", "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    return len(cases)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases_dir = OUT / "cases"
    cases_dir.mkdir(exist_ok=True)
    for old in cases_dir.glob("*.npy"):
        old.unlink()

    init = np.random.default_rng(20_260_001).standard_normal(SHAPE, dtype=np.float32)
    bank = np.random.default_rng(20_260_002).standard_normal(
        (MAX_NOISE_DRAWS,) + SHAPE, dtype=np.float32
    )
    np.save(OUT / "init_latents.npy", init)
    np.save(OUT / "noise_bank.npy", bank)

    cases = []
    for prefix, kind, config, extra in CONFIGS:
        for steps in extra.get("steps", STEPS):
            name = f"{prefix}_{steps}"
            result = run_case(kind, config, steps, extra, init, bank)
            file = f"cases/{name}.npy"
            np.save(OUT / file, result["arrays"])
            case = {
                "name": name,
                "kind": kind,
                "class_name": CLASSES[kind].__name__,
                "config": config,
                "steps": steps,
                "timesteps": result["timesteps"],
                "init_noise_sigma": result["init_noise_sigma"],
                "noise_steps": result["noise_steps"],
                "file": file,
            }
            if "eta" in extra:
                case["eta"] = extra["eta"]
            if "tolerance" in extra:
                case["tolerance"] = extra["tolerance"]
                case["tolerance_why"] = extra["why"]
            cases.append(case)
            print(f"{name}: {len(result['timesteps'])} calls, noise draws {len(result['noise_steps'])}")

    add_noise = []
    original = init
    noise = bank[1]
    for name, kind, config, steps, step_index in ADD_NOISE:
        sched = make_scheduler(kind, config)
        sched.set_timesteps(steps)
        if hasattr(sched, "set_begin_index"):
            # What img2img pipelines do: the noise level of step `step_index`.
            sched.set_begin_index(step_index)
        t = sched.timesteps[step_index]
        ts = torch.stack([t] * SHAPE[0])
        noisy = sched.add_noise(torch.from_numpy(original.copy()), torch.from_numpy(noise.copy()), ts)
        file = f"cases/{name}.npy"
        np.save(OUT / file, noisy.numpy().astype(np.float32))
        add_noise.append(
            {
                "name": name,
                "kind": kind,
                "class_name": CLASSES[kind].__name__,
                "config": config,
                "steps": steps,
                "step_index": step_index,
                "timestep": as_float(t),
                "file": file,
            }
        )

    tables = []
    for name, cls, config in SCHEDULES:
        tables.append(cls.from_config(config).alphas_cumprod.numpy().astype(np.float32))
    np.save(OUT / "alphas_cumprod.npy", np.stack(tables))

    index = {
        "generator": "onnx/golden_schedulers.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "shape": list(SHAPE),
        "init_latents": "init_latents.npy",
        "noise_bank": "noise_bank.npy",
        "alphas_cumprod": {
            "file": "alphas_cumprod.npy",
            "rows": [{"name": n, "config": c} for n, _, c in SCHEDULES],
        },
        "cases": cases,
        "add_noise": add_noise,
    }
    with open(OUT / "index.json", "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    n_lcm = write_lcm(init, bank)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(cases)} cases, {len(add_noise)} add_noise cases, {n_lcm} LCM cases, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
