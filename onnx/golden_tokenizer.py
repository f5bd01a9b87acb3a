#!/usr/bin/env python3
"""Golden files for sdspool's CLIP tokenizer (src/tokenizer/).

Everything here is built offline from the reference Python stack (onnx/requirements.txt):

* ``vocab``: the real 49,408-token CLIP vocabulary from open_clip's ``bpe_simple_vocab_16e6.txt.gz``
  (256 byte tokens, their ``</w>`` forms, the first 48,894 merges, ``<|startoftext|>``,
  ``<|endoftext|>``), written as ``tests/data/clip-vocab/{vocab.json,merges.txt}`` byte for byte as
  transformers' ``CLIPTokenizer.save_pretrained`` writes them (checked by a round trip), plus a
  ``tokenizer.json`` written by the ``tokenizers`` library from ``CLIPTokenizerFast`` (what a
  transformers 5.x save holds instead of vocab.json/merges.txt).
* ``tables``: ``src/tokenizer/tables.rs``, the Unicode character classes the slow tokenizer's
  ``BasicTokenizer`` cleaning uses, taken from this Python's ``unicodedata``.
* ``goldens``: ``tests/golden/tokenizer/``: the tokenizer folders' config files (SD 1.x style,
  SD 2.x style with pad ``!``, the modern format transformers 4.57 saves, and a tokenizer.json-only
  folder), ``clip_tokens.json`` (ids for each corpus prompt from the slow ``CLIPTokenizer`` with
  ftfy made unimportable, plus how CLIPTokenizerFast and the ftfy path differ) and
  ``unicode_props.json`` (lower-casing, NFC and pre-tokenizer classes per code point).

The reference is the slow CLIPTokenizer on its no-ftfy path: ftfy is not a dependency of
diffusers or transformers, and CLIPTokenizer only uses ftfy.fix_text when ``import ftfy`` works.
We make that import fail while constructing the tokenizer (``sys.modules["ftfy"] = None``), so
``__init__`` takes its own ImportError branch (``self.nlp = BasicTokenizer(strip_accents=False,
do_split_on_punc=False)``, ``self.fix_text = None``) and ``_tokenize`` then runs
``" ".join(self.nlp.tokenize(text))``. Setting ``tok.fix_text = None`` on a tokenizer built with
ftfy importable is NOT enough in transformers 4.57.6: ``self.nlp`` only exists on the ImportError
branch, so ``_tokenize`` would raise AttributeError. The script asserts the branch taken.

Usage: onnx/.venv/bin/python onnx/golden_tokenizer.py [vocab|tables|goldens|shapes|all]
(shapes: the trained demo model's tokenizer, onnx/models/shapes-sd/tokenizer)
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import unicodedata

import regex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_DIR = os.path.join(ROOT, "tests", "data", "clip-vocab")
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden", "tokenizer")
TABLES_RS = os.path.join(ROOT, "src", "tokenizer", "tables.rs")

MAX_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # what CLIPTokenizer and open_clip's SimpleTokenizer keep


# --------------------------------------------------------------------------------------------
# vocab
# --------------------------------------------------------------------------------------------


def build_vocab() -> None:
    import open_clip
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    gz = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    # Line 0 is a header; open_clip keeps lines[1 : 49152 - 256 - 2 + 1].
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges)
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {t: i for i, t in enumerate(tokens)}
    assert len(encoder) == len(tokens) == 49408

    os.makedirs(VOCAB_DIR, exist_ok=True)
    vocab_path = os.path.join(VOCAB_DIR, "vocab.json")
    merges_path = os.path.join(VOCAB_DIR, "merges.txt")
    # The exact format of CLIPTokenizer.save_vocabulary.
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")

    from transformers import CLIPTokenizer, CLIPTokenizerFast

    slow = CLIPTokenizer(vocab_path, merges_path)
    ids = slow("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    with tempfile.TemporaryDirectory() as tmp:
        slow.save_pretrained(tmp)
        for name in ("vocab.json", "merges.txt"):
            assert filecmp.cmp(os.path.join(VOCAB_DIR, name), os.path.join(tmp, name), shallow=False), (
                f"{name} does not round-trip through CLIPTokenizer.save_pretrained"
            )
        fast = CLIPTokenizerFast(vocab_path, merges_path)
        fast.save_pretrained(tmp)
        # transformers writes tokenizer.json pretty-printed (3.6 MB); the tokenizers library's own
        # compact save of the same tokenizer is half that and parses to the same object.
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
        out = os.path.join(VOCAB_DIR, "tokenizer.json")
        backend.save(out, pretty=False)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as a, open(out, encoding="utf-8") as b:
            assert json.load(a) == json.load(b)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        print(f"wrote {os.path.relpath(os.path.join(VOCAB_DIR, name), ROOT)}: "
              f"{os.path.getsize(os.path.join(VOCAB_DIR, name))} bytes")


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _ranges(pred) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for cp in range(0x110000):
        if pred(cp):
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return [tuple(r) for r in out]


def _rust_ranges(name: str, doc: str, ranges) -> str:
    body = "\n".join(f"    (0x{a:04X}, 0x{b:04X})," for a, b in ranges)
    return f"{doc}\npub(super) const {name}: &[(u32, u32)] = &[\n{body}\n];\n"


def build_tables() -> None:
    cat = lambda cp: unicodedata.category(chr(cp))  # noqa: E731
    other = _ranges(lambda cp: cat(cp).startswith("C"))
    space_sep = _ranges(lambda cp: cat(cp) == "Zs")
    py_space = _ranges(lambda cp: chr(cp).isspace())
    src = (
        "// @generated by onnx/golden_tokenizer.py tables from Python "
        f"{sys.version.split()[0]}'s unicodedata (Unicode {unicodedata.unidata_version}). Do not edit.\n"
        "//! Unicode classes used by the slow CLIPTokenizer's BasicTokenizer cleaning, as the\n"
        "//! reference Python sees them. Sorted, non-overlapping, inclusive ranges.\n\n"
        "/// Unicode version of the tables (Python's `unicodedata.unidata_version`).\n"
        f'pub(super) const UNICODE_VERSION: &str = "{unicodedata.unidata_version}";\n\n'
        + _rust_ranges(
            "OTHER",
            "/// General category C* (Cc, Cf, Cs, Co and Cn: unassigned code points included):\n"
            "/// what transformers' `_is_control` drops (it keeps tab, newline, carriage return).",
            other,
        )
        + "\n"
        + _rust_ranges(
            "SPACE_SEPARATOR",
            "/// General category Zs: with space, tab, newline and carriage return, what\n"
            "/// transformers' `_is_whitespace` turns into a space.",
            space_sep,
        )
        + "\n"
        + _rust_ranges(
            "PY_WHITESPACE",
            "/// Python's `str.isspace()`: where `str.split()` splits.",
            py_space,
        )
    )
    os.makedirs(os.path.dirname(TABLES_RS), exist_ok=True)
    with open(TABLES_RS, "w", encoding="utf-8") as f:
        f.write(src)
    print(f"wrote {os.path.relpath(TABLES_RS, ROOT)}: {len(other)} + {len(space_sep)} + {len(py_space)} ranges")


# --------------------------------------------------------------------------------------------
# tokenizer folders
# --------------------------------------------------------------------------------------------


def _added(content: str, legacy: bool) -> dict:
    d = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **d} if legacy else d


def legacy_configs(pad: str) -> tuple[dict, dict]:
    """tokenizer_config.json and special_tokens_map.json in the layout of the SD 1.x / 2.x hub
    folders (no added_tokens_decoder; written with transformers 4.2x for openai/clip-vit-large-patch14)."""
    pad_cfg = pad if pad == "<|endoftext|>" else _added(pad, legacy=True)
    config = {
        "add_prefix_space": False,
        "bos_token": _added("<|startoftext|>", legacy=True),
        "do_lower_case": True,
        "eos_token": _added("<|endoftext|>", legacy=True),
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad_cfg,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added("<|endoftext|>", legacy=True),
    }
    special = {
        "bos_token": _added("<|startoftext|>", legacy=False),
        "eos_token": _added("<|endoftext|>", legacy=False),
        "pad_token": pad,
        "unk_token": _added("<|endoftext|>", legacy=False),
    }
    return config, special


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_folders(work: str) -> dict[str, str]:
    """Config files under tests/golden/tokenizer/<variant>/ and, under `work`, complete tokenizer
    folders (config files + vocab) for transformers to load. Returns variant -> folder."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folders = {}
    for variant, pad in (("sd1", "<|endoftext|>"), ("sd2", "!")):
        cfg_dir = os.path.join(GOLDEN_DIR, variant)
        os.makedirs(cfg_dir, exist_ok=True)
        config, special = legacy_configs(pad)
        _write_json(os.path.join(cfg_dir, "tokenizer_config.json"), config)
        _write_json(os.path.join(cfg_dir, "special_tokens_map.json"), special)
        folders[variant] = cfg_dir

    def assemble(variant: str, files: tuple[str, ...]) -> str:
        d = os.path.join(work, variant)
        os.makedirs(d, exist_ok=True)
        for name in os.listdir(os.path.join(GOLDEN_DIR, variant)):
            shutil.copy(os.path.join(GOLDEN_DIR, variant, name), d)
        for name in files:
            shutil.copy(os.path.join(VOCAB_DIR, name), d)
        return d

    # Added tokens with the AddedToken flags transformers honours when splitting them out
    # (no SD tokenizer has such tokens; this checks that they are handled as transformers does).
    cfg_dir = os.path.join(GOLDEN_DIR, "flags")
    os.makedirs(cfg_dir, exist_ok=True)
    flags_config = {
        "added_tokens_decoder": {
            "49406": {**_added("<|startoftext|>", legacy=False), "special": True},
            "49407": {**_added("<|endoftext|>", legacy=False), "special": True},
            "49408": {"content": "<sep>", "lstrip": True, "normalized": False, "rstrip": True,
                      "single_word": False, "special": True},
            "49409": {"content": "zz", "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": True, "special": False},
        },
        "additional_special_tokens": ["<sep>"],
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "model_max_length": MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    _write_json(os.path.join(cfg_dir, "tokenizer_config.json"), flags_config)

    out = {v: assemble(v, ("vocab.json", "merges.txt")) for v in ("sd1", "sd2", "flags")}

    # What an optimum export (transformers 4.57 save_pretrained) holds: modern tokenizer_config.json
    # with added_tokens_decoder. Built by loading the SD 1.x folder and saving it again.
    with tempfile.TemporaryDirectory() as tmp:
        slow = load_slow(out["sd1"])
        slow.save_pretrained(tmp)
        cfg_dir = os.path.join(GOLDEN_DIR, "saved")
        os.makedirs(cfg_dir, exist_ok=True)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(tmp, name), cfg_dir)
        for name in ("vocab.json", "merges.txt"):
            assert filecmp.cmp(os.path.join(tmp, name), os.path.join(VOCAB_DIR, name), shallow=False)
    out["saved"] = assemble("saved", ("vocab.json", "merges.txt"))

    # A tokenizer.json-only folder (what transformers 5.x saves): CLIPTokenizerFast's save of the
    # SD 1.x folder, without the vocab.json/merges.txt it also writes. Its tokenizer.json is the
    # committed tests/data/clip-vocab/tokenizer.json (checked equal here).
    with tempfile.TemporaryDirectory() as tmp:
        fast = CLIPTokenizerFast.from_pretrained(out["sd1"])
        fast.save_pretrained(tmp)
        cfg_dir = os.path.join(GOLDEN_DIR, "json_only")
        os.makedirs(cfg_dir, exist_ok=True)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(tmp, name), cfg_dir)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as a, open(
            os.path.join(VOCAB_DIR, "tokenizer.json"), encoding="utf-8"
        ) as b:
            assert json.load(a) == json.load(b), "CLIPTokenizerFast's tokenizer.json differs from the committed one"
    out["json_only"] = assemble("json_only", ("tokenizer.json",))
    return out


