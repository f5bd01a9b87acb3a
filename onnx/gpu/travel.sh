#!/bin/bash
# Slims the session's checkout for the device calls of the GPU bench, and puts it back.
#
#   onnx/gpu/travel.sh out            move the tracked files the bench does not need out of the tree
#   onnx/gpu/travel.sh back           move them back, byte for byte (checked against sha256 sums)
#   onnx/gpu/travel.sh size [PATH..]  what one device call would send, with PATH.. carried; exit 1
#                                     when that is 64 MiB or more
#
# Every device call sends the checkout the session was started in (tracked files, untracked files
# git does not ignore, shared/, the carried paths), at most 64 MiB; the tracked tree is far larger
# (test fixtures and golden data, the committed model folders). The bench needs only onnx/gpu,
# onnx/optimize.py and the templates onnx/models/tiny-sd and tiny-sdxl (BENCHMARKS.md, "GPU: how
# to run"), and the dry run here also the sources (kept). `out` refuses to run when a path it would
# move has uncommitted changes (staged or not) or untracked files, so that `back` restores exactly
# what git holds; `back` refuses to overwrite a file that reappeared meanwhile.
#
# Assumption (the device notes do not say): a tracked file missing from the working tree does not
# travel. `size` counts only files present and prints the other number too.
#
# Environment: GPU_STASH (default: ../gpu-stash-NAME beside the checkout, outside it so nothing
# there travels); TRAVEL_MOVE and TRAVEL_KEEP (pathspecs, space separated) override what is moved.
set -euo pipefail
LIMIT=$((64 * 1024 * 1024))
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
STASH=${GPU_STASH:-$(dirname "$ROOT")/gpu-stash-$(basename "$ROOT")}
read -r -a MOVE <<<"${TRAVEL_MOVE:-onnx/models tests/fixtures tests/golden tests/data docs}"
read -r -a KEEP <<<"${TRAVEL_KEEP:-onnx/models/tiny-sd onnx/models/tiny-sdxl}"
die() { echo "travel.sh: $*" >&2; exit 1; }
pathspecs() { printf '%s\0' "${MOVE[@]}"; for k in "${KEEP[@]}"; do printf ':(exclude)%s\0' "$k"; done; }
# sha256 of each listed file's bytes, or of a link's target text (links are moved as links)
sums() { while IFS= read -r -d '' f; do
    if [ -L "$f" ]; then printf '%s  %s\n' "$(printf 'link:%s' "$(readlink -- "$f")" | sha256sum | cut -d' ' -f1)" "$f"
    else sha256sum -- "$f"; fi; done; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# The files one call sends, NUL-separated, sorted and without duplicates: tracked and present,
# untracked and not ignored, shared/, and each carried path (a file, or the files of a folder).
sent_files() {
  { git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
      if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done
    if [ -d shared ]; then find shared \( -type f -o -type l \) -print0; fi
    for c in "$@"; do
      [ -e "$c" ] || die "carried path $c does not exist"
      find "$c" \( -type f -o -type l \) -print0
    done; } | sort -zu
}

cmd_size() {
  local sent missing n
  sent=$(sent_files "$@" | xargs -0 -r stat -c %s | awk '{ s += $1 } END { print s + 0 }')
  n=$(git ls-files -z --deleted | tr -cd '\0' | wc -c)
  missing=$(git ls-files -z --deleted | while IFS= read -r -d '' f; do git cat-file -s ":$f"; done | awk '{ s += $1 } END { print s + 0 }')
  echo "travels: $sent bytes ($(mib "$sent")) of at most $LIMIT (64 MiB)${*:+, carrying $*}"
  echo "tracked files missing from the tree: $n, $missing bytes ($(mib "$missing")); if they travelled too: $((sent + missing)) bytes ($(mib $((sent + missing))))"
  [ "$sent" -lt "$LIMIT" ] || die "over the limit: a device call would be refused"
}

cmd_out() {
  [ ! -e "$STASH" ] || die "$STASH exists: the files are out already (run 'back' first) or it is left over"
  local dirty
  dirty=$(pathspecs | xargs -0 git status --porcelain --untracked-files=all --)
  [ -z "$dirty" ] || die "uncommitted changes or untracked files in the paths to move; commit or remove them first:
$dirty"
  mkdir -p "$STASH"
  pathspecs | xargs -0 git ls-files -z -- >"$STASH/files"
  [ -s "$STASH/files" ] || { rm -rf "$STASH"; die "nothing to move"; }
  sums <"$STASH/files" >"$STASH/sha256"
  git rev-parse HEAD >"$STASH/head"
  while IFS= read -r -d '' f; do
    mkdir -p "$STASH/tree/$(dirname "$f")"
    mv -- "$f" "$STASH/tree/$f"
  done <"$STASH/files"
  # folders left empty by the move (git does not track folders)
  xargs -0 -n1 dirname <"$STASH/files" | sort -ru | while IFS= read -r d; do
    rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; done
  echo "moved $(tr -cd '\0' <"$STASH/files" | wc -c) tracked files to $STASH (put them back: onnx/gpu/travel.sh back)"
  cmd_size
}

cmd_back() {
  [ -s "$STASH/files" ] || die "nothing to put back: $STASH/files is missing"
  local clash
  clash=$(while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then echo "$f"; fi; done <"$STASH/files")
  [ -z "$clash" ] || die "these files are back in the tree already; move them away, then run 'back' again:
$clash"
  while IFS= read -r -d '' f; do
    mkdir -p "$(dirname "$f")"
    mv -- "$STASH/tree/$f" "$f"
  done <"$STASH/files"
  sums <"$STASH/files" | cmp -s - "$STASH/sha256" || die "restored files differ from their sums in $STASH/sha256 (stash kept)"
  [ "$(git rev-parse HEAD)" = "$(cat "$STASH/head")" ] || echo "travel.sh: note: HEAD moved since 'out'" >&2
  local n
  n=$(tr -cd '\0' <"$STASH/files" | wc -c)
  rm -rf "$STASH"
  echo "restored $n files; their sha256 sums match"
}

case "${1:-}" in
  out) cmd_out ;;
  back) cmd_back ;;
  size) shift; cmd_size "$@" ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
