#!/bin/bash
# onnx/gpu/travel.sh's round trip on a temporary git repo: `out` refuses uncommitted changes and
# untracked files in the paths it moves, moves the rest (links as links), keeps the kept paths;
# `size` counts what a device call sends and fails at 64 MiB; `back` restores byte for byte,
# refuses to overwrite a file that reappeared, and notices a stashed file changed meanwhile.
#   bash onnx/gpu/test_travel.sh      (make gpu-travel-check)
set -euo pipefail
TRAVEL=$(cd "$(dirname "$0")" && pwd)/travel.sh
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export GPU_STASH=$TMP/stash TRAVEL_MOVE="data docs" TRAVEL_KEEP="data/keep"
fails=0
check() { if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi; }
refuses() { ! bash "$TRAVEL" "$@" >"$TMP/log" 2>&1; }
snapshot() { # content of every tracked path: file bytes or link target
  git ls-files -z | sort -z | while IFS= read -r -d '' f; do
    if [ -L "$f" ]; then echo "link $(readlink "$f") $f"; else echo "$(sha256sum <"$f" | cut -c1-64) $f"; fi; done; }

cd "$TMP" && mkdir repo && cd repo
git init -q && git config user.email t@t && git config user.name t
mkdir -p data/keep data/deep/er docs src
head -c 300000 /dev/urandom >data/big.bin
printf 'x' >"data/deep/er/with space.txt"
printf 'kept' >data/keep/template.json
ln -s ../big.bin data/deep/link
printf 'doc' >docs/readme.md
printf 'code' >src/main.rs
git add -A && git commit -qm init
before=$(snapshot)

printf 'changed' >docs/readme.md
check "out refuses a modified file" refuses out
check "  and says which" grep -q 'docs/readme.md' "$TMP/log"
git checkout -q docs/readme.md
printf 'new' >data/untracked.txt
check "out refuses an untracked file" refuses out
rm data/untracked.txt
check "  and moved nothing" test -z "$(git status --porcelain)" -a ! -e "$GPU_STASH"

bash "$TRAVEL" out >"$TMP/log"
check "out moves the files" test ! -e data/big.bin -a ! -L data/deep/link -a ! -e docs/readme.md
check "  and keeps the kept and unlisted" test -e data/keep/template.json -a -e src/main.rs
check "  the link stays a link in the stash" test -L "$GPU_STASH/tree/data/deep/link"
check "  and they are outside the tree" test "$(git ls-files --deleted | wc -l)" -eq 4
check "size counts only present files" grep -q '^travels: 8 bytes' "$TMP/log"
check "  and the missing ones apart" grep -q 'missing from the tree: 4, 300014 bytes' "$TMP/log"
check "a second out refuses" refuses out
truncate -s 64M carried.bin
check "size fails at 64 MiB with a carried file" refuses size carried.bin
check "  and names the limit" grep -q 'over the limit' "$TMP/log"
rm carried.bin

mkdir -p docs && printf 'x' >docs/readme.md
check "back refuses to overwrite a file that reappeared" refuses back
check "  and names it" grep -q 'docs/readme.md' "$TMP/log"
rm docs/readme.md
bash "$TRAVEL" back >/dev/null
check "back restores every file byte for byte" test "$(snapshot)" = "$before"
check "  git sees no change" test -z "$(git status --porcelain)"
check "  and the stash is gone" test ! -e "$GPU_STASH"

bash "$TRAVEL" out >/dev/null
printf 'tampered' >"$GPU_STASH/tree/docs/readme.md"
check "back notices a changed stashed file" refuses back
check "  and keeps the stash" test -e "$GPU_STASH/sha256"

[ "$fails" -eq 0 ] && echo "travel.sh: all checks passed" || { echo "travel.sh: $fails check(s) failed"; exit 1; }
