"""The single-file checkpoint layout (original LDM / SGM key names) and what can be read from it.

Used by build_checkpoint_fixtures.py (diffusers -> single-file keys, to write the tiny fixtures) and by
import_checkpoint.py (family detection and the diffusers configs generated from the tensor shapes,
so that `from_single_file` runs offline without any fetched config).

Single-file layout, as AUTOMATIC1111, ComfyUI and the model sites use it:
    model.diffusion_model.*                 UNet (openaimodel names: input_blocks / middle_block / output_blocks)
    first_stage_model.*                     VAE (encoder.down.N.block.M, mid.attn_1, ...)
    cond_stage_model.transformer.*          SD 1.x text encoder (Hugging Face CLIP names)
    cond_stage_model.model.*                SD 2.x text encoder (OpenCLIP names: resblocks, in_proj_weight)
    conditioner.embedders.0.transformer.*   SDXL base: CLIP ViT-L (Hugging Face names)
    conditioner.embedders.1.model.*         SDXL base: OpenCLIP bigG
    conditioner.embedders.0.model.*         SDXL refiner: OpenCLIP bigG only

What the shapes do not say is taken from the families' published configs and written as a rule that
gives the real values for the real checkpoints: attention heads (SD 1.x: 8 per block; SD 2.x / SDXL:
64 channels per head, at least one head), text heads (64 channels per head, at least one), GroupNorm
groups (the largest of 32, 16, 8, ... dividing every block width), SDXL's time-id embedding width
((label_emb input - pooled width) / number of time ids).
"""

from __future__ import annotations

import math
import re

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TE = "cond_stage_model.transformer."
SD2_TE = "cond_stage_model.model."
XL_TE1 = "conditioner.embedders.0.transformer."
XL_TE2 = "conditioner.embedders.1.model."
REFINER_TE = "conditioner.embedders.0.model."

FAMILIES = ("sd15", "sd2", "sdxl", "sdxl-refiner")


class LayoutError(Exception):
    """A checkpoint whose keys or shapes fit no supported family; `keys` lists the first few keys."""

    def __init__(self, kind: str, message: str, keys: list[str] | None = None):
        super().__init__(message)
        self.kind = kind
        self.keys = keys or []


# --------------------------------------------------------------------------- diffusers -> single file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet_part(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def unet_key_to_ldm(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """A diffusers UNet2DConditionModel key -> its model.diffusion_model.* key."""
    n = layers_per_block
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for src, dst in fixed.items():
        if key.startswith(src + "."):
            return UNET + dst + key[len(src) :]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + i * (n + 1) + j
        return UNET + (f"input_blocks.{block}.0.{_resnet_part(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}")
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)
    if m:
        return UNET + f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return UNET + f"middle_block.1.{rest}"
        return UNET + f"middle_block.{2 * j}.{_resnet_part(rest)}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = i * (n + 1) + j
        return UNET + (f"output_blocks.{block}.0.{_resnet_part(rest)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}")
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)
    if m:
        i = int(m[1])
        return UNET + f"output_blocks.{i * (n + 1) + n}.{2 if up_has_attention[i] else 1}.conv.{m[2]}"
    raise KeyError(f"no single-file name for UNet key {key}")


def vae_key_to_ldm(key: str, n_levels: int) -> tuple[str, bool]:
    """A diffusers AutoencoderKL key -> (first_stage_model.* key, whether the weight becomes a 1x1 conv)."""
    rename = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out")]
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+)(\.0)?\.(weight|bias)", key)
    if m:
        part = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[m[2]]
        return VAE + f"{m[1]}.mid.attn_1.{part}.{m[4]}", part != "norm" and m[4] == "weight"
    out = key
    out = re.sub(r"mid_block\.resnets\.(\d)", lambda g: f"mid.block_{int(g[1]) + 1}", out)
    out = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", out)
    out = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", out)
    out = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets", lambda g: f"decoder.up.{n_levels - 1 - int(g[1])}.block", out)
    out = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda g: f"decoder.up.{n_levels - 1 - int(g[1])}.upsample", out)
    for a, b in rename:
        out = out.replace(a, b)
    return VAE + out, False


