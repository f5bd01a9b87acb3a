#!/usr/bin/env python3
"""Golden files for sdspool's CLIP reranker (src/rerank/, tests/rerank_parity.rs).

Reference: transformers' own CLIP stack, offline, with the pinned versions of
onnx/requirements.txt (transformers 4.57.6, Pillow, torch CPU):

* the PyTorch ``CLIPModel`` of the committed ``onnx/models/tiny-clip`` export, rebuilt exactly as
  ``onnx/build_test_models.py`` builds it (its ``clip_model(seed=200)``: same config, same
  tokenizer, same torch seed). The committed folder only holds the ONNX export, so before any
  golden is written the script checks that the rebuilt model and the committed ``model.onnx``
  (onnxruntime, CPU) agree within 1e-5 on the golden inputs.
* ``CLIPProcessor.from_pretrained("onnx/models/tiny-clip")`` (the slow, PIL-based
  ``CLIPImageProcessor`` the folder's ``preprocessor_config.json`` names, and ``CLIPTokenizer``)
  for preprocessing.

It writes:

``tests/fixtures/tiny-clip-split/``
    The same weights as two tower exports, the layout sdspool accepts besides optimum's single
    ``model.onnx``: ``text_model.onnx`` (``input_ids`` int64 [batch, sequence], ``attention_mask``
    int64 [batch, sequence] -> ``text_embeds`` float [batch, 16]) and ``vision_model.onnx``
    (``pixel_values`` float [batch, 3, 224, 224] -> ``image_embeds`` float [batch, 16]), made with
    ``torch.onnx.export(dynamo=False, opset 18)`` from ``CLIPModel.get_text_features`` /
    ``get_image_features``: projections *without* normalisation, as separately exported towers
    (``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection``) return them. The
    tokenizer files go into a ``tokenizer/`` subfolder (tiny-clip has them at the root, as optimum
    saves a CLIP folder), so both tokenizer layouts are exercised; ``preprocessor_config.json``
    is copied.

``tests/golden/rerank/``
    ``images/*.png``: deterministic test images (gradients, noise, shapes, stripes, rings; sizes
    64x64, 300x200, 200x300, 224x224, 513x97, 97x513, 640x480, 17x5, 225x224, 223x224, 48x40, plus a
    grayscale and an RGBA image for ``do_convert_rgb``). Rust reads these exact pixels.

    ``crops/*.png``: transformers' ``pixel_values`` of each image mapped back to the uint8 crop
    (resize + center crop) they were computed from. The script asserts that normalising the crop
    again as transformers does (``rescale`` in float64 then float32, ``normalize`` in float32)
    reproduces ``pixel_values`` bit for bit, so the PNG is a lossless encoding of them (600 KB
    of float32 per image otherwise).

    ``resample/*.png``: ``PIL.Image.resize`` of two sources with every filter the port supports
    (box, bilinear, hamming, bicubic, lanczos), down- and upscaling.

    ``index.json``: prompts and their ``input_ids`` (padding to 77, truncation), per image the
    PIL size after resizing, a sample of raw ``pixel_values`` floats and their float64 sum and sum
    of squares; the L2-normalised ``text_embeds`` and ``image_embeds`` of the PyTorch model, the
    cosine matrix (prompts x images), CLIPScores (100 * max(cos, 0)) and each prompt's ranking
    (rank per image, 0 = best, ties to the lower index), and the agreement figures of the ONNX
    exports with PyTorch.

Usage: HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/golden_rerank.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import build_test_models  # noqa: E402

MODEL_DIR = ROOT / "onnx" / "models" / "tiny-clip"
SPLIT_DIR = ROOT / "tests" / "fixtures" / "tiny-clip-split"
GOLDEN_DIR = ROOT / "tests" / "golden" / "rerank"
CLIP_SEED = 200  # build_test_models.main: build_clip("tiny-clip", seed=200, ...)

PROMPTS = [
    "a photo of a cat",
    # With this random-weight model most cosines are negative (CLIPScore 0); these three were
    # picked for positive cosines (all positive, mixed signs, mostly positive), so CLIPScore's
    # clamp and its linear part are both exercised.
    "dark",
    "green",
    "!!!",
    # Longer than 77 tokens: truncated by the tokenizer (and by Rust's) to 75 + bos/eos.
    "a very long prompt " + " ".join(f"with detail number {i}," for i in range(40)) + " and the end",
]

# How many raw pixel_values floats per image index.json keeps (positions from a fixed RNG).
N_SAMPLES = 128
MODEL_ATOL = 1e-5


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# test images
# --------------------------------------------------------------------------------------------


def _grid(w: int, h: int):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return x, y


def _u8(a) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def img_gradient(w, h):
    x, y = _grid(w, h)
    return _u8(np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), 255 - (x + y) * 255 / max(w + h - 2, 1)], -1))


def img_noise(w, h, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def img_shapes(w, h, seed):
    rng = np.random.default_rng(seed)
    x, y = _grid(w, h)
    base = np.stack([40 + 60 * y / h, 90 + 100 * x / w, 200 - 80 * y / h], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, min(w, h) / 3)
        color = rng.integers(0, 256, 3)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = color
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        color = rng.integers(0, 256, 3)
        base[(x >= x0) & (x < x0 + r) & (y >= y0) & (y < y0 + r * 0.7)] = color
    return _u8(base)


def img_stripes(w, h):
    x, y = _grid(w, h)
    r = np.where((x.astype(int) // 3) % 2 == 0, 230, 20)
    g = np.where((x.astype(int) // 7) % 2 == 0, 200, 50)
    b = 255 * y / max(h - 1, 1)
    return _u8(np.stack([r, g, b], -1))


def img_rings(w, h):
    x, y = _grid(w, h)
    d = np.hypot(x - w / 2, y - h / 2)
    return _u8(np.stack([128 + 127 * np.sin(d / 3), 128 + 127 * np.cos(d / 5), 128 + 127 * np.sin(x / 4 + y / 9)], -1))


def img_scene(w, h, seed):
    a = img_shapes(w, h, seed).astype(np.float64)
    x, y = _grid(w, h)
    checker = (((x.astype(int) // 4) + (y.astype(int) // 4)) % 2) * 255
    region = (x > w * 0.6) & (y > h * 0.55)
    a[region] = checker[region][:, None]
    return _u8(a)


def img_noisy_shapes(w, h, seed):
    a = img_shapes(w, h, seed).astype(np.float64)
    a += np.random.default_rng(seed + 1).normal(0, 18, a.shape)
    return _u8(a)


def test_images() -> list[tuple[str, Image.Image]]:
    """(name, PIL image) pairs; names encode width x height."""
    imgs = [
        ("grad_64x64", Image.fromarray(img_gradient(64, 64))),
        ("noise_300x200", Image.fromarray(img_noise(300, 200, 1))),
        ("shapes_200x300", Image.fromarray(img_shapes(200, 300, 2))),
        ("rings_224x224", Image.fromarray(img_rings(224, 224))),
        ("stripes_513x97", Image.fromarray(img_stripes(513, 97))),
        ("rings_97x513", Image.fromarray(img_rings(97, 513))),
        ("scene_640x480", Image.fromarray(img_scene(640, 480, 4))),
        ("noise_17x5", Image.fromarray(img_noise(17, 5, 5))),
        ("shapes_225x224", Image.fromarray(img_shapes(225, 224, 6))),
        ("noise_48x40", Image.fromarray(img_noise(48, 40, 9))),
        ("grad_223x224", Image.fromarray(img_gradient(223, 224))),
        ("gray_150x120", Image.fromarray(img_noisy_shapes(150, 120, 7)).convert("L")),
        ("rgba_120x150", _rgba(120, 150, 8)),
    ]
    return imgs


def _rgba(w, h, seed):
    rgb = img_shapes(w, h, seed)
    x, y = _grid(w, h)
    alpha = _u8(255 * x / (w - 1))
    return Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")


# Sources and target sizes for the resampling goldens (all filters).
RESAMPLE_CASES = [
    ("noise_48x40", [(24, 20), (19, 31), (100, 57)]),
    ("noise_17x5", [(61, 23), (9, 11)]),
]
FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def rebuild_model():
    """tiny-clip's PyTorch CLIPModel, as build_test_models.py builds it."""
    with tempfile.TemporaryDirectory(prefix="tiny-clip-") as tmp:
        model, _processor = build_test_models.clip_model(CLIP_SEED, Path(tmp) / "work")
    model.eval()
    return model


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


class VisionTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values)


def export_split(model, ids, mask, pixels):
    """Writes tests/fixtures/tiny-clip-split/ (see the module docs)."""
    if SPLIT_DIR.exists():
        shutil.rmtree(SPLIT_DIR)
    SPLIT_DIR.mkdir(parents=True)
    torch.onnx.export(
        TextTower(model),
        (ids, mask),
        str(SPLIT_DIR / "text_model.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["text_embeds"],
        dynamic_axes={
            "input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"},
            "text_embeds": {0: "batch_size"},
        },
        opset_version=18,
        dynamo=False,
    )
    torch.onnx.export(
        VisionTower(model),
        (pixels,),
        str(SPLIT_DIR / "vision_model.onnx"),
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes={"pixel_values": {0: "batch_size"}, "image_embeds": {0: "batch_size"}},
        opset_version=18,
        dynamo=False,
    )
    tok = SPLIT_DIR / "tokenizer"
    tok.mkdir()
    for name in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy2(MODEL_DIR / name, tok / name)
    shutil.copy2(MODEL_DIR / "preprocessor_config.json", SPLIT_DIR / "preprocessor_config.json")


def normalized(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-row relative L2 error of a against b."""
    return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def rank_of(scores) -> list[int]:
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    rank = [0] * len(scores)
    for r, j in enumerate(order):
        rank[j] = r
    return rank


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main() -> int:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    from transformers import CLIPImageProcessor, CLIPProcessor

    if GOLDEN_DIR.exists():
        shutil.rmtree(GOLDEN_DIR)
    for sub in ["images", "crops", "resample"]:
        (GOLDEN_DIR / sub).mkdir(parents=True)

    processor = CLIPProcessor.from_pretrained(str(MODEL_DIR))
    ip = processor.image_processor
    assert type(ip) is CLIPImageProcessor, type(ip)  # the slow, PIL-based processor
    assert ip.resample == Image.Resampling.BICUBIC and ip.size == {"shortest_edge": 224}, (ip.resample, ip.size)

    # Images: saved first, then read back, so Python and Rust start from the identical pixels.
    names, images = [], []
    for name, img in test_images():
        path = GOLDEN_DIR / "images" / f"{name}.png"
        img.save(path, optimize=True)
        back = Image.open(path)
        back.load()
        assert back.mode == img.mode and np.array_equal(np.asarray(back), np.asarray(img)), name
        names.append(name)
        images.append(back)

    enc = processor(
        text=PROMPTS,
        images=images,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=77,
    )
    ids, mask, pixels = enc["input_ids"], enc["attention_mask"], enc["pixel_values"]
    assert pixels.dtype == torch.float32 and tuple(pixels.shape[1:]) == (3, 224, 224), pixels.shape
    px = pixels.numpy()

    # pixel_values -> uint8 crop, and the check that the crop encodes them losslessly.
    mean = np.array(ip.image_mean, dtype=np.float32)
    std = np.array(ip.image_std, dtype=np.float32)
    image_info = []
    sample_rng = np.random.default_rng(1234)
    for i, (name, img) in enumerate(zip(names, images)):
        hwc = px[i].transpose(1, 2, 0)
        crop = np.rint((hwc.astype(np.float64) * std + mean) * 255)
        assert crop.min() >= 0 and crop.max() <= 255, name
        crop = crop.astype(np.uint8)
        again = ((crop.astype(np.float64) * ip.rescale_factor).astype(np.float32) - mean) / std
        assert again.dtype == np.float32 and np.array_equal(again, hwc), f"{name}: crop does not re-encode exactly"
        Image.fromarray(crop).save(GOLDEN_DIR / "crops" / f"{name}.png", optimize=True)

        # The size PIL resized to (CLIPImageProcessor.resize -> get_resize_output_image_size).
        from transformers.image_transforms import get_resize_output_image_size

        arr = np.asarray(img.convert("RGB"))
        rh, rw = get_resize_output_image_size(arr, size=224, default_to_square=False)
        pos = [(int(sample_rng.integers(0, 3)), int(sample_rng.integers(0, 224)), int(sample_rng.integers(0, 224))) for _ in range(N_SAMPLES)]
        image_info.append(
            {
                "name": name,
                "file": f"images/{name}.png",
                "crop": f"crops/{name}.png",
                "mode": img.mode,
                "width": img.width,
                "height": img.height,
                "resized": [int(rw), int(rh)],
                "pixel_sum": float(px[i].astype(np.float64).sum()),
                "pixel_sum_sq": float((px[i].astype(np.float64) ** 2).sum()),
                "samples": [[c, y, x, float(px[i, c, y, x])] for c, y, x in pos],
            }
        )

    # Resampling goldens: PIL itself, every filter.
    by_name = dict(zip(names, images))
    resample = []
    for src, sizes in RESAMPLE_CASES:
        for fname, f in FILTERS.items():
            for w, h in sizes:
                out = by_name[src].resize((w, h), resample=f)
                file = f"resample/{src}-{fname}-{w}x{h}.png"
                out.save(GOLDEN_DIR / file, optimize=True)
                resample.append({"source": f"images/{src}.png", "filter": fname, "pil_filter": int(f), "size": [w, h], "file": file})

    # Reference embeddings from the rebuilt PyTorch model.
    model = rebuild_model()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        t_raw = model.get_text_features(input_ids=ids, attention_mask=mask).numpy()
        i_raw = model.get_image_features(pixel_values=pixels).numpy()
    text_embeds = out.text_embeds.numpy()
    image_embeds = out.image_embeds.numpy()
    assert np.allclose(normalized(t_raw), text_embeds, atol=1e-6) and np.allclose(normalized(i_raw), image_embeds, atol=1e-6)

    # The committed ONNX export must be this model.
    sess = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    o = dict(zip([x.name for x in sess.get_outputs()], sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "pixel_values": px})))
    onnx_text = float(np.abs(o["text_embeds"] - text_embeds).max())
    onnx_image = float(np.abs(o["image_embeds"] - image_embeds).max())
    log(f"committed model.onnx vs rebuilt PyTorch: text_embeds {onnx_text:.2e}, image_embeds {onnx_image:.2e}")
    if max(onnx_text, onnx_image) > MODEL_ATOL:
        log("ERROR: the rebuilt PyTorch CLIPModel is not the committed tiny-clip export")
        return 1

    export_split(model, ids, mask, pixels)
    ts = ort.InferenceSession(str(SPLIT_DIR / "text_model.onnx"), providers=["CPUExecutionProvider"])
    vs = ort.InferenceSession(str(SPLIT_DIR / "vision_model.onnx"), providers=["CPUExecutionProvider"])
    (st,) = ts.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    (si,) = vs.run(None, {"pixel_values": px})
    split_text = float(np.abs(normalized(st) - text_embeds).max())
    split_image = float(np.abs(normalized(si) - image_embeds).max())
    log(f"split export vs PyTorch (after normalising): text {split_text:.2e}, image {split_image:.2e}")
    log(f"split export returns unnormalised projections: text norms {np.linalg.norm(st, axis=-1).round(3).tolist()}")
    if max(split_text, split_image) > MODEL_ATOL:
        log("ERROR: the split export does not reproduce PyTorch")
        return 1

    cos = text_embeds @ image_embeds.T  # float32, as CLIPModel's logits before the scale
    cos64 = cos.astype(np.float64)
    ranking = [rank_of(row.tolist()) for row in cos64]
    # Rankings are only a fair test when no two cosines of a prompt are within the tolerance.
    min_gap = min(float(np.min(np.diff(np.sort(row)))) for row in cos64)
    log(f"smallest gap between two cosines of one prompt: {min_gap:.2e}")
    if min_gap < 4e-5:
        log("ERROR: two cosines are too close for a ranking comparison; change the prompts or images")
        return 1

    index = {
        "generator": "onnx/golden_rerank.py",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
        },
        "model": "onnx/models/tiny-clip",
        "split_model": "tests/fixtures/tiny-clip-split",
        "preprocessor": {k: v for k, v in ip.to_dict().items() if not k.startswith("_")},
        "prompts": PROMPTS,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "images": image_info,
        "resample": resample,
        "text_embeds": text_embeds.astype(np.float64).tolist(),
        "image_embeds": image_embeds.astype(np.float64).tolist(),
        "cosine": cos64.tolist(),
        "clip_score": (100.0 * np.maximum(cos64, 0.0)).tolist(),
        "ranking": ranking,
        "min_cosine_gap": min_gap,
        "agreement": {
            "committed_onnx_vs_torch_max_abs": {"text_embeds": onnx_text, "image_embeds": onnx_image},
            "split_onnx_vs_torch_max_abs_normalised": {"text_embeds": split_text, "image_embeds": split_image},
        },
    }
    (GOLDEN_DIR / "index.json").write_text(json.dumps(index, separators=(",", ":")) + "\n")
    size = sum(f.stat().st_size for f in GOLDEN_DIR.rglob("*") if f.is_file())
    split_size = sum(f.stat().st_size for f in SPLIT_DIR.rglob("*") if f.is_file())
    log(f"wrote {GOLDEN_DIR.relative_to(ROOT)} ({size / 1e6:.2f} MB) and {SPLIT_DIR.relative_to(ROOT)} ({split_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
