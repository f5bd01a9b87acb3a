#!/usr/bin/env python3
"""Build the small random-weight SDXL, SDXL refiner, SDXL-Turbo and LCM test models (issue 18).

Same method as build_test_models.py (whose helpers this script imports): real diffusers /
transformers architectures built from configs (nothing downloaded), initialised from fixed torch
seeds, assembled into the diffusers pipeline, saved with save_pretrained and exported with
optimum's `main_export`, the Python form of `optimum-cli export onnx --task text-to-image`.

    onnx/models/tiny-sdxl/          StableDiffusionXLPipeline: text_encoder + text_encoder_2, UNet with
                                    text_embeds / time_ids [B,6], VAE scaling_factor 0.13025 and
                                    force_upcast, force_zeros_for_empty_prompt, SDXL base scheduler
    onnx/models/tiny-sdxl-refiner/  StableDiffusionXLImg2ImgPipeline as the SDXL refiner: text_encoder_2 only,
                                    requires_aesthetics_score (time_ids [B,5]); same VAE and second text
                                    encoder weights as tiny-sdxl (as the real refiner shares them)
    onnx/models/tiny-sdxl-fp16/     tiny-sdxl's weights exported with --dtype fp16, unet as external data
    onnx/models/tiny-sdxl-turbo/    tiny-sdxl's ONNX files with SDXL-Turbo's scheduler (Euler ancestral,
                                    trailing spacing)
    onnx/models/tiny-lcm/           LatentConsistencyModelPipeline (SD 1.x layout, UNet with time_cond_proj_dim:
                                    the export has `timestep_cond`), LCMScheduler

Usage (offline; see onnx/README.md):
    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/build_sdxl_models.py [--out onnx/models] [--only tiny-sdxl,...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import build_test_models as btm  # sets the offline environment variables and filters warnings
import torch

log = btm.log

ALL = ("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sdxl-fp16", "tiny-sdxl-turbo", "tiny-lcm")

# Real scheduler_config.json files, loaded with from_config as loading the checkpoint does (optimum
# re-saves them with every key of the class).
# stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0 (the two files are the same):
SDXL_SCHEDULER = {
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
# stabilityai/sdxl-turbo:
SDXL_TURBO_SCHEDULER = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
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
    "timestep_spacing": "trailing",
    "trained_betas": None,
}
# LCMScheduler's own defaults, written out: SD betas, 50 original (distillation) steps, timestep
# scaling 10. (LCMScheduler ignores timestep_spacing and steps_offset.)
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_scaling": 10.0,
}

SDXL_SEED = 1000
REFINER_SEED = 1100
LCM_SEED = 1200

# The tiny SDXL geometry (see FACTS.md): two CLIP text towers of different widths, hidden states
# concatenated to CROSS_DIM; the pooled (projected) output of the second one is `text_embeds`.
TE1_HIDDEN, TE1_LAYERS = 32, 3  # CLIP ViT-L/14's text tower in SDXL: 768 wide, 12 layers
TE2_HIDDEN, TE2_LAYERS, TE2_PROJ = 48, 4, 40  # OpenCLIP bigG: 1280, 32 layers, projection 1280
CROSS_DIM = TE1_HIDDEN + TE2_HIDDEN  # 2048 in SDXL
TIME_EMBED = 8  # addition_time_embed_dim, 256 in SDXL
LCM_COND_DIM = 32  # time_cond_proj_dim, 256 in LCM_Dreamshaper_v7


def tokenizers(workdir: Path):
    """SDXL's tokenizer pads with <|endoftext|> (as CLIP ViT-L), tokenizer_2 with '!' (id 0)."""
    return (
        btm.make_tokenizer(workdir / "tok1", pad_token="<|endoftext|>"),
        btm.make_tokenizer(workdir / "tok2", pad_token="!"),
    )


def sdxl_unet(seed: int, cross_dim: int, n_time_ids: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,  # 64 px default size
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # SDXL: no attention at the top level
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim,
        transformer_layers_per_block=1,  # SDXL: (1, 2, 10); one layer each keeps the files small
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=TIME_EMBED * n_time_ids + TE2_PROJ,
    )


