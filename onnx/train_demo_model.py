#!/usr/bin/env python3
"""Train the demo model family from scratch on the procedural shapes dataset.

    onnx/models/shapes-sd/    Stable Diffusion layout: text_encoder, unet, vae_decoder,
                              vae_encoder, tokenizer, scheduler (optimum export)
    onnx/models/shapes-clip/  the CLIP image/text model for reranking (optimum export)

Every part of a latent-diffusion system, small enough for a 2-core CPU:

1. data       onnx/shapes_data.py: 64x64 captioned shapes, generated from a seed.
2. tokenizer  a byte-level BPE learnt from the captions, written in CLIP's
              vocab.json / merges.txt format (byte tokens, their </w> forms,
              the merges, <|startoftext|>, <|endoftext|>).
3. clip       transformers CLIPModel (ViT image tower on 8x8 patches, causal
              text transformer, projections), trained with CLIP's symmetric
              cross-entropy and its learned temperature (logit_scale).
4. vae        diffusers AutoencoderKL, three levels = downsampling factor 4,
              4 latent channels, L1 + MSE reconstruction (the shape's pixels
              weighted 5x the background's) + a KL term strong enough to keep
              the latents centred and the decoder tolerant of small latent
              errors; its scaling_factor is 1 / std of the training latents.
5. unet       diffusers UNet2DConditionModel with cross-attention on the CLIP
              text tower's last hidden states (the SD text encoder is that
              tower, frozen) and, as in GLIDE, the same states attention-pooled
              into the timestep embedding; DDPM noise prediction in the VAE's
              latent space with SD 1.5's noise schedule and Min-SNR-5 loss
              weights, 10 % caption dropout (empty caption) so classifier-free
              guidance works, EMA weights.
6. decoder    the VAE decoder fine-tuned longer with the encoder frozen (SD's
              ft-MSE recipe): latents, scaling factor and UNet stay valid.
7. export     StableDiffusionPipeline.save_pretrained + optimum's ONNX export,
              as for any SD checkpoint; CLIPModel + CLIPProcessor likewise.

Stages keep their results in --work (default local/demo-train); a rerun skips
finished stages (--force STAGE,... redoes them), and stops with an error when one
was trained with other settings (its done marker records them).  Deterministic for a seed and a
thread count (torch.use_deterministic_algorithms).  Uses CUDA when available.

    onnx/.venv/bin/python onnx/train_demo_model.py            # everything, about 1 h 40 min on 2 cores
    onnx/.venv/bin/python onnx/check_demo_model.py            # quality figures (README)
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shapes_data as data  # noqa: E402
from build_test_models import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SD15_SCHEDULER, folder_size, openai_clip_image_processor, optimum_export  # noqa: E402

ROOT = HERE.parent
STAGES = ["data", "tokenizer", "clip", "vae", "unet", "decoder", "export"]

MAX_LENGTH = 24  # tokens per prompt, bos and eos included (the longest caption has 15)
HIDDEN = 128  # CLIP width = the UNet's cross_attention_dim


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# --------------------------------------------------------------------------- 1. data


def stage_data(args, work: Path):
    t = time.time()
    images, captions, scenes = data.make_dataset(args.train_size, seed=args.seed, exclude=data.heldout_combos())
    np.save(work / "images.npy", images)
    (work / "captions.json").write_text(json.dumps(captions))
    log(f"[data] {len(captions)} training pairs in {time.time() - t:.0f} s "
        f"({len(set(captions))} distinct captions; {len(data.heldout_combos())} combinations held out)")


def load_data(work: Path):
    return np.load(work / "images.npy"), json.loads((work / "captions.json").read_text())


# --------------------------------------------------------------------------- 2. tokenizer

# CLIP's pre-tokenizer pattern (transformers' CLIPTokenizer, without the specials).
WORD = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\w]+|[^\s\w]+""")


def learn_bpe(captions: list[str], min_count: int = 2) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first (ties: lexicographic), until no pair repeats."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    b2u = bytes_to_unicode()
    freq = collections.Counter(w for c in captions for w in WORD.findall(c.lower()))
    words = {}
    for w, n in freq.items():
        symbols = [b2u[b] for b in w.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] = n
    merges = []
    while True:
        pairs = collections.Counter()
        for syms, n in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_count:
            break
        merges.append(best)
        joined = best[0] + best[1]
        new = {}
        for syms, n in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + n
        words = new
    return merges


