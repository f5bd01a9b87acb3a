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
    """`nodes` is a node list, or (nodes, initializers)."""
    nodes, initializer = nodes if isinstance(nodes, tuple) else (nodes, [])
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / f"{name}.onnx")
    print("wrote", OUT / f"{name}.onnx")


def unet(sample_name="sample", sample_dims=("batch", 4, "h", "w"), out_elem=F32, extra=()):
    """A 'UNet' whose out_sample is its sample (cast to out_elem); `extra` adds inputs."""
    inputs = [
        value(sample_name, F32, list(sample_dims)),
        value("timestep", F32, []),
        value("encoder_hidden_states", F32, ["batch", "seq", 32]),
        *extra,
    ]
    outputs = [value("out_sample", out_elem, list(sample_dims))]
    nodes = [helper.make_node("Cast", [sample_name], ["out_sample"], to=out_elem)]
    return inputs, outputs, nodes


def unet_extra_input():
    """A 'UNet' that also takes text_embeds [batch, 1280]: out_sample = sample * mean(text_embeds)."""
    inputs, outputs, _ = unet(extra=[value("text_embeds", F32, ["batch", 1280])])
    mean_axes = helper.make_tensor("mean_axes", TensorProto.INT64, [1], [1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["text_embeds", "mean_axes"], ["mean"], keepdims=1),
        helper.make_node("Unsqueeze", ["mean", "axes"], ["scale"]),
        helper.make_node("Mul", ["sample", "scale"], ["out_sample"]),
    ]
    return inputs, outputs, (nodes, [mean_axes, axes])


def main():
    # optimum's name is `sample`; this one calls it `latents`.
    save("unet_renamed_input", *unet(sample_name="latents"))
    # `sample` must be rank 4 [batch, 4, h, w].
    save("unet_wrong_rank", *unet(sample_dims=("batch", 4, "hw")))
    # float32 inputs with a float16 output: a half-converted model.
    save("unet_mixed_precision", *unet(out_elem=TensorProto.FLOAT16))
    # SDXL's conditioning input in a folder whose model_index.json names SD 1.x/2.x. Its
    # out_sample is sample times the mean of text_embeds, so a run must feed it.
    save("unet_extra_input", *unet_extra_input())
    # A VAE decoder for 16 latent channels, beside a UNet for 4.
    weight = helper.make_tensor("weight", F32, [3, 16, 1, 1], [0.0] * 48)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["latent_sample", "weight"], ["sample"])],
        "vae_decoder_16_channels",
        [value("latent_sample", F32, ["batch", 16, "h", "w"])],
        [value("sample", F32, ["batch", 3, "h", "w"])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, OUT / "vae_decoder_16_channels.onnx")
    print("wrote", OUT / "vae_decoder_16_channels.onnx")
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
