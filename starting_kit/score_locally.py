"""Score a submission zip on your machine, as Codabench does, before uploading it.

    python score_locally.py SUBMISSION.zip [--out DIR] [--holdout FRACTION]

The hidden labels are not in the kit, so a stratified part of the public training split (with its
labels and boxes) is held out as the local reference; the zip then runs through this kit's ingestion
and scoring programs under a local copy of Codabench's compute worker, which prints the status, the
leaderboard row and the path of the detailed results. The labels of the hold-out are yours, so the
detailed results add what the platform never shows: the ROC curve, galleries of the most confident
errors and of the best and worst maps against the boxes, and the per-image table. Exit status: 0
when the run finished, 1 when it failed (the cause is printed), 2 for a bad argument or bad data.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

KIT = Path(__file__).resolve().parent
sys.path.insert(0, str(KIT))  # the kit's own copy of the hygieia package, and local_eval.py

import local_eval  # noqa: E402
from hygieia.errors import HygieiaError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submission", type=Path, help="the zip (or folder) you would upload")
    parser.add_argument("--data", type=Path, default=KIT / "input_data", help="the public input_data/ folder")
    parser.add_argument("--out", type=Path, default=KIT / "local_run" / "score_locally",
                        help="where the run's folders, logs and results go (replaced on each run)")
    parser.add_argument("--holdout", type=float, default=local_eval.HOLDOUT,
                        help="share of train held out as the local reference (default %(default)s)")
    args = parser.parse_args(argv)
    fast = os.environ.get("HYGIEIA_FAST") == "1"
    try:
        result = local_eval.score_submission(KIT, args.submission, args.data, args.out.resolve(),
                                             holdout=args.holdout, fast=fast)
    except HygieiaError as err:
        print(f"score_locally: {err}", file=sys.stderr)
        return 2
    return 0 if result.status == "Finished" else 1


if __name__ == "__main__":
    sys.exit(main())
