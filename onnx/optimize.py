#!/usr/bin/env python3
"""Optimise an optimum Stable Diffusion export for ONNX Runtime: the graph step a user runs once
per model folder, before pointing sdspool at the result.

    onnx/.venv/bin/python onnx/optimize.py MODEL_DIR OUT_DIR [--target cuda|cpu] [--fp16]

It runs ONNX Runtime's transformer optimizer for Stable Diffusion (the logic of
onnxruntime/transformers/models/stable_diffusion/optimize_pipeline.py) on every part the folder
has: model type "unet" for unet, "vae" for vae_decoder/vae_encoder, "clip" for text_encoder and
text_encoder_2. Everything else (tokenizers, scheduler, model_index.json, each part's
config.json) is copied unchanged, so OUT_DIR is a model folder sdspool loads as it is.

--target cuda (the default) enables every fusion ONNX Runtime's SD scripts enable: fused
multi-head attention (packed QKV / KV with --fp16), GroupNorm and SkipGroupNorm in channels-last
layout with NHWC convolution, BiasSplitGelu, BiasAdd, LayerNorm / SkipLayerNorm, Gelu. Several
of these operators (GroupNorm, SkipGroupNorm, NhwcConv, BiasSplitGelu, BiasAdd) have CUDA
kernels only: such a graph does not load on the CPU provider.

--target cpu enables only the fusions whose operators have CPU kernels: attention (Attention for
self-attention, MultiHeadAttention for cross-attention, unpacked), LayerNorm, SkipLayerNorm,
Gelu/BiasGelu. The result runs on the CPU provider and on CUDA.

--fp16 converts each part to float16 after fusion (fusion first, as ONNX Runtime's scripts do:
a converted graph no longer matches the patterns) with float16 inputs and outputs
(keep_io_types=False), which sdspool feeds as it does an optimum `--dtype fp16` export: it reads
each part's float type from the session (src/engine/model/family/parts.rs). Integer inputs
(input_ids) stay integer. The SDXL VAE decoder stays float32 (it overflows in float16; ONNX
Runtime's SDXL script keeps it too), and so do the parts named with --keep-fp32. --fp16 is for
--target cuda only: the CPU provider lacks float16 kernels for most of these operators.

ONNX Runtime 1.31's UNet attention matcher fails under NumPy >= 2.3 (get_num_heads calls int()
on a one-element array and raises TypeError on the dynamic-shape graphs optimum exports, so
nothing fuses); this script replaces that one method with a NumPy-2-safe copy (see
`_patch_unet_num_heads`).

Progress is machine-readable, one JSON object per line on stdout:
    {"event": "stage", "stage": "unet", "state": "start"}
    {"event": "stage", "stage": "unet", "state": "done", "seconds": 12.3, "fused": {...},
     "float": "float16"}
    {"event": "done", "out": "OUT_DIR", "seconds": 40.1}
--no-fusion skips the fusions (only the float16 conversion, or a plain copy of the graphs without
--fp16): the unfused baseline onnx/gpu/bench_gpu.py compares against.
and on failure {"event": "error", "message": "..."} with exit status 1 (2 for bad arguments).
OUT_DIR must not exist; the folder is written beside it under a temporary name and renamed into
place when every part is done, so a failed run leaves nothing at OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # the optimizer's progress bars (read when tqdm is imported)

# The parts an optimum export may have, and the optimizer's model type for each.
PART_MODEL_TYPES = {
    "text_encoder": "clip",
    "text_encoder_2": "clip",
    "unet": "unet",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
}

# Operators the CPU provider has no kernel for; --target cpu must produce none of them.
CUDA_ONLY_OPS = ("GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasSplitGelu", "BiasAdd")


class OptimizeError(Exception):
    """A failure to report as {"event": "error"}."""


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def _patch_unet_num_heads() -> None:
    """ONNX Runtime 1.31's FusionAttentionUnet.get_num_heads does int(array of shape [1]), a
    TypeError under NumPy >= 2.3, on the Concat-built reshape shapes of dynamic-shape exports
    (torch 2 pattern). The same logic, reading the single element."""
    import numpy as np
    from onnxruntime.transformers import optimizer  # noqa: F401  (puts the tools on sys.path)

    import fusion_attention_unet as fau

    def get_num_heads(self, reshape_q, is_torch2: bool = False) -> int:
        value = None
        if is_torch2:
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                value = value.reshape(-1) if isinstance(value, np.ndarray) and value.size == 1 else None
        else:
            shape = self.model.get_constant_value(reshape_q.input[1])
            if isinstance(shape, np.ndarray) and list(shape.shape) == [4]:
                value = shape[2:3]
        return max(int(value[0]), 0) if value is not None else 0

    fau.FusionAttentionUnet.get_num_heads = get_num_heads


def self_attention_to_mha(model) -> int:
    """Rewrites each fused self-attention node (com.microsoft Attention with its packed QKV
    weight [C, 3C] and bias [3C]) into three MatMuls and a MultiHeadAttention: the CPU provider's
    Attention kernel materialises the [S, S] scores, its MultiHeadAttention kernel runs MLAS's
    tiled flash attention (float32, no mask). Returns how many nodes were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, rewritten, dropped = [], 0, set()
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Attention" and len(node.input) == 3 else None
        if node.domain != "com.microsoft" or weight is None or len(weight.dims) != 2 or weight.dims[1] % 3:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        width = w.shape[1] // 3
        qkv = []
        for j, tag in enumerate("qkv"):
            name = f"{node.name}_{tag}"
            graph.initializer.append(numpy_helper.from_array(w[:, j * width : (j + 1) * width].copy(), name + "_weight"))
            nodes.append(helper.make_node("MatMul", [node.input[0], name + "_weight"], [name + "_out"], name=name + "_MatMul"))
            qkv.append(name + "_out")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mha = helper.make_node(
            "MultiHeadAttention", [*qkv, node.input[2]], list(node.output), name=node.name + "_mha",
            domain="com.microsoft", num_heads=attrs["num_heads"],
        )
        nodes.append(mha)
        dropped.add(weight.name)
        rewritten += 1
    still_used = {i for n in nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return rewritten


def fusion_options(model_type: str, target: str, fp16: bool):
    from onnxruntime.transformers.fusion_options import FusionOptions

    o = FusionOptions(model_type)
    if target == "cpu":
        o.enable_nhwc_conv = False
        o.enable_group_norm = False
        o.enable_skip_group_norm = False
        o.enable_bias_splitgelu = False
        o.enable_bias_add = False
        o.enable_packed_qkv = False
        o.enable_packed_kv = False
    else:  # as optimize_pipeline.py: packing only pays (and is only fused) in float16
        o.enable_packed_qkv = fp16 and o.enable_packed_qkv
        o.enable_packed_kv = fp16 and o.enable_packed_kv
    return o


def is_sdxl(model_dir: Path) -> bool:
    """SDXL base (two text encoders) or refiner (text_encoder_2 only): the UNet takes text_embeds."""
    return (model_dir / "text_encoder_2").is_dir() or _unet_has(model_dir, "text_embeds")


def _unet_has(model_dir: Path, input_name: str) -> bool:
    import onnx

    m = onnx.load(str(model_dir / "unet" / "model.onnx"), load_external_data=False)
    return any(i.name == input_name for i in m.graph.input)


def has_external_data(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def optimize_part(src: Path, dst: Path, part: str, target: str, fp16: bool, keep_fp32: bool, fuse: bool = True) -> dict:
    """Fuses one part's graph (and converts it to float16) from src/model.onnx into
    dst/model.onnx; returns the fused-operator counts and the float type written. Without
    fuse only the float16 conversion runs (the unfused baseline of onnx/gpu/bench_gpu.py)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = PART_MODEL_TYPES[part]
    src_file = src / "model.onnx"
    external = has_external_data(src_file)
    if not fuse:
        m = OnnxModel(onnx.load(str(src_file)))
    else:
        m = optimize_model(
            str(src_file),
            model_type=model_type,
            num_heads=0,  # read from the graph
            hidden_size=0,
            opt_level=0,  # only the Python fusions; ONNX Runtime's own run at session creation
            optimization_options=fusion_options(model_type, target, fp16),
            use_gpu=target == "cuda",
        )
    if fuse and target == "cpu" and self_attention_to_mha(m.model):
        m.topological_sort()
    fused = {k: v for k, v in m.get_fused_operator_statistics().items() if v} if fuse else {}
    if target == "cpu":
        bad = sorted({n.op_type for n in m.model.graph.node} & set(CUDA_ONLY_OPS))
        if bad:
            raise OptimizeError(f"{part}: --target cpu produced CUDA-only operators {bad}")
    converted = fp16 and not keep_fp32
    if converted:
        m.convert_float_to_float16(keep_io_types=False)
    # Graphs over 2 GB (an fp32 SD 1.5 UNet) need external data; keep what the source used.
    big = external or m.model.ByteSize() > 1_900_000_000
    m.save_model_to_file(str(dst / "model.onnx"), use_external_data_format=big)
    float_type = check_io(part, src_file, dst / "model.onnx", converted)
    return {"fused": fused, "float": float_type, "external_data": big}


def check_io(part: str, src_file: Path, dst_file: Path, converted: bool) -> str:
    """The written graph keeps the source's input and output names and integer types; its float
    ones are the source's, or float16 where converted: what sdspool's signature check
    (src/engine/model/family/parts.rs) accepts, as it does an optimum --dtype fp16 export.
    Returns the float type of the written graph's inputs and outputs."""
    import onnx

    floats = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}

    def ports(path: Path):
        g = onnx.load(str(path), load_external_data=False).graph
        return [(v.name, v.type.tensor_type.elem_type) for v in [*g.input, *g.output]]

    def expected(elem: int) -> int:
        return onnx.TensorProto.FLOAT16 if converted and elem in floats else elem

    want = [(name, expected(elem)) for name, elem in ports(src_file)]
    got = ports(dst_file)
    if got != want:
        raise OptimizeError(f"{part}: inputs/outputs changed: {got} (expected {want})")
    return next((floats[e] for _, e in got if e in floats), "none")


def copy_tree_without_graphs(model_dir: Path, out: Path) -> None:
    """Everything but the parts' graphs and weights: tokenizers, scheduler, model_index.json,
    each part's config.json."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        # A part's folder keeps only its JSON (config.json): graphs and weights are rewritten,
        # and torch.onnx.export writes a >2 GB model's weights as one file per tensor.
        if Path(folder).parent == model_dir and Path(folder).name in PART_MODEL_TYPES:
            return [n for n in names if not n.endswith(".json")]
        return []

    shutil.copytree(model_dir, out, ignore=ignore)


def run(model_dir: Path, out_dir: Path, target: str, fp16: bool, keep_fp32: set[str], fuse: bool = True) -> None:
    if not (model_dir / "model_index.json").is_file():
        raise OptimizeError(f"{model_dir}: no model_index.json (not a diffusers/optimum model folder)")
    parts = [p for p in PART_MODEL_TYPES if (model_dir / p / "model.onnx").is_file()]
    if "unet" not in parts:
        raise OptimizeError(f"{model_dir}: no unet/model.onnx")
    if out_dir.exists():
        raise OptimizeError(f"{out_dir}: already exists (choose a new folder)")
    unknown = keep_fp32 - set(parts)
    if unknown:
        raise OptimizeError(f"--keep-fp32 {sorted(unknown)}: not a part of {model_dir} (parts: {parts})")
    if fp16 and is_sdxl(model_dir):
        keep_fp32 = keep_fp32 | {"vae_decoder"}
    _patch_unet_num_heads()
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staging = tmp / "model"
        copy_tree_without_graphs(model_dir, staging)
        for part in parts:
            emit(event="stage", stage=part, state="start")
            t0 = time.monotonic()
            try:
                info = optimize_part(model_dir / part, staging / part, part, target, fp16, part in keep_fp32, fuse)
            except OptimizeError:
                raise
            except Exception as e:  # the optimizer's own failures, named by part
                raise OptimizeError(f"{part}: {type(e).__name__}: {e}") from e
            emit(event="stage", stage=part, state="done", seconds=round(time.monotonic() - t0, 2), **info)
        (staging / "optimized.json").write_text(
            json.dumps(
                {"generator": "onnx/optimize.py", "source": str(model_dir), "target": target, "fp16": fp16, "fused": fuse,
                 "onnxruntime": _ort_version(), "float32_parts": sorted(keep_fp32) if fp16 else parts},
                indent=1,
            )
            + "\n"
        )
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(event="done", out=str(out_dir), seconds=round(time.monotonic() - started, 2))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        emit(event="error", message=message)
        self.exit(2)


def main(argv=None) -> int:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="optimum export (model_index.json, unet/, ...)")
    ap.add_argument("out_dir", type=Path, help="new folder for the optimised model (must not exist)")
    ap.add_argument("--target", choices=("cuda", "cpu"), default="cuda", help="provider the graph is for")
    ap.add_argument("--fp16", action="store_true", help="convert to float16 (float16 inputs/outputs; cuda only)")
    ap.add_argument("--no-fusion", action="store_true", help="no fusion, only the float16 conversion (a baseline)")
    ap.add_argument("--keep-fp32", default="", help="comma-separated parts left in float32 with --fp16")
    args = ap.parse_args(argv)
    if args.fp16 and args.target == "cpu":
        ap.error("--fp16 needs --target cuda: the CPU provider has no float16 kernels for the fused operators")
    keep = {p for p in args.keep_fp32.split(",") if p}
    try:
        run(args.model_dir, args.out_dir, args.target, args.fp16, keep, fuse=not args.no_fusion)
    except OptimizeError as e:
        emit(event="error", message=str(e))
        return 1
    except Exception as e:  # anything else still ends in one error line
        emit(event="error", message=f"{type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
