#!/bin/bash
# Usage (see BENCHMARKS.md): the ONNX Runtime GPU libraries arrive in parts in /tmp/p (with the
# stripped sdspool binary as /tmp/p/sdspool) and the diffusers wheel in .gpu/; then
#   bash onnx/gpu/bench.sh    # writes bench.jsonl, steps-b*.jsonl, manifest-b*.json into $OUT
# On the device: ORT GPU libs from /tmp/p parts (uploaded before), sdspool binary, then the bench.
cd "$(dirname "$0")/../.."
REPO=$(pwd)
set -x
if [ ! -e /tmp/ort/libonnxruntime.so.1.31.1 ]; then mkdir -p /tmp/ort && cat /tmp/p/ort.tar.xz.part* | xz -d | tar -x -C /tmp/ort || exit 1; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/diffusers-*.whl || exit 1
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
NV=$SITE/nvidia
export LD_LIBRARY_PATH=$NV/cu13/lib:$NV/cudnn/lib:${LD_LIBRARY_PATH:-}
PYTHONUNBUFFERED=1 timeout 420 python3 onnx/gpu/bench_gpu.py "$REPO" 2>&1 | grep -v Warning | tail -20
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $OUT/bench.jsonl
cat > /tmp/cfg.yaml <<C
onnxruntime:
  library: /tmp/ort/libonnxruntime.so.1.31.1
execution:
  providers: [cuda, cpu]
  cuda:
    conv_algorithm_search: heuristic
output_dir: /tmp/out
spool:
  dir: /tmp/spool
defaults:
  max_batch: 8
default_model: sd15
models:
  sd15:
    path: /tmp/sd15-fp16
C
for B in 1 4 8; do
  printf "prompts:\n  - a photo of an astronaut riding a horse on mars\n  - a photo of an astronaut riding a horse on mars\ncandidates: $B\nsteps: 20\nguidance: 7.5\nwidth: 512\nheight: 512\nseed: 1\nrerank: false\nid: b$B\n" > /tmp/b$B.yaml
  S=$(date +%s.%N)
  SDSPOOL_LOG="info,sdspool::commands::render=debug" /tmp/p/sdspool --config /tmp/cfg.yaml --log-format json render /tmp/b$B.yaml --output /tmp/out/b$B > /tmp/b$B.out 2> /tmp/b$B.log
  echo "render b$B exit $? wall $(echo "$(date +%s.%N) - $S" | bc 2>/dev/null || python3 -c "print($(date +%s.%N) - $S)")"
  echo "{\"batch\": $B, \"wall_start\": $S, \"wall_end\": $(date +%s.%N)}" >> $OUT/sdspool-wall.jsonl
  grep '"denoising"' /tmp/b$B.log > $OUT/steps-b$B.jsonl
  cp /tmp/out/b$B/manifest.json $OUT/manifest-b$B.json
  grep -v denoising /tmp/b$B.log | tail -3 | cut -c1-600
done
