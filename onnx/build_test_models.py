#!/usr/bin/env python3
"""Build the small random-weight ONNX test models committed under onnx/models/.

Every model is the real diffusers / transformers architecture built from a
config (nothing is downloaded from a model hub), initialised from a fixed
torch seed, saved with save_pretrained into a temporary folder and exported
with optimum's ONNX exporter exactly as a user would run
`optimum-cli export onnx --model <folder> --task <task> <out>`.

    onnx/models/tiny-sd/       SD 1.x layout, epsilon prediction, PNDM (SD 1.5 scheduler values)
    onnx/models/tiny-sd-v/     SD 2.x layout, v_prediction, DDIM (SD 2.1 scheduler values)
    onnx/models/tiny-sd-fp16/  tiny-sd's weights exported in float16 (--dtype fp16), unet as external data
    onnx/models/tiny-clip/     transformers CLIPModel, one model.onnx (zero-shot-image-classification)

The tokenizer is a small but real CLIP BPE: the 256 byte tokens, their
`</w>` forms, the first N_MERGES merges of the real CLIP merge list (from the
open_clip package) and the two specials.  A prefix of a BPE merge list is a
valid BPE, and every non-special token keeps the id it has in the full
49,408-token CLIP vocabulary.

Usage (offline; see onnx/README.md):
    onnx/.venv/bin/python onnx/build_test_models.py [--out onnx/models] [--only tiny-sd,...]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import onnx  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "models"

# Number of real CLIP merges kept.  2000 is the smallest round number for which
# "a photo of a cat" tokenizes exactly as with the full CLIP vocabulary
# (49406, 320, 1125, 539, 320, 2368, 49407 there; specials renumbered here).
N_MERGES = 2000

# Real scheduler_config.json contents of the reference checkpoints.  They are
# passed through SchedulerClass.from_config(), as loading the checkpoint does;
# optimum then re-saves the scheduler, which writes every config key (class
# defaults included), so the exported files are what a user's export contains.
SD15_SCHEDULER = {
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
SD21_SCHEDULER = {  # stabilityai/stable-diffusion-2-1 (768, v-prediction)
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,  # PNDM-only key; DDIMScheduler ignores it
    "steps_offset": 1,
    "trained_betas": None,
}

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------- tokenizer


def clip_bpe_files(dest: Path, n_merges: int = N_MERGES) -> tuple[Path, Path]:
    """Write vocab.json / merges.txt of a truncated real CLIP BPE into dest."""
    import open_clip
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    src = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    # Same slice as open_clip and transformers: line 0 is the version header,
    # the usable merges are the next 49152 - 256 - 2 = 48894 lines.
    merges = lines[1 : 49152 - 256 - 2 + 1][:n_merges]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    dest.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = dest / "vocab.json", dest / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def make_tokenizer(workdir: Path, pad_token: str):
    """CLIPTokenizer over the truncated BPE. SD 1.x pads with <|endoftext|>, SD 2.x with '!' (id 0)."""
    from transformers import CLIPTokenizer

    vocab_path, merges_path = clip_bpe_files(workdir / "bpe")
    tok = CLIPTokenizer(
        str(vocab_path),
        str(merges_path),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token=pad_token,
        model_max_length=77,
    )
    ids = tok("a photo of a cat").input_ids
    toks = tok.convert_ids_to_tokens(ids)
    assert toks == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>"], toks
    assert ids[1:-1] == [320, 1125, 539, 320, 2368], ids  # same ids as the full CLIP vocabulary
    return tok


# --------------------------------------------------------------------------- models


def text_config(tok, hidden: int, act: str, layers: int = 2, heads: int = 4, inter: int = 37, proj: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        projection_dim=proj or hidden,  # unused by CLIPTextModel; CLIPModel uses CLIPConfig.projection_dim
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        # Real ids (not SD 1.5's legacy eos_token_id=2): the pooled output is
        # taken at the first <|endoftext|>.  <|endoftext|> is the largest id,
        # so argmax(input_ids) pooling would pick the same position.
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def vae_model(**overrides):
    """The tiny 4-level AutoencoderKL; `overrides` replace config values (e.g. SDXL's scaling_factor)."""
    from diffusers import AutoencoderKL

    # 4 levels -> 3 downsamplings -> VAE scale factor 8, as SD's VAE.
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    return AutoencoderKL(**{**config, **overrides})


def sd_pipeline(variant: str, seed: int, workdir: Path, unet_extra: dict | None = None):
    """Assemble a random-weight StableDiffusionPipeline (variant 'sd1' or 'sd2v').

    `unet_extra` adds or replaces UNet config values (e.g. time_cond_proj_dim for an LCM-distilled UNet)."""
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if variant == "sd1":
        tok = make_tokenizer(workdir, pad_token="<|endoftext|>")
        hidden, act = 32, "quick_gelu"  # OpenAI CLIP ViT-L/14 text tower
        unet_kw = dict(
            sample_size=8,  # 64 px default size
            block_out_channels=(32, 48),  # (32, 64) works too but is 1 MB larger
            norm_num_groups=16,
            attention_head_dim=8,  # SD 1.x: a single int
            use_linear_projection=False,  # SD 1.x: 1x1 conv proj_in/proj_out
        )
        scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    elif variant == "sd2v":
        tok = make_tokenizer(workdir, pad_token="!")
        hidden, act = 48, "gelu"  # OpenCLIP ViT-H text tower uses exact gelu
        unet_kw = dict(
            sample_size=12,  # 96 px default size (SD 2.1 768: 96 latent)
            block_out_channels=(16, 32),
            norm_num_groups=8,
            attention_head_dim=(2, 4),  # SD 2.x: one value per block
            use_linear_projection=True,  # SD 2.x: Linear proj_in/proj_out
            upcast_attention=True,  # as SD 2.1 768-v's unet/config.json
        )
        scheduler = DDIMScheduler.from_config(SD21_SCHEDULER)
    else:
        raise ValueError(variant)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        **{**unet_kw, **(unet_extra or {})},
    )
    torch.manual_seed(seed + 1)
    vae = vae_model()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(tok, hidden, act))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def clip_model(seed: int, workdir: Path):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tok = make_tokenizer(workdir, pad_token="<|endoftext|>")
    tcfg = text_config(tok, 32, "quick_gelu", proj=16)
    vcfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=224,
        patch_size=32,  # ViT-B/32 geometry: 7x7 patches + class token
        hidden_act="quick_gelu",
    )
    cfg = CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    return model, CLIPProcessor(image_processor=openai_clip_image_processor(224), tokenizer=tok)


