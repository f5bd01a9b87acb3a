#!/usr/bin/env python3
"""Tiny random-weight single-file checkpoints and LoRA files for `sdspool import` (issue 22).

Each checkpoint is a random-weight diffusers pipeline (built from configs and torch seeds, nothing
downloaded) written in the single-file layout AUTOMATIC1111, ComfyUI and the model sites use
(checkpoint_layout.py names the prefixes), as one .safetensors file:

    sd15.safetensors          SD 1.x: cond_stage_model.transformer.* (CLIP, quick_gelu)
    (SD 1.x in float32, the other three in float16, as such files are usually published)
    sd2-v.safetensors         SD 2.x 768-v: cond_stage_model.model.* (OpenCLIP); v-prediction by
                              AUTOMATIC1111's test (its UNet's output bias is set so that the test says v)
    sdxl.safetensors          SDXL base: conditioner.embedders.0.transformer.* + embedders.1.model.*
    sdxl-refiner.safetensors  SDXL refiner: conditioner.embedders.0.model.* only, 5 time ids

The tiny architectures follow the rules checkpoint_layout.py uses for what shapes do not tell (heads,
GroupNorm groups), so the configs import_checkpoint.py generates from the shapes are these configs.
After writing, each file is loaded back with diffusers' `from_single_file` and the generated configs and
compared tensor by tensor with the pipeline it came from (exit 1 on any difference).

LoRA files (rank 2, on every attention projection of the UNet and the text encoders):
    lora-sd15-kohya.safetensors   kohya / AUTOMATIC1111 keys: lora_unet_down_blocks_0_attentions_0_..._to_q
                                  .lora_down.weight / .lora_up.weight / .alpha (alpha 1), lora_te_...
    lora-sd15-peft.safetensors    diffusers / PEFT keys: unet.<module>.lora_A.weight / lora_B.weight,
                                  text_encoder.<module>...
    lora-sdxl-kohya.safetensors   kohya SDXL keys, as sd-scripts writes them: the UNet under its
                                  single-file names (lora_unet_input_blocks_4_1_...), lora_te1_ / lora_te2_
    lora-sdxl-peft.safetensors    diffusers / PEFT keys with text_encoder_2.
    lora-sd2-kohya.safetensors    SD 2.x, kohya keys: as SD 1.x (sd-scripts trains SD 2.x's OpenCLIP as
                                  a transformers CLIPTextModel, so lora_te_text_model_encoder_layers_...)
    lora-sd2-peft.safetensors     SD 2.x, diffusers / PEFT keys
    lora-sdxl-refiner-kohya.safetensors  the refiner: its UNet under single-file names as for SDXL, its
                                  only text encoder (text_encoder_2 in diffusers) as lora_te2_
    lora-sdxl-refiner-peft.safetensors   the refiner, diffusers / PEFT keys: unet., text_encoder_2.

    sd15.ckpt                     sd15.safetensors' tensors pickled with torch.save as training code
                                  writes a .ckpt: {"state_dict": {...}, "global_step": 0}
    sd15-truncated.ckpt           the first 64 kB of sd15's tensors saved with torch.save (a cut download)

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/build_checkpoint_fixtures.py [--out tests/fixtures/import]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import build_test_models as btm  # sets the offline environment variables
import checkpoint_layout as cl
import torch

log = btm.log
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "import"
RANK = 2
TE1_HIDDEN, TE2_HIDDEN, TE2_PROJ = 32, 48, 40


def tiny_unet(seed: int, family: str, cross: int, n_time_ids: int = 0):
    from diffusers import UNet2DConditionModel

    xl = family.startswith("sdxl")
    kw = dict(
        sample_size={"sd15": 64, "sd2": 96}.get(family, 128),
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=16,
        cross_attention_dim=cross,
        attention_head_dim=8 if family == "sd15" else [1, 1],
        use_linear_projection=family != "sd15",
        upcast_attention=family == "sd2",
    )
    if xl:
        kw.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 1],
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * n_time_ids + TE2_PROJ,
        )
    else:
        kw.update(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    torch.manual_seed(seed)
    return UNet2DConditionModel(**kw)


def tiny_vae(seed: int, xl: bool):
    torch.manual_seed(seed)
    return btm.vae_model(scaling_factor=0.13025, force_upcast=True) if xl else btm.vae_model()


def tiny_text(seed: int, tok, hidden: int, act: str, layers: int, proj: int | None = None):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = btm.text_config(tok, hidden, act, layers=layers, heads=max(1, hidden // 64), proj=proj)
    return CLIPTextModelWithProjection(config) if proj else CLIPTextModel(config)


def a1111_v_test(unet, hidden: int) -> float:
    """AUTOMATIC1111's is_using_v_parameterization_for_sd2: mean(unet(0.5, t=999, ctx 0.5) - x); v when < -1."""
    with torch.no_grad():
        x = torch.ones((1, 4, 8, 8)) * 0.5
        ctx = torch.ones((1, 2, hidden)) * 0.5
        return float((unet(x, torch.tensor([999.0]), encoder_hidden_states=ctx).sample - x).mean())


