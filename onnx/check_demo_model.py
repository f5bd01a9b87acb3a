#!/usr/bin/env python3
"""Measure how well the trained demo model (shapes-sd) follows its prompts, without CLIP.

    onnx/.venv/bin/python onnx/check_demo_model.py            # defaults: onnx/models/shapes-{sd,clip}

What it does, in order:

1. Builds the checker.  Every attribute of a caption is read back from the pixels:

   background  the per-channel median of the 2-pixel border, nearest named colour
               (shapes_data.COLOURS, Euclidean in RGB);
   colour      foreground = pixels whose projection on the background -> foreground
               colour line is past the half-way point (antialiased edges split
               evenly), specks dropped; colour = median of its quarter furthest from
               the background, nearest named colour;
   position    the foreground's centroid, nearest of shapes_data.CENTRE's ten centres
               (5 positions x 2 sizes) moved by the read shape's mean centroid offset
               (a seven-segment 1 has its mass 8 px right of its centre);
   size        the foreground's extent (longest side of its bounding box) against a
               threshold;
   shape       a small CNN (14 classes, shapes_data.SHAPES) trained here on freshly
               generated images (its own seed, shapes drawn uniformly, half of them
               blurred and noised), reading the foreground mask only, so it does not
               depend on the colours.  Weights are cached in WORK/classifier/.

   The size threshold and the centroid offsets are calibrated on clean generated
   images (their own seed) every run.  It then reports the checker's own accuracy on a clean generated test set (and on
   the same set blurred, sigma 1 px), and its reading of the same set encoded and
   decoded by the model's VAE (ONNX Runtime): the ceiling the autoencoder sets.

2. Renders the held-out captions (shapes_data.heldout_eval_scenes: combinations the
   model never saw in training, the five kinds of shape equally often) through
   sdspool itself: a job file with one prompt per caption, CANDIDATES candidates
   each, a fixed seed and 64x64, the model's default steps, scheduler and guidance
   unless given here; a config (a copy of config.yaml, --config, with its own spool
   and output folders in WORK/render/ and the models under test); then
   `sdspool submit` and `sdspool run --until-idle`.

3. Reads every candidate and its CLIP rank from the job's manifest.json and reports
   prompt adherence over all candidates (each attribute and all-correct), the rerank
   lift (the top-ranked candidate of each prompt against the average candidate, and
   the best case: any candidate correct), and accuracy per shape.  Writes
   WORK/report.json, WORK/report.md and a figure of the top-ranked renders of the
   first 24 captions (--figure).

Deterministic: the data, the classifier (for a given --threads) and sdspool's
renders (fixed seed) are; the report holds no timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import shapes_data as data  # noqa: E402

ATTRIBUTES = ["colour", "shape", "position", "size", "background"]
PALETTE = np.array([data.COLOURS[c] for c in data.COLOUR_NAMES], dtype=np.float64)

# Pixel-reader constants.
BORDER_PX = 2  # the background is read from this many rows/columns at each edge
SEED_DISTANCE = 40.0  # RGB distance from the background that surely belongs to the shape (named colours are >= 87 apart)
MIN_FOREGROUND_PX = 10  # fewer such pixels: no shape found (every attribute but the background counts as wrong)
SPECK_FRACTION = 0.2  # connected pieces of the mask smaller than this fraction of the largest are dropped

# The shape classifier: its data and training (bump CLASSIFIER_VERSION when changing anything it depends on).
CLASSIFIER_VERSION = 1
CLASSIFIER = dict(train_images=16000, seed=8_000_001, epochs=5, batch=64, lr=2e-3, blur_fraction=0.5, max_blur=1.2, max_noise=6.0)
CALIBRATION_SEED = 8_000_002  # clean images for the size threshold and the centroid offsets
TEST_SEED = 8_000_003
TEST_IMAGES = 2800  # 200 per shape, for calibration and for the self-test each


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- 1. pixel readers


def nearest_colour(rgb: np.ndarray) -> str:
    return data.COLOUR_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(1)))]


@dataclasses.dataclass
class Pixels:
    """What the pixel statistics say about one image (None: no foreground found)."""

    background_rgb: np.ndarray
    colour_rgb: np.ndarray | None
    mask: np.ndarray | None  # bool [64, 64], the shape's pixels
    soft: np.ndarray | None  # float [64, 64] in [0, 1]: how far each pixel is from background to colour
    centroid: tuple[float, float] | None  # (x, y) in pixels, pixel centres at +0.5
    extent: int | None  # longest side of the mask's bounding box


def analyse(img: np.ndarray) -> Pixels:
    """Background, foreground colour and mask of a uint8 [H, W, 3] image."""
    x = img.astype(np.float64)
    b = BORDER_PX
    border = np.concatenate([x[:b].reshape(-1, 3), x[-b:].reshape(-1, 3), x[b:-b, :b].reshape(-1, 3), x[b:-b, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)  # robust to a shape touching the border
    seed = np.sqrt(((x - bg) ** 2).sum(-1)) > SEED_DISTANCE
    if seed.sum() < MIN_FOREGROUND_PX:
        return Pixels(bg, None, None, None, None, None)
    fg0 = np.median(x[seed], axis=0)
    # Position of every pixel on the line from the background to the shape's colour:
    # 0 = background, 1 = shape; antialiased edges lie in between.
    v = fg0 - bg
    t = ((x - bg) @ v) / (v @ v)
    mask = t > 0.5
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n > 1:  # drop specks: pieces much smaller than the largest
        areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(areas >= SPECK_FRACTION * areas.max()) + 1
        mask = np.isin(labels, keep)
    if mask.sum() < MIN_FOREGROUND_PX:
        return Pixels(bg, None, None, None, None, None)
    # The colour from the quarter of the mask furthest from the background: the inside of a large
    # shape, the middle of a thin (and maybe blurred) stroke, where the least background is mixed in.
    tm = t[mask]
    colour = np.median(x[mask][tm >= np.quantile(tm, 0.75)], axis=0)
    soft = np.clip(t, 0.0, 1.0) * ndimage.binary_dilation(mask, iterations=1)
    ys, xs = np.nonzero(mask)
    extent = int(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return Pixels(bg, colour, mask, soft.astype(np.float32), (float(xs.mean() + 0.5), float(ys.mean() + 0.5)), extent)


def read_position(centroid, shape: str, offsets: dict) -> str:
    """The nearest of the ten places a shape's centre is drawn at (5 positions x 2 sizes, before
    jitter), each moved by the shape's mean centroid offset at that size: most shapes have their
    centroid at the centre, but a seven-segment 1 or 7 has its mass to the right (up to 8 px)."""
    c = np.array(centroid)
    best, best_d = None, np.inf
    for size in data.SIZES:
        for pos, centre in data.CENTRE[size].items():
            d = float(((np.array(centre) + offsets[shape][size] - c) ** 2).sum())
            if d < best_d:
                best, best_d = pos, d
    return best


def read_pixels(px: Pixels, shape: str | None, calib: dict) -> dict:
    """Every attribute but the shape (which the classifier read); None where there is no foreground."""
    out = {"background": nearest_colour(px.background_rgb), "colour": None, "position": None, "size": None}
    if px.mask is not None:
        out["colour"] = nearest_colour(px.colour_rgb)
        out["position"] = read_position(px.centroid, shape, calib["centroid_offsets"])
        out["size"] = "large" if px.extent > calib["size_threshold"] else "small"
    return out


def calibrate(pixels: list[Pixels], scenes: list[data.Scene]) -> dict:
    """From clean generated images: the extent threshold between small and large (the middle of
    the gap, or the threshold with the fewest errors if the two overlap), and each shape's mean
    centroid offset from its nominal centre per size."""
    ext = np.array([p.extent if p.extent is not None else 0 for p in pixels], dtype=np.float64)
    large = np.array([s.size == "large" for s in scenes])
    lo, hi = ext[~large].max(), ext[large].min()
    if lo < hi:
        threshold = float((lo + hi) / 2)
    else:
        cands = np.unique(ext) + 0.5
        threshold = float(cands[int(np.argmin([int(((ext > c) != large).sum()) for c in cands]))])
    offsets = {}
    for shape in data.SHAPES:
        offsets[shape] = {}
        for size in data.SIZES:
            d = [np.array(p.centroid) - data.CENTRE[size][s.position] for p, s in zip(pixels, scenes)
                 if s.shape == shape and s.size == size and p.centroid is not None]
            offsets[shape][size] = [round(float(v), 3) for v in np.mean(d, axis=0)]
    return {"size_threshold": threshold, "centroid_offsets": offsets}


# --------------------------------------------------------------------------- 1b. the shape classifier


class ShapeNet(torch.nn.Module):
    """Four 3x3 conv blocks on the soft foreground mask, global max pool, linear: 14 shapes."""

    def __init__(self, n_classes: int = len(data.SHAPES)):
        super().__init__()
        chans = [1, 16, 32, 64, 64]
        layers = []
        for i in range(4):
            layers += [
                torch.nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(chans[i + 1]),
                torch.nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(torch.nn.MaxPool2d(2))
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(chans[-1], n_classes)

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


def soft_masks(pixels: list[Pixels]) -> torch.Tensor:
    """[N, 1, 64, 64] classifier inputs (all zero where no foreground was found)."""
    out = np.zeros((len(pixels), 1, data.SIZE, data.SIZE), dtype=np.float32)
    for i, p in enumerate(pixels):
        if p.soft is not None:
            out[i, 0] = p.soft
    return torch.from_numpy(out)


def balanced_scenes(n: int, rng: np.random.Generator) -> list[data.Scene]:
    """Random scenes with the shape drawn uniformly over the 14 classes (the training data has 5 kinds)."""
    scenes = []
    for i in range(n):
        s = data.random_scene(rng)
        scenes.append(dataclasses.replace(s, shape=data.SHAPES[i % len(data.SHAPES)]))
    order = rng.permutation(n)
    return [scenes[i] for i in order]


def degrade(img: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma px) and Gaussian pixel noise, as a decoder's output might have."""
    x = img.astype(np.float64)
    if blur > 0:
        x = ndimage.gaussian_filter(x, sigma=(blur, blur, 0), mode="nearest")
    if noise > 0:
        x = x + rng.normal(0.0, noise, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def generate(scenes: list[data.Scene], rng: np.random.Generator, degrade_fraction=0.0, max_blur=0.0, max_noise=0.0):
    """Draw the scenes; a fraction of them blurred and noised by random amounts."""
    images = np.empty((len(scenes), data.SIZE, data.SIZE, 3), dtype=np.uint8)
    for i, s in enumerate(scenes):
        img = data.draw(s, rng)
        if rng.random() < degrade_fraction:
            img = degrade(img, rng.uniform(0.3, max_blur), rng.uniform(0.0, max_noise), rng)
        images[i] = img
    return images


def classifier_key(threads: int) -> str:
    """Names the cached weights: the training settings, the thread count, the library versions and
    the first 256 training images and labels (so that a change in how shapes_data draws retrains,
    and an unrelated edit of shapes_data.py does not)."""
    h = hashlib.sha256()
    h.update(json.dumps([CLASSIFIER_VERSION, CLASSIFIER, threads, torch.__version__, np.__version__], sort_keys=True).encode())
    rng = np.random.Generator(np.random.PCG64(CLASSIFIER["seed"]))
    scenes = balanced_scenes(CLASSIFIER["train_images"], rng)[:256]
    h.update(generate(scenes, rng, CLASSIFIER["blur_fraction"], CLASSIFIER["max_blur"], CLASSIFIER["max_noise"]).tobytes())
    h.update(json.dumps([s.shape for s in scenes]).encode())
    return h.hexdigest()[:16]


def train_classifier(out: Path, threads: int) -> tuple[ShapeNet, dict]:
    """Train (or load from WORK/classifier/KEY/) the shape classifier."""
    key = classifier_key(threads)
    folder = out / key
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        net = ShapeNet()
        net.load_state_dict(torch.load(folder / "shapenet.pt", weights_only=True))
        log(f"[classifier] cached in {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}")
        return net.eval(), meta
    cfg = CLASSIFIER
    t0 = time.time()
    rng = np.random.Generator(np.random.PCG64(cfg["seed"]))
    scenes = balanced_scenes(cfg["train_images"], rng)
    images = generate(scenes, rng, cfg["blur_fraction"], cfg["max_blur"], cfg["max_noise"])
    pixels = [analyse(im) for im in images]
    x = soft_masks(pixels)
    y = torch.tensor([data.SHAPES.index(s.shape) for s in scenes])
    log(f"[classifier] {len(scenes)} training images in {time.time() - t0:.0f} s")

    torch.manual_seed(cfg["seed"])
    net = ShapeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg["seed"])
    steps_per_epoch = len(scenes) // cfg["batch"]
    total = cfg["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.1)
    net.train()
    step = 0
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(len(scenes), generator=gen)
        correct = seen = 0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg["batch"] : (i + 1) * cfg["batch"]]
            # Shift by up to 2 px (zeros enter at the edge): positions are jittered in the data anyway.
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            xb = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
            logits = net(xb)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            correct += int((logits.argmax(1) == y[idx]).sum())
            seen += len(idx)
        log(f"[classifier] epoch {epoch + 1}/{cfg['epochs']} loss {loss.item():.4f} train acc {correct / seen:.4f} ({time.time() - t0:.0f} s)")
    net.eval()
    meta = {"key": key, "config": cfg, "version": CLASSIFIER_VERSION, "threads": threads}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "shapenet.pt")
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return net, meta


