"""Hygieia's scoring program for Codabench: ``python3 score.py [INPUT OUTPUT]``.

Thin entry point: the bundle vendors the ``hygieia`` package next to this file; from a checkout the
repository root (this folder's parent) provides it. Unusable paths are refused here with one line.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from hygieia.errors import HygieiaError  # noqa: E402
from hygieia.files import require_dir, writable_dir  # noqa: E402
from hygieia.scoring.score import main, parse_paths  # noqa: E402


def check_paths(argv: list[str]) -> None:
    """HygieiaError naming the first unusable folder (a usage error is left to ``main``)."""
    try:
        ref_dir, res_dir, out_dir = parse_paths(argv)
    except HygieiaError:
        return
    if len(argv) == 2:
        require_dir(argv[0], "input folder")
    writable_dir(out_dir, "output folder")
    require_dir(ref_dir, "reference data folder")
    require_dir(res_dir, "ingestion output folder")


if __name__ == "__main__":
    try:
        check_paths(sys.argv[1:])
    except HygieiaError as err:
        print(f"score.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