def stage_tokenizer(args, work: Path):
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    _, captions = load_data(work)
    merges = learn_bpe(captions + [s.caption() for s in data.heldout_scenes()])
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + [a + b for a, b in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    d = work / "tokenizer"
    d.mkdir(exist_ok=True)
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = load_tokenizer(work)
    for w in data.caption_words():  # every caption word is one token
        ids = tok(w).input_ids
        assert len(ids) == 3, (w, tok.convert_ids_to_tokens(ids))
    longest = max(len(tok(c).input_ids) for c in set(captions))
    assert longest <= MAX_LENGTH, longest
    log(f"[tokenizer] {len(merges)} merges, {len(vocab)} tokens; longest caption {longest} ids")


def load_tokenizer(work: Path):
    from transformers import CLIPTokenizer

    d = work / "tokenizer"
    return CLIPTokenizer(
        str(d / "vocab.json"),
        str(d / "merges.txt"),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # SD 1.x pads with the end token
        model_max_length=MAX_LENGTH,
    )


def token_ids(tok, captions) -> torch.Tensor:
    return torch.tensor(tok(list(captions), padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids)


# --------------------------------------------------------------------------- 3. clip


def clip_config(tok):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=HIDDEN,
    )
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=data.SIZE,
        patch_size=16,  # a 4x4 grid of patches + the class token
        hidden_act="quick_gelu",
        projection_dim=HIDDEN,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=HIDDEN)


def clip_pixels(images_u8: np.ndarray) -> torch.Tensor:
    """CLIPImageProcessor at 64x64 (resize and crop are the identity): /255, OpenAI mean and std."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


_POSITION = re.compile("|".join(data.POSITIONS))
_SHAPE = re.compile("|".join(sorted(data.SHAPES, key=len, reverse=True)))


def hard_negative(caption: str, rng: np.random.Generator) -> str:
    """The caption with its position (or, when it names none, its shape) swapped for another:
    a caption the image does not match that differs from its own in one attribute (NegCLIP's
    hard negatives).  In-batch negatives almost always differ in colour or background already,
    so without these CLIP learns to ignore where the shape is."""
    m = _POSITION.search(caption)
    if m is None or rng.random() < 0.25:
        m, values = _SHAPE.search(caption), data.SHAPES
    else:
        values = data.POSITIONS
    other = [v for v in values if v != m.group(0)]
    return caption[: m.start()] + other[rng.integers(len(other))] + caption[m.end() :]


def stage_clip(args, work: Path, device):
    from transformers import CLIPModel

    images, captions = load_data(work)
    tok = load_tokenizer(work)
    ids_all = token_ids(tok, captions)
    neg_rng = np.random.Generator(np.random.PCG64(args.seed + 3))
    torch.manual_seed(args.seed + 1)
    model = CLIPModel(clip_config(tok)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.clip_lr, weight_decay=0.1, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed + 2)
    n, bs, steps = len(captions), args.clip_batch, args.clip_steps
    t0 = time.time()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.clip_lr, 100)
        out = model(input_ids=ids_all[idx].to(device), pixel_values=clip_pixels(images[idx.numpy()]).to(device), return_loss=True)
        loss = out.loss
        if args.clip_hard_negatives:
            # Image-to-text cross-entropy over the batch's captions plus each image's hard
            # negatives; text-to-image as before.  The same mean of the two as CLIP's loss.
            k = args.clip_hard_negatives
            negs = [hard_negative(captions[i], neg_rng) for i in idx.tolist() for _ in range(k)]
            neg = model.get_text_features(input_ids=token_ids(tok, negs).to(device))
            neg = neg / neg.norm(dim=-1, keepdim=True)
            scale = model.logit_scale.exp()
            per_image_neg = scale * torch.einsum("bd,bkd->bk", out.image_embeds, neg.view(bs, k, -1))
            target = torch.arange(bs, device=device)
            i2t = F.cross_entropy(torch.cat([out.logits_per_image, per_image_neg], dim=1), target)
            t2i = F.cross_entropy(out.logits_per_text, target)
            loss = (i2t + t2i) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            acc = (out.logits_per_image.argmax(1) == torch.arange(bs, device=device)).float().mean()
            log(f"[clip] step {step}/{steps} loss {loss.item():.3f} in-batch top1 {acc:.2f} "
                f"logit_scale {model.logit_scale.exp().item():.1f} ({time.time() - t0:.0f} s)")
    model.eval()
    model.save_pretrained(work / "clip")
    log(f"[clip] done in {time.time() - t0:.0f} s")


# --------------------------------------------------------------------------- 4. vae


def vae_model():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # 3 levels, 2 downsamplings: factor 4
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=16,
        mid_block_add_attention=False,
        sample_size=data.SIZE,
        scaling_factor=1.0,  # replaced by 1 / std of the latents after training
    )


def to_pm1(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


FOREGROUND_WEIGHT = 5.0


def reconstruction_losses(rec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and MSE with the shape's pixels weighted FOREGROUND_WEIGHT times the background's.

    A small shape covers 2-5 % of the picture; unweighted, the flat background
    dominates the loss and the autoencoder learns it first and the shape last
    (thin digit strokes lose their colour).  The background is the colour of the
    top-left pixel (no shape reaches the corner); anything 10/255 away from it is
    foreground.
    """
    fg = ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.08).float()
    w = 1.0 + (FOREGROUND_WEIGHT - 1.0) * fg
    w = w / w.mean(dim=(2, 3), keepdim=True)  # each image's weights average 1
    err = rec - x
    return (w * err.abs()).mean(), (w * err.square()).mean()


