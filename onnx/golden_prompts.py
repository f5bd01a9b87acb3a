#!/usr/bin/env python3
"""Golden files for sdspool's AUTOMATIC1111 prompt reading (src/prompt/).

AUTOMATIC1111 cannot be installed here, so this script restates its behaviour, read from its
published source (modules/prompt_parser.py and modules/sd_hijack_clip.py of
AUTOMATIC1111/stable-diffusion-webui), on the same engines it uses:

* prompt editing and alternation: a lark Earley grammar with the same language as
  AUTOMATIC1111's (lark is what it parses with, so ambiguous prompts are resolved the way lark
  resolves them), then the schedule steps and the text at each step (edits switch after
  ``int(N * steps)`` for a number with a decimal point, after step ``N`` otherwise, capped at
  ``steps``; alternation picks ``(step - 1) % count``); a prompt lark rejects is used unchanged;
* emphasis: Python's ``re`` scanning the prompt for escapes, brackets, ``:number)`` closers and
  text, BREAK split out with ``\\s*\\bBREAK\\b\\s*``, weights as Python floats, equal neighbours merged;
* chunking: each weighted piece tokenized on its own by transformers' slow ``CLIPTokenizer``
  (``add_special_tokens=False``, no truncation; ftfy not importable, as in
  golden_tokenizer.py), 75 tokens per chunk, the text after the last comma moved to the next
  chunk when it is at most 20 tokens back, ``BREAK`` closing a chunk, padding with the end token,
  start/end tokens around, and for a tokenizer whose pad is not the end token (SD 2.x) the pad id
  after the first end token.

Output: ``tests/golden/prompt/a1111.json``: for each corpus prompt and its step count, the
schedule (end step, index of its text) and each distinct text with its pieces (text, weight, or
"BREAK") and chunks (77 ids, and the weights where not all 1) for the SD 1.x tokenizer, and the
SD 2.x ids for the first 120 cases; a prompt
AUTOMATIC1111 fails on (``(a:1.2.3)``) has ``"error"``.

``conditioning``: ``tests/golden/prompt/cond/``: for a few prompt/negative pairs on
onnx/models/shapes-sd (trained; 24-token windows), the conditioning phases (from which UNet call, the prompt's and the
negative's hidden states, each window weighted and rescaled to its mean as AUTOMATIC1111's
"Original" emphasis does over the batch of a schedule's texts (each text padded to the
schedule's number of windows with empty windows), the shorter padded with the empty prompt's
window), and for the
constant ones the pixels optimum's ORTStableDiffusionPipeline renders from them
(``prompt_embeds``/``negative_prompt_embeds``, DDIM, seed 42, 64x64).

``clip_skip``: ``tests/golden/prompt/clip_skip/``: CLIP skip references on tiny-sdxl's first
text encoder (the final layer norm's weights read from the ONNX initializers).

Usage: HF_HUB_OFFLINE=1 PYTHONPATH=<dir with lark> onnx/.venv/bin/python onnx/golden_prompts.py [conditioning|clip_skip]
(lark 1.3.1 is listed in onnx/requirements.txt)
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile

import lark
import regex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_tokenizer as gt  # noqa: E402

ROOT = gt.ROOT
OUT_DIR = os.path.join(ROOT, "tests", "golden", "prompt")
CHUNK = 75
BACKTRACK = 20

# The prompt-editing grammar: the same language as AUTOMATIC1111's, in lark's notation.
GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
PARSER = lark.Lark(GRAMMAR)


def switch_step(number: str, steps: int) -> int:
    v = float(number)
    v = v * steps if "." in number else v
    return min(steps, int(v))


def schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    try:
        tree = PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]

    points = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            t = switch_step(str(node.children[-2]), steps)
            if t >= 1:
                points.add(t)
        elif node.data == "alternate":
            points.update(range(1, steps + 1))

    def text_at(node, step: int) -> str:
        if isinstance(node, lark.Token):
            return str(node)
        if node is None:
            return ""
        if node.data == "scheduled":
            before, after, when = node.children[0], node.children[1], str(node.children[-2])
            return text_at(before, step) if step <= switch_step(when, steps) else text_at(after, step)
        if node.data == "alternate":
            options = node.children
            return text_at(options[(step - 1) % len(options)], step)
        return "".join(text_at(c, step) for c in node.children)

    return [(t, text_at(tree, t)) for t in sorted(points)]


ATTENTION = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)
BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


def emphasis(text: str) -> list[list]:
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in ATTENTION.finditer(text):
        s, number = m.group(0), m.group(1)
        if s.startswith("\\"):
            res.append([s[1:], 1.0])
        elif s == "(":
            round_open.append(len(res))
        elif s == "[":
            square_open.append(len(res))
        elif number is not None and round_open:
            scale(round_open.pop(), float(number))  # ValueError on "1.2.3", as in AUTOMATIC1111
        elif s == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif s == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(BREAK_RE.split(s)):
                if i:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    merged: list[list] = []
    for item in res:
        if merged and merged[-1][1] == item[1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


def chunks(tok, pieces: list[list]) -> list[dict]:
    """75 tokens a window for CLIP's 77 (model_max_length - 2 for other tokenizers)."""
    CHUNK = tok.model_max_length - 2  # noqa: N806
    comma = tok.get_vocab().get(",</w>")
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    out: list[dict] = []
    cur_ids: list[int] = []
    cur_w: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal cur_ids, cur_w, last_comma
        ids = [bos] + cur_ids + [eos] * (CHUNK - len(cur_ids)) + [eos]
        w = [1.0] + cur_w + [1.0] * (CHUNK - len(cur_w)) + [1.0]
        if pad != eos:
            first = ids.index(eos)
            ids = ids[: first + 1] + [pad] * (len(ids) - first - 1)
        out.append({"ids": ids, "weights": w})
        cur_ids, cur_w, last_comma = [], [], -1

    texts = [t for t, _ in pieces]
    token_lists = tok(texts, truncation=False, add_special_tokens=False)["input_ids"]
    for ids, (text, weight) in zip(token_lists, pieces):
        if text == "BREAK" and weight == -1:
            close()
            continue
        for token in ids:
            if token == comma:
                last_comma = len(cur_ids)
            elif len(cur_ids) == CHUNK and last_comma != -1 and len(cur_ids) - last_comma <= BACKTRACK:
                cut = last_comma + 1
                moved_ids, moved_w = cur_ids[cut:], cur_w[cut:]
                cur_ids, cur_w = cur_ids[:cut], cur_w[:cut]
                close()
                cur_ids, cur_w = moved_ids, moved_w
            if len(cur_ids) == CHUNK:
                close()
            cur_ids.append(token)
            cur_w.append(weight)
    if cur_ids or not out:
        close()
    return out