def load_slow(folder: str, ftfy: bool = False):
    """The slow CLIPTokenizer; without ftfy unless asked (see the module doc)."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import BasicTokenizer

    saved = sys.modules.get("ftfy", "absent")
    if not ftfy:
        sys.modules["ftfy"] = None  # `import ftfy` now raises ImportError
    try:
        tok = CLIPTokenizer.from_pretrained(folder)
    finally:
        if saved == "absent":
            sys.modules.pop("ftfy", None)
        else:
            sys.modules["ftfy"] = saved
    if ftfy:
        assert tok.fix_text is not None
    else:
        assert tok.fix_text is None and isinstance(tok.nlp, BasicTokenizer), "not on the BasicTokenizer path"
        assert tok.nlp.strip_accents is False and tok.nlp.do_split_on_punc is False and tok.nlp.do_lower_case
    return tok


# --------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------

SD_PROMPTS = [
    "a photo of a cat",
    "A photograph of an astronaut riding a horse",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, outdoors, cherry blossoms",
    "(masterpiece:1.2), (best quality:1.3), ultra-detailed, 8k uhd, dslr, soft lighting, film grain",
    "((masterpiece)), [[low quality]], {blue|red} eyes, (detailed face:0.8)",
    "portrait of a woman, by Greg Rutkowski and Alphonse Mucha, trending on artstation, octane render",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry",
    "<lora:add_detail:0.8> a cozy cabin in the woods, snow, warm light from windows, evening",
    "cinematic still of a cyberpunk city at night, neon signs, rain, reflections, 35mm, f/1.8, bokeh",
    "an oil painting of a lighthouse on a cliff, stormy sea, dramatic clouds, 19th century style",
    "isometric 3d render of a tiny room, low poly, pastel colors, blender, c4d",
    "studio ghibli style landscape, rolling green hills, fluffy clouds, windmill",
    "macro shot of a dew drop on a leaf, morning sun, shallow depth of field",
    "a bowl of ramen, top-down view, food photography, steam rising",
    "pixel art knight fighting a dragon, 16-bit, snes style",
    "a red fox in a snowy forest :: high detail :: national geographic",
    "vintage poster of Paris, art deco, 1920s, Eiffel Tower",
    "watercolor painting of koi fish in a pond, lotus flowers",
    "a robot reading a book in a library, warm lighting, highly detailed, digital art",
    "logo design, minimalist, vector, flat, a mountain and a sun, white background",
    "a cute corgi wearing sunglasses at the beach, golden hour",
    "hyperrealistic portrait of an old fisherman, wrinkles, 85mm lens, Rembrandt lighting",
    "interior design, scandinavian living room, large windows, plants, natural light",
    "fantasy map of an island kingdom, parchment, hand-drawn, compass rose",
    "(photorealistic:1.4), RAW photo, 8k, (high detailed skin:1.2), Fujifilm XT3",
    "BREAK a girl in a red dress BREAK a city street at night",
    "[dog:cat:0.5] sitting on a [red|blue] couch",
    "anime screencap, makoto shinkai, sky, contrails, summer",
    "a sign that says \"OPEN 24/7\"",
    "Embedding:EasyNegative, (worst quality:2), (low quality:2), (normal quality:2)",
]

CONTRACTIONS = [
    "it's a cat's toy",
    "don't stop, won't stop, can't stop",
    "we're here and they've left; I'm sure you'll see, he'd know",
    "IT'S WE'RE THEY'VE I'M YOU'LL HE'D DON'T",
    "It'S wE'Re",
    "O'Neil's rock 'n' roll",
    "rock 'n' roll 'til dawn",
    "the dogs' bowls",
    "'s 't 're 've 'm 'll 'd",
    "''s '''t",
    "it’s a curly apostrophe, don’t",
    "it‘s it`s it´s",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "y'all'd've",
    "'ſ 'ſs ſ",
    "'ll'll'll",
    "'x 'a 're'",
]

NUMBERS = [
    "1920s",
    "3.14159",
    "1,000,000 dollars",
    "4k 8k uhd 1080p",
    "24mm f/1.8 iso 100 1/250s",
    "Ⅻ ⅻ Ⅳ",
    "①②③ ⑴⑵",
    "٣٤٥ ۱۲۳",
    "१२३ ১২৩",
    "½ ¾ ⅓",
    "x² + y² = z³",
    "0x1F 0b1010 1e-5",
    "2024-01-31T12:34:56Z",
    "+49 (0) 30 123456",
    "v1.5 v2.1 sdxl 1.0",
    "１２３ ４５６",
    "𝟏𝟐𝟑",
    "007 000 0",
]

ACCENTS = [
    "café naïve façade résumé",
    "Ångström Crème Brûlée",
    "cafe\u0301 decomposed",
    "Pokémon POKÉMON",
    "ÉCOLE ça ÇA",
    "Zürich Köln Düsseldorf",
    "ß ẞ STRASSE Straße",
    "İstanbul ıstanbul DİYARBAKIR",
    "ΟΔΟΣ ΣΊΣΥΦΟΣ Σ ΑΣ. ΣΑΣ",
    "ὈΔΥΣΣΕΎΣ",
    "Москва ПРИВЕТ",
    "ǅemal ǈ ǋ",
    "ﬁ ﬂ ﬃ ligatures",
    "ŉ Ǉ",
    "Ꭰ ᏣᎳᎩ",
    "ᲛᲗᲐᲕᲠᲣᲚᲘ მხედრული",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "Ω Ω K Å",
    "e\u0301\u0301 o\u0308\u0304",
    "n\u0303 N\u0303",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "ͅ aͅb ᾳ ᾼ",
    "ΐ ΰ Ϊ́",
    "Ǆ ǅ ǆ",
    "ﬀ ﬅ ﬆ",
    "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 ℌ𝔢𝔩𝔩𝔬",
    "Ⓐⓑⓒ Ⓩ",
    "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞ",
    "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ",
]

SCRIPTS = [
    "一只猫在月光下",
    "東京の夜景、美しい",
    "한국어 프롬프트 고양이",
    "日本語とEnglish混在text",
    "𠀀𠀁𪜀 ext-b",
    "豈 更 車",
    "〇 々 〆",
    "ひらがな カタカナ",
    "ｶﾀｶﾅ ﾊﾝｶｸ",
    "\u1100\u1161\u11a8 가",
    "قطة على السطح",
    "חתול שחור",
    "\u200fمرحبا\u200e hello",
    "abc\u202edcba\u202c",
    "แมวสีส้ม",
    "नमस्ते दुनिया",
    "வணக்கம்",
    "বাংলা",
    "ሰላም",
    "ᠮᠣᠩᠭᠣᠯ",
    "བོད་ཡིག",
    "ខ្មែរ",
    "Ελληνικά",
    "Հայերեն",
    "\U00011935\U00011930",
    "中文，标点！“引号”",
    "【公式】《书名》",
    "ㄅㄆㄇ",
]

EMOJI = [
    "🐱",
    "a cat 🐱 and a dog 🐶",
    "👨\u200d👩\u200d👧 family",
    "👍🏽 thumbs",
    "🇯🇵 🇺🇸 flags",
    "❤️ heart ♥",
    "🫠 melting",
    "🫨 shaking (Unicode 15)",
    "1️⃣ keycap",
    "🏳️\u200d🌈",
    "😀😃😄😁😆😅🤣😂🙂🙃",
    "✨🌸🌙⭐",
    "★☆♪♫☀☁",
    "🧑🏿\u200d🚀",
]

PUNCT = [
    "!!!???",
    "wow!!! great!",
    "...",
    "—–-",
    "a--b",
    "((((masterpiece))))",
    "[[[",
    "~~~",
    "«quoted» ‹single›",
    "“smart quotes” ‘single’",
    "¡Hola! ¿Qué tal?",
    "#hashtag @mention",
    "http://example.com/path?q=1&x=2#frag",
    "e-mail@foo.bar",
    "C++ / C# / F#",
    "$100 €50 £30 ¥1000 ₿",
    "100% 50‰",
    "a|b|c",
    "<tag attr=\"v\">text</tag>",
    "\\backslash\\path",
    "semi;colon:colon",
    "__init__ snake_case_word",
    "camelCaseWord PascalCase",
    "UPPER_CASE_CONSTANT",
    "!",
    "?!",
    ",,,",
    "a.b.c",
    "***bold***",
    "§¶†‡•",
    "←↑→↓ ⇒",
    "∑∫√∞ ≠ ≤",
    "end.",
    "(", ")", "'", "\"",
]

WHITESPACE = [
    "a  b",
    "a\tb",
    "a\nb",
    "a\r\nb",
    "a\u00a0b",
    "a\u2003b",
    "a\u3000b",
    "a\u200bb",
    "a\u2028b",
    "a\u2029b",
    "a\u0085b",
    "a\x0bb",
    "a\x0cb",
    "a\x1cb",
    "\ufeffBOM",
    "a\u00adb",
    "a\u2060b",
    "a\u180eb",
    "a\u200db",
    "a\u202fb",
    "a\u205fb",
    "a\u1680b",
    "   leading and trailing   ",
    "\t\n  \r\n",
    " ",
    "",
    "many     spaces\t\t\ttabs\n\n\nnewlines",
    "\u00a0\u00a0nbsp only\u00a0",
    "line1\nline2\nline3",
]

CONTROL = [
    "\x00",
    "a\x00b",
    "a\x07b",
    "\x1b[31mred\x1b[0m",
    "a\x7fb",
    "a\ufffdb",
    "\ue000 private use",
    "\uffff noncharacter",
    "\U000e0001\U000e0065\U000e006e tag chars",
    "\x01\x02\x03",
    "a\u0378b unassigned",
    "\U000f0000 plane 15",
    "a\u0600b arabic number sign",
    "a\u061cb",
]

HTML = [
    "&amp; &lt;b&gt; &quot;hi&quot;",
    "it&#39;s &nbsp; &#x2764; &hearts;",
    "Tom &amp; Jerry",
    "&lt;|endoftext|&gt;",
    "cafÃ© mojibake Ã©",
    "â€œquotedâ€\x9d",
]

MIXED = [
    "HeLLo WoRLD",
    "iPhone iPad MacBook",
    "McDonald's NASA FBI",
    "A PHOTO OF A CAT",
    "a Photo Of A cAt",
    "ThIs Is SpOnGeBoB",
]

SPECIALS = [
    "<|endoftext|>",
    "a photo <|startoftext|> of",
    "<|ENDOFTEXT|>",
    "!<|endoftext|>",
    "<|endof\u200btext|>",
    "<|endoftext|><|endoftext|>",
    "<|ſtartoftext|>",
    "<|endoftext",
    "endoftext|>",
    "x<|endoftext|>y",
    "<|startoftext|>a photo of a cat<|endoftext|>",
    "<|endoftext|>!",
    "a <|endoftext|> b",
    "<|EndOfText|> <|STARTOFTEXT|>",
    "<<|endoftext|>>",
    "<|<|endoftext|>|>",
]

# For the "flags" variant: added tokens with lstrip/rstrip/single_word.
FLAG_PROMPTS = [
    "cat<sep>cat",
    "a   <sep>   b",
    "<sep>",
    " <sep> <sep> ",
    "zz",
    "azz zz",
    "zz b",
    "a zzb",
    " zz ",
    "zz<sep>zz",
    "xzzx",
]

LONG_BASE = (
    "a highly detailed matte painting of a vast ancient city built into the side of a mountain, "
    "waterfalls, lush vegetation, flying ships, golden hour lighting, volumetric fog, by greg rutkowski, "
    "thomas kinkade, james gurney, trending on artstation, unreal engine 5, octane render, 8k resolution, "
    "intricate, elegant, sharp focus, concept art, cinematic composition, epic scale, dramatic sky"
)

LONG = [
    LONG_BASE,
    LONG_BASE + ", " + LONG_BASE,
    "cat " * 100,
    "photograph " * 80,
    "a, " * 60,
    " ".join(str(i) for i in range(200)),
    "一只猫在月光下散步" * 20,
    "🐱🐶🐭🐹🐰🦊🐻🐼" * 12,
    "Ωμέγα αλφάβητο " * 20,
    "(masterpiece:1.2), " * 30,
    "!" * 120,
    "wow! " * 50,
    "supercalifragilisticexpialidocious " * 15,
    "x" * 1000,
    "a\u200b" * 90,
    "<|endoftext|>" * 90,
]


def boundary_prompts() -> list[str]:
    """Prompts whose token count lands around the 75-token limit. 'cat' is one token."""
    out = []
    for n in (74, 75, 76, 77, 78):
        out.append(" ".join(["cat"] * n))
    # A multi-token word straddling the limit: 74 single tokens, then a long word.
    out.append(" ".join(["cat"] * 74) + " supercalifragilisticexpialidocious and more")
    # Multi-byte characters cut in the middle of their UTF-8 bytes.
    out.append(" ".join(["cat"] * 74) + " 鼈鼈鼈鼈 tail")
    out.append(" ".join(["cat"] * 73) + " 🫠🫠🫠 tail")
    return out


FRAGMENTS = [
    "a photo of", "cat", "CAT", "café", "naïve", "一只猫", "🐱", "👍🏽", "(masterpiece:1.2)", "it's",
    "don't", "Σ", "ΟΔΟΣ", "İ", "ß", "ﬁ", "٣", "½", "&amp;", "<|endoftext|>", "!", "??", "...", "—",
    "http://x.y/z", "C++", "1080p", "x²", "Ω", "ǅ", "e\u0301", "ͅ", "'ſ", "ひらがな", "한국어", "עברית",
    "عربى", "ไทย", "हिन्दी", "🇯🇵", "❤️", "__init__", "snake_case", "\\", "$100", "50%", "[dog:cat:0.5]",
    "<lora:x:0.8>", "BREAK", "\x00", "\x1b", "\ufffd", "\ue000",
]
SEPARATORS = [" ", "  ", "\t", "\n", "\u00a0", "\u200b", "\u3000", ", ", "", "\u2028", "\x0b", "\u00ad", "!"]


def generated_prompts(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        parts = []
        for _ in range(k):
            parts.append(rng.choice(FRAGMENTS))
            parts.append(rng.choice(SEPARATORS))
        s = "".join(parts)
        if rng.random() < 0.3:
            s = s.upper()
        out.append(s)
    return out


def corpus() -> list[str]:
    prompts = (
        SD_PROMPTS + CONTRACTIONS + NUMBERS + ACCENTS + SCRIPTS + EMOJI + PUNCT + WHITESPACE + CONTROL
        + HTML + MIXED + SPECIALS + FLAG_PROMPTS + LONG + boundary_prompts() + generated_prompts(120)
    )
    seen, out = set(), []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------
# goldens
# --------------------------------------------------------------------------------------------


def first_diff(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def encode_ref(tok, prompt: str, MAX_LENGTH: int = MAX_LENGTH) -> dict:  # noqa: N803
    ids = tok(prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    untruncated = tok(prompt).input_ids  # bos + all tokens + eos
    body = untruncated[1:-1]
    assert untruncated[0] == tok.bos_token_id and untruncated[-1] == tok.eos_token_id
    assert len(ids) == MAX_LENGTH
    kept = body[: MAX_LENGTH - 2]
    assert ids[: len(kept) + 2] == [tok.bos_token_id] + kept + [tok.eos_token_id], prompt
    assert all(i == tok.pad_token_id for i in ids[len(kept) + 2 :]), prompt
    entry = {"ids": ids, "untruncated": body, "n_tokens": len(kept) + 2}
    dropped = body[MAX_LENGTH - 2 :]
    if dropped:
        text = tok.convert_tokens_to_string(tok.convert_ids_to_tokens(dropped))
        # tok.decode gives the same for these tokenizers (no legacy added tokens, no clean-up).
        assert text == tok.decode(dropped), (text, tok.decode(dropped))
        # diffusers' pipelines log untruncated_ids[:, max_length - 1 : -1], the same tokens.
        assert untruncated[MAX_LENGTH - 1 : -1] == dropped
        entry["dropped"] = text
    return entry


def compare(name: str, ref: dict[str, dict], other_tok, prompts: list[str], ftfy_note: bool = False) -> dict:
    diffs = []
    for p in prompts:
        try:
            ids = other_tok(p, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
        except Exception as e:  # noqa: BLE001
            diffs.append({"prompt": p, "error": repr(e)})
            continue
        if ids != ref[p]["ids"]:
            i = first_diff(ids, ref[p]["ids"])
            diffs.append({"prompt": p, "position": i, "reference": ref[p]["ids"][i : i + 6], "other": ids[i : i + 6]})
    print(f"  {name}: {len(prompts) - len(diffs)}/{len(prompts)} identical")
    return {"identical": len(prompts) - len(diffs), "total": len(prompts), "differences": diffs}


def unicode_props() -> dict:
    """Per-code-point facts of the reference stack that the Rust side reproduces with other tables."""
    from transformers.models.clip.tokenization_clip import CLIPTokenizer  # noqa: F401

    pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )  # CLIPTokenizer.pat, verbatim

    def survives(c: str) -> bool:  # what BasicTokenizer._clean_text keeps and split() does not eat
        cat = unicodedata.category(c)
        return not cat.startswith("C") and cat != "Zs" and not c.isspace() and c != "\ufffd"

    lower, classes, nfc = [], [], []
    run = None
    for cp in range(0x110000):
        c = chr(cp)
        if not survives(c):
            continue
        if c.lower() != c:
            lower.append([cp, c.lower()])
        # The pre-tokenizer only sees lower-cased text; classify what can reach it.
        cls = "-"
        if c.lower() == c:
            if pat.findall(c) == []:
                cls = "X"  # matched by no alternative: dropped
            elif pat.findall("a" + c) == ["a" + c]:
                cls = "L"
            elif pat.findall(c + c) == [c, c]:
                cls = "N"
            elif pat.findall(c + c) == [c + c] and pat.findall("a" + c) == ["a", c]:
                cls = "O"
            else:
                raise AssertionError(f"unclassified U+{cp:04X}")
        if cls != "-":
            if run and run[2] == cls and run[1] == cp - 1:
                run[1] = cp
            else:
                run = [cp, cp, cls]
                classes.append(run)
        d = unicodedata.normalize("NFD", c)
        if d != c and not (0xAC00 <= cp <= 0xD7A3 and cp % 97 != 0):  # a sample of Hangul syllables
            nfc.append([d, unicodedata.normalize("NFC", d)])
        n = unicodedata.normalize("NFC", c)
        if n != c:
            nfc.append([c, n])
    return {
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "regex_module": regex.__version__,
        "lower": lower,
        "pretokenizer_classes": classes,
        "nfc": nfc,
    }


def build_goldens() -> None:
    import transformers
    import tokenizers
    from transformers import CLIPTokenizerFast

    os.makedirs(GOLDEN_DIR, exist_ok=True)
    prompts = corpus()
    print(f"corpus: {len(prompts)} prompts")
    result = {
        "generator": "onnx/golden_tokenizer.py",
        "reference": (
            f"transformers {transformers.__version__} CLIPTokenizer (slow), ftfy not importable "
            "(BasicTokenizer path), padding='max_length', max_length=77, truncation=True"
        ),
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "max_length": MAX_LENGTH,
        "prompts": prompts,
        "variants": {},
        "comparisons": {},
    }
    with tempfile.TemporaryDirectory() as work:
        folders = write_folders(work)
        refs = {}
        for variant in ("sd1", "sd2", "saved", "json_only", "flags"):
            if variant == "json_only":
                continue  # no vocab.json for the slow tokenizer; the Rust test compares with sd1
            tok = load_slow(folders[variant])
            entries = {p: encode_ref(tok, p) for p in prompts}
            refs[variant] = entries
            result["variants"][variant] = {
                "pad_id": tok.pad_token_id,
                "bos_id": tok.bos_token_id,
                "eos_id": tok.eos_token_id,
                "encodings": [entries[p] for p in prompts],
            }
            print(f"{variant}: pad {tok.pad_token!r} = {tok.pad_token_id}, added tokens {dict(tok.added_tokens_encoder)}")
        assert [e["ids"] for e in result["variants"]["saved"]["encodings"]] == [
            e["ids"] for e in result["variants"]["sd1"]["encodings"]
        ]
        del result["variants"]["saved"]  # same ids as sd1; the Rust test checks the folder against sd1

        print("differences from the reference:")
        for variant in ("sd1", "sd2"):
            fast = CLIPTokenizerFast.from_pretrained(folders[variant])
            result["comparisons"][f"{variant}_fast"] = compare(
                f"{variant} CLIPTokenizerFast (tokenizers {tokenizers.__version__})", refs[variant], fast, prompts
            )
            slow_ftfy = load_slow(folders[variant], ftfy=True)
            result["comparisons"][f"{variant}_ftfy"] = compare(
                f"{variant} CLIPTokenizer with ftfy.fix_text", refs[variant], slow_ftfy, prompts
            )
        fast_json = CLIPTokenizerFast.from_pretrained(folders["json_only"])
        result["comparisons"]["json_only_fast"] = compare(
            "tokenizer.json-only folder, CLIPTokenizerFast", refs["sd1"], fast_json, prompts
        )

    n_trunc = sum(1 for e in result["variants"]["sd1"]["encodings"] if "dropped" in e)
    print(f"{n_trunc} prompts truncated")
    text = json.dumps(result, ensure_ascii=True, indent=1)
    # One line per id list keeps the file small and diffable.
    text = regex.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + regex.sub(r"\s+", "", m.group(1)) + "]", text)
    with open(os.path.join(GOLDEN_DIR, "clip_tokens.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    props = unicode_props()
    with open(os.path.join(GOLDEN_DIR, "unicode_props.json"), "w", encoding="utf-8") as f:
        json.dump(props, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(
        f"unicode_props: {len(props['lower'])} lower-case mappings, {len(props['pretokenizer_classes'])} class runs, "
        f"{len(props['nfc'])} NFC cases"
    )


SHAPES_TOKENIZER = os.path.join(ROOT, "onnx", "models", "shapes-sd", "tokenizer")


def build_shapes() -> None:
    """``shapes_tokens.json``: the trained demo model's own BPE (onnx/train_demo_model.py, 24 positions)."""
    import transformers

    sys.path.insert(0, os.path.join(ROOT, "onnx"))
    import shapes_data

    tok = load_slow(SHAPES_TOKENIZER)
    n = tok.model_max_length
    captions = [s.caption() for s in shapes_data.heldout_scenes(100)]
    prompts = []
    for p in captions + corpus():
        if p not in prompts:
            prompts.append(p)
    entries = [encode_ref(tok, p, n) for p in prompts]
    result = {
        "generator": "onnx/golden_tokenizer.py shapes",
        "reference": (
            f"transformers {transformers.__version__} CLIPTokenizer (slow), ftfy not importable, "
            f"onnx/models/shapes-sd/tokenizer, padding='max_length', max_length={n}, truncation=True"
        ),
        "max_length": n,
        "prompts": prompts,
        "variants": {
            "shapes": {"pad_id": tok.pad_token_id, "bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "encodings": entries}
        },
    }
    print(f"shapes: {len(prompts)} prompts, {sum(1 for e in entries if 'dropped' in e)} truncated at {n}")
    text = json.dumps(result, ensure_ascii=True, indent=1)
    text = regex.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + regex.sub(r"\s+", "", m.group(1)) + "]", text)
    with open(os.path.join(GOLDEN_DIR, "shapes_tokens.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=["vocab", "tables", "goldens", "shapes", "all"])
    args = ap.parse_args()
    if args.what in ("vocab", "all"):
        build_vocab()
    if args.what in ("tables", "all"):
        build_tables()
    if args.what in ("goldens", "all"):
        build_goldens()
    if args.what in ("shapes", "all"):
        build_shapes()


if __name__ == "__main__":
    main()