def stage_vae(args, work: Path, device):
    images, _ = load_data(work)
    torch.manual_seed(args.seed + 3)
    vae = vae_model().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 4)
    n, bs, steps = len(images), args.vae_batch, args.vae_steps
    t0 = time.time()
    vae.train()
    for step in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen)
        x = to_pm1(images[idx.numpy()]).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.vae_lr, 100)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        l1, mse = reconstruction_losses(rec, x)
        kl = post.kl().mean() / (4 * (data.SIZE // 4) ** 2)  # per latent element
        loss = l1 + mse + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"[vae] step {step}/{steps} l1 {l1.item():.4f} mse {mse.item():.5f} kl {kl.item():.2f} ({time.time() - t0:.0f} s)")
    vae.eval()
    # SD's recipe: scale latents to unit variance, measured on training latents.
    with torch.no_grad():
        lat = torch.cat([vae.encode(to_pm1(images[i : i + 256]).to(device)).latent_dist.sample() for i in range(0, 4096, 256)])
    std = lat.float().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(work / "vae")
    log(f"[vae] done in {time.time() - t0:.0f} s; latent std {std:.4f} -> scaling_factor {1 / std:.5f}")


@torch.no_grad()
def encode_dataset(vae, images, device, bs=256):
    """Posterior mean and std of every training image (sampled afresh each UNet step)."""
    means, stds = [], []
    for i in range(0, len(images), bs):
        d = vae.encode(to_pm1(images[i : i + bs]).to(device)).latent_dist
        means.append(d.mean.cpu())
        stds.append(d.std.cpu())
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------- 5. unet


def unet_model():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=data.SIZE // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 96, 128),
        # cross-attention at 8x8 and 4x4 (and the 4x4 middle); plain ResNet blocks at 16x16
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,  # SD 1.x style (a single int = heads)
        norm_num_groups=32,
        use_linear_projection=False,
        # GLIDE's second text path: the caption's hidden states, attention-pooled, are
        # added to the timestep embedding, so every ResNet block sees the caption (colour,
        # background, shape) from the first steps of training on; cross-attention does the
        # where.  It reads encoder_hidden_states only: the exported UNet keeps SD's inputs.
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def stage_unet(args, work: Path, device):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPModel

    images, captions = load_data(work)
    tok = load_tokenizer(work)
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device).eval()
    scale = vae.config.scaling_factor
    t0 = time.time()
    lat_mean, lat_std = encode_dataset(vae, images, device)
    del vae
    log(f"[unet] encoded {len(images)} images to latents {tuple(lat_mean.shape[1:])} in {time.time() - t0:.0f} s")

    # The frozen text encoder: CLIP's text tower.  Every distinct caption (and "") once.
    clip = CLIPModel.from_pretrained(work / "clip").to(device).eval()
    distinct = sorted(set(captions)) + [""]
    index = {c: i for i, c in enumerate(distinct)}
    with torch.no_grad():
        states = torch.cat([
            clip.text_model(input_ids=token_ids(tok, distinct[i : i + 512]).to(device)).last_hidden_state.cpu()
            for i in range(0, len(distinct), 512)
        ])
    del clip
    cap_idx = torch.tensor([index[c] for c in captions])
    empty = index[""]
    log(f"[unet] {len(distinct)} distinct captions encoded to {tuple(states.shape[1:])}")

    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    alphas = sched.alphas_cumprod.to(device)
    torch.manual_seed(args.seed + 5)
    unet = unet_model().to(device)
    ema = unet_model().to(device)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    log(f"[unet] {params / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed + 6)
    n, bs, steps = len(captions), args.unet_batch, args.unet_steps
    t0 = time.time()
    unet.train()
    stop = min(args.unet_stop_at or steps, steps)  # the learning rate follows the full schedule
    for step in range(stop):
        idx = torch.randint(0, n, (bs,), generator=gen)
        eps_lat = torch.randn(lat_mean[idx].shape, generator=gen)
        x0 = ((lat_mean[idx] + lat_std[idx] * eps_lat) * scale).to(device)
        drop = torch.rand(bs, generator=gen) < args.caption_dropout
        cond = states[torch.where(drop, torch.full_like(idx, empty), cap_idx[idx])].to(device)
        t = torch.randint(0, 1000, (bs,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.unet_lr, 200)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        # Min-SNR-gamma weighting (Hang et al. 2023) of the epsilon loss: min(SNR, gamma) / SNR
        # keeps the nearly clean timesteps from dominating; it converges several times faster.
        snr = a.view(-1) / (1 - a.view(-1))
        weight = snr.clamp(max=args.min_snr_gamma) / snr
        loss = (weight * (pred - noise).square().mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        if step % 200 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"[unet] step {step}/{steps} loss {loss.item():.4f} ({el:.0f} s, {el / (step + 1):.2f} s/step)")
        if (step + 1) % 250 == 0 or step == stop - 1:
            ema.save_pretrained(work / "unet")
    log(f"[unet] done in {time.time() - t0:.0f} s")


# --------------------------------------------------------------------------- 6. decoder


def stage_decoder(args, work: Path, device):
    """Fine-tune the VAE decoder with the encoder frozen (as SD's ft-MSE VAE decoders were).

    The latents, hence the scaling factor and the UNet trained on them, stay valid.
    """
    from diffusers import AutoencoderKL

    images, _ = load_data(work)
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    torch.manual_seed(args.seed + 7)
    gen = torch.Generator().manual_seed(args.seed + 8)
    n, bs, steps = len(images), args.vae_batch, args.decoder_steps
    t0 = time.time()
    vae.eval()
    vae.decoder.train()
    for step in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen)
        x = to_pm1(images[idx.numpy()]).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.decoder_lr, 50)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        l1, mse = reconstruction_losses(rec, x)
        loss = l1 + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"[decoder] step {step}/{steps} l1 {l1.item():.4f} mse {mse.item():.5f} ({time.time() - t0:.0f} s)")
    vae.eval()
    vae.save_pretrained(work / "vae")
    log(f"[decoder] done in {time.time() - t0:.0f} s")


