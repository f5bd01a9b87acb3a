"""The procedural captioned-shapes dataset the demo model family is trained on.

Every image is 64x64 RGB: one shape (circle, square, triangle, star or a
seven-segment digit 0-9) of a named colour and size at a named position on a
plain background of another named colour, with a caption such as

    "a small red circle in the top left on a blue background".

Everything is generated from a seed with numpy's PCG64, drawn 4x supersampled
with Pillow and box-filtered down, so the same seed gives the same bytes on
every machine with the pinned Pillow.  Nothing is downloaded.

Held-out set: a fixed 5 % of the (shape, colour, background, position)
combinations never appear in the training images; the held-out captions are
drawn from those combinations only, so adherence is measured on captions the
models have never seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPER = 4  # drawn at 256x256, box-filtered to 64x64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 40),
    "orange": (245, 135, 20),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle", "star"] + [f"digit {d}" for d in range(10)]
KINDS = ["circle", "square", "triangle", "star", "digit"]
SIZES = ["small", "large"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center"]

# Shape extent (half the bounding box, px at 64x64) and where the centres sit.
RADIUS = {"small": (8.0, 10.0), "large": (15.0, 17.0)}
CENTRE = {  # (x, y) fractions are resolved per size: large shapes sit further in
    "small": {"top left": (16, 16), "top right": (48, 16), "bottom left": (16, 48), "bottom right": (48, 48), "center": (32, 32)},
    "large": {"top left": (21, 21), "top right": (43, 21), "bottom left": (21, 43), "bottom right": (43, 43), "center": (32, 32)},
}
JITTER_PX = 2.5
COLOUR_JITTER = 12
HELDOUT_FRACTION = 0.05
HELDOUT_SEED = 1234


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def combo(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.background, self.position)

    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} in the {self.position} on a {self.background} background"

    def partial_caption(self, rng: np.random.Generator) -> str:
        """The full caption, or (30 % of the time) one with some attributes left out."""
        if rng.random() < 0.7:
            return self.caption()
        words = ["a"]
        if rng.random() < 0.5:
            words.append(self.size)
        words += [self.colour, self.shape]
        if rng.random() < 0.5:
            words += ["in", "the", self.position]
        if rng.random() < 0.5:
            words += ["on", "a", self.background, "background"]
        return " ".join(words)


def all_combos() -> list[tuple[str, str, str, str]]:
    return [
        (s, c, b, p)
        for s in SHAPES
        for c in COLOUR_NAMES
        for b in COLOUR_NAMES
        if b != c
        for p in POSITIONS
    ]


def heldout_combos() -> set[tuple[str, str, str, str]]:
    combos = all_combos()
    rng = np.random.Generator(np.random.PCG64(HELDOUT_SEED))
    n = int(round(len(combos) * HELDOUT_FRACTION))
    idx = rng.choice(len(combos), size=n, replace=False)
    return {combos[i] for i in sorted(idx)}


def random_scene(rng: np.random.Generator) -> Scene:
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    background = colour
    while background == colour:
        background = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    kind = KINDS[rng.integers(len(KINDS))]  # digits are one kind of five, not ten of fourteen
    shape = f"digit {rng.integers(10)}" if kind == "digit" else kind
    return Scene(
        shape=shape,
        colour=colour,
        size=SIZES[rng.integers(len(SIZES))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
        background=background,
    )


def _jitter(rgb, rng):
    return tuple(int(np.clip(v + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1), 0, 255)) for v in rgb)


def _rotate(points, cx, cy, angle):
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * ca - (y - cy) * sa, cy + (x - cx) * sa + (y - cy) * ca) for x, y in points]


# Seven segments: a (top), b (top right), c (bottom right), d (bottom), e (bottom left),
# f (top left), g (middle), as unit-box line segments (x, y in [0, 1], y down).
_SEGMENTS = {
    "a": ((0, 0), (1, 0)),
    "b": ((1, 0), (1, 0.5)),
    "c": ((1, 0.5), (1, 1)),
    "d": ((0, 1), (1, 1)),
    "e": ((0, 0.5), (0, 1)),
    "f": ((0, 0), (0, 0.5)),
    "g": ((0, 0.5), (1, 0.5)),
}
_DIGITS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abged",
    "3": "abgcd",
    "4": "fgbc",
    "5": "afgcd",
    "6": "afgedc",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}


def draw(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render one scene as a uint8 [64, 64, 3] array (random jitter drawn from rng)."""
    S = SIZE * SUPER
    bg = _jitter(COLOURS[scene.background], rng)
    fg = _jitter(COLOURS[scene.colour], rng)
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(*RADIUS[scene.size]) * SUPER
    cx0, cy0 = CENTRE[scene.size][scene.position]
    cx = (cx0 + rng.uniform(-JITTER_PX, JITTER_PX)) * SUPER
    cy = (cy0 + rng.uniform(-JITTER_PX, JITTER_PX)) * SUPER
    angle = math.radians(rng.uniform(-10, 10))
    if scene.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif scene.shape == "square":
        h = r * 0.85
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        d.polygon(_rotate(pts, cx, cy, angle), fill=fg)
    elif scene.shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        pts = [(x, y + r * 0.15) for x, y in pts]  # centre the triangle's box
        d.polygon(_rotate(pts, cx, cy, angle), fill=fg)
    elif scene.shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(_rotate(pts, cx, cy, angle), fill=fg)
    elif scene.shape.startswith("digit "):
        digit = scene.shape.split()[1]
        h, w = 2 * r * 0.9, r * 1.0
        x0, y0 = cx - w / 2, cy - h / 2
        width = max(int(round(r * 0.32)), 1)
        for seg in _DIGITS[digit]:
            (ax, ay), (bx, by) = _SEGMENTS[seg]
            p = _rotate([(x0 + ax * w, y0 + ay * h), (x0 + bx * w, y0 + by * h)], cx, cy, angle * 0.5)
            d.line(p, fill=fg, width=width)
            for x, y in p:  # round joints
                d.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=fg)
    else:
        raise ValueError(scene.shape)
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