# --------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------

EMPHASIS = [
    "a (cat)", "a ((cat))", "a (((cat)))", "a [cat]", "a [[cat]]", "a (cat:1.3)", "a (cat:0.5)",
    "a (cat: 1.3 )", "a (cat:+1.3)", "a (cat:-1)", "a (cat:0)", "a (cat:.5)", "a (cat:5.)",
    "a (big (cat:1.5) house)", "a [big (cat) house]", "((a [b] c):1.2)", "(a)(b)(c)", "(a)[b](c)",
    "(a:1.1)(b:1.1)", "(cat:1.2) (dog:1.2)", "(masterpiece:1.2), (best quality:1.3), 1girl",
    "(a, b, c:1.4), d", "((a:1.2):1.2)", "[[[a]]] (((b)))", "(a:2) [b:3]", "x (a:1e2) y",
    "(cat:)", "(cat:abc)", "a:1.2)", "(a:1.2:1.3)", "((a:1.2) b:0.7)", "(a:0.000001)", "(a:100)",
    "(a:1.23456789012345)", "(:1.2)", "()", "[]", "(())", "[()]", "( )", "[ ]",
    "a ( b ) c", "(\n cat \n)", "(cat:1.2\n)", "(cat\t:\t1.2\t)",
    "(one two three four:1.1) five", "a (b:1.5) c (d:0.5) e", "(a:1.2.3)", "(a:.)", "(a:+)",
]