# --------------------------------------------------------------------------- 7. export


def stage_export(args, work: Path):
    import shutil

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel, CLIPProcessor, CLIPTextModel

    tok = load_tokenizer(work)
    clip = CLIPModel.from_pretrained(work / "clip")
    text_encoder = CLIPTextModel(clip.config.text_config)
    missing = text_encoder.load_state_dict({k: v for k, v in clip.state_dict().items() if k.startswith("text_model.")})
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae"),
        text_encoder=text_encoder.eval(),
        tokenizer=tok,
        unet=UNet2DConditionModel.from_pretrained(work / "unet"),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    proc = CLIPProcessor(
        image_processor=openai_clip_image_processor(data.SIZE),
        tokenizer=tok,
    )
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="shapes-") as tmp:
        tmp = Path(tmp)
        pipe.save_pretrained(tmp / "shapes-sd")
        log("[export] shapes-sd with optimum (text-to-image)")
        optimum_export(tmp / "shapes-sd", out / "shapes-sd", "text-to-image", atol=1e-3)
        clip.save_pretrained(tmp / "shapes-clip")
        proc.save_pretrained(tmp / "shapes-clip")
        log("[export] shapes-clip with optimum (zero-shot-image-classification)")
        optimum_export(tmp / "shapes-clip", out / "shapes-clip", "zero-shot-image-classification", atol=1e-3)
        if args.keep_pytorch:
            for name in ("shapes-sd", "shapes-clip"):
                dst = work / "pytorch" / name
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(tmp / name, dst)
    for name in ("shapes-sd", "shapes-clip"):
        log(f"[export] {name}: {folder_size(out / name) / 1e6:.1f} MB")


# --------------------------------------------------------------------------- main


# What each training stage's result depends on: its own settings and those of the stages it reads.
# (Export always runs and keeps no marker.)
STAGE_INPUTS = {
    "data": [],
    "tokenizer": ["data"],
    "clip": ["tokenizer"],
    "vae": ["data"],
    "unet": ["clip", "vae"],
    "decoder": ["vae"],
}
STAGE_ARGS = {
    "data": ["seed", "train_size"],
    "tokenizer": [],
    "clip": ["threads", "clip_steps", "clip_batch", "clip_lr", "clip_hard_negatives"],
    "vae": ["threads", "vae_steps", "vae_batch", "vae_lr", "kl_weight"],
    "unet": [
        "threads",
        "unet_steps",
        "unet_stop_at",
        "unet_batch",
        "unet_lr",
        "min_snr_gamma",
        "ema",
        "caption_dropout",
    ],
    "decoder": ["threads", "decoder_steps", "decoder_lr"],
}


