"""Hygieia's Codabench ingestion program: ``python3 ingestion.py [INPUT_DATA OUTPUT PROGRAM_DIR SUBMISSION_DIR]``.

Without arguments it uses Codabench's mounts: /app/input_data /app/output /app/program
/app/ingested_program. The work is done by ``hygieia.submission.ingestion`` (see its docstring);
the bundle vendors the ``hygieia`` package into this folder, and in a checkout the repository
root (or an installed ``hygieia``) provides it.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if not (HERE / "hygieia").is_dir() and (HERE.parent / "hygieia").is_dir():
    sys.path.insert(1, str(HERE.parent))  # a checkout: the package sits beside this folder

from hygieia.submission.ingestion import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
