#!/bin/bash
# The GPU benchmark in one command on the device machine (at most 8 minutes, no network there):
#
#   bash onnx/gpu/bench.sh        # rows in $OUT/results.jsonl, the BENCHMARKS.md text in $OUT/rows.md
#
# What it needs, made here beforehand by onnx/gpu/prepare.sh (BENCHMARKS.md, "GPU: how to run"):
#   - ONNX Runtime's GPU libraries as parts ort-gpu.tar.xz.part-* in $PARTS (default /tmp/p, uploaded
#     by earlier calls, each part at most 40 MiB) or in .gpu/parts (carried);
#   - the release sdspool binary as $PARTS/sdspool or .gpu/sdspool;
#   - the diffusers wheel .gpu/diffusers-*.whl (carried);
#   - .gpu/MANIFEST (carried, optional): the parts are checked against its sizes and sha256;
#   - in the tree: onnx/gpu, onnx/optimize.py, onnx/models/tiny-sd and tiny-sdxl (the templates),
#     the files onnx/gpu/travel.sh keeps when it slims the checkout for the device calls.
# It checks all that first and names what is missing (PREFLIGHT_ONLY=1: only that check).
# The machine's own python3 provides torch, transformers, onnx and onnxruntime (the transformer
# optimizer onnx/optimize.py uses) and the CUDA 13 libraries (nvidia/*) the CUDA provider loads.
# ARCH=sd15 or ARCH=sdxl runs one architecture (e.g. the second in a second call when the first
# call's budget skipped it); BUDGET_S is when bench_gpu.py stops starting sdspool runs.
set -u
cd "$(dirname "$0")/../.." || exit 1
REPO=$(pwd)
PARTS=${PARTS:-/tmp/p}
OUT=${OUT:-$REPO/local/gpu-bench}
mkdir -p "$OUT" /tmp/ort /tmp/site
pick() { for f in "$@"; do [ -e "$f" ] && { echo "$f"; return 0; }; done; return 1; }

# Everything the run needs, checked before anything starts; each missing piece is named.
preflight() {
  local miss=() f n=0 L=({a..z}) got size sha16 name
  for f in onnx/gpu/bench_gpu.py onnx/gpu/summarize.py onnx/optimize.py \
      onnx/models/tiny-sd/model_index.json onnx/models/tiny-sd/tokenizer/vocab.json \
      onnx/models/tiny-sdxl/model_index.json onnx/models/tiny-sdxl/tokenizer_2/vocab.json; do
    [ -e "$f" ] || miss+=("$f (tracked; did onnx/gpu/travel.sh move it out?)"); done
  pick "$PARTS/sdspool" .gpu/sdspool >/dev/null || miss+=("the sdspool binary: $PARTS/sdspool or .gpu/sdspool (carry .gpu/sdspool)")
  pick .gpu/diffusers-*.whl "$PARTS"/diffusers-*.whl >/dev/null || miss+=("the diffusers wheel: .gpu/diffusers-*.whl (carry it)")
  if [ ! -e "$LIB" ]; then
    # the parts: contiguous from -aa, and as .gpu/MANIFEST lists them where it is carried
    while pick "$PARTS/ort-gpu.tar.xz.part-${L[n / 26]}${L[n % 26]}" ".gpu/parts/ort-gpu.tar.xz.part-${L[n / 26]}${L[n % 26]}" >/dev/null; do
      n=$((n + 1)); done
    [ "$n" -gt 0 ] || miss+=("ort-gpu.tar.xz.part-aa in $PARTS or .gpu/parts (the calls that upload the parts)")
    if [ -e .gpu/MANIFEST ]; then
      while read -r size sha16 name; do
        case "$name" in ./parts/*) ;; *) continue ;; esac
        f=$(pick "$PARTS/${name#./parts/}" ".gpu/$name") || { miss+=("${name#./parts/} in $PARTS or .gpu/parts"); continue; }
        [ "$(stat -c %s "$f")" = "$size" ] && [ "$(sha256sum "$f" | cut -c1-16)" = "$sha16" ] ||
          miss+=("$f: size or sha256 differ from .gpu/MANIFEST (a broken upload: upload it again)")
      done <.gpu/MANIFEST
    else
      echo "bench.sh: .gpu/MANIFEST not carried: $n part(s) found, not checked against it" >&2
    fi
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || miss+=("a GPU (nvidia-smi -L fails)")
  got=$(python3 -c 'import importlib.util as u; print(*[n for n in ("torch", "transformers", "onnx", "onnxruntime") if u.find_spec(n) is None])' 2>&1) ||
    got="python3 fails: $got"
  [ -z "$got" ] || miss+=("python3 packages: $got")
  [ ${#miss[@]} -eq 0 ] && return 0
  echo "bench.sh: cannot start, missing:" >&2
  printf '  - %s\n' "${miss[@]}" >&2
  return 1
}

LIB=/tmp/ort/libonnxruntime.so.1.31.1
preflight || exit 1
[ "${PREFLIGHT_ONLY:-0}" = 1 ] && { echo "bench.sh: everything present"; exit 0; }
if [ ! -e "$LIB" ]; then
  # the parts in order, each from $PARTS (uploaded earlier) or .gpu/parts (carried by this call)
  L=({a..z}) n=0 parts=()
  while f=$(pick "$PARTS/ort-gpu.tar.xz.part-${L[n / 26]}${L[n % 26]}" ".gpu/parts/ort-gpu.tar.xz.part-${L[n / 26]}${L[n % 26]}"); do
    parts+=("$f"); n=$((n + 1)); done
  cat "${parts[@]}" | xz -d | tar -x -C /tmp/ort || { echo "bench.sh: unpacking ${parts[*]} failed" >&2; exit 1; }
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
