"""``hygieia demo``: phantom -> prepare -> bundle -> check -> run, in one command."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from hygieia.bundle.demo import run_demo, split_sizes
from hygieia.cli import build_parser
from hygieia.errors import HygieiaError
from hygieia.scoring.keys import SCORE_KEYS


def test_split_sizes_fit_the_phantom():
    assert split_sizes(400) == (120, 40, 40)
    train, valid, test = split_sizes(1000)
    assert train + valid + test == 500 and valid == test  # about half the patients are usable at 3:2


def test_too_few_patients_is_refused_before_any_work(tmp_path):
    with pytest.raises(HygieiaError, match="too small"):
        run_demo(patients=50, out=tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_cli_registers_every_bundle_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("s.zip").write_bytes(b"")
    Path("b.zip").write_bytes(b"")
    Path("d").mkdir()
    parser = build_parser()
    args = parser.parse_args(["demo", "--patients", "200", "--out", "x"])
    assert (args.patients, Path(args.out), args.full) == (200, Path("x"), False)
    assert parser.parse_args(["run", "s.zip", "--bundle", "b.zip", "--phase", "final"]).phase == "final"
    assert Path(parser.parse_args(["bundle", "build", "d", "-o", "out.zip"]).output) == Path("out.zip")
    assert Path(parser.parse_args(["bundle", "check", "b.zip"]).bundle) == Path("b.zip")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, weights_path, capsys, monkeypatch):
    monkeypatch.delenv("HYGIEIA_FAST", raising=False)
    assert run_demo(patients=200, out=tmp_path / "demo", weights=weights_path) == 0
    out, err = capsys.readouterr()
    for step in range(1, 7):
        assert f"=== [{step}/6]" in err
    assert "status: Finished" in out and "0 error(s)" in err
    scores = json.loads((tmp_path / "demo" / "run" / "scoring" / "output" / "scores.json").read_text())
    assert sorted(scores) == sorted(SCORE_KEYS)
    assert (tmp_path / "demo" / "run" / "scoring" / "output" / "detailed_results.html").is_file()
    report = json.loads((tmp_path / "demo" / "run" / "scoring" / "input" / "res" / "ingestion.json").read_text())
    assert report["status"] == "ok"
