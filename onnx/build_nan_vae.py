#!/usr/bin/env python3
"""Build the NaN VAE decoder fixture: tiny-sd's VAE decoder, changed so that it yields NaN for
some latents and the exact same image for the others.

    tests/fixtures/nan-vae/vae_decoder/model.onnx   (+ config.json, tiny-sd's VAE config)

The graph adds `0 * sqrt(latent_sample[0, 1, 3, 3])` to the decoder's output `sample`: when that
value of the latent it decodes (channel 1, row 3, column 3) is negative, the square root is NaN
and so is the whole image; otherwise it adds zero and the image is the one tiny-sd's decoder
gives. (Channel 0's first value is negative for nearly every tiny-sd latent; this one splits:
at 64x64, 3 steps, "a photo of a cat", seeds 1 and 2 stay finite and 3 and 4 fail.) Which candidates
of a job fail is therefore decided by their own final latents, as an overflowing float16 VAE
would decide it, and the others are untouched: the test of per-candidate failures
(tests/nan_candidates.rs) compares them with tiny-sd's own images.

It uses the folder as sdspool's `vae:` replacement takes it (vae_decoder/model.onnx and
vae_decoder/config.json), or as a model folder's vae_decoder.

Usage (offline, a second):
    onnx/.venv/bin/python onnx/build_nan_vae.py [--out tests/fixtures/nan-vae]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "models" / "tiny-sd" / "vae_decoder"
DEFAULT_OUT = HERE.parent / "tests" / "fixtures" / "nan-vae"
# The latent value whose sign decides: [batch, channel, row, column].
GATE = (0, 1, 3, 3)


def nan_decoder(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    latent = graph.input[0].name
    out = graph.output[0].name
    assert (latent, out) == ("latent_sample", "sample"), (latent, out)
    inner = "sample_before_nan_gate"
    for node in graph.node:
        node.output[:] = [inner if o == out else o for o in node.output]
        node.input[:] = [inner if i == out else i for i in node.input]
    consts = {
        "nan_gate_starts": np.array(GATE, dtype=np.int64),
        "nan_gate_ends": np.array(GATE, dtype=np.int64) + 1,
        "nan_gate_zero": np.zeros((), dtype=np.float32),
    }
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    graph.node.extend(
        [
            helper.make_node("Slice", [latent, "nan_gate_starts", "nan_gate_ends"], ["nan_gate_first"]),
            helper.make_node("Sqrt", ["nan_gate_first"], ["nan_gate_root"]),
            helper.make_node("Mul", ["nan_gate_root", "nan_gate_zero"], ["nan_gate_term"]),
            helper.make_node("Add", [inner, "nan_gate_term"], [out]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    model = nan_decoder(onnx.load(str(SOURCE / "model.onnx")))
    dest = args.out / "vae_decoder"
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"))
    shutil.copyfile(SOURCE / "config.json", dest / "config.json")

    # Check: the same image for a latent whose gate value is positive, NaN for a negative one.
    import onnxruntime as ort

    ref = ort.InferenceSession(str(SOURCE / "model.onnx"), providers=["CPUExecutionProvider"])
    gated = ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    x[GATE] = 0.5
    a = ref.run(None, {"latent_sample": x})[0]
    b = gated.run(None, {"latent_sample": x})[0]
    assert np.array_equal(a, b), "a positive first value must decode unchanged"
    x[GATE] = -0.5
    assert np.isnan(gated.run(None, {"latent_sample": x})[0]).all(), "a negative one must give NaN"
    print(f"wrote {dest} ({(dest / 'model.onnx').stat().st_size} bytes); checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