def build_models(family: str, seed: int, work: Path) -> dict:
    """The random-weight parts of one family: {"unet", "vae", "te" and/or "te2"}."""
    if family == "sd15":
        tok = btm.make_tokenizer(work / "tok1", "<|endoftext|>")
        return {"unet": tiny_unet(seed, family, 32), "vae": tiny_vae(seed + 1, False), "te": tiny_text(seed + 2, tok, 32, "quick_gelu", 2)}
    if family == "sd2":
        tok = btm.make_tokenizer(work / "tok2", "!")
        unet = tiny_unet(seed, family, 48)
        # Make AUTOMATIC1111's v-prediction test answer "v" for this random UNet: shift the output bias.
        with torch.no_grad():
            unet.conv_out.bias -= 2.0 + max(0.0, a1111_v_test(unet, 48))
        assert a1111_v_test(unet, 48) < -1
        return {"unet": unet, "vae": tiny_vae(seed + 1, False), "te": tiny_text(seed + 2, tok, 48, "gelu", 2)}
    tok1 = btm.make_tokenizer(work / "tok1", "<|endoftext|>")
    tok2 = btm.make_tokenizer(work / "tok2", "!")
    if family == "sdxl":
        return {
            "unet": tiny_unet(seed, family, TE1_HIDDEN + TE2_HIDDEN, 6),
            "vae": tiny_vae(seed + 1, True),
            "te": tiny_text(seed + 2, tok1, TE1_HIDDEN, "quick_gelu", 3),
            "te2": tiny_text(seed + 3, tok2, TE2_HIDDEN, "gelu", 2, proj=TE2_PROJ),
        }
    return {
        "unet": tiny_unet(seed, family, TE2_HIDDEN, 5),
        "vae": tiny_vae(seed + 1, True),
        "te2": tiny_text(seed + 3, tok2, TE2_HIDDEN, "gelu", 2, proj=TE2_PROJ),
    }


def up_attention(unet) -> list[bool]:
    return [t.startswith("CrossAttn") for t in unet.config.up_block_types]