def sdxl_pipelines(workdir: Path):
    """The base and the refiner, sharing the VAE and the second text encoder as the real ones do."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok1, tok2 = tokenizers(workdir)
    unet = sdxl_unet(SDXL_SEED, CROSS_DIM, 6)
    torch.manual_seed(SDXL_SEED + 1)
    vae = btm.vae_model(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(SDXL_SEED + 2)
    te1 = CLIPTextModel(btm.text_config(tok1, TE1_HIDDEN, "quick_gelu", layers=TE1_LAYERS))
    torch.manual_seed(SDXL_SEED + 3)
    te2 = CLIPTextModelWithProjection(btm.text_config(tok2, TE2_HIDDEN, "gelu", layers=TE2_LAYERS, proj=TE2_PROJ))
    base = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=te2,
        tokenizer=None,
        tokenizer_2=tok2,
        unet=sdxl_unet(REFINER_SEED, TE2_HIDDEN, 5),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,  # as the real refiner's model_index.json
        add_watermarker=False,
    )
    return base, refiner


def lcm_pipeline(workdir: Path):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    # tiny-sd's architecture with tiny-sd-v's narrower UNet (16, 32) to save bytes, plus the guidance
    # embedding projection of LCM-distilled UNets.
    unet_extra = {"time_cond_proj_dim": LCM_COND_DIM, "block_out_channels": (16, 32), "norm_num_groups": 8}
    sd = btm.sd_pipeline("sd1", LCM_SEED, workdir, unet_extra=unet_extra)
    return LatentConsistencyModelPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        scheduler=LCMScheduler.from_config(LCM_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def turbo_from(base_onnx: Path, out: Path):
    """tiny-sdxl-turbo: SDXL-Turbo's scheduler (saved as optimum saves a scheduler) and tiny-sdxl's
    model_index.json naming that scheduler class; every other part is a relative symlink to tiny-sdxl's folder
    (same weights, no extra bytes in git)."""
    from diffusers import EulerAncestralDiscreteScheduler

    if out.exists() or out.is_symlink():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = json.loads((base_onnx / "model_index.json").read_text())
    index["_name_or_path"] = out.name
    index["scheduler"] = ["diffusers", "EulerAncestralDiscreteScheduler"]
    # as diffusers' ConfigMixin writes it
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for part in sorted(p.name for p in base_onnx.iterdir() if p.is_dir() and p.name != "scheduler"):
        (out / part).symlink_to(Path("..") / base_onnx.name / part, target_is_directory=True)
    EulerAncestralDiscreteScheduler.from_config(SDXL_TURBO_SCHEDULER).save_pretrained(out / "scheduler")


def signatures(folder: Path):
    import onnxruntime as ort

    for path in sorted(folder.rglob("model.onnx")):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        log(f"  {path.relative_to(folder.parent)}")
        for kind, args in (("in ", sess.get_inputs()), ("out", sess.get_outputs())):
            for a in args:
                log(f"    {kind} {a.name:24s} {a.type:16s} {a.shape}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=btm.DEFAULT_OUT, help="output root (default: onnx/models)")
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--keep-pytorch", type=Path, default=None, metavar="DIR", help="also keep the PyTorch folders")
    ap.add_argument("--signatures", action="store_true", help="print every ONNX input and output")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - set(ALL)
    if unknown:
        ap.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    if "tiny-sdxl-turbo" in only and "tiny-sdxl" not in only and not (args.out / "tiny-sdxl").is_dir():
        ap.error("tiny-sdxl-turbo is made from tiny-sdxl: build that too")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)

    with tempfile.TemporaryDirectory(prefix="tiny-sdxl-") as tmp:
        tmp = Path(tmp)
        if only & {"tiny-sdxl", "tiny-sdxl-refiner", "tiny-sdxl-fp16"}:
            base, refiner = sdxl_pipelines(tmp / "work")
            base.save_pretrained(tmp / "tiny-sdxl")
            refiner.save_pretrained(tmp / "tiny-sdxl-refiner")
            for name in ("tiny-sdxl", "tiny-sdxl-refiner"):
                btm.keep_pytorch(tmp / name, args.keep_pytorch)
            if "tiny-sdxl" in only:
                log("[tiny-sdxl] exporting with optimum (text-to-image)")
                btm.optimum_export(tmp / "tiny-sdxl", out / "tiny-sdxl", "text-to-image")
            if "tiny-sdxl-refiner" in only:
                # The refiner is an image-to-image pipeline; text-to-image exports the same parts
                # (the task only picks optimum's pipeline class for validation).
                log("[tiny-sdxl-refiner] exporting with optimum (text-to-image)")
                btm.optimum_export(tmp / "tiny-sdxl-refiner", out / "tiny-sdxl-refiner", "text-to-image")
            if "tiny-sdxl-fp16" in only:
                # = optimum-cli export onnx --model tiny-sdxl --task text-to-image --dtype fp16 --atol 0.1
                # (works on the CPU with these versions; see README "float16").
                log("[tiny-sdxl-fp16] exporting with optimum (text-to-image, --dtype fp16)")
                btm.optimum_export(tmp / "tiny-sdxl", out / "tiny-sdxl-fp16", "text-to-image", dtype="fp16", atol=0.1)
                btm.unet_to_external_data(out / "tiny-sdxl-fp16")
                log("[tiny-sdxl-fp16] unet re-saved as model.onnx + model.onnx_data")
        if "tiny-sdxl-turbo" in only:
            log("[tiny-sdxl-turbo] tiny-sdxl with SDXL-Turbo's scheduler")
            turbo_from(out / "tiny-sdxl", out / "tiny-sdxl-turbo")
        if "tiny-lcm" in only:
            lcm = lcm_pipeline(tmp / "work")
            lcm.save_pretrained(tmp / "tiny-lcm")
            btm.keep_pytorch(tmp / "tiny-lcm", args.keep_pytorch)
            log("[tiny-lcm] exporting with optimum (text-to-image)")
            btm.optimum_export(tmp / "tiny-lcm", out / "tiny-lcm", "text-to-image")

    total = 0
    for name in ALL:
        d = out / name
        if name not in only or not d.is_dir():
            continue
        size = btm.folder_size(d)
        total += size
        links = sorted(f"{q.name} -> {q.readlink()}" for q in d.iterdir() if q.is_symlink())
        log(f"{name:18s} {size / 1e6:7.2f} MB" + (f" + symlinks: {', '.join(links)}" if links else ""))
        for f in sorted(d.rglob("*.onnx*")):
            h = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            log(f"    {str(f.relative_to(d)):28s} {f.stat().st_size:>9d} B  sha256 {h}")
        if args.signatures:
            signatures(d)
        index = json.loads((d / "model_index.json").read_text())
        log(f"    model_index: {index['_class_name']}")
    log(f"{'total':18s} {total / 1e6:7.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
