#!/bin/bash
# The GPU benchmark in one command on the device machine (at most 8 minutes, no network there):
#
#   bash onnx/gpu/bench.sh        # rows in $OUT/results.jsonl, the BENCHMARKS.md text in $OUT/rows.md
#
# What it needs, made here beforehand by onnx/gpu/prepare.sh (BENCHMARKS.md, "GPU: how to run"):
#   - ONNX Runtime's GPU libraries as parts ort-gpu.tar.xz.part-* in $PARTS (default /tmp/p, uploaded
#     by earlier calls, each part under 64 MiB) or in .gpu/parts (carried);
#   - the release sdspool binary as $PARTS/sdspool or .gpu/sdspool;
#   - the diffusers wheel .gpu/diffusers-*.whl (carried).
# The machine's own python3 provides torch, transformers, onnx and onnxruntime (the transformer
# optimizer onnx/optimize.py uses) and the CUDA 13 libraries (nvidia/*) the CUDA provider loads.
# ARCH=sd15 or ARCH=sdxl runs one architecture (e.g. the second in a second call when the first
# call's budget skipped it); BUDGET_S is when bench_gpu.py stops starting sdspool runs.
set -u
cd "$(dirname "$0")/../.."
REPO=$(pwd)
PARTS=${PARTS:-/tmp/p}
OUT=${OUT:-$REPO/local/gpu-bench}
mkdir -p "$OUT" /tmp/ort /tmp/site
pick() { for f in "$@"; do [ -e "$f" ] && { echo "$f"; return 0; }; done; return 1; }

LIB=/tmp/ort/libonnxruntime.so.1.31.1
if [ ! -e "$LIB" ]; then
  first=$(pick "$PARTS"/ort-gpu.tar.xz.part-aa .gpu/parts/ort-gpu.tar.xz.part-aa) || { echo "no ort-gpu.tar.xz parts in $PARTS or .gpu/parts" >&2; exit 1; }
  cat "$(dirname "$first")"/ort-gpu.tar.xz.part-* | xz -d | tar -x -C /tmp/ort || exit 1
fi
SDSPOOL=$(pick "$PARTS/sdspool" .gpu/sdspool) || { echo "no sdspool binary in $PARTS or .gpu" >&2; exit 1; }
chmod +x "$SDSPOOL"
WHEEL=$(pick .gpu/diffusers-*.whl "$PARTS"/diffusers-*.whl) || { echo "no diffusers wheel" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEEL" || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
NV=$(python3 -c 'import site; print(site.getsitepackages()[0])')/nvidia
export LD_LIBRARY_PATH=$NV/cu13/lib:$NV/cudnn/lib:/tmp/ort:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

timeout "${TIMEOUT_S:-465}" python3 onnx/gpu/bench_gpu.py --out "$OUT" --work /tmp/sdbench \
  --sdspool "$SDSPOOL" --ort-lib "$LIB" --arch "${ARCH:-sd15,sdxl}" --budget-s "${BUDGET_S:-430}" \
  --command "bash onnx/gpu/bench.sh${ARCH:+ (ARCH=$ARCH)}" 2>&1 | grep -v -i -e warning -e '^  ' | tail -60
python3 onnx/gpu/summarize.py "$OUT" | tee "$OUT/rows.md"
