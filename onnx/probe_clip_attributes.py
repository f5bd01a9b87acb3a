#!/usr/bin/env python3
"""How well the demo CLIP model tells the attributes of a caption apart, one at a time.

For freshly drawn scenes (not the training images), the image is compared with its caption
and with every caption that differs from it in one attribute only (the position, the shape,
...); the figure is how often the true caption scores highest.  This is what reranking can
use: an attribute CLIP cannot tell apart is one the top-ranked candidate is not better at.

    onnx/.venv/bin/python onnx/probe_clip_attributes.py                        # the committed shapes-clip (ONNX)
    onnx/.venv/bin/python onnx/probe_clip_attributes.py local/demo-train       # a training folder (WORK/clip, WORK/tokenizer)

Reads ONNX exports with onnxruntime and training folders with transformers.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shapes_data as data  # noqa: E402

ATTRIBUTES = {
    "position": data.POSITIONS,
    "shape": data.SHAPES,
    "colour": data.COLOUR_NAMES,
    "background": data.COLOUR_NAMES,
    "size": data.SIZES,
}


def variants(scene: data.Scene, attr: str) -> list[str]:
    """The scene's caption first, then every caption differing from it in `attr` only."""
    out = [scene.caption()]
    for v in ATTRIBUTES[attr]:
        if v == getattr(scene, attr):
            continue
        if (attr == "colour" and v == scene.background) or (attr == "background" and v == scene.colour):
            continue
        out.append(data.Scene(**{**scene.__dict__, attr: v}).caption())
    return out


class OnnxClip:
    def __init__(self, folder: Path):
        import onnxruntime as ort
        from transformers import CLIPProcessor

        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.processor = CLIPProcessor.from_pretrained(folder)

    def embeds(self, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        inputs = self.processor(text=captions, images=list(images), return_tensors="np", padding=True)
        feeds = {i.name: inputs[i.name].astype(np.int64 if i.name != "pixel_values" else np.float32) for i in self.session.get_inputs()}
        _, _, text, image = self.session.run(None, feeds)
        return image, text


class TorchClip:
    def __init__(self, work: Path):
        import torch
        from transformers import CLIPModel

        import train_demo_model as train

        self.torch, self.train = torch, train
        self.model = CLIPModel.from_pretrained(work / "clip").eval()
        self.tok = train.load_tokenizer(work)

    def embeds(self, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.no_grad():
            out = self.model(input_ids=self.train.token_ids(self.tok, captions), pixel_values=self.train.clip_pixels(images))
        return out.image_embeds.numpy(), out.text_embeds.numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=HERE / "models" / "shapes-clip",
                    help="an ONNX CLIP export (model.onnx) or a training folder (clip/, tokenizer/)")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=99)
    args = ap.parse_args(argv)
    clip = OnnxClip(args.model) if (args.model / "model.onnx").is_file() else TorchClip(args.model)
    rng = np.random.Generator(np.random.PCG64(args.seed))
    scenes = [data.random_scene(rng) for _ in range(args.scenes)]
    images = np.stack([data.draw(s, rng) for s in scenes])
    print(f"{args.model}: {args.scenes} scenes; the true caption against those differing in one attribute")
    for attr in ATTRIBUTES:
        right, chance = 0, 0.0
        for image, scene in zip(images, scenes):
            captions = variants(scene, attr)
            chance += 1 / len(captions)
            img, txt = clip.embeds(image[None], captions)
            img = img / np.linalg.norm(img, axis=-1, keepdims=True)
            txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
            right += int(np.argmax(txt @ img[0]) == 0)
        print(f"  {attr:<10} {100 * right / len(scenes):5.1f} %   (chance {100 * chance / len(scenes):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
