"""The ``hygieia`` command line. Each area of the package registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from hygieia import __version__
from hygieia.errors import HygieiaError

# Modules that define ``register(subparsers)``; each subcommand sets ``func`` taking the parsed args.
COMMAND_MODULES = (
    "hygieia.rsna.commands",        # phantom
    "hygieia.prepare.commands",     # prepare
    "hygieia.submission.commands",  # ingest
    "hygieia.scoring.commands",     # score
    "hygieia.bundle.commands",      # bundle build|check, run, demo
    "hygieia.experiment.commands",  # experiment shortcut
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hygieia",
        description="Hygieia: pneumonia detection from chest X-rays, as a Codabench competition bundle.")
    parser.add_argument("--version", action="version", version=f"hygieia {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except HygieiaError as err:
        print(f"hygieia {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hygieia {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
