#!/usr/bin/env bash
# Creates (or reuses) .venv and installs Hygieia with its development requirements.
# Sourced by demo.sh, test.sh and .ci/run. Offline machines: set HYGIEIA_MOBILENET_WEIGHTS,
# or keep the weights at ../shared/weights/mobilenet_v2_imagenet.pth, which is picked up here.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.hygieia-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing requirements into .venv (torch takes a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c .ci/constraints.txt -r requirements-dev.txt
    .venv/bin/python -m pip install --quiet --no-deps -e .
    touch "$stamp"
fi
shared_weights="$root/../shared/weights/mobilenet_v2_imagenet.pth"
if [ -z "${HYGIEIA_MOBILENET_WEIGHTS:-}" ] && [ -f "$shared_weights" ]; then
    export HYGIEIA_MOBILENET_WEIGHTS="$shared_weights"
fi
export PATH="$root/.venv/bin:$PATH"