ESCAPES = [
    "\\(cat\\)", "\\[cat\\]", "a \\(b\\) (c)", "\\\\(cat)", "\\\\", "a\\b", "a \\ b", "\\:",
    "\\(cat:1.2\\)", "(\\(cat\\):1.2)", "emoticon :\\)", "\\x", "\\", "a\\", "\\\\\\(",
    "text \\[not emphasis\\] here", "(a\\)b)", "[a\\]b]", "a\\\nb", "\\|", "a \\| b",
    "\\[a:b:3\\]", "[a\\:b:3]", "kaomoji (\\^_\\^)", "\\(\\(\\(", "path C:\\\\dir",
]

UNBALANCED = [
    "(unbalanced", "unbalanced)", "[unbalanced", "unbalanced]", "((a)", "(a))", "[[a]", "[a]]",
    "(a [b)", "[a (b]", "(a [b) c]", ")(", "][", ")a(", "(((", ")))", "[[[", "]]]",
    "a (b c [d e", "a ) b ] c", "(a:1.2", "a:1.2)", "([a)]", "[(a])", "(a:1.2))", "((a:1.2)",
    "a ((b) c", "a (b)) c", "((a][:b:c [d:3]", "[[a:b:3]", "(a [b:c:2] d", "a [b:c:2]] e",
    "[a|b", "a|b]", "a (b|c) d", "(a:1.2]", "[a:1.2)",
]

BREAKS = [
    "a BREAK b", "BREAK a", "a BREAK", "BREAK", "a BREAK BREAK b", "aBREAK b", "a BREAKb",
    "a break b", "a Break b", "a BREAK\nb", "a\tBREAK\tb", "a,BREAK,b", "(a BREAK b)",
    "(a BREAK b:0)", "[a BREAK b]", "a (b) BREAK (c)", "BREAK BREAK", "a  BREAK  b",
    "cat BREAK_ dog", "cat _BREAK dog", "cat BREAK. dog", "a BREAK b BREAK c BREAK d",
    "(BREAK:-1)", "a [b BREAK c:3] d", "1BREAK2", "é BREAK ü", "一BREAK二",
]

EDITING = [
    "a [b:3]", "a [b: 3]", "a [b :3]", "a [b:3 ]", "a [b:c:3]", "a [b:c: 3 ]", "a [b::3]",
    "a [:c:3]", "a [b:c:0]", "a [b:c:1]", "a [b:c:19]", "a [b:c:20]", "a [b:c:21]", "a [b:c:100]",
    "a [b:c:-1]", "a [b:c:+2]", "a [b:c:0.5]", "a [b:c:.5]", "a [b:c:0.05]", "a [b:c:0.049]",
    "a [b:c:0.99]", "a [b:c:1.0]", "a [b:c:1.5]", "a [b:c:0.0]", "a [b:c:0.25]", "a [b:c:0.29]",
    "a [b:c:0.3]", "a [b:c:0.7]", "a [b:c:1e1]", "a [b:c:1e-1]", "a [b:c:2.5e-1]", "a [b:c:5.]",
    "a [b:c:1.2.3]", "a [b:c:x]", "a [b:c:]", "a [b:c:3", "a [b:c:d:3]",
    "a[b:[c:d:2]:1]e", "[[a:b:2]:c:4]", "[a:[b:c:3]:6]", "[(a:1.3):[b]:5]", "[(a:2):3]",
    "a [[[b]]:2]", "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
    "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]",
    "[dog:cat:0.5] sitting on a couch", "a (cat [with:without:5] hat)", "(a [b:c:5]:1.4)",
    "[a (b:1.2):c:5]", "[a\\]:b:5]", "[a:b:5]BREAK[c:d:10]", "[a BREAK b:c:5]", "[a:b:10.]",
    "[a:b:0.5] [c:d:0.5] [e:f:10]", "[a, b, c:d, e, f:0.4]", "photo of [young:old:15] man",
]

