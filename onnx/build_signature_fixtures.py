"""Writes small ONNX models with deliberately wrong signatures for sdspool's model checks.

Each file stands in for one component of a Stable Diffusion export and differs from what
optimum writes in one way (a renamed input, a wrong rank, a wrong element type). The graphs are
trivial (Identity/Cast/Reshape nodes); only their inputs and outputs matter.

    onnx/.venv/bin/python onnx/build_signature_fixtures.py   # writes tests/fixtures/signatures/
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "signatures"
F32 = TensorProto.FLOAT


def value(name, elem, dims):
    return helper.make_tensor_value_info(name, elem, dims)


def save(name, inputs, outputs, nodes):
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / f"{name}.onnx")
    print("wrote", OUT / f"{name}.onnx")


def unet(sample_name="sample", sample_dims=("batch", 4, "h", "w"), out_elem=F32):
    """A 'UNet' whose out_sample is its sample (cast to out_elem)."""
    inputs = [
        value(sample_name, F32, list(sample_dims)),
        value("timestep", F32, []),
        value("encoder_hidden_states", F32, ["batch", "seq", 32]),
    ]
    outputs = [value("out_sample", out_elem, list(sample_dims))]
    nodes = [helper.make_node("Cast", [sample_name], ["out_sample"], to=out_elem)]
    return inputs, outputs, nodes


def main():
    # optimum's name is `sample`; this one calls it `latents`.
    save("unet_renamed_input", *unet(sample_name="latents"))
    # `sample` must be rank 4 [batch, 4, h, w].
    save("unet_wrong_rank", *unet(sample_dims=("batch", 4, "hw")))
    # float32 inputs with a float16 output: a half-converted model.
    save("unet_mixed_precision", *unet(out_elem=TensorProto.FLOAT16))
    # The text encoder must take integer token ids.
    ids = value("input_ids", F32, ["batch", 77])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["input_ids", "axes"], ["last_hidden_state"])],
        "text_encoder_float_ids",
        [ids],
        [value("last_hidden_state", F32, ["batch", 77, 1])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, OUT / "text_encoder_float_ids.onnx")
    print("wrote", OUT / "text_encoder_float_ids.onnx")


if __name__ == "__main__":
    main()
