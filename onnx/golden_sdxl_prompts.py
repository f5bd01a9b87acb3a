#!/usr/bin/env python3
"""Golden files for AUTOMATIC1111 prompt reading on SDXL (issue 19 for issue 18's families).

AUTOMATIC1111 cannot be installed here. This script restates what it does for SDXL, read from its
published source (modules/sd_hijack_clip.py, modules/sd_hijack_open_clip.py, modules/sd_models_xl.py,
modules/sd_emphasis.py, and the sgm GeneralConditioner of Stability-AI/generative-models it runs),
on transformers' CLIPTextModel / CLIPTextModelWithProjection with tiny-sdxl's weights:

* each text encoder reads the prompt on its own, with the syntax, windows and weights of
  golden_prompts.py (schedule, emphasis, 75-token windows with the comma backtrack, BREAK):
  CLIP ViT-L (`text_encoder`) pads a window with the end token, OpenCLIP bigG (`text_encoder_2`)
  with id 0 after the first end token (its `id_pad = 0`, which is also what diffusers'
  `tokenizer_2` pads with, "!");
* each window through each encoder: the penultimate hidden state (`hidden_states[-2]`: sgm's
  FrozenCLIPEmbedder `layer="hidden", layer_idx=11` and FrozenOpenCLIPEmbedder2
  `layer="penultimate"`), times the window's weights and rescaled to the mean it had before
  ("Original" emphasis), separately for each encoder; as for SD (golden_prompts.py's
  `conditioning`), the texts of a prompt's schedule are one batch: each text padded to the
  schedule's number of windows with empty windows, the rescale computed over the whole batch; the two concatenated along the width
  (sgm concatenates the embedders' `crossattn` outputs), windows along the sequence;
* CLIP skip: AUTOMATIC1111 applies it to SDXL only with its "Clip skip SDXL" setting
  (`sdxl_clip_l_skip`), and then only to CLIP ViT-L, as `hidden_states[-N]` without the final
  layer norm; bigG keeps its penultimate state. N = 2 is the penultimate state itself;
* the pooled `text_embeds` of a text: bigG's pooled projection of the text's first window
  (`zs[0].pooled`);
* no negative prompt with `force_zeros_for_empty_prompt` (tiny-sdxl): zero embeddings and zero
  pooled, as long as the prompt's conditioning (zero keys and values give the same attention at
  any length); otherwise the prompt and the negative prompt padded to the same number of windows
  with the empty prompt's window (AUTOMATIC1111's `pad_cond_uncond`, as sdspool does for SD);
* prompt editing and alternation: the conditioning of each UNet call, as golden_prompts.py's
  `conditioning` computes it for SD; the pooled embedding changes with the text.

The rescale to the mean is computed as golden_prompts.py does (means accumulated in float64,
rounded to float32). The torch models are rebuilt from onnx/build_sdxl_models.py's seeds and
checked against the committed ONNX files before anything is written.

Output ``tests/golden/prompt/sdxl/``: ``index.json`` (per case: model, prompt, negative, steps,
clip_skip, the phases with from which UNet call and their .npy files: `cond`/`uncond`
[1, 77 * windows, width] and `pooled`/`negative_pooled` [1, projection]) and, for the pixel case,
the pixels optimum's ORTStableDiffusionXLPipeline renders fed with that conditioning
(`prompt_embeds`, `pooled_prompt_embeds`, `negative_*`).

Usage: HF_HUB_OFFLINE=1 PYTHONPATH=<dir with lark> onnx/.venv/bin/python onnx/golden_sdxl_prompts.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_sdxl_models as bsm  # noqa: E402
import build_test_models as btm  # noqa: E402
import golden_prompts as gp  # noqa: E402
import golden_tokenizer as gt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(gp.ROOT)
MODELS = ROOT / "onnx" / "models"
OUT = ROOT / "tests" / "golden" / "prompt" / "sdxl"

LONG = (
    "a large red circle in the center of the picture, a small green square at the top left corner, "
    "a blue triangle at the bottom right, (a yellow circle:1.3) on the left side, a purple star, "
    "an orange hexagon next to a grey cloud, a white moon above, detailed, sharp focus, masterpiece, "
    "on a black background, high contrast"
)
# name, model, prompt, negative, steps, clip_skip
CASES = [
    ("emphasis", "tiny-sdxl", "a (large:1.4) red circle in the center on a [[blue]] background",
     "(green:1.3), small", 4, 1),
    ("nested_zero_negative", "tiny-sdxl", "((a large red circle)), (in the (center:0.7):1.2), [on a blue background]",
     "", 4, 1),
    ("long", "tiny-sdxl", LONG, "small", 4, 1),
    ("long_zero_negative", "tiny-sdxl", LONG, "", 4, 1),
    ("break", "tiny-sdxl", "a large red circle BREAK on a (blue:1.2) background", "BREAK", 4, 1),
    ("long_negative", "tiny-sdxl", "a red circle", "small, green, " * 30, 4, 1),
    ("editing", "tiny-sdxl", "a [red:blue:3] circle on a [green|yellow] background", "[small::0.5]", 7, 1),
    ("clip_skip2", "tiny-sdxl", "a (large:1.4) red circle in the center on a [[blue]] background",
     "(green:1.3), small", 4, 2),
    ("clip_skip3", "tiny-sdxl", "a (large:1.4) red circle in the center on a [[blue]] background",
     "(green:1.3), small", 4, 3),
    ("refiner_long", "tiny-sdxl-refiner", LONG, "", 4, 1),
    ("refiner_editing", "tiny-sdxl-refiner", "a [(red:1.3):blue:0.5] circle BREAK on a [green|yellow] background",
     "(small:0.8)", 5, 2),
    # A schedule's texts of different numbers of windows, with emphasis: the shorter one padded to
    # the schedule's windows, the rescale over the whole batch (alternation counted once per step).
    ("editing_windows", "tiny-sdxl", "[a (red:1.3) circle:" + LONG + ":0.5]", "[(small:1.2)|large] square", 5, 1),
]
PIXEL_CASE = "long"  # emphasis and a long prompt, through the whole pipeline
SEED, SIZE, GUIDANCE = 42, 64, 5.0


def rebuild_encoders():
    """tiny-sdxl's text encoders as build_sdxl_models.py made them (each seeded right before it),
    and the committed tokenizers."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok1 = gt.load_slow(str(MODELS / "tiny-sdxl" / "tokenizer"))
    tok2 = gt.load_slow(str(MODELS / "tiny-sdxl" / "tokenizer_2"))
    torch.manual_seed(bsm.SDXL_SEED + 2)
    te1 = CLIPTextModel(btm.text_config(tok1, bsm.TE1_HIDDEN, "quick_gelu", layers=bsm.TE1_LAYERS)).eval()
    torch.manual_seed(bsm.SDXL_SEED + 3)
    te2 = CLIPTextModelWithProjection(
        btm.text_config(tok2, bsm.TE2_HIDDEN, "gelu", layers=bsm.TE2_LAYERS, proj=bsm.TE2_PROJ)
    ).eval()
    return tok1, tok2, te1, te2