def to_single_file(family: str, models: dict, seed: int) -> dict:
    unet, vae = models["unet"], models["vae"]
    out = {}
    for k, v in unet.state_dict().items():
        out[cl.unet_key_to_ldm(k, unet.config.layers_per_block, up_attention(unet))] = v
    levels = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        name, conv = cl.vae_key_to_ldm(k, levels)
        out[name] = v[:, :, None, None] if conv else v
    g = torch.Generator().manual_seed(seed + 9)
    if family == "sd15":
        out.update({cl.SD1_TE + k: v for k, v in models["te"].state_dict().items()})
    elif family == "sd2":
        h = models["te"].config.hidden_size
        # SD 2.x files carry OpenCLIP's text_projection too (diffusers ignores it)
        out.update(cl.openclip_state(models["te"].state_dict(), cl.SD2_TE, torch.randn(h, h, generator=g) * 0.02))
    else:
        te2 = models["te2"]
        proj = te2.text_projection.weight.T.contiguous()
        state = {k: v for k, v in te2.state_dict().items() if not k.startswith("text_projection")}
        out.update(cl.openclip_state(state, cl.XL_TE2 if family == "sdxl" else cl.REFINER_TE, proj))
        if family == "sdxl":
            out.update({cl.XL_TE1 + k: v for k, v in models["te"].state_dict().items()})
    return {k: v.contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------- LoRA


def lora_targets(models: dict) -> dict[str, list[tuple[str, torch.nn.Module]]]:
    """Per component prefix (unet, text_encoder, text_encoder_2): the attention Linear modules a LoRA trains."""
    targets = {}
    names = {"unet": "unet", "te": "text_encoder", "te2": "text_encoder_2"}
    for part, prefix in names.items():
        if part not in models:
            continue
        wanted = ("to_q", "to_k", "to_v", "to_out.0") if part == "unet" else ("q_proj", "k_proj", "v_proj", "out_proj")
        targets[prefix] = [(n, m) for n, m in models[part].named_modules() if n.endswith(wanted) and isinstance(m, torch.nn.Linear)]
    return targets


def lora_tensors(models: dict, seed: int) -> dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, mods in lora_targets(models).items():
        out[prefix] = [
            (name, torch.randn(RANK, m.in_features, generator=g) * 0.3, torch.randn(m.out_features, RANK, generator=g) * 0.3)
            for name, m in mods
        ]
    return out


def peft_layout(tensors) -> dict:
    out = {}
    for prefix, items in tensors.items():
        for name, down, up in items:
            out[f"{prefix}.{name}.lora_A.weight"] = down
            out[f"{prefix}.{name}.lora_B.weight"] = up
    return out


def kohya_layout(tensors, family: str, unet) -> dict:
    out = {}
    te_names = {"text_encoder": "lora_te1" if family == "sdxl" else "lora_te", "text_encoder_2": "lora_te2"}
    for prefix, items in tensors.items():
        for name, down, up in items:
            if prefix == "unet":
                path = name
                if family.startswith("sdxl"):  # sd-scripts trains SDXL on the original UNet: its names are the single-file ones
                    path = cl.unet_key_to_ldm(name + ".weight", unet.config.layers_per_block, up_attention(unet))
                    path = path.removeprefix(cl.UNET).removesuffix(".weight")
                key = "lora_unet_" + path.replace(".", "_")
            else:
                key = te_names[prefix] + "_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = down
            out[f"{key}.lora_up.weight"] = up
            out[f"{key}.alpha"] = torch.tensor(1.0)
    return out


# --------------------------------------------------------------------------- checks


def round_trip(path: Path, family: str, models: dict) -> None:
    """Load the written file with from_single_file and the generated configs; compare with the source models."""
    import import_checkpoint as ic

    pipe, _ = ic.load_pipeline(path, family, None)
    pairs = [("unet", pipe.unet), ("vae", pipe.vae)]
    if "te" in models:
        pairs.append(("te", pipe.text_encoder))
    if "te2" in models:
        pairs.append(("te2", pipe.text_encoder_2))
    for part, loaded in pairs:
        want, got = models[part].state_dict(), loaded.state_dict()
        want = {k: v for k, v in want.items() if not k.endswith("position_ids")}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        if set(want) != set(got):
            raise SystemExit(f"{path.name} {part}: keys differ: {sorted(set(want) ^ set(got))[:6]}")
        for k in want:
            if want[k].shape != got[k].shape or not torch.equal(want[k], got[k]):
                raise SystemExit(f"{path.name} {part}: {k} differs after from_single_file")
    log(f"[{path.name}] from_single_file round trip: every tensor equal")


SEEDS = {"sd15": 2200, "sd2": 2300, "sdxl": 2400, "sdxl-refiner": 2500}
# SD 1.x in float32 (the "full" files), the others in float16 as SD 2.x / SDXL files are usually published
HALF = {"sd2", "sdxl", "sdxl-refiner"}
# the LoRA files' seeds (SD 1.x and SDXL's were chosen first, as their checkpoint's seed + 50)
LORA_SEEDS = {"sd15": 2250, "sd2": 2350, "sdxl": 2450, "sdxl-refiner": 2550}
FILES = {"sd15": "sd15.safetensors", "sd2": "sd2-v.safetensors", "sdxl": "sdxl.safetensors", "sdxl-refiner": "sdxl-refiner.safetensors"}


def main(argv=None) -> int:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default=",".join(FILES), help="comma-separated families")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for family in args.only.split(","):
            models = build_models(family, SEEDS[family], Path(tmp) / family)
            if family in HALF:  # round the weights once, so the float32 models are what the file holds
                for m in models.values():
                    m.half().float()
            tensors = to_single_file(family, models, SEEDS[family])
            if family in HALF:
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            path = out / FILES[family]
            save_file(tensors, str(path), metadata={"format": "pt"})
            log(f"[{path.name}] {path.stat().st_size / 1e6:.2f} MB")
            round_trip(path, family, models)
            if family == "sd15":
                # A pickled .ckpt cut short (the Rust side cannot read pickles: the conversion reports it)
                import io

                buf = io.BytesIO()
                torch.save(tensors, buf)
                (out / "sd15-truncated.ckpt").write_bytes(buf.getvalue()[:65536])
                # The same tensors as a whole .ckpt, wrapped as training code writes them
                buf = io.BytesIO()
                torch.save({"state_dict": tensors, "global_step": 0}, buf)
                (out / "sd15.ckpt").write_bytes(buf.getvalue())
                log(f"[sd15.ckpt] {len(buf.getvalue()) / 1e6:.2f} MB")
            if family in LORA_SEEDS:
                tensors = lora_tensors(models, LORA_SEEDS[family])
                for layout, data in (("kohya", kohya_layout(tensors, family, models["unet"])), ("peft", peft_layout(tensors))):
                    lpath = out / f"lora-{family}-{layout}.safetensors"
                    save_file({k: v.contiguous() for k, v in data.items()}, str(lpath))
                    log(f"[{lpath.name}] {len(data)} tensors, {lpath.stat().st_size / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
