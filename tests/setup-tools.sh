#!/usr/bin/env bash
# Installs the tools the test suite checks against when they are missing: promtool (Debian's
# `prometheus` package) for `/metrics`, a headless browser (Debian's `chromium`) for the browser
# tests (tests/browser.rs), shellcheck for deploy/slurm/, and kubernetes-validate (PyPI, with the
# Kubernetes API schemas bundled, so it validates offline) into target/tools/ for deploy/kubernetes/
# (tests/deploy.rs). Debian packages need apt-get (root); without it, says what is missing.
# Under CI=true the tests that need a missing tool fail instead of skipping, and so does this.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
PYTHON=${PYTHON:-python3}
tools=target/tools/kubernetes-validate
if [ "$(cat "$tools/.installed" 2>/dev/null)" != "$KUBERNETES_VALIDATE" ]; then
  rm -rf "$tools" && mkdir -p "$tools"
  if "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
       --only-binary=:all: --target "$tools" "$KUBERNETES_VALIDATE"; then
    echo "$KUBERNETES_VALIDATE" > "$tools/.installed"
  else
    echo "tests/setup-tools.sh: could not install $KUBERNETES_VALIDATE from PyPI" >&2
    [ "${CI:-}" = true ] && exit 1
  fi
fi
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v "${CHROMIUM:-chromium}" >/dev/null || missing+=(chromium)
command -v shellcheck >/dev/null || missing+=(shellcheck)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "tests/setup-tools.sh: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
  [ "${CI:-}" = true ] && exit 1
fi
exit 0