# The stages that train with torch: their results depend on the device (and the thread count).
# The dataset and the tokenizer come out the same on any device.
TRAINED_STAGES = {"clip", "vae", "unet", "decoder"}


def stage_settings(args, stage: str, device) -> dict:
    """The settings a stage's result depends on, its upstream stages' included: recorded in its
    done marker so that a rerun with other settings cannot reuse it."""
    settings = {}
    todo = [stage]
    while todo:
        s = todo.pop()
        settings.update({name: getattr(args, name) for name in STAGE_ARGS[s]})
        if s in TRAINED_STAGES:
            settings["device"] = device.type
        todo.extend(STAGE_INPUTS[s])
    return dict(sorted(settings.items()))


def settings_mismatch(marker: Path, wanted: dict) -> str | None:
    """None when the done marker records `wanted`, else what differs (markers of older versions
    of this script record no settings). Settings the marker records beyond `wanted` no longer
    matter to the stage and are not compared."""
    try:
        recorded = json.loads(marker.read_text())["settings"]
    except (ValueError, KeyError, TypeError):
        return f"{marker.name} records no settings (written by an older version of this script)"
    diffs = [
        f"made with {k if k == 'device' else '--' + k.replace('_', '-')} {recorded.get(k, '(unset)')}, "
        f"now {wanted[k]}"
        for k in sorted(wanted)
        if recorded.get(k) != wanted[k]
    ]
    return "; ".join(diffs) or None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "local" / "demo-train")
    ap.add_argument("--out", type=Path, default=HERE / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    ap.add_argument("--force", default="", help="comma-separated stages to redo: " + ",".join(STAGES))
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages to run")
    ap.add_argument("--keep-pytorch", action="store_true", help="keep the PyTorch folders in WORK/pytorch")
    ap.add_argument("--train-size", type=int, default=40000)
    ap.add_argument("--clip-steps", type=int, default=1000)
    ap.add_argument("--clip-batch", type=int, default=128)
    ap.add_argument("--clip-lr", type=float, default=1e-3)
    ap.add_argument("--clip-hard-negatives", type=int, default=3, help="hard negative captions per image (position or shape swapped)")
    ap.add_argument("--vae-steps", type=int, default=1600)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-3)
    ap.add_argument("--decoder-steps", type=int, default=400)
    ap.add_argument("--decoder-lr", type=float, default=1e-3)
    ap.add_argument("--unet-steps", type=int, default=4000)
    ap.add_argument(
        "--unet-stop-at",
        type=int,
        default=None,
        help="stop after this many steps of the --unet-steps schedule (EMA weights as of then)",
    )
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-lr", type=float, default=5e-4)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    force = set(filter(None, args.force.split(",")))
    only = set(filter(None, args.only.split(",")))
    done_marker = lambda s: work / f".{s}.done"  # noqa: E731
    t0 = time.time()
    for stage in STAGES:
        if stage not in only:
            continue
        # Export is cheap and writes to --out: it always runs.  Training stages are skipped once done
        # with the same settings; done with other settings, the run stops rather than mix the two.
        training = stage != "export"
        wanted = stage_settings(args, stage, device) if training else None
        if training and done_marker(stage).exists() and stage not in force:
            problem = settings_mismatch(done_marker(stage), wanted)
            if problem:
                log(
                    f"error: [{stage}] in {work} cannot be reused: {problem}; "
                    f"redo it with --force {stage} (and the stages after it), or use another --work"
                )
                return 2
            log(f"[{stage}] already done in {work} (--force {stage} redoes it)")
            continue
        t = time.time()
        if stage == "data":
            stage_data(args, work)
        elif stage == "tokenizer":
            stage_tokenizer(args, work)
        elif stage == "clip":
            stage_clip(args, work, device)
        elif stage == "vae":
            stage_vae(args, work, device)
        elif stage == "unet":
            stage_unet(args, work, device)
        elif stage == "decoder":
            stage_decoder(args, work, device)
        elif stage == "export":
            stage_export(args, work)
        if training:
            record = {"seconds": round(time.time() - t), "settings": wanted}
            done_marker(stage).write_text(json.dumps(record, indent=1) + "\n")
    log(f"all stages done in {time.time() - t0:.0f} s (device {device}, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
