"""``hygieia experiment shortcut``: the marker-shortcut experiment (see hygieia/experiment/shortcut.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hygieia.errors import HygieiaError
from hygieia.files import argument, require_file, writable_dir


def strengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}") from err
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}")
    return values


def stress(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    values = strengths(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one number in [0, 1] or 'none', got {text!r}")
    return values[0]


def register(subparsers) -> None:
    experiment = subparsers.add_parser("experiment", help="experiments on the competition's design")
    commands = experiment.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    parser = commands.add_parser(
        "shortcut", help="does cropping remove a marker shortcut, and does the explanation score catch it?",
        description="Train the baseline on phantom data with a burnt-in marker correlated with the label, "
                    "on crops, whole images and features, through the real ingestion and scoring programs; "
                    "report accuracy on clean and confounded tests, counterfactual flip rates and "
                    "explanation scores. Phantoms and prepared data are cached in OUT/cache.")
    parser.add_argument("--patients", type=int, default=1500, help="phantom patients (default 1500)")
    parser.add_argument("--strengths", type=strengths, default=(0.5, 0.8, 0.95, 1.0),
                        help="marker strengths P, comma-separated (default 0.5,0.8,0.95,1.0)")
    parser.add_argument("--stress-strength", type=stress, default=0.95,
                        help="strength of the stress case with the marker inside the lung region (default 0.95; "
                             "'none' skips it)")
    parser.add_argument("--out",
                        type=argument(writable_dir, "output folder"), default=Path("shortcut_experiment"),
                        help="output folder (default ./shortcut_experiment); the report is OUT/report/")
    parser.add_argument("--seed", type=int, default=0, help="phantom and split seed (default 0)")
    parser.add_argument("--weights", type=argument(require_file, "weights file"), default=None,
                        help="ImageNet MobileNetV2 state_dict (default: $HYGIEIA_MOBILENET_WEIGHTS or download)")
    parser.add_argument("--fast", action="store_true", help="quick training (HYGIEIA_FAST=1), for tests")
    parser.add_argument("--workers", type=int, default=1, help="phantom generation processes (default 1)")
    parser.set_defaults(func=shortcut)


def shortcut(args) -> int:
    from hygieia.experiment.shortcut import ShortcutConfig, run_experiment

    if args.weights is not None and not args.weights.is_file():
        raise HygieiaError(f"--weights {args.weights}: file not found")
    config = ShortcutConfig(out=args.out, patients=args.patients, strengths=args.strengths,
                            stress_strength=args.stress_strength, seed=args.seed, weights=args.weights,
                            fast=args.fast, workers=args.workers)
    run_experiment(config)
    print(f"report: {Path(args.out) / 'report' / 'report.md'} and report.html")
    return 0