@torch.no_grad()
def classify(net: ShapeNet, pixels: list[Pixels]) -> list[str | None]:
    x = soft_masks(pixels)
    pred = torch.cat([net(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return [data.SHAPES[int(k)] if p.mask is not None else None for k, p in zip(pred, pixels)]


class Checker:
    """Reads (colour, shape, position, size, background) back from images."""

    def __init__(self, net: ShapeNet):
        self.net = net
        rng = np.random.Generator(np.random.PCG64(CALIBRATION_SEED))
        scenes = balanced_scenes(TEST_IMAGES, rng)
        images = generate(scenes, rng)
        self.calib = calibrate([analyse(im) for im in images], scenes)

    def read(self, images: np.ndarray) -> list[dict]:
        pixels = [analyse(im) for im in images]
        shapes = classify(self.net, pixels)
        return [dict(read_pixels(p, s, self.calib), shape=s) for p, s in zip(pixels, shapes)]


def scene_dict(s: data.Scene) -> dict:
    return {a: getattr(s, a) for a in ATTRIBUTES}


def correctness(reading: dict, scene: data.Scene) -> dict:
    """Per attribute: read == asked; plus all-correct."""
    ok = {a: reading[a] == getattr(scene, a) for a in ATTRIBUTES}
    ok["all"] = all(ok.values())
    return ok


def mean_ok(oks: list[dict]) -> dict:
    return {k: float(np.mean([o[k] for o in oks])) for k in ATTRIBUTES + ["all"]}


def vae_round_trip(model: Path, images: np.ndarray, threads: int) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 images with the model's exported VAE in ONNX Runtime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    enc = ort.InferenceSession(str(model / "vae_encoder" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(model / "vae_decoder" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(images), 100):
        x = images[i : i + 100].astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        moments = enc.run(None, {"sample": x})[0]  # mean and log-variance, 4 channels each
        y = dec.run(None, {"latent_sample": moments[:, :4]})[0]
        out.append(np.clip(np.round((y + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
    return np.concatenate(out)


def self_test(checker: Checker, vae_model: Path | None = None, threads: int = 1) -> dict:
    """The checker's accuracy on a clean generated test set, on the same set blurred (sigma 1 px)
    and, given a model, on the same set passed through the model's VAE: how much of the drawing
    the autoencoder keeps, a ceiling for what the UNet can reach."""
    rng = np.random.Generator(np.random.PCG64(TEST_SEED))
    scenes = balanced_scenes(TEST_IMAGES, rng)
    images = generate(scenes, rng)
    sets = [("clean", images), ("blurred", np.stack([degrade(im, 1.0, 0.0, rng) for im in images]))]
    if vae_model is not None:
        sets.append(("vae", vae_round_trip(vae_model, images, threads)))
    out = {}
    for name, imgs in sets:
        readings = checker.read(imgs)
        oks = [correctness(r, s) for r, s in zip(readings, scenes)]
        out[name] = mean_ok(oks)
        # The first few misreadings, to see what the readers get wrong.
        out[name]["misread"] = [
            {"caption": s.caption(), "read": {a: r[a] for a in ATTRIBUTES if not o[a]}}
            for s, r, o in zip(scenes, readings, oks) if not o["all"]
        ][:10]
    out["images"] = TEST_IMAGES
    out["seed"] = TEST_SEED
    return out


# --------------------------------------------------------------------------- 2. rendering through sdspool


def model_digest(folder: Path) -> str:
    """sha256 (first 16 hex) over the model's ONNX files, to tell two exports apart in the report."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.onnx*")):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def write_config(base: Path, path: Path, spool: Path, output: Path, model: Path, clip: Path) -> None:
    """A copy of the base config (the repository's config.yaml) with its own spool/output and the
    models under test.

    The base's relative paths are made absolute (sdspool resolves them against the config's
    folder, which is now elsewhere), and the ONNX Runtime library is pinned to the one the base
    would find (the `.ort/` folder beside it, else the repository's) unless ORT_DYLIB_PATH is set."""
    cfg = yaml.safe_load(base.read_text())
    here = base.parent

    def absolute(p):
        return None if p is None else str((here / p).resolve())

    ort = cfg["onnxruntime"] = cfg.get("onnxruntime") or {}
    if ort.get("library"):
        ort["library"] = absolute(ort["library"])
    elif not os.environ.get("ORT_DYLIB_PATH"):
        for folder in (here, ROOT):  # beside the base config, as sdspool looks, else the repository's
            libs = sorted((folder / ".ort" / "onnxruntime" / "capi").glob("libonnxruntime.so*"), key=lambda p: -len(p.name))
            if libs:
                ort["library"] = str(libs[0])
                break
    execution = cfg.get("execution") or {}
    if execution.get("optimized_model_dir"):
        execution["optimized_model_dir"] = absolute(execution["optimized_model_dir"])
    trt = execution.get("tensorrt") or {}
    for k in ("engine_cache", "timing_cache"):
        if trt.get(k):
            trt[k] = absolute(trt[k])
    cfg["spool"] = dict(cfg.get("spool") or {}, dir=str(spool))
    cfg["output_dir"] = str(output)
    cfg["models"] = {"shapes-sd": {"path": str(model)}}
    cfg["default_model"] = "shapes-sd"
    cfg["rerank"] = dict(cfg.get("rerank") or {}, model=str(clip))
    path.write_text(f"# written by onnx/check_demo_model.py from {base}\n" + yaml.safe_dump(cfg, sort_keys=False))


def run(cmd: list[str]) -> None:
    log("$ " + shlex.join(cmd))
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout)
        hint = " (a config field it does not know: is the binary older than the config? cargo build --release)" if "unknown field" in r.stdout else ""
        raise SystemExit(f"{cmd[0]} exited with {r.returncode}{hint}")


def render(args, scenes: list[data.Scene]) -> tuple[dict, Path]:
    """Render one job of the scenes' captions with sdspool; returns its manifest and folder."""
    folder = args.work / "render"
    if folder.exists():
        shutil.rmtree(folder)  # a fresh spool and output every run
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    write_config(args.config, config, folder / "spool", folder / "output", args.model, args.clip)
    job = {
        "id": "heldout",
        "model": "shapes-sd",
        "prompts": [s.caption() for s in scenes],
        "candidates": args.candidates,
        "seed": args.seed,
        "width": data.SIZE,
        "height": data.SIZE,
        "rerank": True,
        "output": "heldout",
    }
    for k in ("steps", "scheduler", "guidance"):
        if getattr(args, k) is not None:
            job[k] = getattr(args, k)
    job_file = folder / "heldout.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    sdspool = str(args.sdspool)
    t0 = time.time()
    run([sdspool, "--config", str(config), "submit", str(job_file)])
    run([sdspool, "--config", str(config), "run", "--until-idle"])
    out = folder / "output" / "heldout"
    manifest = json.loads((out / "manifest.json").read_text())
    if not manifest.get("complete"):
        raise SystemExit(f"{out}/manifest.json: the job did not complete (see {folder}/spool/failed/)")
    log(f"[render] {len(scenes)} prompts x {args.candidates} candidates in {time.time() - t0:.0f} s -> {out}")
    return manifest, out


# --------------------------------------------------------------------------- 3. figures


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def evaluate(checker: Checker, scenes, manifest, out: Path) -> tuple[dict, list]:
    """Read every candidate; adherence, rerank lift and per-shape accuracy."""
    rows = []  # one per candidate
    for p, scene in zip(manifest["prompts"], scenes):
        assert p["prompt"] == scene.caption(), (p["prompt"], scene.caption())
        for c in p["candidates"]:
            img = np.asarray(Image.open(out / c["file"]).convert("RGB"))
            rows.append({"prompt": p["index"], "candidate": c["candidate"], "seed": c["seed"], "file": c["file"],
                         "rank": c.get("rank"), "clip_score": c.get("clip_score"), "img": img})
    readings = checker.read(np.stack([r["img"] for r in rows]))
    for r, reading in zip(rows, readings):
        r["read"] = reading
        r["ok"] = correctness(reading, scenes[r["prompt"]])
        del r["img"]
    n_prompts = len(scenes)
    if any(r["rank"] is None for r in rows):
        raise SystemExit("the manifest has candidates without a rank: is the rerank model configured?")
    top = [r for r in rows if r["rank"] == 1]
    assert len(top) == n_prompts, "one rank-1 candidate per prompt"
    per_prompt = [[r for r in rows if r["prompt"] == i] for i in range(n_prompts)]
    keys = ATTRIBUTES + ["all"]
    avg = mean_ok([r["ok"] for r in rows])
    top1 = mean_ok([r["ok"] for r in top])
    best = {k: float(np.mean([any(r["ok"][k] for r in pp) for pp in per_prompt])) for k in keys}
    per_shape = {}
    for shape in data.SHAPES:
        rs = [r for r in rows if scenes[r["prompt"]].shape == shape]
        if rs:
            per_shape[shape] = {"prompts": len({r["prompt"] for r in rs}), "candidates": len(rs), **mean_ok([r["ok"] for r in rs])}
    groups = {}
    for name, members in (("geometric", data.SHAPES[:4]), ("digits", data.SHAPES[4:])):
        rs = [r for r in rows if scenes[r["prompt"]].shape in members]
        ts = [r for r in top if scenes[r["prompt"]].shape in members]
        if rs:
            groups[name] = {"prompts": len(ts), "candidates": len(rs), "average": mean_ok([r["ok"] for r in rs]), "top_ranked": mean_ok([r["ok"] for r in ts])}
    results = {
        "adherence_all_candidates": avg,
        "rerank": {"average_candidate": avg, "top_ranked": top1, "lift_points": {k: 100 * (top1[k] - avg[k]) for k in keys}, "any_candidate": best},
        "by_group": groups,
        "by_shape": per_shape,
    }
    return results, rows


def markdown(report: dict) -> str:
    keys = ATTRIBUTES + ["all"]
    head = "| | " + " | ".join(keys[:-1]) + " | all correct |\n|---|" + "---:|" * len(keys) + "\n"
    line = lambda name, d: f"| {name} | " + " | ".join(pct(d[k]) for k in keys) + " |\n"  # noqa: E731
    r = report["results"]
    st = report["checker_self_test"]
    s = f"```sh\n{report['command']}\n```\n\n"
    s += (f"Model `{report['render']['model']}` (ONNX sha256 {report['render']['model_digest']}), "
          f"{report['render']['prompts']} held-out captions x {report['render']['candidates']} candidates, "
          f"seed {report['render']['seed']}, {report['render']['steps']} steps, {report['render']['scheduler']}, "
          f"guidance {report['render']['guidance']}, {report['render']['width']}x{report['render']['height']}.\n\n")
    s += (f"**Checker** on {st['images']} generated images (shapes uniform): its own accuracy (clean, blurred), and "
          "the same images through the model's VAE, what the autoencoder keeps (a ceiling for the renders):\n\n" + head)
    s += line("clean", st["clean"]) + line("blurred (sigma 1 px)", st["blurred"])
    s += line("through the model's VAE (encode, decode)", st["vae"])
    s += "\n**Prompt adherence and rerank lift** (checker's reading of sdspool's renders):\n\n" + head
    s += line(f"all {report['render']['prompts'] * report['render']['candidates']} candidates (= average candidate)", r["rerank"]["average_candidate"])
    s += line("top-ranked by CLIP (1 per prompt)", r["rerank"]["top_ranked"])
    s += "| lift (points) | " + " | ".join(f"{r['rerank']['lift_points'][k]:+.1f}" for k in keys) + " |\n"
    s += line(f"best case: any of {report['render']['candidates']} correct", r["rerank"]["any_candidate"])
    s += "\n**By shape** (all candidates; top-ranked in brackets for the groups):\n\n"
    s += "| shape | prompts | shape read | all correct |\n|---|---:|---:|---:|\n"
    for name, g in r["by_group"].items():
        s += (f"| **{name}** | {g['prompts']} | {pct(g['average']['shape'])} ({pct(g['top_ranked']['shape'])}) | "
              f"{pct(g['average']['all'])} ({pct(g['top_ranked']['all'])}) |\n")
    for shape, d in r["by_shape"].items():
        s += f"| {shape} | {d['prompts']} | {pct(d['shape'])} | {pct(d['all'])} |\n"
    return s


def figure(path: Path, scenes, rows, out: Path, n: int = 24, cols: int = 6, scale: int = 3) -> None:
    """The top-ranked render of the first n captions, each with its caption and the checker's verdict."""
    font = ImageFont.load_default(size=11)  # Pillow's built-in font
    tile, line_h, wrap = data.SIZE * scale, 13, 36
    n = min(n, len(scenes))
    top = {r["prompt"]: r for r in rows if r["rank"] == 1}
    labels = []  # per tile: [(text, colour), ...]
    for i in range(n):
        wrong = [a for a in ATTRIBUTES if not top[i]["ok"][a]]
        verdict = "checker: all correct" if not wrong else "checker: wrong " + ", ".join(wrong)
        labels.append([(ln, (0, 0, 0)) for ln in textwrap.wrap(scenes[i].caption(), wrap)]
                      + [(ln, (0, 120, 0) if not wrong else (190, 0, 0)) for ln in textwrap.wrap(verdict, wrap)])
    cell_w = tile + 8
    cell_h = tile + 6 + line_h * max(len(lb) for lb in labels) + 8
    sheet = Image.new("RGB", (cols * cell_w + 8, ((n + cols - 1) // cols) * cell_h + 8), "white")
    d = ImageDraw.Draw(sheet)
    for i in range(n):
        x0, y0 = 8 + (i % cols) * cell_w, 8 + (i // cols) * cell_h
        img = Image.open(out / top[i]["file"]).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
        sheet.paste(img, (x0, y0))
        for k, (text, colour) in enumerate(labels[i]):
            d.text((x0, y0 + tile + 4 + k * line_h), text, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


# --------------------------------------------------------------------------- main


def rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdspool", type=Path, default=ROOT / "target" / "release" / "sdspool", help="the sdspool binary")
    ap.add_argument("--model", type=Path, default=HERE / "models" / "shapes-sd", help="the SD model folder under test")
    ap.add_argument("--clip", type=Path, default=HERE / "models" / "shapes-clip", help="the CLIP model that ranks the candidates")
    ap.add_argument("--config", type=Path, default=ROOT / "config.yaml", help="the config to copy for the render (its models replaced)")
    ap.add_argument("--steps", type=int, help="UNet steps (default: config.yaml's defaults)")
    ap.add_argument("--scheduler", help="scheduler (default: the model's own)")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance (default: config.yaml's defaults)")
    ap.add_argument("--seed", type=int, default=1234, help="the job's seed; candidate i gets seed + i")
    ap.add_argument("--candidates", type=int, default=8, help="candidates per caption")
    ap.add_argument("--n-captions", type=int, default=100, help="held-out captions (shapes_data.heldout_eval_scenes)")
    ap.add_argument("--work", type=Path, default=ROOT / "local" / "demo-check", help="classifier cache, renders, report")
    ap.add_argument("--figure", type=Path, help="the README figure (default WORK/heldout.png)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for the classifier (its weights depend on it; 1 trains in about 5 min)")
    ap.add_argument("--self-test-only", action="store_true", help="build and test the checker; render nothing")
    args = ap.parse_args(argv)
    command = shlex.join(["onnx/.venv/bin/python", "onnx/check_demo_model.py", *(sys.argv[1:] if argv is None else argv)])

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.work = args.work.resolve()
    args.model, args.clip, args.sdspool, args.config = (p.resolve() for p in (args.model, args.clip, args.sdspool, args.config))
    figure_path = (args.figure or args.work / "heldout.png").resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    # 1. the checker, and how well it reads clean generated images
    net, meta = train_classifier(args.work / "classifier", args.threads)
    checker = Checker(net)
    if not args.self_test_only:
        for p, what in ((args.model, "--model"), (args.clip, "--clip"), (args.sdspool, "--sdspool")):
            if not p.exists():
                raise SystemExit(f"{what} {p}: not found")
    st = self_test(checker, None if args.self_test_only else args.model, args.threads)
    keys = ATTRIBUTES + ["all"]
    print(f"{command}\n")
    for name in ("clean", "blurred", "vae"):
        if name in st:
            print(f"checker accuracy ({name}): " + ", ".join(f"{k} {pct(st[name][k])}" for k in keys))
    if args.self_test_only:
        return 0

    # 2. render the held-out captions through sdspool
    scenes = data.heldout_eval_scenes(args.n_captions)
    manifest, out = render(args, scenes)

    # 3. read them back
    results, rows = evaluate(checker, scenes, manifest, out)
    report = {
        "command": command,
        "checker": {"classifier": meta["key"], **checker.calib},
        "checker_self_test": st,
        "render": {
            "model": rel(args.model), "model_digest": model_digest(args.model), "clip": rel(args.clip),
            "prompts": len(scenes), "candidates": args.candidates, "seed": manifest.get("seed", args.seed),
            "steps": manifest.get("steps"), "scheduler": manifest.get("scheduler"), "guidance": manifest.get("guidance"),
            "width": manifest.get("width"), "height": manifest.get("height"), "output": rel(out),
        },
        "results": results,
        "candidates": [
            {k: r[k] for k in ("prompt", "candidate", "seed", "file", "rank", "clip_score", "read", "ok")} | {"caption": scenes[r["prompt"]].caption()}
            for r in rows
        ],
    }
    (args.work / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (args.work / "report.md").write_text(md)
    figure(figure_path, scenes, rows, out)
    print(md)
    log(f"wrote {rel(args.work / 'report.json')}, {rel(args.work / 'report.md')}, {rel(figure_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
