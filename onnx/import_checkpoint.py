#!/usr/bin/env python3
"""Single-file checkpoint (+ LoRAs, + VAE) -> an optimum ONNX model folder sdspool loads (issue 22).

    HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/import_checkpoint.py --checkpoint FILE --out DIR --name NAME \
        [--family sd15|sd2|sdxl|sdxl-refiner] [--prediction-type epsilon|v_prediction] \
        [--lora FILE:WEIGHT]... [--vae FILE] [--fp16] [--optimize [--target cpu|cuda]]

Offline throughout: the diffusers configs `from_single_file` needs are generated from the checkpoint's
key names and shapes (checkpoint_layout.py), the tokenizers from open_clip's copy of the CLIP BPE
truncated to the checkpoint's vocabulary size; nothing is fetched.

Stages (one JSON line each on stdout, start and done): detect (family and prediction type from the
keys and shapes; SD 2.x v-prediction by AUTOMATIC1111's test run of the UNet unless the file has a
`v_pred` key, ComfyUI's marker), load (diffusers `from_single_file` with the generated configs), lora
(each LoRA loaded with `load_lora_weights`, weighted with `set_adapters`, then `fuse_lora` and
`unload_lora_weights`), vae (replacement VAE, single-file or diffusers keys), export (save_pretrained,
then optimum's `main_export --task text-to-image`, float32 or `--dtype fp16`), validate (the exported
folder's parts are present), write (sdspool-source.json, then onnx/optimize.py with --optimize).
Then {"event":"done","out":DIR}. A refused input exits 2 after
{"event":"error","kind":...,"file":...,"message":...,"keys":[...]}; kinds: unknown_architecture,
lora_mismatch, truncated, unreadable, bad_argument, optimize_missing, export_failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_test_models as btm  # noqa: E402  (sets HF_HUB_OFFLINE and friends, silences warnings)
import checkpoint_layout as cl  # noqa: E402

FORMAT = 1
TOOL_VERSION = 1
STDOUT = sys.stdout


class ImportError_(Exception):
    def __init__(self, kind: str, file: str | None, message: str, keys: list[str] | None = None):
        super().__init__(message)
        self.kind, self.file, self.keys = kind, file, keys or []


def emit(**event) -> None:
    STDOUT.write(json.dumps(event) + "\n")
    STDOUT.flush()


@contextmanager
def stage(name: str):
    emit(event="stage", stage=name, state="start")
    t0 = time.monotonic()
    yield
    emit(event="stage", stage=name, state="done", seconds=round(time.monotonic() - t0, 3))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def legacy_hash(path: Path) -> str:
    """AUTOMATIC1111's old 8-hex "Model hash": SHA-256 of the 64 KiB at offset 1 MiB (of nothing
    for a shorter file). It cannot be derived from the whole-file SHA-256, so it is recorded."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def addnet_sha256(path: Path) -> str | None:
    """The hash AUTOMATIC1111 records for a .safetensors LoRA in `Lora hashes`: the file's
    `sshs_model_hash` metadata when it has one, else kohya's "addnet" hash, the SHA-256 of the
    file after its header. None for other files (recorded by their whole-file SHA-256)."""
    if path.suffix != ".safetensors":
        return None
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n)).get("__metadata__") or {}
        if re.fullmatch(r"[0-9a-fA-F]{64}", str(meta.get("sshs_model_hash", ""))):
            return meta["sshs_model_hash"].lower()
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()


def lora_entry(p: Path, weight: float) -> dict:
    entry = {"name": p.stem, "file": p.name, "sha256": sha256(p), "weight": weight}
    addnet = addnet_sha256(p)
    if addnet is not None:
        entry["addnet_sha256"] = addnet
    return entry