def openclip_state(hf_state: dict, prefix: str, projection=None) -> dict:
    """A transformers CLIPTextModel(WithProjection) state dict -> OpenCLIP single-file tensors under prefix."""
    import torch

    out = {}
    hf = {k.removeprefix("text_model."): v for k, v in hf_state.items()}
    out[prefix + "token_embedding.weight"] = hf["embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = hf["embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = hf["final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = hf["final_layer_norm.bias"]
    if projection is not None:
        out[prefix + "text_projection"] = projection
    layers = sorted({int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([hf[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = hf[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = hf[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = hf[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = hf[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = hf[src + f"mlp.fc2.{kind}"]
    return out


# --------------------------------------------------------------------------- detection


def detect_family(shapes: dict[str, list[int]]) -> str:
    """The family of a single-file checkpoint from its key names and shapes (see the module docstring)."""
    keys = list(shapes)
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        raise LayoutError(
            "unknown_architecture",
            f"no UNet in the single-file layout ({UNET}input_blocks.0.0.weight is missing)",
            keys[:8],
        )
    if conv_in[1] != 4:
        raise LayoutError(
            "unknown_architecture",
            f"UNet input has {conv_in[1]} channels (4 for text-to-image; 9 is an inpainting model, not supported)",
            [UNET + "input_blocks.0.0.weight"],
        )
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has(XL_TE1) and has(XL_TE2):
        family = "sdxl"
    elif has(REFINER_TE) and not has(XL_TE1):
        family = "sdxl-refiner"
    elif has(SD2_TE):
        family = "sd2"
    elif has(SD1_TE):
        family = "sd15"
    else:
        raise LayoutError(
            "unknown_architecture",
            "no text encoder in a known layout (cond_stage_model.transformer / cond_stage_model.model / conditioner.embedders)",
            [k for k in keys if not k.startswith((UNET, VAE))][:8] or keys[:8],
        )
    cross = cross_attention_dim(shapes)
    want = text_width(shapes, family)
    if cross != want:
        raise LayoutError(
            "unknown_architecture",
            f"looks like {family}, but the UNet's cross-attention width {cross} is not the text encoder width {want}",
            [k for k in keys if k.endswith("attn2.to_k.weight")][:4],
        )
    if not has(VAE):
        raise LayoutError("unknown_architecture", f"no VAE ({VAE}*) in the checkpoint", keys[:8])
    return family


def cross_attention_dim(shapes) -> int | None:
    for k, s in shapes.items():
        if k.startswith(UNET) and k.endswith("attn2.to_k.weight"):
            return s[1]
    return None


def text_width(shapes, family: str) -> int:
    if family == "sd15":
        return shapes[SD1_TE + "text_model.embeddings.token_embedding.weight"][1]
    if family == "sd2":
        return shapes[SD2_TE + "token_embedding.weight"][1]
    if family == "sdxl":
        return (
            shapes[XL_TE1 + "text_model.embeddings.token_embedding.weight"][1]
            + shapes[XL_TE2 + "token_embedding.weight"][1]
        )
    return shapes[REFINER_TE + "token_embedding.weight"][1]


# --------------------------------------------------------------------------- configs from shapes


def _groups(channels: list[int]) -> int:
    g = 0
    for c in channels:
        g = math.gcd(g, c)
    for cand in (32, 16, 8, 4, 2, 1):
        if g % cand == 0:
            return cand
    return 1


def _count(shapes, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in shapes if (m := rx.match(k))})


def unet_config(shapes, family: str, prediction_type: str) -> dict:
    """UNet2DConditionModel config from the model.diffusion_model.* shapes."""
    # input_blocks: 0 = conv_in, then per level n resnets (+ a downsample except on the last level).
    n_input = _count(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\.")
    down_ops = sorted(int(m[1]) for k in shapes if (m := re.match(re.escape(UNET) + r"input_blocks\.(\d+)\.0\.op\.weight", k)))
    n = down_ops[0] - 1 if down_ops else n_input - 1
    levels = (n_input - 1 + 1) // (n + 1)
    channels, attn, depth = [], [], []
    for i in range(levels):
        block = 1 + i * (n + 1)
        channels.append(shapes[UNET + f"input_blocks.{block}.0.out_layers.3.weight"][0])
        has_attn = UNET + f"input_blocks.{block}.1.proj_in.weight" in shapes
        attn.append(has_attn)
        depth.append(_count(shapes, re.escape(UNET + f"input_blocks.{block}.1.transformer_blocks.") + r"(\d+)\.") if has_attn else 1)
    cross = cross_attention_dim(shapes)
    proj_in = next(s for k, s in shapes.items() if k.startswith(UNET) and k.endswith("proj_in.weight"))
    if family == "sd15":
        heads = 8
    else:
        heads = [max(1, c // 64) for c in channels]
    config = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": {"sd15": 64, "sd2": 96 if prediction_type == "v_prediction" else 64}.get(family, 128),
        "in_channels": 4,
        "out_channels": shapes[UNET + "out.2.weight"][0],
        "layers_per_block": n,
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": cross,
        "attention_head_dim": heads,
        "use_linear_projection": len(proj_in) == 2,
        "transformer_layers_per_block": depth if family.startswith("sdxl") else 1,
        "norm_num_groups": _groups(channels),
        "upcast_attention": family == "sd2" and prediction_type == "v_prediction",
    }
    if family.startswith("sdxl"):
        n_ids = 6 if family == "sdxl" else 5
        pooled = text_projection_dim(shapes, family)
        adm = shapes[UNET + "label_emb.0.0.weight"][1]
        if (adm - pooled) % n_ids:
            raise LayoutError(
                "unknown_architecture",
                f"label_emb input width {adm} does not fit {n_ids} time ids plus pooled width {pooled}",
                [UNET + "label_emb.0.0.weight"],
            )
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm - pooled) // n_ids,
            projection_class_embeddings_input_dim=adm,
        )
    return config


def vae_config(shapes, family: str) -> dict:
    levels = _count(shapes, re.escape(VAE + "encoder.down.") + r"(\d+)\.")
    channels = [shapes[VAE + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    n = _count(shapes, re.escape(VAE + "encoder.down.0.block.") + r"(\d+)\.")
    xl = family.startswith("sdxl")
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": shapes[VAE + "encoder.conv_in.weight"][1],
        "out_channels": shapes[VAE + "decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": n,
        "act_fn": "silu",
        "latent_channels": shapes[VAE + "post_quant_conv.weight"][0],
        "norm_num_groups": _groups(channels),
        "sample_size": 1024 if xl else 512,
        "scaling_factor": 0.13025 if xl else 0.18215,
        "force_upcast": xl,
    }


def text_projection_dim(shapes, family: str) -> int:
    prefix = XL_TE2 if family == "sdxl" else REFINER_TE
    return shapes[prefix + "text_projection"][1]


def clip_config(shapes, prefix: str, openclip: bool, drop_last_layer: bool, with_projection: bool, pad_id: int) -> dict:
    """CLIPTextConfig values for the text tower under prefix."""
    if openclip:
        vocab, hidden = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = _count(shapes, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\.")
        inter = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        act = "gelu"
    else:
        vocab, hidden = shapes[prefix + "text_model.embeddings.token_embedding.weight"]
        positions = shapes[prefix + "text_model.embeddings.position_embedding.weight"][0]
        layers = _count(shapes, re.escape(prefix + "text_model.encoder.layers.") + r"(\d+)\.")
        inter = shapes[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"][0]
        act = "quick_gelu"
    if drop_last_layer:
        # diffusers drops the last of SD 2.x's 24 OpenCLIP blocks (SD 2.x conditions on the penultimate one)
        layers -= 1
    config = {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": shapes[prefix + "text_projection"][1] if with_projection else hidden,
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }
    return config

