"""Hygieia's scoring program for Codabench: ``python3 score.py [INPUT OUTPUT]``.

Thin entry point: the bundle vendors the ``hygieia`` package next to this file; from a checkout the
repository root (this folder's parent) provides it.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from hygieia.scoring.score import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
