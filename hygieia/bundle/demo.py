"""``hygieia demo``: the whole competition on a small phantom, in one command.

phantom -> prepare -> bundle build -> bundle check -> the sample submission through the local
Codabench worker -> its leaderboard row and detailed results.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hygieia.bundle.archive import read_zip
from hygieia.bundle.build import build_bundle
from hygieia.bundle.check import check_bundle, report
from hygieia.bundle.worker import run_submission
from hygieia.errors import HygieiaError
from hygieia.weights import WEIGHTS_ENV, resolve_weights_path

STEPS = 6


def split_sizes(patients: int) -> tuple[int, int, int]:
    """Train/valid/test sizes a phantom of ``patients`` supports at 3:2 (about half are usable)."""
    return round(0.3 * patients), round(0.1 * patients), round(0.1 * patients)


def banner(step: int, title: str) -> None:
    print(f"\n=== [{step}/{STEPS}] {title} ===", file=sys.stderr, flush=True)


@contextmanager
def environment(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(*, patients: int = 400, out: str | Path = "demo", weights: str | Path | None = None,
             full: bool = False, seed: int = 0) -> int:
    """Run every stage; return 0 when the sample submission finishes with scores."""
    from hygieia.prepare.pipeline import prepare
    from hygieia.rsna.phantom import generate_phantom

    out = Path(out)
    weights_path = resolve_weights_path(weights)
    train, valid, test = split_sizes(patients)
    if min(train, valid, test) < 10:
        raise HygieiaError(f"--patients {patients} is too small for a demo; use at least 100")
    started = time.monotonic()

    banner(1, f"phantom: {patients} RSNA-format patients -> {out / 'rsna'}")
    generate_phantom(out / "rsna", patients=patients, seed=seed)

    banner(2, f"prepare: {train} / {valid} / {test} crops and MobileNetV2 features -> {out / 'data'}")
    # A phantom's demo: a secret derived from the seed keeps it reproducible (a real competition's is random).
    prepare(out / "rsna", out / "data", train=train, valid=valid, test=test, weights=weights_path,
            id_secret=f"hygieia-demo-on-the-phantom-seed-{seed}".ljust(32, "-"))

    banner(3, f"bundle build -> {out / 'bundle.zip'}")
    summary = build_bundle(out / "data", out / "bundle.zip")
    print(summary.report(), file=sys.stderr)

    banner(4, "bundle check (Codabench's rules, offline)")
    findings = check_bundle(out / "bundle.zip", allow_placeholder_image=True)  # no image is pulled locally
    print(report(findings, out / "bundle.zip"), file=sys.stderr)
    if any(f.level == "error" for f in findings):
        return 1

    banner(5, f"run the sample submission on the Development phase{'' if full else ' (HYGIEIA_FAST=1)'}")
    submission = out / "sample_submission.zip"
    with read_zip(out / "bundle.zip") as bundle:
        submission.write_bytes(bundle.read("starting_kit/sample_submission.zip"))
    settings = {} if full else {"HYGIEIA_FAST": "1"}
    if weights_path:
        settings[WEIGHTS_ENV] = str(weights_path.resolve())
    with environment(**settings):  # the weights path reaches the programs as the image's own setting
        result = run_submission(submission, out / "bundle.zip", phase="development", out_dir=out / "run",
                                env=settings)

    banner(6, f"scores (all stages took {time.monotonic() - started:.0f} s)")
    print(result.report())
    return 0 if result.status == "Finished" else 1