ALTERNATION = [
    "[a|b]", "[a|b|c]", "[a|]", "[|b]", "[|]", "[fe|||]male", "[a|(b:1.1)]", "[a|[b|c]]",
    "[a|b] [c|d|e]", "[a|[b:c:4]]", "[[a|b]:c:5]", "[a:[b|c]:5]", "[cat|dog] on a [red|blue] couch",
    "[ a | b ]", "[(a)|[b]]", "[a|b", "a|b", "[a|b]|c", "([a|b])", "([a|b]:1.3)", "[a|b]BREAK[c|d]",
    "[a|b c|d e]",
]

COMMAS = []


def comma_prompts() -> list[str]:
    """Commas near the 75-token boundary ('cat' and ',' are one token each)."""
    out = []
    for n in (50, 54, 55, 56, 60, 70, 73, 74, 75, 76):
        out.append(" ".join(["cat"] * n) + ", " + " ".join(["dog"] * 30))
    out.append(", ".join(["cat"] * 60))
    out.append(", ".join(["red cat"] * 40))
    out.append(" ".join(["cat"] * 75) + ", dog")
    out.append(" ".join(["cat"] * 74) + ", dog")
    out.append(" ".join(["cat"] * 55) + ", " + " ".join(["dog"] * 19) + " " + " ".join(["eel"] * 10))
    out.append(" ".join(["cat"] * 54) + ", " + " ".join(["dog"] * 20) + " " + " ".join(["eel"] * 10))
    out.append("(" + " ".join(["cat"] * 70) + ":1.2), " + " ".join(["dog"] * 20))
    out.append(" ".join(["cat"] * 70) + " BREAK " + " ".join(["dog"] * 80))
    out.append(" ".join(["cat"] * 150))
    out.append(" ".join(["cat"] * 225) + ", end")
    out.append(",,,,, " * 40)
    out.append(" ".join(["cat"] * 60) + ", [a:b:5] " + " ".join(["dog"] * 20))
    return out


EMOJI = [
    "🐱 (🐶:1.3) [🐭]", "a cat 🐱, BREAK 🐶", "(👍🏽:1.2)", "[🐱|🐶]", "[🐱:🐶:0.5]", "❤️ love",
    "🇯🇵 flag (🇺🇸)", "(一只猫:1.2) 在月光下", "(café:1.1) naïve", "Москва (ПРИВЕТ:0.8)",
    "🐱" * 80, "(🐱 " * 40,
]

FRAGMENTS = [
    "cat", "a photo of", "(masterpiece:1.2)", "(", ")", "[", "]", ":", "|", "\\", "BREAK", ",",
    "[dog:cat:0.5]", "[a|b]", "(red:0.8)", "((best))", "[[worst]]", "\\(", "\\)", "1.5", "0.3",
    "🐱", "café", "  ", "\n", "[x:5]", "[y::0.4]", "(z:1.1)", "blue", "detailed", ":1.2)", "3]",
]


def generated(n: int, seed: int = 4321) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        out.append(" ".join(rng.choice(FRAGMENTS) for _ in range(k)))
    return out


def corpus() -> list[tuple[str, int]]:
    prompts = (
        gt.SD_PROMPTS + EMPHASIS + ESCAPES + UNBALANCED + BREAKS + EDITING + ALTERNATION
        + comma_prompts() + EMOJI + gt.LONG[:6] + generated(90)
    )
    seen, out = set(), []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            out.append((p, 20))
    # Other step counts for the scheduling syntax.
    for p in EDITING[:40]:
        for steps in (1, 7, 30):
            out.append((p, steps))
    for p in ALTERNATION[:8]:
        out.append((p, 7))
    return out


