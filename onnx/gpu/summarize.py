"""Turns the files onnx/gpu/bench.sh leaves in $OUT into the table of BENCHMARKS.md.

    python3 onnx/gpu/summarize.py DIR     # DIR holds bench.jsonl, steps-b*.jsonl, manifest-b*.json

sdspool's figures come from its own logs: the timestamps of the per-step progress events of the
job's second prompt (the first one warms up cuDNN and the CUDA allocator) give seconds per UNet
call; the manifest gives the decode time per prompt.
"""
import datetime
import json
import sys
from pathlib import Path

d = Path(sys.argv[1])


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


ref = {}
for line in (d / "bench.jsonl").read_text().splitlines():
    if line.startswith("{"):
        r = json.loads(line)
        if r.get("impl"):
            ref[r["batch"]] = r
print("| batch | sdspool s/UNet call | sdspool it/s | sdspool images/s | diffusers s/step | diffusers it/s | diffusers images/s | images/s ratio |")
print("|---|---|---|---|---|---|---|---|")
for b in (1, 4, 8):
    events = [json.loads(l) for l in (d / f"steps-b{b}.jsonl").read_text().splitlines()]
    second = [ts(e["timestamp"]) for e in events if e.get("prompt") == 1]
    gaps = sorted(y - x for x, y in zip(second, second[1:]))
    step = gaps[len(gaps) // 2]
    m = json.loads((d / f"manifest-b{b}.json").read_text())
    decode = m["timings"]["decode_ms"] / 1000 / 2
    per_image = (len(second) * step + decode) / b
    r = ref[b]
    print(f"| {b} | {step:.4f} | {1 / step:.1f} | {1 / per_image:.2f} | {r['seconds_per_step']:.4f} | {r['it_per_s']:.1f} | {r['images_per_s']:.2f} | {(1 / per_image) / r['images_per_s']:.2f} |")