# --------------------------------------------------------------------------- reading files


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Key -> shape from a .safetensors header; a file shorter than its header says is `truncated`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ImportError_("truncated", str(path), f"{size} bytes: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ImportError_("truncated", str(path), f"header says {n} bytes of JSON, the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ImportError_("unreadable", str(path), f"safetensors header is not JSON: {e}") from e
    end = 0
    shapes = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        shapes[k] = list(v["shape"])
        end = max(end, v["data_offsets"][1])
    if 8 + n + end > size:
        raise ImportError_("truncated", str(path), f"tensor data ends at byte {8 + n + end}, the file has {size} bytes")
    return shapes


def load_state(path: Path) -> dict:
    """The tensors of a .safetensors or .ckpt (torch.load with weights_only; a nested `state_dict` is unwrapped)."""
    import torch

    if path.suffix == ".safetensors":
        safetensors_shapes(path)
        from safetensors.torch import load_file

        return load_file(str(path))
    import zipfile

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; without its end record the file was cut short
        raise ImportError_("truncated", str(path), "a torch.save zip archive without its end record: the file is cut short")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        kind = "truncated" if "EOF" in str(e) or "central directory" in str(e) else "unreadable"
        raise ImportError_(kind, str(path), f"torch.load failed: {e}") from e
    return data.get("state_dict", data)


def shapes_of(path: Path) -> dict[str, list[int]]:
    if path.suffix == ".safetensors":
        return safetensors_shapes(path)
    return {k: list(v.shape) for k, v in load_state(path).items() if hasattr(v, "shape")}


# --------------------------------------------------------------------------- configs


SCHEDULERS = {
    "sd15": btm.SD15_SCHEDULER,
    "sd2": btm.SD21_SCHEDULER,
}


def sdxl_scheduler():
    import build_sdxl_models as bsx

    return dict(bsx.SDXL_SCHEDULER)


def write_tokenizer(dest: Path, vocab_size: int, pad: str) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = btm.clip_bpe_files(dest / "bpe", n_merges=vocab_size - 512 - 2)
    tok = CLIPTokenizer(
        str(vocab),
        str(merges),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token=pad,
        model_max_length=77,
    )
    if len(tok) != vocab_size:
        raise ImportError_("unknown_architecture", None, f"text encoder vocabulary {vocab_size} is not a CLIP BPE size")
    tok.save_pretrained(str(dest))
    shutil.rmtree(dest / "bpe")


def write_configs(shapes, family: str, prediction: str, root: Path) -> None:
    """A diffusers pipeline folder without weights: what from_single_file(config=root) reads."""

    def dump(rel: str, data: dict):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2))

    dump("unet/config.json", cl.unet_config(shapes, family, prediction))
    dump("vae/config.json", cl.vae_config(shapes, family))
    if family in ("sd15", "sd2"):
        sched = dict(SCHEDULERS[family], prediction_type=prediction)
        openclip = family == "sd2"
        prefix = cl.SD2_TE if openclip else cl.SD1_TE
        layers = sum(1 for k in shapes if k.startswith(prefix) and k.endswith(("ln_1.weight", "layer_norm1.weight")))
        te = cl.clip_config(shapes, prefix, openclip, drop_last_layer=openclip and layers == 24, with_projection=False, pad_id=0 if openclip else -1)
        te["pad_token_id"] = te["vocab_size"] - 1 if not openclip else 0
        dump("text_encoder/config.json", te)
        write_tokenizer(root / "tokenizer", te["vocab_size"], "!" if openclip else "<|endoftext|>")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.39.0",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", sched["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
    else:
        sched = dict(sdxl_scheduler(), prediction_type=prediction)
        te2_prefix = cl.XL_TE2 if family == "sdxl" else cl.REFINER_TE
        te2 = cl.clip_config(shapes, te2_prefix, True, drop_last_layer=False, with_projection=True, pad_id=0)
        dump("text_encoder_2/config.json", te2)
        write_tokenizer(root / "tokenizer_2", te2["vocab_size"], "!")
        index = {
            "_diffusers_version": "0.39.0",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "scheduler": ["diffusers", sched["_class_name"]],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        if family == "sdxl":
            te1 = cl.clip_config(shapes, cl.XL_TE1, False, drop_last_layer=False, with_projection=False, pad_id=0)
            te1["pad_token_id"] = te1["vocab_size"] - 1
            dump("text_encoder/config.json", te1)
            write_tokenizer(root / "tokenizer", te1["vocab_size"], "<|endoftext|>")
            index.update(
                _class_name="StableDiffusionXLPipeline",
                text_encoder=["transformers", "CLIPTextModel"],
                tokenizer=["transformers", "CLIPTokenizer"],
                force_zeros_for_empty_prompt=True,
            )
        else:
            index.update(
                _class_name="StableDiffusionXLImg2ImgPipeline",
                text_encoder=[None, None],
                tokenizer=[None, None],
                requires_aesthetics_score=True,
                force_zeros_for_empty_prompt=False,
            )
    dump("scheduler/scheduler_config.json", sched)
    dump("model_index.json", index)


# --------------------------------------------------------------------------- detect / load


def pipeline_class(family: str):
    import diffusers

    return {
        "sd15": diffusers.StableDiffusionPipeline,
        "sd2": diffusers.StableDiffusionPipeline,
        "sdxl": diffusers.StableDiffusionXLPipeline,
        "sdxl-refiner": diffusers.StableDiffusionXLImg2ImgPipeline,
    }[family]


def detect(path: Path, family: str | None) -> tuple[str, dict]:
    shapes = shapes_of(path)
    try:
        found = cl.detect_family(shapes)
    except cl.LayoutError as e:
        raise ImportError_(e.kind, str(path), str(e), e.keys) from e
    if family and family != found:
        # --family overrides; a family whose parts are missing fails when its configs are generated
        found = family
    return found, shapes


def v_prediction_test(unet, hidden: int) -> float:
    """AUTOMATIC1111's is_using_v_parameterization_for_sd2 on the loaded UNet: v when the result is < -1."""
    import torch

    with torch.no_grad():
        x = torch.ones((1, 4, 8, 8)) * 0.5
        ctx = torch.ones((1, 2, hidden)) * 0.5
        return float((unet(x, torch.tensor([999.0]), encoder_hidden_states=ctx).sample - x).mean())


def load_pipeline(path: Path, family: str, prediction: str | None, shapes=None):
    """from_single_file with generated configs. prediction None: `v_pred` key, then A1111's test for SD 2.x."""
    import torch

    shapes = shapes or shapes_of(path)
    guess = prediction or ("v_prediction" if "v_pred" in shapes else "epsilon")
    with tempfile.TemporaryDirectory(prefix="sdspool-config-") as tmp:
        root = Path(tmp) / "config"
        try:
            write_configs(shapes, family, guess, root)
        except (KeyError, StopIteration, cl.LayoutError) as e:
            keys = e.keys if isinstance(e, cl.LayoutError) else [str(e)]
            raise ImportError_("unknown_architecture", str(path), f"the checkpoint does not have the parts of {family}: missing {e}", keys) from e
        pipe = pipeline_class(family).from_single_file(
            str(path), config=str(root), local_files_only=True, torch_dtype=torch.float32
        )
    if prediction is None and family == "sd2" and "v_pred" not in shapes:
        hidden = pipe.text_encoder.config.hidden_size
        found = "v_prediction" if v_prediction_test(pipe.unet, hidden) < -1 else "epsilon"
        if found != guess:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=found)
            pipe.unet.register_to_config(upcast_attention=found == "v_prediction", sample_size=96 if found == "v_prediction" else 64)
        guess = found
    return pipe, guess


# --------------------------------------------------------------------------- LoRA / VAE


def lora_family_problem(keys: list[str], family: str) -> str | None:
    """Which family a LoRA's keys were trained for, when it is not this one."""
    xl_keys = any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys)
    sd_te = any(k.startswith(("lora_te_", "text_encoder.")) for k in keys)
    xl = family.startswith("sdxl")
    if xl and sd_te and not xl_keys:
        return "a LoRA for SD 1.x/2.x (its text-encoder keys are lora_te_ / text_encoder.), not SDXL"
    if not xl and xl_keys:
        return "a LoRA for SDXL (lora_te1_/lora_te2_/text_encoder_2. keys), not SD 1.x/2.x"
    if family == "sdxl-refiner" and any(k.startswith(("lora_te1_", "text_encoder.")) for k in keys):
        return "a LoRA for the SDXL base (lora_te1_ / text_encoder. keys: the first text encoder, which the refiner does not have), not the refiner"
    return None