def read(tok, tok2, prompt: str, steps: int, with_sd2: bool) -> dict:
    """One case: the schedule as (end step, index into texts), each distinct text read once."""
    entry: dict = {"prompt": prompt, "steps": steps, "schedule": [], "texts": []}
    index: dict[str, int] = {}
    for end, text in schedule(prompt, steps):
        if text not in index:
            try:
                pieces = emphasis(text)
            except ValueError as e:
                return {"prompt": prompt, "steps": steps, "error": f"{text!r}: {e}"}
            item = {
                "text": text,
                "pieces": ["BREAK" if (t == "BREAK" and w == -1) else [t, w] for t, w in pieces],
                "chunks": [
                    {"ids": c["ids"], **({"weights": c["weights"]} if any(w != 1.0 for w in c["weights"]) else {})}
                    for c in chunks(tok, pieces)
                ],
            }
            if with_sd2:
                item["sd2_ids"] = [c["ids"] for c in chunks(tok2, pieces)]
            index[text] = len(entry["texts"])
            entry["texts"].append(item)
        entry["schedule"].append([end, index[text]])
    return entry


# --------------------------------------------------------------------------------------------
# conditioning and pixels (tiny-sd)
# --------------------------------------------------------------------------------------------

COND_CASES = [
    # name, prompt, negative, steps (shapes-sd: 24-token windows of 22)
    ("emphasis", "a (large:1.4) red circle in the center on a [[blue]] background", "(green:1.3), small", 7),
    ("nested", "((a large red circle)), (in the (center:0.7):1.2), [on a blue background]", "", 7),
    ("long", "a large red circle in the center, a small green square at the top left, a blue "
             "triangle at the bottom right, (a yellow circle:1.3) on the left, on a white background", "small", 7),
    ("break", "a large red circle BREAK on a blue background", "BREAK", 7),
    ("long_negative", "a red circle", "small, green, " * 12, 7),
    ("editing", "a [red:blue:3] circle on a [green|yellow] background", "[small::0.5]", 7),
    ("editing_long", "[a red circle:a blue square:0.5], " + "large, " * 20, "", 5),
    # AUTOMATIC1111 encodes a schedule's texts as one batch: emphasis rescaled over all of them
    # (alternation's texts counted once per step), and a text padded to the schedule's windows.
    ("editing_emphasis", "a [(red:1.5):blue:3] circle on a [green|(yellow:0.6)] background",
     "[(small:1.4)::0.5] square", 7),
    ("editing_windows", "[a red circle:a (blue:1.3) square in the center, a small green square at the top "
                        "left, a blue triangle at the bottom right:0.5]", "[[small]:large, green, " * 3 + ":2]", 5),
]
PIXEL_CASES = ["emphasis", "long", "break", "long_negative"]
COND_DIR = os.path.join(OUT_DIR, "cond")
# A trained text encoder: tiny-sd's random one ends in a LayerNorm whose output has a mean of
# about 1e-9, where the rescale to the original mean is noise.
TINY_SD = os.path.join(ROOT, "onnx", "models", "shapes-sd")


def encode_reading(session, tok, prompt: str, steps: int):
    """Per distinct text: the weighted, mean-rescaled hidden state [77 * chunks, hidden]; and the
    schedule (end step, text index).

    As AUTOMATIC1111's ``get_learned_conditioning``: the texts of the schedule, one per entry
    (repeats included), are one batch (``model.get_learned_conditioning(texts)``); its CLIP
    wrapper pads every text to the batch's largest number of chunks with empty chunks and applies
    the "Original" emphasis chunk index by chunk index to the whole batch tensor at once (one mean
    before and one after weighting for all texts)."""
    import numpy as np

    sched_texts = [text for _, text in schedule(prompt, steps)]
    distinct = list(dict.fromkeys(sched_texts))
    read = {text: chunks(tok, emphasis(text)) for text in distinct}
    empty = chunks(tok, emphasis(""))[0]
    parts = {text: [] for text in distinct}
    for i in range(max(len(c) for c in read.values())):
        rows = [read[t][i] if i < len(read[t]) else empty for t in sched_texts]
        ids = np.asarray([r["ids"] for r in rows], dtype=np.int64)
        z = session.run(["last_hidden_state"], {"input_ids": ids})[0]  # [batch, window, hidden] float32
        w = np.asarray([r["weights"] for r in rows], dtype=np.float32)
        # Means accumulated in float64 and rounded to float32: torch's float32 mean (which
        # AUTOMATIC1111 takes) rounds differently on each device, and these means are small
        # next to the values (shapes-sd: about 1e-3 against 0.8), so the rescale amplifies
        # summation error; float64 is the well-defined reference.
        before = np.float32(z.astype(np.float64).mean())
        z = z * w[:, :, None]
        after = np.float32(z.astype(np.float64).mean())
        z = z * (before / after)
        for text in distinct:
            parts[text].append(z[sched_texts.index(text)])
    sched = [(end, distinct.index(text)) for end, text in schedule(prompt, steps)]
    return [np.concatenate(parts[t], axis=0) for t in distinct], sched


