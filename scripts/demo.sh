#!/usr/bin/env bash
# The README's main job: set up, then the end-to-end demo on a small phantom.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec hygieia demo "$@"