_LORA_FORMS = [
    # diffusers' older attention-processor names, as lora_state_dict returns kohya files converted
    (re.compile(r"(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$"), lambda m: (f"{m[1]}.{m[2]}" + (".0" if m[2] == "to_out" else ""), m[3])),
    (re.compile(r"(.*)\.lora_linear_layer\.(down|up)\.weight$"), lambda m: (m[1], m[2])),
    (re.compile(r"(.*)\.lora\.(down|up)\.weight$"), lambda m: (m[1], m[2])),
    (re.compile(r"(.*)\.lora_(A|B)\.weight$"), lambda m: (m[1], "down" if m[2] == "A" else "up")),
]


def lora_target(key: str) -> tuple[str, str, str] | None:
    """A LoRA tensor name as diffusers' lora_state_dict returns it -> (component, module path, down|up)."""
    part, _, rest = key.partition(".")
    m = re.match(r"(.*)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$", rest)
    if m and part.startswith("text_encoder"):  # the same old names for CLIP's q_proj / k_proj / v_proj / out_proj
        return part, f"{m[1]}.{m[2][3:]}_proj", m[3]
    for rx, make in _LORA_FORMS:
        m = rx.match(rest)
        if m:
            name, side = make(m)
            return part, name, side
    return None


def check_lora(pipe, path: Path, state: dict, family: str) -> None:
    """Refuse a LoRA for another family or with keys that match no module of this pipeline."""
    keys = sorted(state)
    problem = lora_family_problem(keys, family)
    if problem:
        raise ImportError_("lora_mismatch", str(path), problem, keys[:6])
    try:
        # unet_config as load_lora_weights passes it: kohya SDXL files name the UNet by its single-file blocks
        converted, _alphas = pipe.lora_state_dict(dict(state), unet_config=pipe.unet.config)
    except Exception as e:  # noqa: BLE001 - diffusers raises ValueError/KeyError for unknown layouts
        raise ImportError_("lora_mismatch", str(path), f"not a LoRA layout diffusers knows: {e}", keys[:6]) from e
    bad = []
    modules = {}
    for key, tensor in converted.items():
        target = lora_target(key)
        if target is None:
            bad.append(key)
            continue
        part, name, side = target
        if part not in modules:
            model = getattr(pipe, part, None)
            modules[part] = dict(model.named_modules()) if model is not None else {}
        module = modules[part].get(name)
        if module is None or not hasattr(module, "weight"):
            bad.append(key)
            continue
        w = module.weight
        if (side == "down" and tensor.shape[1] != w.shape[1]) or (side == "up" and tensor.shape[0] != w.shape[0]):
            bad.append(f"{key} {list(tensor.shape)} vs {list(w.shape)}")
    if bad or not converted:
        raise ImportError_(
            "lora_mismatch",
            str(path),
            f"{len(bad)} of {len(converted)} LoRA tensors match no layer of this {family} checkpoint",
            bad[:6] or keys[:6],
        )


