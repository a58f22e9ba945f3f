"""``hygieia prepare``: an RSNA download (or the phantom) → the competition's prepared dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hygieia.errors import HygieiaError
from hygieia.files import argument, require_dir, require_file, writable_dir
from hygieia.prepare.crops import DEFAULT_CONTEXT
from hygieia.prepare.select import DEFAULT_AP_SHARE, DEFAULT_PROBE_SHARE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="select, crop and featurise RSNA radiographs into input_data/ and reference_data/",
        description="Prepare the competition's dataset from RSNA_DIR (stage_2_train_images/ and the two "
                    "label CSV files of the RSNA Pneumonia Detection Challenge, or the phantom).")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rsna_dir", metavar="RSNA_DIR",
                        type=argument(require_dir, "RSNA folder"),
                        help="RSNA download or phantom folder")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        type=argument(writable_dir, "output folder"),
                        help="output folder (new, empty, or an earlier prepare output)")
    parser.add_argument("--train", type=int, default=10000, help="training samples (default 10000)")
    parser.add_argument("--valid", type=int, default=2000, help="validation samples (default 2000)")
    parser.add_argument("--test", type=int, default=2000, help="test samples (default 2000)")
    parser.add_argument("--ratio", type=parse_ratio, default=(3, 2), metavar="N:P",
                        help="normal:opacity ratio in every split (default 3:2)")
    parser.add_argument("--crop", type=int, default=100, help="crop side in pixels (default 100)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--context", type=float, default=DEFAULT_CONTEXT,
                       help=f"window side = CONTEXT × the box's larger side (default {DEFAULT_CONTEXT}; the box's "
                            "centre lands anywhere in the window)")
    scale.add_argument("--window", type=int, default=None, metavar="PX",
                       help="fixed window side in original pixels instead of --context")
    parser.add_argument("--full-size", type=int, default=None, metavar="N",
                        help="also write the whole radiographs resized to N×N as OUT_DIR/full_N/")
    parser.add_argument("--id-secret-file", default=None, metavar="PATH",
                        help="file holding the secret that keys the ids and every random draw (which film goes "
                             "where, the windows, the probes); at least 32 characters; default: the one in "
                             "OUT_DIR/private/ from an earlier run, else a new random one kept there. The same "
                             "secret and options give the same bytes")
    parser.add_argument("--seed", default=None, help=argparse.SUPPRESS)  # removed: refused with the reason
    parser.add_argument("--hidden-ap-share", type=parse_share, default="auto", metavar="S",
                        help=f"share of AP films among the normals and among the opacities of valid and test "
                             f"(default 'auto': the share nearest {DEFAULT_AP_SHARE} the patients allow, "
                             f"{DEFAULT_AP_SHARE} on the full RSNA data; 'none' keeps RSNA's mix)")
    parser.add_argument("--probe-share", type=float, default=DEFAULT_PROBE_SHARE, metavar="F",
                        help=f"off-box probes per hidden split, as a share of its opacities "
                             f"(default {DEFAULT_PROBE_SHARE})")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        type=argument(require_file, "weights file"),
                        help="MobileNetV2 ImageNet state_dict (default: $HYGIEIA_MOBILENET_WEIGHTS or download)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: in-process)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out patients with bad label rows and replace samples whose DICOM is "
                             "missing or corrupt (counted and listed in the dataset card)")


def parse_ratio(text: str) -> tuple[int, int]:
    parts = text.split(":")
    try:
        ratio = tuple(int(p) for p in parts)
    except ValueError:
        ratio = ()
    if len(ratio) != 2 or min(ratio) < 0 or sum(ratio) == 0:
        raise argparse.ArgumentTypeError(f"expected N:P with two non-negative integers, got {text!r}")
    return ratio


def parse_share(text: str) -> float | str | None:
    if text.strip().lower() in ("none", "auto"):
        return {"none": None, "auto": "auto"}[text.strip().lower()]
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'none', got {text!r}") from None


def read_secret(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise HygieiaError(f"{path} (from --id-secret-file): cannot read it ({err})") from err


SEED_REMOVED = ("--seed is gone: a public seed let anyone replay the selection and the windows from RSNA's "
                "public files. Every random draw now comes from the secret (OUT_DIR/private/id_secret.txt); "
                "give the same one with --id-secret-file to reproduce a dataset")


def run(args) -> int:
    from hygieia.prepare.pipeline import prepare

    if args.seed is not None:
        raise HygieiaError(SEED_REMOVED)
    summary = prepare(args.rsna_dir, args.out_dir, train=args.train, valid=args.valid, test=args.test,
                      ratio=args.ratio, crop=args.crop, context=args.context, window=args.window,
                      full_size=args.full_size, id_secret=read_secret(args.id_secret_file),
                      hidden_ap_share=args.hidden_ap_share, probe_share=args.probe_share,
                      weights=args.weights, workers=args.workers, skip_bad=args.skip_bad)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``data_prep/prepare.py``): the same arguments as ``hygieia prepare``."""
    parser = argparse.ArgumentParser(prog="prepare", description="Prepare the Hygieia dataset from RSNA files.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HygieiaError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 2