def check_against_onnx(te1, te2) -> float:
    """The rebuilt encoders give what the committed ONNX files give (same weights)."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 2512, size=(2, 77)).astype(np.int64)
    ids[:, 0], ids[:, 30:] = 2512, 2513
    worst = 0.0
    for model, te in (("tiny-sdxl", te1), ("tiny-sdxl", te2), ("tiny-sdxl-refiner", te2)):
        part = "text_encoder" if te is te1 else "text_encoder_2"
        sess = ort.InferenceSession(str(MODELS / model / part / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(names, {"input_ids": ids})))
        with torch.no_grad():
            t = te(input_ids=torch.from_numpy(ids), output_hidden_states=True)
        for i, h in enumerate(t.hidden_states):
            worst = max(worst, float(np.abs(h.numpy() - outs[f"hidden_states.{i}"]).max()))
        if part == "text_encoder_2":
            worst = max(worst, float(np.abs(t.text_embeds.numpy() - outs["text_embeds"]).max()))
    assert worst < 1e-5, f"the rebuilt text encoders differ from the ONNX files by {worst}"
    return worst


def emphasize(z: np.ndarray, weights: list[list[float]]) -> np.ndarray:
    """AUTOMATIC1111's "Original" emphasis on one window index of a batch [batch, 77, width]
    (float32): one mean before and one after weighting over the whole batch."""
    w = np.asarray(weights, dtype=np.float32)
    if (w == 1.0).all():
        return z
    before = np.float32(z.astype(np.float64).mean())
    z = z * w[:, :, None]
    after = np.float32(z.astype(np.float64).mean())
    return z * (before / after)


class Encoders:
    """One model's encoders: (tokenizer, torch model, hidden-state index or None for penultimate,
    whether it pools)."""

    def __init__(self, model: str, clip_skip: int, tok1, tok2, te1, te2):
        skip_l = -clip_skip if clip_skip >= 2 else -2
        if model == "tiny-sdxl":
            self.parts = [(tok1, te1, skip_l, False), (tok2, te2, -2, True)]
        else:  # the refiner: bigG only
            self.parts = [(tok2, te2, -2, True)]

    def schedule(self, texts: list[str]) -> dict:
        """A schedule's texts (one per entry, repeats included) encoded as one batch, as
        AUTOMATIC1111's `get_learned_conditioning` does: each encoder pads every text to the
        batch's largest number of windows with empty windows and weighs window index by window
        index over the whole batch. Per distinct text: the weighted windows concatenated
        [77 * n, width], the first window's pooled, and n."""
        distinct = list(dict.fromkeys(texts))
        row = {t: texts.index(t) for t in distinct}
        per_encoder = {t: [] for t in distinct}
        pooled, counts = {}, None
        for tok, te, layer, pools in self.parts:
            read = {t: gp.chunks(tok, gp.emphasis(t)) for t in distinct}
            # The encoders share the vocabulary: the same windows, only the padding differs.
            if counts is None:
                counts = {t: len(c) for t, c in read.items()}
            assert counts == {t: len(c) for t, c in read.items()}, texts
            empty = gp.chunks(tok, gp.emphasis(""))[0]
            n, b = max(counts.values()), len(texts)
            # Window index by window index, each of the batch's texts; all through the encoder in
            # one run (a one-text schedule: its windows, as a text alone is encoded).
            batch = [read[t][i] if i < len(read[t]) else empty for i in range(n) for t in texts]
            with torch.no_grad():
                out = te(input_ids=torch.tensor([c["ids"] for c in batch], dtype=torch.int64),
                         output_hidden_states=True)
            hidden = out.hidden_states[layer].numpy()
            windows = {t: [] for t in distinct}
            for i in range(n):
                rows = slice(i * b, (i + 1) * b)
                z = emphasize(hidden[rows], [c["weights"] for c in batch[rows]])
                for t in distinct:
                    windows[t].append(z[row[t]])
            if pools:
                pooled = {t: out.text_embeds.numpy()[row[t]] for t in distinct}
            for t in distinct:
                per_encoder[t].append(np.concatenate(windows[t]))
        n = max(counts.values())
        return {t: (np.concatenate(per_encoder[t], axis=1), pooled[t], n) for t in distinct}


