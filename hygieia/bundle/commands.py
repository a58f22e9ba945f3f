"""Subcommands: ``hygieia bundle build|check``, ``hygieia run``, ``hygieia demo``."""

from __future__ import annotations

import argparse

from hygieia.files import (argument, require_dir, require_file, require_file_or_dir, writable_dir,
                           writable_file)


def register(subparsers) -> None:
    bundle = subparsers.add_parser("bundle", help="build or check the Codabench competition bundle")
    actions = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="build the bundle zip from prepared data",
                               description="Build the Codabench bundle zip from `hygieia prepare` output. "
                               "Deterministic: the same inputs give the same bytes.")
    build.add_argument("data_dir", metavar="DATA_DIR",
                       type=argument(require_dir, "data folder"),
                       help="prepare's output folder")
    build.add_argument("-o", "--output", required=True, metavar="BUNDLE.zip",
                       type=argument(writable_file, "bundle"),
                       help="the zip to write")
    build.add_argument("--docker-image", metavar="NAME",
                       help="the competition image to name in competition.yaml (see docker/README.md)")
    build.set_defaults(func=_build)

    check = actions.add_parser("check", help="validate a bundle offline, as Codabench would",
                               description="Validate a bundle zip or folder offline with Codabench's "
                               "rules; exits 1 on any error.")
    check.add_argument("bundle", metavar="BUNDLE",
                       type=argument(require_file_or_dir, "bundle"),
                       help="bundle zip or folder")
    check.add_argument("--allow-placeholder-image", action="store_true",
                       help="only warn about the template's USER/... docker_image (local checks, the demo)")
    check.set_defaults(func=_check)

    run = subparsers.add_parser("run", help="run a submission through a local Codabench worker",
                                description="Run a submission (zip or folder) against a bundle as "
                                "Codabench's compute worker does: ingestion, then scoring.")
    run.add_argument("submission", metavar="SUBMISSION",
                     type=argument(require_file_or_dir, "submission"),
                     help="submission zip or folder (model.py)")
    run.add_argument("--bundle", required=True, metavar="BUNDLE",
                     type=argument(require_file_or_dir, "bundle"),
                     help="bundle zip or folder")
    run.add_argument("--phase", default="development", help="phase name: development or final")
    run.add_argument("--out", metavar="DIR",
                     type=argument(writable_dir, "working folder"),
                     help="working folder (default runs/<submission>-<phase>); "
                     "an existing one must be empty or a previous run's")
    run.add_argument("--env", action="append", default=[], metavar="K=V",
                     help="an environment variable for both programs (repeatable); nothing else of this "
                     "shell's environment reaches them, e.g. --env HYGIEIA_FAST=1")
    run.add_argument("--sandbox", choices=("auto", "docker", "bwrap", "none"), default="auto",
                     help="isolate each step: docker (a `docker run` per step in the competition's image, "
                     "as Codabench does; the image must be present locally), bwrap (bubblewrap around this "
                     "machine's Python), none (plain processes, with a warning); auto (default): docker when "
                     "the daemon answers and the image is present, else bwrap, else none")
    run.add_argument("--docker-image", metavar="NAME",
                     help="the image for --sandbox docker/auto instead of competition.yaml's docker_image")
    run.add_argument("--gpus", action="store_true",
                     help="give the containers every GPU (docker run --gpus all, as Codabench's GPU workers "
                     "do); bubblewrap always shows this machine's /dev/nvidia*")
    run.add_argument("--per-image", action="store_true",
                     help="the scoring step also names and shows images: the ROC curve, galleries of the most "
                     "confident errors and of the best and worst maps against the boxes, the per-image table "
                     "(HYGIEIA_PER_IMAGE=1; a run on Codabench never shows them: for labels you own)")
    run.add_argument("--memory", metavar="SIZE",
                     help="each step's memory limit, e.g. 12g (default: 12g, or 3/4 of this machine's memory "
                     "if less); past it the run ends Failed")
    run.add_argument("--max-output", metavar="SIZE", default="1g",
                     help="what each step may add to each folder it writes (its output...), checked while it "
                     "runs and before anything is copied (default 1g)")
    run.add_argument("--scratch", metavar="SIZE", default="2g",
                     help="what each step may write to its /tmp, a folder of the run (default 2g)")
    run.set_defaults(func=_run)

    demo = subparsers.add_parser("demo", help="phantom -> prepare -> bundle -> check -> run, end to end",
                                 description="The whole competition on a small phantom in one command.")
    demo.add_argument("--patients", type=int, default=400, help="phantom patients (default 400)")
    demo.add_argument("--out", default="demo", metavar="DIR",
                      type=argument(writable_dir, "output folder"),
                      help="output folder (default demo/)")
    demo.add_argument("--weights", metavar="PATH",
                      type=argument(require_file, "weights file"),
                      help="MobileNetV2 state_dict (offline machines)")
    demo.add_argument("--full", action="store_true", help="train the sample submission fully "
                      "(default: HYGIEIA_FAST=1)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)


def _build(args: argparse.Namespace) -> int:
    from hygieia.bundle.build import build_bundle

    summary = build_bundle(args.data_dir, args.output, docker_image=args.docker_image)
    print(summary.report())
    return 0


def _check(args: argparse.Namespace) -> int:
    from hygieia.bundle.check import check_bundle, report

    findings = check_bundle(args.bundle, allow_placeholder_image=args.allow_placeholder_image)
    print(report(findings, args.bundle))
    return 1 if any(f.level == "error" for f in findings) else 0


def _run(args: argparse.Namespace) -> int:
    from hygieia.bundle.limits import Limits, default_memory, parse_size
    from hygieia.bundle.worker import run_submission

    limits = Limits(memory=parse_size(args.memory, "--memory") if args.memory else default_memory(),
                    output=parse_size(args.max_output, "--max-output"), scratch=parse_size(args.scratch, "--scratch"))
    result = run_submission(args.submission, args.bundle, phase=args.phase, out_dir=args.out,
                            env=parse_env(args.env), sandbox=args.sandbox, docker_image=args.docker_image,
                            gpus=args.gpus, per_image=args.per_image, limits=limits)
    print(result.report())
    return 0 if result.status == "Finished" else 1


def parse_env(pairs: list[str]) -> dict[str, str]:
    from hygieia.errors import HygieiaError

    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HygieiaError(f"--env {pair!r}: expected K=V")
        env[key] = value
    return env


def _demo(args: argparse.Namespace) -> int:
    from hygieia.bundle.demo import run_demo

    return run_demo(patients=args.patients, out=args.out, weights=args.weights, full=args.full, seed=args.seed)