def openai_clip_image_processor(size: int):
    """OpenAI CLIP's preprocessing at `size` px: bicubic resize of the short side, centre crop,
    /255, OpenAI mean and std (the preprocessor_config.json of openai/clip-vit-*)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )


# --------------------------------------------------------------------------- export


def optimum_export(src: Path, out: Path, task: str, **kwargs):
    """The Python equivalent of `optimum-cli export onnx --model <src> --task <task> [...] <out>`.

    Run from src's parent with a relative model path, so the configs' recorded
    `_name_or_path` is the bare folder name (e.g. "tiny-sd") rather than a
    random temp path: the exported files are then byte-for-byte reproducible.
    """
    from optimum.exporters.onnx import main_export

    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    cwd = os.getcwd()
    os.chdir(src.parent)
    try:
        main_export(src.name, str(out), task=task, device="cpu", local_files_only=True, **kwargs)
    finally:
        os.chdir(cwd)


def keep_pytorch(src: Path, keep: Path | None):
    if keep is not None:
        dst = keep.resolve() / src.name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        log(f"[{src.name}] PyTorch folder kept in {dst}")


def unet_to_external_data(folder: Path):
    """Re-save unet/model.onnx as model.onnx + model.onnx_data (the >2 GB layout)."""
    path = folder / "unet" / "model.onnx"
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=0,
        convert_attribute=False,
    )


def build_sd(
    name: str,
    variant: str,
    seed: int,
    out_root: Path,
    keep: Path | None = None,
    fp32: bool = True,
    fp16_name: str | None = None,
):
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        tmp = Path(tmp)
        pipe = sd_pipeline(variant, seed, tmp / "work")
        pipe.save_pretrained(tmp / name)
        keep_pytorch(tmp / name, keep)
        if fp32:
            log(f"[{name}] exporting with optimum (text-to-image)")
            optimum_export(tmp / name, out_root / name, "text-to-image")
        if fp16_name:
            # = optimum-cli export onnx --model tiny-sd --task text-to-image --dtype fp16 --atol 0.1 <out>
            # optimum 2.1 / torch 2.15 trace float16 on the CPU fine (no GPU needed).  The
            # validation compares ORT and torch, both in float16; its default atol (1e-5)
            # fails there (max diff about 0.02 on the VAE decoder), hence atol 0.1.
            log(f"[{fp16_name}] exporting with optimum (text-to-image, --dtype fp16)")
            optimum_export(tmp / name, out_root / fp16_name, "text-to-image", dtype="fp16", atol=0.1)
            unet_to_external_data(out_root / fp16_name)
            log(f"[{fp16_name}] unet re-saved as model.onnx + model.onnx_data")


def build_clip(name: str, seed: int, out_root: Path, keep: Path | None = None):
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        tmp = Path(tmp)
        model, processor = clip_model(seed, tmp / "work")
        model.save_pretrained(tmp / name)
        processor.save_pretrained(tmp / name)
        keep_pytorch(tmp / name, keep)
        log(f"[{name}] exporting with optimum (zero-shot-image-classification)")
        optimum_export(tmp / name, out_root / name, "zero-shot-image-classification")


# --------------------------------------------------------------------------- main


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: onnx/models)")
    ap.add_argument("--only", default="tiny-sd,tiny-sd-v,tiny-sd-fp16,tiny-clip", help="comma-separated subset")
    ap.add_argument(
        "--keep-pytorch",
        type=Path,
        default=None,
        metavar="DIR",
        help="also keep the PyTorch save_pretrained folders (DIR/tiny-sd, ...), e.g. for golden outputs "
        "with diffusers or to re-export them with optimum-cli (not committed)",
    )
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)

    if only & {"tiny-sd", "tiny-sd-fp16"}:
        build_sd(
            "tiny-sd",
            "sd1",
            seed=0,
            out_root=out,
            keep=args.keep_pytorch,
            fp32="tiny-sd" in only,
            fp16_name="tiny-sd-fp16" if "tiny-sd-fp16" in only else None,
        )
    if "tiny-sd-v" in only:
        build_sd("tiny-sd-v", "sd2v", seed=100, out_root=out, keep=args.keep_pytorch)
    if "tiny-clip" in only:
        build_clip("tiny-clip", seed=200, out_root=out, keep=args.keep_pytorch)

    total = 0
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        size = folder_size(d)
        total += size
        log(f"{d.name:14s} {size / 1e6:7.2f} MB")
        for f in sorted(d.rglob("*.onnx*")):
            h = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            log(f"    {str(f.relative_to(d)):28s} {f.stat().st_size:>9d} B  sha256 {h}")
    log(f"{'total':14s} {total / 1e6:7.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
