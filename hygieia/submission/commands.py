"""``hygieia ingest``: run a submission (folder or zip) on a prepared input_data folder."""

from __future__ import annotations

from hygieia.errors import HygieiaError
from hygieia.submission.ingestion import TIME_BUDGET_ENV, budget_from_env, run_ingestion


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="fit a submission on train, predict valid and test, explain predicted positives",
        description="Run a submission as Codabench's ingestion program does; writes predictions.csv, "
                    "heatmaps.npz and ingestion.json to OUTPUT.")
    parser.add_argument("input_data", metavar="INPUT_DATA", help="prepared input_data/ folder")
    parser.add_argument("output", metavar="OUTPUT", help="output folder")
    parser.add_argument("submission", metavar="SUBMISSION", help="submission folder or zip with model.py")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help=f"stop the run after S seconds (default: ${TIME_BUDGET_ENV} or 540)")
    parser.set_defaults(func=ingest)


def ingest(args) -> int:
    budget = budget_from_env() if args.time_budget is None else args.time_budget
    if budget <= 0:
        raise HygieiaError(f"--time-budget {budget:g}: expected a positive number of seconds")
    report = run_ingestion(args.input_data, args.output, args.submission, budget)
    if report["status"] != "ok":
        return 1
    print(f"ingestion ok: {args.output} ({report['explanation'] or 'no explanation'}, "
          f"{report['durations']['total']:.1f} s on {report['device']})")
    return 0