def apply_loras(pipe, loras: list[tuple[Path, float]], family: str) -> None:
    """load_lora_weights each, set_adapters with the weights, fuse_lora, unload_lora_weights (diffusers' own fusion)."""
    names = []
    for i, (path, _w) in enumerate(loras):
        state = load_state(path)
        check_lora(pipe, path, state, family)
        name = f"l{i}_{''.join(c if c.isalnum() else '_' for c in path.stem)}"
        # the tensors themselves, not the path: offline, diffusers wants a weight_name for a path
        pipe.load_lora_weights(dict(state), adapter_name=name)
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[w for _p, w in loras])
    components = [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]
    pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()


def replace_vae(pipe, path: Path) -> None:
    from diffusers import AutoencoderKL

    state = load_state(path)
    if any(k.startswith(("encoder.down_blocks", "decoder.up_blocks")) for k in state):
        vae = AutoencoderKL.from_config(pipe.vae.config)
        missing, unexpected = vae.load_state_dict(state, strict=False)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "vae").mkdir()
            pipe.vae.save_config(str(Path(tmp) / "vae"))
            try:
                vae = AutoencoderKL.from_single_file(str(path), config=tmp, subfolder="vae", local_files_only=True)
            except Exception as e:  # noqa: BLE001
                raise ImportError_("unknown_architecture", str(path), f"not a VAE this checkpoint's VAE config fits: {e}", sorted(state)[:6]) from e
        missing, unexpected = [], []
    if missing or unexpected:
        raise ImportError_("unknown_architecture", str(path), "VAE keys do not fit", (missing + unexpected)[:6])
    pipe.vae = vae
    pipe.register_modules(vae=vae)


# --------------------------------------------------------------------------- export / write


def export(pipe, out: Path, fp16: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="sdspool-import-") as tmp:
        src = Path(tmp) / out.name
        pipe.save_pretrained(str(src))
        kwargs = {"dtype": "fp16", "atol": 0.1} if fp16 else {}
        btm.optimum_export(src, out, "text-to-image", **kwargs)