def text_at(sched, step: int) -> int:
    for end, i in sched:
        if step <= end:
            return i
    return sched[0][1]


def build_conditioning() -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import DDIMScheduler
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    os.makedirs(COND_DIR, exist_ok=True)
    session = ort.InferenceSession(os.path.join(TINY_SD, "text_encoder", "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    tok = gt.load_slow(os.path.join(TINY_SD, "tokenizer"))
    empty, _ = encode_reading(session, tok, "", 1)
    empty = empty[0]
    cases = []
    pipe = ORTStableDiffusionPipeline.from_pretrained(TINY_SD, provider="CPUExecutionProvider")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    for name, prompt, negative, steps in COND_CASES:
        cond_texts, cond_sched = encode_reading(session, tok, prompt, steps)
        unc_texts, unc_sched = encode_reading(session, tok, negative, steps)
        phases, last = [], None
        for step in range(steps + 1):  # UNet calls (PNDM makes one more than the steps)
            key = (text_at(cond_sched, step), text_at(unc_sched, step))
            if key == last:
                continue
            last = key
            c, u = cond_texts[key[0]], unc_texts[key[1]]
            win = len(empty)
            n = max(len(c), len(u)) // win
            c = np.concatenate([c] + [empty] * (n - len(c) // win))[None]
            u = np.concatenate([u] + [empty] * (n - len(u) // win))[None]
            files = {}
            for k, a in (("cond", c), ("uncond", u)):
                fname = f"{name}.{step}.{k}.npy"
                np.save(os.path.join(COND_DIR, fname), a.astype(np.float32))
                files[k] = fname
            phases.append({"from_step": step, "files": files})
        case = {"name": name, "prompt": prompt, "negative": negative, "steps": steps, "phases": phases}
        if name in PIXEL_CASES:
            assert len(phases) == 1
            c = torch.from_numpy(np.load(os.path.join(COND_DIR, phases[0]["files"]["cond"])))
            u = torch.from_numpy(np.load(os.path.join(COND_DIR, phases[0]["files"]["uncond"])))
            seed, size = 42, 64
            shape = (1, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
            latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
            out = pipe(prompt_embeds=c, negative_prompt_embeds=u, num_inference_steps=steps, guidance_scale=7.5,
                       width=size, height=size, latents=latents, output_type="np")
            pixels = (np.asarray(out.images, dtype=np.float32) * 255).round().astype(np.uint8)
            fname = f"{name}.pixels.npy"
            np.save(os.path.join(COND_DIR, fname), pixels)
            case.update({"scheduler": "ddim", "guidance": 7.5, "seed": seed, "size": size, "pixels": fname})
        cases.append(case)
        print(f"{name}: {len(phases)} phases, {phases and np.load(os.path.join(COND_DIR, phases[0]['files']['cond'])).shape}")
    with open(os.path.join(COND_DIR, "index.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "onnx/golden_prompts.py conditioning", "model": "onnx/models/shapes-sd",
                   "reference": "onnxruntime text encoder, AUTOMATIC1111 'Original' emphasis in numpy float32, "
                                "windows padded with the empty prompt's; pixels from optimum's "
                                "ORTStableDiffusionPipeline with prompt_embeds/negative_prompt_embeds",
                   "cases": cases}, f, indent=1)
        f.write("\n")


def build_clip_skip() -> None:
    """``tests/golden/prompt/clip_skip/``: tiny-sdxl's first text encoder (exported with its
    hidden states) on a few id rows; for clip skip 1..layers the reference conditioning: the
    hidden state ``N - 1`` layers before the last through the final layer norm, whose weights are
    read from the ONNX file's initializers (``text_model.final_layer_norm.*``)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    path = os.path.join(ROOT, "onnx", "models", "tiny-sdxl", "text_encoder", "model.onnx")
    with open(os.path.join(os.path.dirname(path), "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    graph = onnx.load(path).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # The exporter deduplicates equal tensors: a name may be an Identity of another initializer.
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    tensor = lambda name: inits[alias.get(name, name)].astype(np.float64)  # noqa: E731
    gamma = tensor("text_model.final_layer_norm.weight")
    beta = tensor("text_model.final_layer_norm.bias")
    eps = config["layer_norm_eps"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    vocab = config["vocab_size"]
    ids = rng.integers(0, vocab - 2, size=(3, 77)).astype(np.int64)
    ids[:, 0] = config["bos_token_id"]
    ids[:, 40:] = config["eos_token_id"]
    names = [o.name for o in session.get_outputs()]
    outs = dict(zip(names, session.run(names, {"input_ids": ids})))
    layers = config["num_hidden_layers"]
    out_dir = os.path.join(OUT_DIR, "clip_skip")
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "ids.npy"), ids)
    for n in range(1, layers + 1):
        h = outs[f"hidden_states.{layers + 1 - n}"].astype(np.float64)
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        ref = (h - mean) / np.sqrt(var + eps) * gamma + beta
        if n == 1:
            assert np.abs(ref - outs["last_hidden_state"]).max() < 1e-5
        np.save(os.path.join(out_dir, f"skip{n}.npy"), ref.astype(np.float32))
    print(f"clip_skip: {layers} layers, eps {eps}")


def main() -> None:
    if sys.argv[1:] == ["conditioning"]:
        build_conditioning()
        return
    if sys.argv[1:] == ["clip_skip"]:
        build_clip_skip()
        return
    import transformers

    items = corpus()
    with tempfile.TemporaryDirectory() as work:
        folders = gt.write_folders(work)
        tok = gt.load_slow(folders["sd1"])
        tok2 = gt.load_slow(folders["sd2"])
        entries = [read(tok, tok2, p, steps, i < 120) for i, (p, steps) in enumerate(items)]
    result = {
        "generator": "onnx/golden_prompts.py",
        "reference": (
            f"lark {lark.__version__} Earley parse of AUTOMATIC1111's prompt-editing grammar; Python re emphasis; "
            f"transformers {transformers.__version__} CLIPTokenizer (slow, no ftfy) per piece; 75-token chunks, "
            "comma backtrack 20"
        ),
        "chunk_length": CHUNK,
        "comma_backtrack": BACKTRACK,
        "cases": entries,
    }
    n_multi = sum(1 for e in entries if "texts" in e and any(len(t["chunks"]) > 1 for t in e["texts"]))
    n_sched = sum(1 for e in entries if "schedule" in e and len(e["schedule"]) > 1)
    n_err = sum(1 for e in entries if "error" in e)
    print(f"{len(entries)} cases ({len({e['prompt'] for e in entries})} prompts): {n_sched} scheduled, "
          f"{n_multi} with more than one chunk, {n_err} errors")
    text = json.dumps(result, ensure_ascii=True, indent=1)
    text = regex.sub(r"\[\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?(?:,\s*-?\d+(?:\.\d+)?(?:e-?\d+)?)*)\s*\]",
                     lambda m: "[" + regex.sub(r"\s+", "", m.group(1)) + "]", text)
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "a1111.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
