#!/usr/bin/env python3
"""Verify the committed test models under onnx/models/.

For every ONNX file: print its inputs and outputs (name, element type, shape
with dynamic dims by name), run it in onnxruntime on the CPU with dummy
inputs and check the output shapes.  Also:
  * tokenizers: vocab size, special ids, "a photo of a cat" with the slow and
    fast transformers CLIP tokenizers;
  * tiny-sd-fp16 against tiny-sd (same weights): outputs close;
  * tiny-clip: text_embeds / image_embeds L2-normalised, logits = scale * cos;
  * optimum's ORTStableDiffusionPipeline loads each SD folder and runs 2 steps.

Usage:
    onnx/.venv/bin/python onnx/check_models.py [--models onnx/models] [--markdown] [--no-pipeline]
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

HERE = Path(__file__).resolve().parent
ELEM = {v: k for k, v in onnx.TensorProto.DataType.items()}
NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

failures: list[str] = []


def check(cond: bool, msg: str):
    print(("  ok   " if cond else "  FAIL ") + msg)
    if not cond:
        failures.append(msg)


def value_sig(v) -> tuple[str, str, str]:
    t = v.type.tensor_type
    dims = []
    for d in t.shape.dim:
        dims.append(d.dim_param if d.dim_param else (str(d.dim_value) if d.HasField("dim_value") else "?"))
    shape = "[" + ", ".join(dims) + "]" if t.HasField("shape") else "(unknown)"
    if t.HasField("shape") and not dims:
        shape = "[] (scalar)"
    return v.name, ELEM[t.elem_type].lower(), shape


def signature(path: Path):
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    ins = [value_sig(v) for v in m.graph.input if v.name not in inits]
    outs = [value_sig(v) for v in m.graph.output]
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return ins, outs, opset


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def dtype_of(sess, name):
    return NP[next(i.type for i in sess.get_inputs() if i.name == name)]


def run(sess, feeds):
    feeds = {k: v.astype(dtype_of(sess, k)) for k, v in feeds.items()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def cfg(folder: Path, sub: str) -> dict:
    return json.loads((folder / sub / "config.json").read_text())


# --------------------------------------------------------------------------- SD


def sd_inputs(folder: Path, rng, lat_hw):
    te = cfg(folder, "text_encoder")
    h, w = lat_hw
    return {
        "text_encoder": {"input_ids": rng.integers(0, te["vocab_size"], size=(2, 77)).astype(np.int64)},
        "unet": {
            "sample": rng.standard_normal((2, 4, h, w)).astype(np.float32),
            "timestep": np.array(981.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, te["hidden_size"])).astype(np.float32),
        },
        "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, h, w)).astype(np.float32)},
        "vae_encoder": {"sample": rng.uniform(-1, 1, size=(1, 3, 8 * h, 8 * w)).astype(np.float32)},
    }


def sd_expected(folder: Path, lat_hw):
    te = cfg(folder, "text_encoder")
    H = te["hidden_size"]
    h, w = lat_hw
    return {
        "text_encoder": {"last_hidden_state": (2, 77, H), "pooler_output": (2, H)},
        "unet": {"out_sample": (2, 4, h, w)},
        "vae_decoder": {"sample": (1, 3, 8 * h, 8 * w)},
        "vae_encoder": {"latent_parameters": (1, 8, h, w)},
    }


def sd_layout(folder: Path) -> bool:
    return json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def check_sd(folder: Path, seed=0):
    print(f"\n== {folder.name}: SD pipeline, ORT CPU on dummy inputs")
    unet_cfg = cfg(folder, "unet")
    s = unet_cfg["sample_size"]
    results = {}
    for lat_hw in [(s, s), (s, s + 4)]:  # default size and a non-square one
        rng = np.random.default_rng(seed)
        feeds = sd_inputs(folder, rng, lat_hw)
        exp = sd_expected(folder, lat_hw)
        for comp in ["text_encoder", "unet", "vae_decoder", "vae_encoder"]:
            sess = session(folder / comp / "model.onnx")
            out = run(sess, feeds[comp])
            shapes = {k: tuple(v.shape) for k, v in out.items()}
            check(shapes == exp[comp], f"{comp} latent {lat_hw}: {shapes}")
            check(all(np.isfinite(v.astype(np.float32)).all() for v in out.values()), f"{comp} latent {lat_hw}: finite")
            results[(comp, lat_hw)] = out
    return results


def check_tokenizer(tok_dir: Path, expect_pad: str):
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    label = tok_dir.name if (tok_dir / "config.json").exists() else f"{tok_dir.parent.name}/{tok_dir.name}"
    print(f"\n== tokenizer {label}")
    slow = CLIPTokenizer.from_pretrained(str(tok_dir))
    fast = CLIPTokenizerFast.from_pretrained(str(tok_dir))
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    n_merges = len((tok_dir / "merges.txt").read_text().strip().split("\n")) - 1
    print(f"  vocab.json {len(vocab)} tokens, merges.txt {n_merges} merges, len(tokenizer) {len(slow)}")
    check(len(vocab) == 512 + n_merges + 2 == len(slow), "vocab = 256 bytes + 256 </w> forms + merges + 2 specials")
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    check(
        (slow.bos_token_id, slow.eos_token_id) == (bos, eos) == (len(vocab) - 2, len(vocab) - 1),
        f"bos {bos} eos {eos} are the two last ids",
    )
    check(slow.pad_token == expect_pad, f"pad token {slow.pad_token!r} (id {slow.pad_token_id})")
    for t in (slow, fast):
        enc = t("a photo of a cat", padding="max_length", max_length=77)
        ids = enc.input_ids
        check(ids[:7] == [bos, 320, 1125, 539, 320, 2368, eos], f"{type(t).__name__} 'a photo of a cat' -> {ids[:8]}...")
        check(ids[7:] == [slow.pad_token_id] * 70, f"{type(t).__name__} padded to 77 with {slow.pad_token_id}")


def check_fp16(fp32: Path, fp16: Path):
    print(f"\n== {fp16.name} vs {fp32.name} (same PyTorch weights, exported with --dtype fp16)")
    ext = fp16 / "unet" / "model.onnx_data"
    check(ext.is_file(), "unet/model.onnx_data exists (external data)")
    m = onnx.load(str(fp16 / "unet" / "model.onnx"), load_external_data=False)
    n_ext = sum(1 for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    check(n_ext == len(m.graph.initializer), f"unet: {n_ext}/{len(m.graph.initializer)} initializers external")
    s = cfg(fp32, "unet")["sample_size"]
    rng = np.random.default_rng(1)
    feeds = sd_inputs(fp32, rng, (s, s))
    for comp in ["text_encoder", "unet", "vae_decoder", "vae_encoder"]:
        s32, s16 = session(fp32 / comp / "model.onnx"), session(fp16 / comp / "model.onnx")
        for i in s16.get_inputs():
            if i.name != "input_ids":
                check(i.type == "tensor(float16)", f"{comp} input {i.name} is {i.type}")
        for o in s16.get_outputs():
            check(o.type == "tensor(float16)", f"{comp} output {o.name} is {o.type}")
        o32, o16 = run(s32, feeds[comp]), run(s16, feeds[comp])
        for k in o32:
            a, b = o32[k], o16[k].astype(np.float32)
            scale = float(np.abs(a).max())
            err = float(np.abs(a - b).max())
            check(err <= 2e-2 * max(scale, 1.0), f"{comp}.{k}: max|fp32-fp16| {err:.2e} (max|fp32| {scale:.2e})")


def check_pipeline(folder: Path):
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    print(f"\n== {folder.name}: optimum ORTStableDiffusionPipeline, 2 steps")
    pipe = ORTStableDiffusionPipeline.from_pretrained(str(folder), provider="CPUExecutionProvider")
    s = cfg(folder, "unet")["sample_size"]
    g = torch.Generator().manual_seed(0)
    fp16 = "fp16" in folder.name
    latents = torch.randn((1, 4, s, s), generator=g)
    if fp16:
        latents = latents.half()
    img = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        guidance_scale=7.5,
        latents=latents,
        output_type="np",
    ).images
    check(img.shape == (1, 8 * s, 8 * s, 3), f"image {img.shape}, scheduler {type(pipe.scheduler).__name__}")
    check(bool(np.isfinite(img).all()), "image finite")


# --------------------------------------------------------------------------- CLIP


def check_clip(folder: Path):
    print(f"\n== {folder.name}: CLIPModel, ORT CPU on dummy inputs")
    c = json.loads((folder / "config.json").read_text())
    P = c["projection_dim"]
    vc = c["vision_config"]
    sess = session(folder / "model.onnx")
    rng = np.random.default_rng(0)
    T, I = 3, 2
    feeds = {
        "input_ids": rng.integers(0, c["text_config"]["vocab_size"] - 1, size=(T, 77)).astype(np.int64),
        "attention_mask": np.ones((T, 77), dtype=np.int64),
        "pixel_values": rng.standard_normal((I, 3, vc["image_size"], vc["image_size"])).astype(np.float32),
    }
    feeds["input_ids"][:, 9] = c["text_config"]["eos_token_id"]
    feeds["attention_mask"][:, 10:] = 0
    out = run(sess, feeds)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    check(
        shapes == {"logits_per_image": (I, T), "logits_per_text": (T, I), "text_embeds": (T, P), "image_embeds": (I, P)},
        f"{shapes}",
    )
    for k in ("text_embeds", "image_embeds"):
        n = np.linalg.norm(out[k], axis=-1)
        check(np.allclose(n, 1, atol=1e-5), f"{k} L2-normalised (norms {np.round(n, 6).tolist()})")
    scale = float(np.exp(c.get("logit_scale_init_value", 2.6592)))
    cos = out["image_embeds"] @ out["text_embeds"].T
    check(np.allclose(out["logits_per_image"], scale * cos, atol=1e-4), f"logits_per_image = {scale:.4f} * cos")
    check(np.allclose(out["logits_per_text"], out["logits_per_image"].T, atol=1e-6), "logits_per_text = logits_per_image.T")
    pp = json.loads((folder / "preprocessor_config.json").read_text())
    check(
        pp["size"] == {"shortest_edge": 224}
        and pp["crop_size"] == {"height": 224, "width": 224}
        and pp["resample"] == 3
        and pp["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
        and pp["image_std"] == [0.26862954, 0.26130258, 0.27577711],
        "preprocessor_config.json has the OpenAI CLIP values",
    )


# --------------------------------------------------------------------------- main


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def print_signatures(root: Path, markdown: bool):
    rows = []
    for onnx_path in sorted(root.rglob("*.onnx")):
        rel = onnx_path.relative_to(root)
        ins, outs, opset = signature(onnx_path)
        ext = " (+ model.onnx_data)" if onnx_path.with_name("model.onnx_data").exists() else ""
        for kind, vals in (("in", ins), ("out", outs)):
            for name, et, shape in vals:
                rows.append((f"{rel}{ext}", str(opset), kind, name, et, shape))
    if markdown:
        print("| file | opset | | name | type | shape |\n|---|---|---|---|---|---|")
        last = None
        for f, o, k, n, t, s in rows:
            print(f"| {f if f != last else ''} | {o if f != last else ''} | {k} | `{n}` | {t} | {s} |")
            last = f
    else:
        print("== signatures")
        for f, o, k, n, t, s in rows:
            print(f"  {f:44s} opset {o}  {k:3s} {n:22s} {t:8s} {s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=HERE / "models")
    ap.add_argument("--markdown", action="store_true", help="only print the signature table as Markdown")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the ORTStableDiffusionPipeline runs")
    args = ap.parse_args(argv)
    root: Path = args.models
    if args.markdown:
        print_signatures(root, markdown=True)
        return 0

    print_signatures(root, markdown=False)
    # SD 1.x/2.x folders; the SDXL, refiner, Turbo and LCM ones (build_sdxl_models.py) are run by golden_sdxl.py.
    sd = [d for d in sorted(root.iterdir()) if (d / "model_index.json").is_file() and sd_layout(d)]
    for d in sd:
        check_sd(d)
        pad = json.loads((d / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"]
        check_tokenizer(d / "tokenizer", expect_pad={"tiny-sd-v": "!"}.get(d.name, "<|endoftext|>"))
        check(pad == {"tiny-sd-v": "!"}.get(d.name, "<|endoftext|>"), f"{d.name} tokenizer_config pad_token {pad!r}")
    if (root / "tiny-sd-fp16").is_dir() and (root / "tiny-sd").is_dir():
        check_fp16(root / "tiny-sd", root / "tiny-sd-fp16")
    if (root / "tiny-clip" / "model.onnx").is_file():
        check_clip(root / "tiny-clip")
        check_tokenizer(root / "tiny-clip", expect_pad="<|endoftext|>")
    if not args.no_pipeline:
        for d in sd:
            check_pipeline(d)

    print("\n== sizes")
    total = 0
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        total += folder_size(d)
        print(f"  {d.name:14s} {folder_size(d) / 1e6:6.2f} MB")
    print(f"  {'total':14s} {total / 1e6:6.2f} MB")
    check(total < 10e6, "onnx/models under 10 MB")

    print(f"\n{len(failures)} failure(s)" + ("".join(f"\n  - {f}" for f in failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
