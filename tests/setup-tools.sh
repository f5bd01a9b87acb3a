#!/usr/bin/env bash
# Installs the tools the test suite checks against when they are missing: promtool (Debian's
# `prometheus` package) for `/metrics`, and a headless browser (Debian's `chromium`) for the
# browser tests (tests/browser.rs). Needs apt-get (root); without it, says what is missing.
# Under CI=true the tests that need a missing tool fail instead of skipping, and so does this.
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v "${CHROMIUM:-chromium}" >/dev/null || missing+=(chromium)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "tests/setup-tools.sh: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
  [ "${CI:-}" = true ] && exit 1
fi
exit 0
