"""``hygieia phantom``: write an RSNA-format phantom download."""

from __future__ import annotations

import argparse

from hygieia.errors import HygieiaError
from hygieia.files import argument, writable_dir
from hygieia.rsna.markers import MARKER_POSITIONS
from hygieia.rsna.phantom import CONFOUNDERS, generate_phantom


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom", help="write synthetic chest radiographs in RSNA's download format",
        description="Write an RSNA-format phantom (stage_2_train_images/*.dcm and the two label CSVs) "
                    "of synthetic chest radiographs, deterministic for the seed.")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        type=argument(writable_dir, "output folder"),
                        help="folder to write (created if needed)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients (images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confounder", choices=CONFOUNDERS, default="none",
                        help="'marker' burns a text marker into images, correlated with the label")
    parser.add_argument("--confounder-strength", type=float, default=0.8,
                        help="share of Lung Opacity images with a marker; 1 - P of the others (default 0.8)")
    parser.add_argument("--marker-position", choices=MARKER_POSITIONS, default="corner")
    parser.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.patients < 1:
        raise HygieiaError(f"--patients must be at least 1, got {args.patients}")
    out = generate_phantom(args.out_dir, args.patients, seed=args.seed, confounder=args.confounder,
                           strength=args.confounder_strength, marker_position=args.marker_position,
                           workers=args.workers)
    print(f"wrote an RSNA-format phantom of {args.patients} patients to {out}")
    return 0
