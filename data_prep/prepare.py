"""Organizers' entry point: ``python data_prep/prepare.py RSNA_DIR OUT_DIR [options]``.

The same as ``hygieia prepare``; see data_prep/README.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's hygieia package

from hygieia.prepare.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