def case_phases(enc: Encoders, prompt: str, negative: str, steps: int, zero_negative: bool):
    """(from_step, cond, uncond, pooled, negative_pooled) for each conditioning phase."""
    def read(p):
        entries = gp.schedule(p, steps)
        encoded = enc.schedule([text for _, text in entries])
        texts = list(encoded)
        return list(encoded.values()), [(end, texts.index(text)) for end, text in entries]

    cond_texts, cond_sched = read(prompt)
    unc_texts, unc_sched = read(negative)
    empty = enc.schedule([""])[""][0]
    win = len(empty)
    phases, last = [], None
    for step in range(steps + 1):  # UNet calls (PNDM makes one more than the steps)
        key = (gp.text_at(cond_sched, step), gp.text_at(unc_sched, step))
        if key == last:
            continue
        last = key
        c, pc, _ = cond_texts[key[0]]
        u, pu, _ = unc_texts[key[1]]
        if zero_negative:
            u, pu = np.zeros_like(c), np.zeros_like(pc)
        n = max(len(c), len(u)) // win
        c = np.concatenate([c] + [empty] * (n - len(c) // win))
        u = np.concatenate([u] + [empty] * (n - len(u) // win))
        phases.append((step, c[None], u[None], pc[None], pu[None]))
    return phases


class Writer:
    """Writes the .npy files; identical arrays once."""

    def __init__(self):
        self.seen = {}

    def save(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array.astype(np.float32))
        digest = hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()
        if digest not in self.seen:
            np.save(OUT / name, array)
            self.seen[digest] = name
        return self.seen[digest]


def render_pixels(phase) -> np.ndarray:
    from optimum.onnxruntime import ORTStableDiffusionXLPipeline

    pipe = ORTStableDiffusionXLPipeline.from_pretrained(MODELS / "tiny-sdxl", provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)
    _, c, u, pc, pu = phase
    shape = (1, 4, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED))
    t = torch.from_numpy
    out = pipe(prompt_embeds=t(c), pooled_prompt_embeds=t(pc), negative_prompt_embeds=t(u),
               negative_pooled_prompt_embeds=t(pu), num_inference_steps=4, guidance_scale=GUIDANCE,
               width=SIZE, height=SIZE, latents=latents, output_type="np")
    return (np.asarray(out.images, dtype=np.float32) * 255).round().astype(np.uint8)


def main() -> None:
    torch.use_deterministic_algorithms(True)
    tok1, tok2, te1, te2 = rebuild_encoders()
    worst = check_against_onnx(te1, te2)
    print(f"rebuilt encoders match the ONNX files within {worst:.2e}")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.npy"):
        old.unlink()
    writer = Writer()
    cases = []
    for name, model, prompt, negative, steps, clip_skip in CASES:
        enc = Encoders(model, clip_skip, tok1, tok2, te1, te2)
        zero_negative = model == "tiny-sdxl" and negative == ""  # force_zeros_for_empty_prompt
        phases = case_phases(enc, prompt, negative, steps, zero_negative)
        windows = [n for _, _, n in enc.schedule([t for _, t in gp.schedule(prompt, steps)]).values()]
        record = {"name": name, "model": model, "prompt": prompt, "negative": negative, "steps": steps,
                  "clip_skip": clip_skip, "phases": []}
        for step, c, u, pc, pu in phases:
            files = {k: writer.save(f"{name}.{step}.{k}.npy", a)
                     for k, a in (("cond", c), ("uncond", u), ("pooled", pc), ("negative_pooled", pu))}
            record["phases"].append({"from_step": step, "files": files})
        if name == PIXEL_CASE:
            assert len(phases) == 1
            pixels = render_pixels(phases[0])
            np.save(OUT / f"{name}.pixels.npy", pixels)
            record.update({"pixels": f"{name}.pixels.npy", "seed": SEED, "size": SIZE, "guidance": GUIDANCE,
                           "scheduler": "the folder's (EulerDiscreteScheduler)"})
        cases.append(record)
        print(f"{name}: {len(phases)} phases, windows per text {windows}, cond {phases[0][1].shape}")
    with open(OUT / "index.json", "w", encoding="utf-8") as f:
        json.dump({
            "generator": "onnx/golden_sdxl_prompts.py",
            "reference": "transformers CLIPTextModel / CLIPTextModelWithProjection rebuilt with tiny-sdxl's "
                         f"weights (ONNX outputs within {worst:.1e}); AUTOMATIC1111's reading per encoder "
                         "(golden_prompts.py), 'Original' emphasis per encoder and window index over the batch of "
                         "a schedule's texts (padded to its number of windows), penultimate hidden "
                         "states (CLIP-L hidden_states[-clip_skip] for clip_skip >= 2), pooled from the first "
                         "window; pixels from optimum's ORTStableDiffusionXLPipeline fed the conditioning",
            "cases": cases,
        }, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
