#!/usr/bin/env bash
# Installs the tools the test suite checks against when they are missing: promtool (Debian's
# `prometheus` package) for `/metrics`. Needs apt-get (root); without it, says what is missing.
# Under CI=true the tests that need a missing tool fail instead of skipping.
set -euo pipefail
if command -v promtool >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
else
  echo "tests/setup-tools.sh: promtool is missing; install Debian's prometheus package (apt-get install prometheus)" >&2
  [ "${CI:-}" = true ] && exit 1
fi
