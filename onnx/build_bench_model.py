#!/usr/bin/env python3
"""Build the mid-size random-weight benchmark model (not committed).

    local/models/mid-sd/   SD 1.x architecture (4-level UNet with cross-attention, 4-level VAE,
                           CLIP text encoder), about a fifth of SD 1.5's channel widths

It sits between the committed tiny models (UNet 1.4 M parameters) and full SD 1.5 (UNet 860 M):
the UNet has SD 1.5's block layout (CrossAttnDownBlock2D x3 + DownBlock2D, two layers per block,
8 attention heads, a mid block with cross-attention) with block_out_channels (48, 96, 192, 192)
instead of (320, 640, 1280, 1280): 19.9 M parameters (80 MB). The VAE has SD's layout with
widths (24, 48, 96, 96) instead of (128, 256, 512, 512) (3.0 M, decoder 1.7 M); the text encoder
is a 4-layer CLIP text model of width 256 (3.8 M). On 2 CPU cores (onnxruntime 1.31.1, 2 intra-op
threads) a UNet call at 256x256 (32x32 latent) takes about 0.39 s at batch 2 (one image with
guidance), and the VAE decodes a 256x256 image in about 0.39 s: the same proportions as SD 1.5,
where 20 guided steps cost about ten VAE decodes.

Everything is built from configs with fixed seeds (nothing is downloaded), saved with
save_pretrained and exported with optimum exactly as onnx/build_test_models.py does (its
tokenizer, text config and export helpers are imported, not copied). Same scheduler as tiny-sd:
SD 1.5's PNDM configuration.

Usage (offline; about a minute on 2 cores):
    onnx/.venv/bin/python onnx/build_bench_model.py [--out local/models] [--name mid-sd]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_test_models as btm  # noqa: E402  (sets the offline environment variables)
import torch  # noqa: E402

DEFAULT_OUT = HERE.parent / "local" / "models"
SEED = 300


def mid_pipeline(workdir: Path):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tok = btm.make_tokenizer(workdir, pad_token="<|endoftext|>")
    hidden = 256
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=32,  # 256 px default size
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(48, 96, 192, 192),
        norm_num_groups=16,
        attention_head_dim=8,  # SD 1.x: a single int (8 heads)
        use_linear_projection=False,
        cross_attention_dim=hidden,
    )
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(24, 48, 96, 96),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=24,
        sample_size=256,
        scaling_factor=0.18215,
    )
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(btm.text_config(tok, hidden, "quick_gelu", layers=4, heads=4, inter=1024))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=PNDMScheduler.from_config(btm.SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: local/models)")
    ap.add_argument("--name", default="mid-sd", help="model folder name (default: mid-sd)")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory(prefix=f"{args.name}-") as tmp:
        tmp = Path(tmp)
        pipe = mid_pipeline(tmp / "work")
        btm.log(
            f"[{args.name}] parameters: unet {params(pipe.unet) / 1e6:.1f} M, "
            f"vae {params(pipe.vae) / 1e6:.1f} M (decoder {params(pipe.vae.decoder) / 1e6:.1f} M), "
            f"text encoder {params(pipe.text_encoder) / 1e6:.1f} M"
        )
        pipe.save_pretrained(tmp / args.name)
        btm.log(f"[{args.name}] exporting with optimum (text-to-image)")
        btm.optimum_export(tmp / args.name, out / args.name, "text-to-image")
    folder = out / args.name
    btm.log(f"{folder}  {btm.folder_size(folder) / 1e6:.1f} MB")
    for f in sorted(folder.rglob("*.onnx*")):
        h = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        btm.log(f"    {str(f.relative_to(folder)):28s} {f.stat().st_size:>10d} B  sha256 {h}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
