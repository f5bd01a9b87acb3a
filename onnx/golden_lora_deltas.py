#!/usr/bin/env python3
"""diffusers' own LoRA fusion of the tiny fixtures, as weight deltas per module (issue 22, Rust template route).

For each case below the checkpoint is loaded as onnx/import_checkpoint.py loads it (`load_pipeline`), its
UNet and text-encoder parameters are copied, the LoRAs are fused at the case's weights by
`import_checkpoint.apply_loras` (diffusers' `load_lora_weights` + `set_adapters` + `fuse_lora` +
`unload_lora_weights`), and fused minus unfused is recorded for every parameter that changed.
The fixture LoRAs change linear layers only, with one alpha and one rank each; the script also writes
small LoRAs of its own (WRITTEN, tests/golden/lora/*.safetensors, the same bytes on every run) that
change convolutions (3x3 and 1x1, kohya LoCon-style and PEFT, float16, alpha != rank, a negative
weight) and that mix alphas and ranks within a file.

  tests/golden/lora/<case>.deltas.npy   float32, every delta flattened and concatenated
  tests/golden/lora/index.json          {"cases": {case: {"checkpoint", "family", "loras": [[file, weight]],
                                          (files relative to the repository root)
                                          "deltas": "<case>.deltas.npy",
                                          "modules": [{"component", "module", "shape", "offset"}]}}}

`component` is unet | text_encoder | text_encoder_2, `module` the dotted diffusers module path (the
parameter is `<module>.weight`), `offset` the element offset into the .npy. The script fails when a
parameter other than a `.weight` changed. tests/lora_fuse.rs compares engine::checkpoint::lora_fuse::deltas
with these (1e-6 absolute, the same set of modules).

    HF_HUB_OFFLINE=1 PYTHONPATH=<peft/accelerate> onnx/.venv/bin/python onnx/golden_lora_deltas.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import import_checkpoint as ic  # noqa: E402  (sets the offline environment)
import numpy as np  # noqa: E402
import torch  # noqa: E402

FIX = "tests/fixtures/import"
GOLDEN = ROOT / "tests" / "golden" / "lora"
CONV = "tests/golden/lora"

# case -> (checkpoint, [(lora, weight)]), relative to the repository root: the LoRA cases of
# golden_import.py with the same weights, and the convolution LoRAs this script writes
CASES = {
    "sd15": (f"{FIX}/sd15.safetensors", [(f"{FIX}/lora-sd15-kohya.safetensors", 0.8), (f"{FIX}/lora-sd15-peft.safetensors", 0.5)]),
    "sdxl": (f"{FIX}/sdxl.safetensors", [(f"{FIX}/lora-sdxl-kohya.safetensors", 0.7), (f"{FIX}/lora-sdxl-peft.safetensors", 0.4)]),
    "sd15-conv": (f"{FIX}/sd15.safetensors", [(f"{CONV}/lora-sd15-conv-kohya.safetensors", 0.6), (f"{CONV}/lora-sd15-conv-peft.safetensors", -0.3)]),
    "sd15-alpha": (f"{FIX}/sd15.safetensors", [(f"{CONV}/lora-sd15-alpha-kohya.safetensors", 0.9), (f"{CONV}/lora-sd15-ranks-peft.safetensors", 0.7)]),
}

# file -> (layout, [(layer, down shape, up shape, alpha or None)]): LoRAs this script writes for the tiny
# SD 1.5 fixture. The conv files change convolutions (3x3, 1x1); the alpha files exercise which
# lora_alpha diffusers' get_peft_kwargs gives a layer (engine::checkpoint::lora_alpha): kohya layers
# partly with alpha (the others, and attention projections, get the most common one), text-encoder
# layers with none and mixed ranks (all get the rank of the first in the model's order: v_proj before
# q_proj), a PEFT file mixing ranks (the first key's rank for all).
A = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
P = "unet.down_blocks.0.attentions.0.transformer_blocks.0."
WRITTEN = {
    "lora-sd15-conv-kohya.safetensors": ("kohya", [
        ("lora_unet_down_blocks_0_resnets_0_conv1", [4, 16, 3, 3], [16, 4, 1, 1], 3.0),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", [4, 16, 1, 1], [16, 4, 1, 1], 3.0),
        ("lora_unet_down_blocks_1_resnets_0_conv_shortcut", [4, 16, 1, 1], [32, 4, 1, 1], 3.0),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj", [4, 16], [128, 4], 3.0),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", [4, 32], [37, 4], 3.0),
    ]),
    "lora-sd15-conv-peft.safetensors": ("peft", [
        ("unet.down_blocks.0.resnets.0.conv1", [3, 16, 3, 3], [16, 3, 1, 1], None),
        ("unet.down_blocks.0.resnets.0.conv2", [3, 16, 3, 3], [16, 3, 1, 1], None),
        ("unet.up_blocks.1.attentions.0.proj_out", [3, 16, 1, 1], [16, 3, 1, 1], None),
    ]),
    "lora-sd15-alpha-kohya.safetensors": ("kohya", [
        (A + "attn1_to_q", [4, 16], [16, 4], 1.0),
        (A + "attn1_to_k", [4, 16], [16, 4], 3.0),
        (A + "attn1_to_v", [4, 16], [16, 4], 3.0),
        (A + "attn1_to_out_0", [4, 16], [16, 4], None),
        (A + "attn2_to_q", [2, 16], [16, 2], None),
        # not attention projections: their own alpha holds (alpha_pattern), 1 differing from the 3 of most
        (A + "ff_net_2", [4, 64], [16, 4], 1.0),
        ("lora_unet_down_blocks_0_attentions_0_proj_out", [4, 16, 1, 1], [16, 4, 1, 1], 3.0),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", [2, 32], [32, 2], None),
        ("lora_te_text_model_encoder_layers_0_self_attn_v_proj", [4, 32], [32, 4], None),
        ("lora_te_text_model_encoder_layers_1_self_attn_k_proj", [3, 32], [32, 3], None),
        # diffusers 0.39 cannot load kohya text-encoder attention LoRAs without an out_proj ("Could not
        # automatically infer state dict type": it tells the old attention-processor names by to_out_lora)
        ("lora_te_text_model_encoder_layers_1_self_attn_out_proj", [2, 32], [32, 2], None),
    ]),
    "lora-sd15-ranks-peft.safetensors": ("peft", [
        (P + "attn1.to_k", [3, 16], [16, 3], None),
        (P + "attn1.to_q", [1, 16], [16, 1], None),
        (P + "attn2.to_v", [2, 32], [16, 2], None),
        (P + "ff.net.2", [2, 64], [16, 2], None),
        ("text_encoder.text_model.encoder.layers.1.mlp.fc1", [2, 32], [37, 2], None),
        ("text_encoder.text_model.encoder.layers.0.self_attn.out_proj", [1, 32], [32, 1], None),
    ]),
}


def write_loras() -> None:
    """The files of WRITTEN, float16, from one seeded generator (the same bytes on every run)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(2201)
    for file, (layout, layers) in WRITTEN.items():
        down_name, up_name = ("lora_down", "lora_up") if layout == "kohya" else ("lora_A", "lora_B")
        tensors = {}
        for name, down, up, alpha in layers:
            tensors[f"{name}.{down_name}.weight"] = (torch.randn(down, generator=g) * 0.3).half()
            tensors[f"{name}.{up_name}.weight"] = (torch.randn(up, generator=g) * 0.3).half()
            if alpha is not None:
                tensors[f"{name}.alpha"] = torch.tensor(alpha).half()
        save_file(tensors, str(ROOT / CONV / file))


COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def parameters(pipe) -> dict[tuple[str, str], torch.Tensor]:
    """(component, parameter name) -> a copy of the parameter, for the components LoRAs change."""
    out = {}
    for c in COMPONENTS:
        model = getattr(pipe, c, None)
        if model is not None:
            for name, p in model.state_dict().items():
                out[(c, name)] = p.detach().clone()
    return out


def record(case: str) -> dict:
    checkpoint, loras = CASES[case]
    family, shapes = ic.detect(ROOT / checkpoint, None)
    pipe, _prediction = ic.load_pipeline(ROOT / checkpoint, family, None, shapes)
    before = parameters(pipe)
    ic.apply_loras(pipe, [(ROOT / p, w) for p, w in loras], family)
    after = parameters(pipe)
    if set(before) != set(after):
        sys.exit(f"[{case}] the parameters changed names: {sorted(set(before) ^ set(after))[:6]}")
    modules, chunks, offset = [], [], 0
    for (c, name), old in sorted(before.items()):
        delta = after[(c, name)] - old
        if not bool((delta != 0).any()):
            continue
        if not name.endswith(".weight"):
            sys.exit(f"[{case}] fusion changed {c}.{name}, not a weight")
        flat = delta.to(torch.float32).flatten().numpy()
        modules.append({"component": c, "module": name.removesuffix(".weight"), "shape": list(delta.shape), "offset": offset})
        chunks.append(flat)
        offset += flat.size
    np.save(GOLDEN / f"{case}.deltas.npy", np.concatenate(chunks).astype("<f4"))
    print(f"[{case}] {len(modules)} modules changed, {offset} values", flush=True)
    return {"checkpoint": checkpoint, "family": family, "loras": [[p, w] for p, w in loras], "deltas": f"{case}.deltas.npy", "modules": modules}


def main() -> int:
    torch.use_deterministic_algorithms(True)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    write_loras()
    index = {"cases": {case: record(case) for case in CASES}}
    (GOLDEN / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
