"""``hygieia run``, the local Codabench worker: layout, substitutions, isolation, failures, time limit."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from bundle_helpers import build_fake_bundle, edit_yaml, extract
from hygieia.bundle.archive import unpack
from hygieia.bundle.build import build_bundle
from hygieia.bundle.sandbox import command_argv, step_env
from hygieia.bundle.worker import (RUN_MARKER, fresh_out_dir, read_scores, run_submission, substitute, time_limit,
                                   write_worker_metadata)
from hygieia.errors import HygieiaError
from hygieia.scoring.keys import NULLABLE_KEYS, SCORE_KEYS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("worker")
    return extract(build_fake_bundle(tmp, with_card=False), tmp / "bundle")


def write_model(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(textwrap.dedent(body))
    return folder


def test_substitutions_follow_the_worker():
    command = substitute("python3 $ingestion_program/ingestion.py $input $output $ingestion_program "
                         "$submission_program", kind="ingestion")
    assert command == ("python3 /app/program/ingestion.py /app/input_data /app/output /app/program "
                       "/app/ingested_program")
    assert substitute("python3 $program/score.py $input $output $hidden", kind="program") == \
        "python3 /app/program/score.py /app/input /app/output /app/input/ref"
    # without a sandbox, the /app mount points become the run's folders
    mounts = {"/app/program": Path("/w/program"), "/app/input": Path("/w/input"), "/app/output": Path("/w/out")}
    assert command_argv("python3 /app/program/score.py /app/input/ref '/app/output'", mounts) == \
        [sys.executable, "-S", "/w/program/score.py", "/w/input/ref", "/w/out"]


def test_time_limit_is_capped_on_the_default_queue_only():
    phase = {"execution_time_limit": 3600}
    assert time_limit({}, phase) == 600
    assert time_limit({"queue": "my-gpu-queue"}, phase) == 3600
    assert time_limit({}, {"execution_time_limit": 45}) == 45 and time_limit({}, {}) == 600


def test_zips_are_unpacked_plainly_as_codabench_does(tmp_path):
    """Nothing moves up a level: a wrapper folder stays, a helpers/ package stays beside model.py."""
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as archive:
        archive.writestr("model.py", "class Model: pass\n")
        archive.writestr("helpers/__init__.py", "")
        archive.writestr("inner/model.py", "")
    unpack(tmp_path / "s.zip", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["helpers", "inner", "model.py"]
    assert (tmp_path / "out" / "helpers" / "__init__.py").is_file()


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.py", "class Model: pass\n")
        archive.writestr("weights.bin", b"\0" * 20_000_000)
    with pytest.raises(HygieiaError, match=r"bomb\.zip: 20\.0 MB uncompressed, more than the limit of 10\.0 MB"):
        unpack(tmp_path / "bomb.zip", tmp_path / "out", max_bytes=10_000_000)
    with pytest.raises(HygieiaError, match="2 entries, more than the limit of 1"):
        unpack(tmp_path / "bomb.zip", tmp_path / "out", max_entries=1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_out_dir_is_replaced_only_when_this_worker_made_it(tmp_path):
    run = fresh_out_dir(tmp_path / "run")
    (run / "logs").mkdir()
    assert sorted(p.name for p in fresh_out_dir(tmp_path / "run").iterdir()) == [RUN_MARKER]
    (tmp_path / "mine" / "logs").mkdir(parents=True)  # the user's own logs/, not a run of ours
    (tmp_path / "mine" / "logs" / "notes.txt").write_text("keep me")
    with pytest.raises(HygieiaError, match="is not a run folder"):
        fresh_out_dir(tmp_path / "mine")
    assert (tmp_path / "mine" / "logs" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert fresh_out_dir(tmp_path / "empty") == tmp_path / "empty"


def test_a_program_may_not_write_the_workers_metadata(tmp_path):
    fields = {"exitCode": 0, "elapsedTime": 1.5, "ingestionExitCode": None, "ingestionElapsedTime": None}
    assert write_worker_metadata(tmp_path, fields) is None
    assert yaml.safe_load((tmp_path / "metadata").read_text()) == fields
    error = write_worker_metadata(tmp_path, fields)
    assert error.startswith("Error, the output directory already contains a metadata file")


def test_scores_are_read_as_the_worker_reads_them(tmp_path):
    (tmp_path / "scores.txt").write_text("accuracy: 0.75\nauroc: 0.8\n")
    assert read_scores(tmp_path) == {"accuracy": 0.75, "auroc": 0.8}
    (tmp_path / "scores.json").write_text('{"accuracy": 0.5}')
    assert read_scores(tmp_path) == {"accuracy": 0.5}  # scores.json first
    for text, message in (('{"accuracy": ', "Could not decode scores.json"), ("[0.5]", "must hold key: value")):
        (tmp_path / "scores.json").write_text(text)
        with pytest.raises(HygieiaError, match=message):
            read_scores(tmp_path)
    (tmp_path / "scores.json").unlink()
    (tmp_path / "scores.txt").write_text("accuracy: [0.5\n")
    with pytest.raises(HygieiaError, match="Could not decode scores.txt"):
        read_scores(tmp_path)


def test_program_environment_hides_the_project_and_the_callers_settings(tmp_path, bundle_dir, monkeypatch):
    """Only a program folder's own copy of hygieia is importable; no HYGIEIA_* of the caller passes."""
    monkeypatch.setenv("HYGIEIA_FAST", "1")
    monkeypatch.setenv("HYGIEIA_TIME_BUDGET", "5")
    env = step_env(str(tmp_path), {"HYGIEIA_TIME_BUDGET": "30"}, sandboxed=False)
    assert env["HYGIEIA_TIME_BUDGET"] == "30" and "HYGIEIA_FAST" not in env and env["PYTHONUNBUFFERED"] == "1"
    code = "import hygieia; print(hygieia.__file__)"
    bare = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bare.returncode != 0 and "No module named 'hygieia'" in bare.stderr
    program = bundle_dir / "scoring_program"
    vendored = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path,
                              env=step_env(str(program), {}, sandboxed=False), capture_output=True, text=True)
    assert vendored.returncode == 0, vendored.stderr
    assert Path(vendored.stdout.strip()).resolve().is_relative_to(program.resolve())
    assert "numpy" in subprocess.run([sys.executable, "-S", "-c", "import numpy; print('numpy')"], cwd=tmp_path,
                                     env=env, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_tabular_sample_finishes_with_every_leaderboard_key(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as `hygieia demo` and `hygieia run` get by default
    result = run_submission(ROOT / "sample_submission_tabular", bundle_dir, out_dir=Path("run"), echo=False)
    assert result.status == "Finished", result.report()
    # the fake data have no probes: no shortcut gap
    assert sorted(result.scores) == sorted(set(SCORE_KEYS) - set(NULLABLE_KEYS))
    assert [title for title, _ in result.row][0] == "Accuracy"
    assert result.detailed_results == tmp_path / "run" / "scoring" / "output" / "detailed_results.html"
    metadata = yaml.safe_load((tmp_path / "run" / "scoring" / "input" / "res" / "metadata").read_text())
    assert set(metadata) == {"exitCode", "elapsedTime", "ingestionExitCode", "ingestionElapsedTime"}
    assert metadata["ingestionExitCode"] == 0 and metadata["ingestionElapsedTime"] > 0
    for folder in ("prediction/program/ingestion.py", "prediction/ingested_program/model.py",
                   "prediction/input_data/train/images.npy", "scoring/input/ref/labels.csv",
                   "scoring/input/res/predictions.csv", "scoring/program/score.py"):
        assert (tmp_path / "run" / folder).is_file(), folder
    assert "Finished" in result.report() and "detailed results:" in result.report()


@pytest.mark.slow
def test_failing_submission_shows_failed_with_its_error(bundle_dir, tmp_path, capsys):
    sub = write_model(tmp_path / "broken", """
        class Model:
            def fit(self, X, y):
                raise ValueError("the lungs are on strike")
            def predict_proba(self, X):
                return [0.5] * len(X["ids"])
    """)
    result = run_submission(sub, bundle_dir, out_dir=tmp_path / "run", echo=False)
    assert result.status == "Failed"
    assert "the lungs are on strike" in result.error
    assert "status: Failed" in result.report()


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def processes_with(marker: str) -> list[int]:
    """Live processes (any pid namespace) whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace") \
                    and running(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_until_gone(marker: str, seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_with(marker)


def write_sleepy_model(folder: Path, marker: str) -> Path:
    """A model whose fit starts a setsid'd ``sleep marker`` (holding the output pipes) and sleeps 300 s."""
    return write_model(folder, f"""
        import subprocess, time
        class Model:
            def fit(self, X, y):
                subprocess.Popen(["sleep", "{marker}"], start_new_session=True)  # inherits stdout/stderr
                time.sleep(300)
            def predict_proba(self, X):
                return [0.5] * len(X["ids"])
    """)


@pytest.mark.slow
def test_submission_past_the_time_limit_is_stopped(pristine_copy, tmp_path):
    """A model that sleeps, with a setsid child that holds the output pipes: the step ends at the limit
    and every process of it is gone."""
    limit, marker = 20, "301.123"
    edit_yaml(pristine_copy, lambda c: c["phases"][0].update(execution_time_limit=limit))
    sub = write_sleepy_model(tmp_path / "sleepy", marker)
    result = run_submission(sub, pristine_copy, out_dir=tmp_path / "run", echo=False)
    assert result.status == "Failed"
    assert f"Execution Time Limit exceeded. Limit was {limit} seconds" in result.error
    assert result.steps[0].timed_out and result.steps[0].elapsed < limit + 10
    assert len(result.steps) == 1  # no scoring after a prediction step that ran out of time
    assert wait_until_gone(marker) == []


@pytest.fixture
def pristine_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


@pytest.mark.slow
def test_phantom_end_to_end_both_samples(phantom_prepared, weights_path, tmp_path):
    """The real programs on the phantom: the CNN baseline (Grad-CAM) and the tabular example."""
    env = {"HYGIEIA_FAST": "1", "HYGIEIA_MOBILENET_WEIGHTS": str(weights_path)}
    bundle = build_bundle(phantom_prepared, tmp_path / "bundle.zip").path
    with zipfile.ZipFile(bundle) as archive:
        board = yaml.safe_load(archive.read("competition.yaml"))["leaderboards"][0]
        for name in ("sample_submission", "sample_submission_tabular"):
            (tmp_path / f"{name}.zip").write_bytes(archive.read(f"starting_kit/{name}.zip"))
    keys = [column["key"] for column in board["columns"]]
    cnn = run_submission(tmp_path / "sample_submission.zip", bundle, out_dir=tmp_path / "cnn", echo=False, env=env)
    assert cnn.status == "Finished", cnn.report()
    assert sorted(cnn.scores) == sorted(keys)
    ingestion = (tmp_path / "cnn" / "scoring" / "input" / "res" / "ingestion.json").read_text()
    assert "gradcam" in ingestion
    final = run_submission(tmp_path / "sample_submission_tabular.zip", bundle, phase="final",
                           out_dir=tmp_path / "tab", echo=False, env=env)
    assert final.status == "Finished", final.report()
    assert sorted(final.scores) == sorted(keys) and final.phase == "Final"
    ref = (tmp_path / "tab" / "scoring" / "input" / "ref" / "labels.csv").read_text()
    assert ref == (phantom_prepared / "reference_data" / "test" / "labels.csv").read_text()


def test_no_sandbox_is_a_loud_warning(monkeypatch, capsys):
    from hygieia.bundle import sandbox

    assert sandbox.choose_sandbox("none").kind == "none"
    assert "WARNING: no sandbox" in capsys.readouterr().err
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)  # bubblewrap not installed
    assert sandbox.choose_sandbox("auto").kind == "none"
    assert "Do not run untrusted code" in capsys.readouterr().err
    with pytest.raises(HygieiaError, match="bubblewrap"):
        sandbox.choose_sandbox("bwrap")


def test_a_submissions_own_metadata_gets_a_warning(bundle_dir, tmp_path, capsys):
    from hygieia.bundle.check import load_competition
    from hygieia.bundle.worker import find_phase, find_task, prediction_step

    sub = write_model(tmp_path / "sub", "class Model: pass\n")
    (sub / "metadata").write_text("command: python3 -c 'print(1)'\n")
    competition = load_competition(bundle_dir)
    task = find_task(competition, find_phase(competition, "development"))
    step, output = prediction_step(sub, bundle_dir, task, tmp_path / "run", 600)
    assert "has its own metadata file" in capsys.readouterr().err
    assert not (output / "model.py").exists()  # as Codabench: not copied into the output then
    assert step.command.startswith("python3 /app/program/ingestion.py /app/input_data /app/output")


HOSTILE = """
import json, os, socket, subprocess, sys
from pathlib import Path

BUNDLE = Path({bundle!r})
OUT = Path.cwd().parent / "output"   # the prediction output, under any layout

def attempt(action):
    try:
        action()
        return "done"
    except Exception as err:
        return type(err).__name__

class Model:
    def fit(self, X, y):
        report = {{
            "rewrite_scoring": attempt(lambda: (BUNDLE / "scoring_program" / "score.py")
                                       .write_text("raise SystemExit(0)")),
            "read_reference": attempt(lambda: (BUNDLE / "reference_data" / "valid" / "labels.csv").read_text()),
            "rewrite_ingestion": attempt(lambda: Path("ingestion.py").write_text("")),
            "network": attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=3)),
        }}
        (OUT / "hostile.json").write_text(json.dumps(report))
        code = ("import time, pathlib\\nwhile True:\\n"
                "    pathlib.Path({beat!r}).write_text(str(time.time())); time.sleep(0.2)")
        subprocess.Popen([sys.executable, "-c", code, "{marker}"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def predict_proba(self, X):
        return [0.5] * len(X["ids"])
"""


@pytest.mark.slow
def test_hostile_submission_reaches_nothing_under_the_sandbox(pristine_copy, tmp_path):
    """Issue 14's hostile cases against the worker: rewrite the bundle's scoring program, read its
    reference labels, rewrite the ingestion program, use the network, leave a process behind. Then an
    innocent submission on the same bundle folder scores as it did before."""
    innocent = run_submission(ROOT / "sample_submission_tabular", pristine_copy, out_dir=tmp_path / "before",
                              echo=False)
    assert innocent.status == "Finished", innocent.report()
    score_py = (pristine_copy / "scoring_program" / "score.py").read_bytes()
    marker = "hostile-beat-4711"
    sub = write_model(tmp_path / "hostile", HOSTILE.format(bundle=str(pristine_copy), marker=marker,
                                                           beat="/app/output/beat.txt"))
    result = run_submission(sub, pristine_copy, out_dir=tmp_path / "hostile_run", echo=False)
    assert result.sandbox == "bwrap", "bubblewrap is needed for this test (.ci/run installs it)"
    report = json.loads((tmp_path / "hostile_run" / "prediction" / "output" / "hostile.json").read_text())
    assert report["rewrite_scoring"] in ("FileNotFoundError", "PermissionError", "OSError")
    assert report["read_reference"] == "FileNotFoundError"
    assert report["rewrite_ingestion"] in ("PermissionError", "OSError")
    assert report["network"] != "done"
    assert (pristine_copy / "scoring_program" / "score.py").read_bytes() == score_py
    assert wait_until_gone(marker, seconds=2) == []   # gone with the step, before scoring ran
    beat_file = tmp_path / "hostile_run" / "prediction" / "output" / "beat.txt"
    if beat_file.exists():
        last = beat_file.read_text()
        time.sleep(1)
        assert beat_file.read_text() == last
    after = run_submission(ROOT / "sample_submission_tabular", pristine_copy, out_dir=tmp_path / "after",
                           echo=False)
    assert after.status == "Finished" and after.scores == innocent.scores


def start_sleepy_run(bundle_dir, tmp_path, marker: str, *options: str) -> subprocess.Popen:
    """``hygieia run`` of a model whose fit starts a setsid'd ``sleep marker`` and sleeps; returns once
    that child runs."""
    sub = write_sleepy_model(tmp_path / "sleepy", marker)
    run = subprocess.Popen([sys.executable, "-m", "hygieia", "run", str(sub), "--bundle", str(bundle_dir),
                            "--out", str(tmp_path / "run"), *options], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with(marker), "the submission's child never started"
    return run


@pytest.mark.slow
def test_sigterm_ends_every_process_of_the_step(bundle_dir, tmp_path):
    marker = "302.4711"
    run = start_sleepy_run(bundle_dir, tmp_path, marker)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) != 0
    assert wait_until_gone(marker) == []
