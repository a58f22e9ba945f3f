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


def optional_strengths(text: str) -> tuple[float, ...]:
    return () if text.strip().lower() == "none" else strengths(text)


def seeds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}") from err
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated non-negative integers, got {text!r}")
    return values


def versions(text: str) -> tuple[str, ...]:
    from hygieia.experiment.shortcut import VERSION_NAMES

    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [v for v in values if v not in VERSION_NAMES]
    if not values or unknown or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated data versions among "
                                          f"{','.join(VERSION_NAMES)}, got {text!r}")
    return values


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from err
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def register(subparsers) -> None:
    experiment = subparsers.add_parser("experiment", help="experiments on the competition's design")
    commands = experiment.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    parser = commands.add_parser(
        "shortcut", help="does cropping remove a marker shortcut, and which trust scores catch it?",
        description="Train the baseline on phantom data with a burnt-in marker correlated with the label, "
                    "on crops, whole images and features, through the real ingestion and scoring programs; "
                    "report every score of the scoring program on clean and confounded tests, "
                    "counterfactual flip rates, and how well each score separates the models that use the "
                    "marker from those that do not, as mean and range over seeds. Phantoms and prepared data are "
                    "cached in OUT/cache, trained models and their scores in OUT/runs.")
    parser.add_argument("--patients", type=int, default=1500, help="phantom patients (default 1500)")
    parser.add_argument("--strengths", type=strengths, default=(0.8, 1.0),
                        help="marker strengths P, comma-separated (default 0.8,1)")
    parser.add_argument("--lung-strengths", type=optional_strengths, default=(0.5, 0.8, 1.0),
                        help="strengths of the marker inside a lung field, where crop windows and off-box "
                             "probes can show it, comma-separated (default 0.5,0.8,1; 'none' skips them)")
    parser.add_argument("--off-box-strengths", type=optional_strengths, default=(0.8, 1.0),
                        help="strengths of the marker over the lungs but away from every opacity box (a shortcut "
                             "beside the opacity), comma-separated (default 0.8,1; 'none' skips them)")
    parser.add_argument("--probe-share", type=share, default=0.5,
                        help="off-box probes per hidden split, as a share of its opacities (default 0.5)")
    parser.add_argument("--out",
                        type=argument(writable_dir, "output folder"), default=Path("shortcut_experiment"),
                        help="output folder (default ./shortcut_experiment); the report is OUT/report/")
    replicates = parser.add_mutually_exclusive_group()
    replicates.add_argument("--seeds", type=seeds, default=(0, 1, 2),
                            help="seeds, comma-separated: each a complete replicate (its own phantoms, splits, "
                                 "trainings and scores); the report gives every separation as mean and range over "
                                 "them (default 0,1,2)")
    replicates.add_argument("--seed", type=int, dest="one_seed", default=None, metavar="SEED",
                            help="one seed only (the same as --seeds SEED)")
    parser.add_argument("--weights", type=argument(require_file, "weights file"), default=None,
                        help="ImageNet MobileNetV2 state_dict (default: $HYGIEIA_MOBILENET_WEIGHTS or download)")
    parser.add_argument("--versions", type=versions, default=None,
                        help="data versions, comma-separated (default all: crops,whole,features,crops_boxes,"
                             "whole_boxes; the *_boxes ones train the box-supervised sample on crops or whole images)")
    parser.add_argument("--fast", action="store_true", help="quick training (HYGIEIA_FAST=1), for tests")
    parser.add_argument("--workers", type=int, default=1, help="phantom generation processes (default 1)")
    parser.add_argument("--reuse-data", action="store_true",
                        help="keep the cached phantoms and prepared data where only the code that made them changed "
                             "(for a change known not to alter them, such as a new ingestion output); trainings "
                             "and scores still follow their own code")
    parser.set_defaults(func=shortcut)


def shortcut(args) -> int:
    from hygieia.experiment.shortcut import ShortcutConfig, run_experiment

    if args.weights is not None and not args.weights.is_file():
        raise HygieiaError(f"--weights {args.weights}: file not found")
    config = ShortcutConfig(out=args.out, patients=args.patients, strengths=args.strengths,
                            lung_strengths=args.lung_strengths,
                            offbox_strengths=args.off_box_strengths, probe_share=args.probe_share,
                            seeds=(args.one_seed,) if args.one_seed is not None else args.seeds,
                            weights=args.weights, **({"versions": args.versions} if args.versions else {}),
                            fast=args.fast, workers=args.workers, reuse_data=args.reuse_data)
    run_experiment(config)
    report = Path(args.out) / "report"
    print(summary_text(report))
    print(f"report: {report / 'report.md'} and report.html")
    return 0


def summary_text(report: Path) -> str:
    """What the run measured, for the terminal: each score's separation AUROC over seeds (all models,
    image models), its median interval half-width, and the minutes each seed took."""
    import pandas as pd

    from hygieia.experiment.findings import mean_range

    summary = pd.read_csv(report / "separation_over_seeds.csv")
    halves = pd.read_csv(report / "intervals.csv").set_index("key")
    lines = [f"{'score':<24} {'all models':<24} {'image models':<24} median ±"]
    for _, row in summary.iterrows():
        half = halves["median ±"].get(row["key"], float("nan"))
        lines.append(f"{row['key']:<24} {mean_range(row, 'auroc'):<24} {mean_range(row, 'auroc image'):<24} "
                     f"{half:.3f}")
    timing = report / "timing.csv"
    if timing.is_file():
        for _, row in pd.read_csv(timing).iterrows():
            lines.append(f"seed {int(row['seed'])}: {row.drop('seed').sum() / 60:.1f} min "
                         f"({', '.join(f'{k} {v / 60:.1f}' for k, v in row.drop('seed').items())})")
    return "\n".join(lines)
