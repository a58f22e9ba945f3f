"""Unusable path arguments: one line naming the path and what is wrong, exit status 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT
from hygieia import cli
from hygieia.errors import HygieiaError
from hygieia.files import require_dir, require_file, writable_dir, writable_file


def run_program(*argv):
    result = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr.strip()


@pytest.fixture
def places(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    return tmp_path


def test_checks_name_the_path_and_the_problem(places):
    file, folder = places / "file.txt", places / "folder"
    cases = [
        (lambda: require_dir(file, "input folder"), f"input folder {file}: is a file, not a folder"),
        (lambda: require_dir(places / "nope", "input folder"), f"input folder {places / 'nope'}: not found"),
        (lambda: require_file(folder, "weights file"), f"weights file {folder}: is a folder, not a file"),
        (lambda: writable_dir(file, "output folder"), f"output folder {file}: exists and is a file, not a folder"),
        (lambda: writable_dir(file / "sub", "output folder"),
         f"output folder {file / 'sub'}: cannot be created, {file} is a file"),
        (lambda: writable_file(folder, "bundle"), f"bundle {folder}: is a folder, not a file"),
    ]
    for check, message in cases:
        with pytest.raises(HygieiaError) as err:
            check()
        assert str(err.value) == message
    assert writable_dir(places / "new" / "deeper") == places / "new" / "deeper"
    assert not (places / "new").exists()  # checked, not created


def test_permission_denied_is_named():
    """As an unprivileged user (root: through setpriv as nobody), an output folder without write access."""
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be denied")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    places = Path(tempfile.mkdtemp(prefix="hygieia-perm-"))
    try:
        places.chmod(0o755)
        for name in ("ref", "res"):
            (places / name).mkdir()
        (places / "locked").mkdir(mode=0o555)
        result = subprocess.run([*as_user, sys.executable, str(ROOT / "scoring_program" / "score.py"),
                                 str(places / "ref"), str(places / "res"), str(places / "locked")],
                                capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(places)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"score.py: error: output folder {places / 'locked'}: permission denied "
                                     f"(cannot write into it)")


@pytest.mark.parametrize("argv, message", [
    (["score", "{folder}", "{folder}", "{file}"], "output folder {file}: exists and is a file, not a folder"),
    (["score", "{file}", "{folder}", "{folder}"], "reference data folder {file}: is a file, not a folder"),
    (["ingest", "{folder}", "{folder}", "{places}/missing.zip"], "submission {places}/missing.zip: not found"),
    (["prepare", "{file}", "{folder}"], "RSNA folder {file}: is a file, not a folder"),
    (["phantom", "{file}", "--patients", "3"], "output folder {file}: exists and is a file, not a folder"),
    (["bundle", "build", "{folder}", "-o", "{folder}"], "bundle {folder}: is a folder, not a file"),
    (["bundle", "check", "{places}/none.zip"], "bundle {places}/none.zip: not found"),
    (["run", "{folder}", "--bundle", "{folder}", "--out", "{file}"],
     "working folder {file}: exists and is a file, not a folder"),
    (["experiment", "shortcut", "--weights", "{folder}"], "weights file {folder}: is a folder, not a file"),
    (["experiment", "shortcut", "--versions", "crops,boxes"], "expected distinct comma-separated data versions "
     "among crops,whole,features,crops_boxes,whole_boxes, got 'crops,boxes'"),
])
def test_every_command_names_an_unusable_path(places, capsys, argv, message):
    names = {"places": places, "file": places / "file.txt", "folder": places / "folder"}
    with pytest.raises(SystemExit) as exit_:
        cli.main([arg.format(**names) for arg in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(message.format(**names)) and "Traceback" not in "\n".join(err)


def test_scoring_program_refuses_an_output_that_is_a_file(places):
    """Was a raw FileExistsError traceback."""
    file = places / "file.txt"
    status, err = run_program(ROOT / "scoring_program" / "score.py", places / "folder", file)
    assert status == 2 and err == f"score.py: error: output folder {file}: exists and is a file, not a folder"
    status, err = run_program(ROOT / "scoring_program" / "score.py", file, places / "out")
    assert status == 2 and err == f"score.py: error: input folder {file}: is a file, not a folder"


def test_ingestion_program_names_unusable_folders(places):
    entry, file, folder = ROOT / "ingestion_program" / "ingestion.py", places / "file.txt", places / "folder"
    status, err = run_program(entry, folder, file, folder, folder)
    assert status == 2 and err == f"ingestion: error: output folder {file}: exists and is a file, not a folder"
    status, err = run_program(entry, file, places / "out", folder, folder)
    assert status == 2 and err == f"ingestion: error: input data folder {file}: is a file, not a folder"
    assert '"stage": "setup"' in (places / "out" / "ingestion.json").read_text()