def validate(out: Path, family: str) -> None:
    parts = ["unet", "vae_decoder", "scheduler"] + (["text_encoder_2", "tokenizer_2"] if family.startswith("sdxl") else [])
    if family != "sdxl-refiner":
        parts += ["text_encoder", "tokenizer"]
    missing = [p for p in parts if not (out / p).is_dir()]
    if missing or not (out / "model_index.json").is_file():
        raise ImportError_("export_failed", str(out), f"the export lacks {missing or ['model_index.json']}")


def provenance(args, family: str, loras, fp16: bool, optimized: bool) -> dict:
    import diffusers
    from importlib.metadata import version

    return {
        "format": FORMAT,
        "checkpoint": {
            "file": args.checkpoint.name,
            "sha256": sha256(args.checkpoint),
            "legacy_hash": legacy_hash(args.checkpoint),
            "family": family,
        },
        "loras": [lora_entry(p, w) for p, w in loras],
        "vae": {"file": args.vae.name, "sha256": sha256(args.vae)} if args.vae else None,
        "dtype": "float16" if fp16 else "float32",
        "optimized": optimized,
        "tool": {"sdspool_import": TOOL_VERSION, "diffusers": diffusers.__version__, "optimum_onnx": version("optimum-onnx")},
    }


def optimize(out: Path, fp16: bool, target: str) -> None:
    script = HERE / "optimize.py"
    if not script.is_file():
        raise ImportError_("optimize_missing", str(script), "--optimize needs onnx/optimize.py, which this checkout does not have")
    import subprocess

    with tempfile.TemporaryDirectory(prefix="sdspool-opt-", dir=out.parent) as tmp:
        dest = Path(tmp) / "opt"
        # A float16 export is float16 already; optimize.py's own float16 conversion is for CUDA only.
        cmd = [sys.executable, str(script), str(out), str(dest), "--target", target] + (["--fp16"] if fp16 and target == "cuda" else [])
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            raise ImportError_("export_failed", str(script), f"optimize.py exited {done.returncode}: {done.stdout[-2000:]}")
        shutil.rmtree(out)
        shutil.move(str(dest), str(out))


def parse_lora(text: str) -> tuple[Path, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path:
        return Path(text), 1.0
    try:
        return Path(path), float(weight)
    except ValueError:
        return Path(text), 1.0


def run(args) -> int:
    loras = [parse_lora(x) for x in args.lora]
    for p in [args.checkpoint, args.vae, *[p for p, _ in loras]]:
        if p is not None and not p.is_file():
            raise ImportError_("unreadable", str(p), "no such file")
    if args.optimize and not (HERE / "optimize.py").is_file():
        raise ImportError_("optimize_missing", str(HERE / "optimize.py"), "--optimize needs onnx/optimize.py, which this checkout does not have")
    with stage("detect"):
        family, shapes = detect(args.checkpoint, args.family)
    with stage("load"):
        pipe, prediction = load_pipeline(args.checkpoint, family, args.prediction_type, shapes)
    emit(event="detected", family=family, prediction_type=prediction)
    if loras:
        with stage("lora"):
            apply_loras(pipe, loras, family)
    if args.vae:
        with stage("vae"):
            replace_vae(pipe, args.vae)
    out = args.out.resolve()
    with stage("export"):
        export(pipe, out, args.fp16)
    with stage("validate"):
        validate(out, family)
    with stage("write"):
        if args.optimize:
            optimize(out, args.fp16, args.target)
        (out / "sdspool-source.json").write_text(json.dumps(provenance(args, family, loras, args.fp16, args.optimize), indent=2) + "\n")
    emit(event="done", out=str(out))
    return 0


def main(argv=None) -> int:
    global STDOUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--family", choices=cl.FAMILIES)
    ap.add_argument("--prediction-type", choices=("epsilon", "v_prediction"))
    ap.add_argument("--lora", action="append", default=[], metavar="FILE:WEIGHT")
    ap.add_argument("--vae", type=Path)
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--optimize", action="store_true")
    ap.add_argument("--target", choices=("cpu", "cuda"), default="cpu", help="the provider --optimize fuses for (onnx/optimize.py --target)")
    args = ap.parse_args(argv)
    # Library chatter (optimum's validation report, warnings) goes to stderr; stdout is the event stream.
    STDOUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return run(args)
    except ImportError_ as e:
        emit(event="error", kind=e.kind, file=e.file, message=str(e), keys=e.keys)
        return 2


if __name__ == "__main__":
    sys.exit(main())
