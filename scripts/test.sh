#!/usr/bin/env bash
# The README's test command: set up, then the whole test suite (fast and slow tests).
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"` for the quick loop.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python -m pytest -p no:cacheprovider "$@"
