#!/usr/bin/env python3
"""A random-weight single file of the FULL SD 1.5 architecture, for timing imports (not committed).

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/build_full_checkpoint.py OUT.safetensors [--float32]

SD 1.5's shapes (UNet 860 M parameters: block_out_channels (320, 640, 1280, 1280), 2 layers per block,
8 heads, cross-attention 768; VAE (128, 256, 512, 512); CLIP ViT-L/14 text encoder: 12 layers of 768,
vocabulary 49408) with random weights, written in the single-file layout by
build_checkpoint_fixtures.to_single_file; float16 (about 2.1 GB, as pruned SD 1.5 files are usually
published) unless --float32 (4.3 GB). Nothing is downloaded. About 4.5 GB of memory while it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_checkpoint_fixtures as bcf  # noqa: E402  (sets the offline environment variables)
import torch  # noqa: E402


def sd15_models(seed: int) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=512,
    )
    te = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    )
    return {"unet": unet, "vae": vae, "te": te}


def main(argv=None) -> int:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--float32", action="store_true")
    args = ap.parse_args(argv)
    tensors = bcf.to_single_file("sd15", sd15_models(1500), 1500)
    if not args.float32:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(args.out), metadata={"format": "pt"})
    n = sum(v.numel() for v in tensors.values())
    bcf.log(f"[{args.out.name}] {len(tensors)} tensors, {n / 1e6:.1f} M values, {args.out.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
