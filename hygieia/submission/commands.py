"""``hygieia ingest``: run a submission (folder or zip) on a prepared input_data folder."""

from __future__ import annotations

import sys

from hygieia.errors import HygieiaError
from hygieia.files import argument, require_dir, require_file_or_dir, writable_dir
from hygieia.submission.ingestion import DEFAULT_TIME_BUDGET, TIME_BUDGET_ENV, read_budget, run_ingestion
from hygieia.submission.isolation import sandbox_warning
from hygieia.submission.loading import (DEFAULT_MAX_ENTRIES, DEFAULT_MAX_MB, MAX_BYTES_ENV, MAX_ENTRIES_ENV,
                                        submission_limits)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="fit a submission on train, predict valid and test, explain predicted positives",
        description="Run a submission as Codabench's ingestion program does; writes predictions.csv, "
                    "heatmaps.npz and ingestion.json to OUTPUT.")
    parser.add_argument("input_data", metavar="INPUT_DATA", type=argument(require_dir, "input data folder"),
                        help="prepared input_data/ folder")
    parser.add_argument("output", metavar="OUTPUT", type=argument(writable_dir, "output folder"),
                        help="output folder")
    parser.add_argument("submission", metavar="SUBMISSION", type=argument(require_file_or_dir, "submission"),
                        help="submission folder or zip with model.py")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help=f"stop the run after S seconds (default: ${TIME_BUDGET_ENV} or {DEFAULT_TIME_BUDGET:g})")
    parser.add_argument("--max-submission-mb", type=float, default=None, metavar="MB",
                        help=f"largest uncompressed submission zip (default: ${MAX_BYTES_ENV} or {DEFAULT_MAX_MB:g})")
    parser.add_argument("--max-submission-files", type=int, default=None, metavar="N",
                        help=f"most entries in a submission zip (default: ${MAX_ENTRIES_ENV} or "
                             f"{DEFAULT_MAX_ENTRIES})")
    parser.set_defaults(func=ingest)


def ingest(args) -> int:
    budget, source = read_budget(None) if args.time_budget is None else (args.time_budget, "--time-budget")
    if budget <= 0:
        raise HygieiaError(f"--time-budget {budget:g}: expected a positive number of seconds")
    max_bytes, max_entries = submission_limits()
    for option, value in (("--max-submission-mb", args.max_submission_mb),
                          ("--max-submission-files", args.max_submission_files)):
        if value is not None and value <= 0:
            raise HygieiaError(f"{option} {value:g}: expected a positive number")
    limits = (int(args.max_submission_mb * 1e6) if args.max_submission_mb else max_bytes,
              args.max_submission_files or max_entries)
    if warning := sandbox_warning():
        print(warning, file=sys.stderr, flush=True)
    report = run_ingestion(args.input_data, args.output, args.submission, budget, source, limits)
    if report["status"] != "ok":
        return 1
    print(f"ingestion ok: {args.output} ({report['explanation'] or 'no explanation'}, as the submission's "
          f"process says; {report['durations']['total']:.1f} s on {report['device']})")
    return 0
