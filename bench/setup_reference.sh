#!/usr/bin/env bash
# Build bench/.ref-venv: the reference pipeline (PyPI nvidia-tao-ds) as a benchmark peer.
#
# Only the deps its annotation path imports are installed (google-genai, openai); the
# package's own requirement list drags in torch and friends, which that path never touches,
# so it goes in with --no-deps. The SDK versions match the project venv so both sides
# talk to the fake through the same client code.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${REF_VENV:-$here/.ref-venv}"
python="${PYTHON:-python3}"

TAO_DS_VERSION="7.3.0"
GENAI_VERSION="${GENAI_VERSION:-3.6.1}"
OPENAI_VERSION="${OPENAI_VERSION:-3.57.0}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "nvidia-tao-ds==$TAO_DS_VERSION"
"$venv/bin/pip" install -q --disable-pip-version-check "google-genai==$GENAI_VERSION" "openai==$OPENAI_VERSION"

# Prove the annotation path imports without torch (the driver installs the logger stand-in).
"$venv/bin/python" "$here/reference_driver.py" --check
echo "reference venv ready: $venv"