def make_dataset(n: int, seed: int, exclude: set | None = None):
    """n (image, caption, scene) triples; scenes whose combo is in `exclude` are redrawn."""
    rng = np.random.Generator(np.random.PCG64(seed))
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    captions, scenes = [], []
    for i in range(n):
        scene = random_scene(rng)
        while exclude is not None and scene.combo() in exclude:
            scene = random_scene(rng)
        images[i] = draw(scene, rng)
        captions.append(scene.partial_caption(rng))
        scenes.append(scene)
    return images, captions, scenes


def heldout_scenes(n: int = 100, seed: int = 4321) -> list[Scene]:
    """n scenes (full captions) whose combinations are held out of training."""
    combos = sorted(heldout_combos())
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.choice(len(combos), size=n, replace=False)
    out = []
    for i in idx:
        s, c, b, p = combos[i]
        out.append(Scene(shape=s, colour=c, size=SIZES[rng.integers(len(SIZES))], position=p, background=b))
    return out


def heldout_eval_scenes(n: int = 100, seed: int = 4321) -> list[Scene]:
    """n held-out scenes for measuring adherence, the five kinds equally often (as in training;
    the held-out combinations themselves are 10 digits in 14).  A combination may come twice,
    in both sizes; no caption repeats.  (heldout_scenes() above is what the tokenizer stage saw; kept
    unchanged.)"""
    rng = np.random.Generator(np.random.PCG64(seed))
    pools = {}
    for kind in KINDS:
        pool = [
            Scene(shape=s, colour=c, size=z, position=p, background=b)
            for (s, c, b, p) in sorted(heldout_combos())
            if (s.startswith("digit") if kind == "digit" else s == kind)
            for z in SIZES
        ]
        pools[kind] = [pool[i] for i in rng.permutation(len(pool))]
    return [pools[KINDS[i % len(KINDS)]][i // len(KINDS)] for i in range(n)]


def caption_words() -> list[str]:
    words = {"a", "in", "the", "on", "background", "digit"}
    words |= set(COLOUR_NAMES) | set(SIZES)
    for p in POSITIONS:
        words |= set(p.split())
    for s in SHAPES:
        words |= set(s.split())
    return sorted(words)


if __name__ == "__main__":  # a preview sheet: python onnx/shapes_data.py out.png
    import sys

    imgs, caps, _ = make_dataset(64, seed=0)
    sheet = Image.new("RGB", (8 * SIZE, 8 * SIZE))
    for i, a in enumerate(imgs):
        sheet.paste(Image.fromarray(a), ((i % 8) * SIZE, (i // 8) * SIZE))
    sheet.save(sys.argv[1] if len(sys.argv) > 1 else "shapes_preview.png")
    for c in caps[:8]:
        print(c)
