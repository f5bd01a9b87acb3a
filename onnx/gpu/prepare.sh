#!/bin/bash
# Here, with network, before the GPU run: everything onnx/gpu/bench.sh needs on the device, in
# .gpu/ (ignored by git), each file at most PART_MIB (40) MiB, so that one part plus the checkout
# slimmed by onnx/gpu/travel.sh (about 10 MiB) stays well under the 64 MiB one device call sends:
#   .gpu/sdspool                      stripped release build
#   .gpu/parts/ort-gpu.tar.xz.part-*  libonnxruntime.so.1.31.1 + its CUDA provider from the
#                                     onnxruntime-gpu 1.31.1 wheel (CUDA 13), xz, split at 40 MiB
#   .gpu/diffusers-0.39.0-*.whl       the reference pipeline (torch, transformers, onnx and
#                                     onnxruntime are on the device already)
#   .gpu/MANIFEST                     sizes and sha256 of the above
# Then the device calls (BENCHMARKS.md, "GPU: how to run"), from the checkout slimmed by
# `onnx/gpu/travel.sh out`: one call per part, carrying it and copying it to /tmp/p, then
# `bash onnx/gpu/bench.sh` carrying .gpu/sdspool, the wheel and .gpu/MANIFEST.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
DIFFUSERS=${DIFFUSERS:-diffusers==0.39.0}
PART_MIB=${PART_MIB:-40}
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || echo '/.gpu/' >> "$EXCLUDE"
mkdir -p .gpu/dl .gpu/parts
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .gpu/dl "$ORT_GPU"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu "$DIFFUSERS"
rm -rf .gpu/ort && mkdir -p .gpu/ort
unzip -q -j -o .gpu/dl/onnxruntime_gpu-*.whl 'onnxruntime/capi/libonnxruntime.so.*' \
  'onnxruntime/capi/libonnxruntime_providers_shared.so' 'onnxruntime/capi/libonnxruntime_providers_cuda.so' -d .gpu/ort
rm -f .gpu/parts/ort-gpu.tar.xz.part-*
tar -C .gpu/ort -cf - . | xz -T0 -6 | split -b "${PART_MIB}m" - .gpu/parts/ort-gpu.tar.xz.part-
cargo build --release --locked
strip -o .gpu/sdspool target/release/sdspool
(cd .gpu && find . -maxdepth 2 -type f ! -path './dl/*' ! -path './ort/*' ! -name MANIFEST -printf '%s\t%p\n' | sort -k2 | while IFS=$'\t' read -r size f; do
   echo "$size $(sha256sum "$f" | cut -c1-16) $f"; done) | tee .gpu/MANIFEST
# a part at most PART_MIB, anything else under 64 MiB (the bench's call carries sdspool and the wheel)
awk -v max=$((PART_MIB * 1024 * 1024)) '$3 ~ /^\.\/parts\// && $1 > max { print "part over '"$PART_MIB"' MiB: " $3; bad=1 }
  $1 >= 64 * 1024 * 1024 { print "over 64 MiB: " $3; bad=1 } END { exit bad }' .gpu/MANIFEST
