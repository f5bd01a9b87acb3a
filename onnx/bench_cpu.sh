#!/usr/bin/env bash
# Side-by-side CPU benchmark: `sdspool bench --no-rerank` against optimum's
# ORTStableDiffusionPipeline, or ORTStableDiffusionXLPipeline for the SDXL cases
# (onnx/bench_reference.py), on the same model folders, workloads and thread count, one case after
# the other; then onnx/bench_summary.py writes summary.json and
# summary.md (the ratio of wall time per image, reference / sdspool) into the output folder.
#
#   onnx/bench_cpu.sh                      # every case, into local/bench/cpu-<UTC time>/
#   CASES="tiny-sd-64" onnx/bench_cpu.sh   # a subset
#   CASES="tiny-sdxl-64 tiny-sdxl-256" onnx/bench_cpu.sh   # SDXL (the committed tiny-sdxl)
#   THREADS=2 OUT=local/bench/x onnx/bench_cpu.sh
#   BENCH_PYTHON=/path/to/venv/bin/python onnx/bench_cpu.sh   # another Python (default onnx/.venv)
#
# Needs: the release build (`make build`), the Python stack in onnx/.venv (onnx/README.md), and
# for mid-sd-256 the model that onnx/build_bench_model.py builds into local/models/mid-sd (built
# here when missing). Run it on a quiet machine: every figure is wall time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${BENCH_PYTHON:-onnx/.venv/bin/python}
SDSPOOL=${SDSPOOL:-./target/release/sdspool}
CONFIG=${CONFIG:-config.yaml}
THREADS=${THREADS:-$(nproc)}
OUT=${OUT:-local/bench/cpu-$(date -u +%Y%m%dT%H%M%SZ)}
CASES=${CASES:-"tiny-sd-64 tiny-sd-256 mid-sd-256 tiny-sdxl-256"}

# name: model folder, size, prompts, candidates, steps, measured runs, warm-up runs[, the
# reference's model folder when it differs]. The -opt cases run sdspool on the CPU-optimised
# graphs (onnx/optimize.py --target cpu, built here when missing) and the reference on the plain
# ones: the ratio is then optimum's pipeline as users run it against sdspool with the optimised
# folder. The 1 x 1 cases are one image with guidance (UNet batch 2).
case_args() {
  case "$1" in
    tiny-sd-64)  echo "onnx/models/tiny-sd 64x64 4 2 20 5 1" ;;
    tiny-sd-256) echo "onnx/models/tiny-sd 256x256 4 2 20 3 1" ;;
    mid-sd-256)  echo "local/models/mid-sd 256x256 2 2 20 2 1" ;;
    tiny-sdxl-64)  echo "onnx/models/tiny-sdxl 64x64 4 2 20 5 1" ;;
    tiny-sdxl-256) echo "onnx/models/tiny-sdxl 256x256 4 2 20 3 1" ;;
    mid-sd-b2-256)     echo "local/models/mid-sd 256x256 1 1 10 3 1" ;;
    mid-sd-opt-b2-256) echo "local/models/mid-sd-cpu 256x256 1 1 10 3 1 local/models/mid-sd" ;;
    mid-sd-b2-512)     echo "local/models/mid-sd 512x512 1 1 5 2 1" ;;
    mid-sd-opt-b2-512) echo "local/models/mid-sd-cpu 512x512 1 1 5 2 1 local/models/mid-sd" ;;
    *) echo "unknown case $1 (tiny-sd-64, tiny-sd-256, mid-sd-256, tiny-sdxl-64, tiny-sdxl-256, mid-sd{,-opt}-b2-{256,512})" >&2; return 1 ;;
  esac
}

[ -x "$SDSPOOL" ] || { echo "no $SDSPOOL: run \`make build\` first" >&2; exit 1; }
[ -x "$PY" ] || { echo "no $PY: set up the Python stack (onnx/README.md)" >&2; exit 1; }
mkdir -p "$OUT"
echo "writing into $OUT ($THREADS intra-op threads, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"

for name in $CASES; do
  read -r model size prompts candidates steps runs warmup ref_model < <(case_args "$name")
  ref_model=${ref_model:-$model}
  if [[ "$name" == mid-sd* ]] && [ ! -f local/models/mid-sd/unet/model.onnx ]; then
    echo "== building local/models/mid-sd"
    "$PY" onnx/build_bench_model.py
  fi
  if [ "$model" = local/models/mid-sd-cpu ] && [ ! -f "$model/unet/model.onnx" ]; then
    echo "== optimising local/models/mid-sd for the CPU into $model"
    "$PY" onnx/optimize.py local/models/mid-sd "$model" --target cpu
  fi
  common=(--prompts "$prompts" --candidates "$candidates" --steps "$steps" --size "$size"
          --threads "$THREADS" --runs "$runs" --warmup "$warmup")
  echo "== $name: sdspool bench"
  SDSPOOL_LOG=${SDSPOOL_LOG:-warn} "$SDSPOOL" --config "$CONFIG" bench --model "$model" "${common[@]}" \
      --no-rerank --json "$OUT/$name.sdspool.json" | tee "$OUT/$name.sdspool.txt"
  echo "== $name: reference (optimum's pipeline for the folder's model_index.json) on $ref_model"
  "$PY" onnx/bench_reference.py --model "$ref_model" "${common[@]}" --prompts-from "$OUT/$name.sdspool.json" \
      --json "$OUT/$name.reference.json" \
      2> >(grep -v -e "safety checker" -e "Multiple distributions" >&2)
done

"$PY" onnx/bench_summary.py "$OUT"
