"""Submissions that try to make a failed run look finished, or to outlive ingestion: none succeeds.

Each hostile model forges ``ingestion.json`` ("ok"), ``predictions.csv`` and ``heatmaps.npz`` in the
output folder by itself; ingestion must report what really happened and keep none of the forgeries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from fakes import write_fake_dataset
from hygieia import dataset as ds
from hygieia.submission.ingestion import HEATMAPS, PREDICTIONS, REPORT, main

BASE = """\
import atexit, json, os, signal, subprocess, sys, time
import numpy as np

OUTPUT = {output!r}


def forge():
    with open(os.path.join(OUTPUT, "ingestion.json"), "w") as f:
        json.dump({{"status": "ok", "stage": None, "error": None, "explanation": None, "counts": {{}}}}, f)
    with open(os.path.join(OUTPUT, "predictions.csv"), "w") as f:
        f.write("id,proba,label\\n")
    with open(os.path.join(OUTPUT, "heatmaps.npz"), "wb") as f:
        f.write(b"forged")


class Model:
    def fit(self, X, y):
{fit}

    def predict_proba(self, X):
        return np.full(len(X["ids"]), 0.3)
"""


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("fake"), sizes=(10, 6, 6)) / ds.INPUT_DIR


def hostile(tmp_path, fit: str) -> Path:
    folder = tmp_path / "submission"
    folder.mkdir()
    output = tmp_path / "output"
    code = BASE.format(output=str(output), fit=textwrap.indent(textwrap.dedent(fit), " " * 8))
    (folder / "model.py").write_text(code)
    (tmp_path / "program").mkdir()
    return folder


def ingest(input_dir, tmp_path, folder, capsys):
    output = tmp_path / "output"
    status = main([str(input_dir), str(output), str(tmp_path / "program"), str(folder)])
    return status, json.loads((output / REPORT).read_text()), capsys.readouterr().err


def assert_no_forgery(tmp_path):
    output = tmp_path / "output"
    assert not (output / PREDICTIONS).exists() and not (output / HEATMAPS).exists()
    assert json.loads((output / REPORT).read_text())["status"] == "failed"


def test_atexit_forgery_after_a_budget_overrun(input_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYGIEIA_TIME_BUDGET", "4")
    folder = hostile(tmp_path, """
        def cover_up():
            forge()
            os._exit(0)
        atexit.register(cover_up)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        time.sleep(60)
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["stage"] == "fit"
    assert report["error"]["message"] == ("time budget of 4 s ($HYGIEIA_TIME_BUDGET) exceeded during fit; "
                                          "the submission's processes were stopped")
    time.sleep(0.5)  # nothing is left to run the handler later
    assert_no_forgery(tmp_path)


def test_os_exit_zero_inside_the_model(input_dir, tmp_path, capsys):
    folder = hostile(tmp_path, """
        forge()
        os._exit(0)
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["stage"] == "fit"
    assert report["error"]["message"].startswith("the submission's process exited with status 0 during fit "
                                                 "without finishing")
    assert f"removed {tmp_path / 'output' / PREDICTIONS}: not written by this run" in err
    assert_no_forgery(tmp_path)


def test_keyboard_interrupt_in_fit(input_dir, tmp_path, capsys):
    folder = hostile(tmp_path, """
        atexit.register(forge)
        raise KeyboardInterrupt
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["stage"] == "fit"
    assert report["error"]["message"].startswith("Model.fit failed: model.py line ")
    assert report["error"]["message"].endswith(": KeyboardInterrupt")
    assert "Traceback" in report["error"]["traceback"]
    assert_no_forgery(tmp_path)


def test_a_crash_is_named_by_its_signal(input_dir, tmp_path, capsys):
    folder = hostile(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV)")
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1
    assert report["error"]["message"] == "the submission's process was killed by signal SIGSEGV during fit"


def test_a_detached_process_does_not_outlive_ingestion(input_dir, tmp_path, capsys):
    """A double-forked, setsid'ed process that would forge the output two seconds after the model ended."""
    started, survived = tmp_path / "started", tmp_path / "survived"
    folder = hostile(tmp_path, f"""
        code = "import os, sys, time; open(sys.argv[1], 'w').close(); time.sleep(2); " \\
               "open(sys.argv[2], 'w').close(); sys.path.insert(0, sys.argv[3]); import model; model.forge()"
        launcher = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"
        subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", code,
                        {str(started)!r}, {str(survived)!r}, os.path.dirname(__file__)], check=True)
        while not os.path.exists({str(started)!r}):
            time.sleep(0.05)
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 0 and report["status"] == "ok"
    assert "stopped 1 more process(es) the submission had started" in err
    time.sleep(3)
    assert started.exists() and not survived.exists()
    assert json.loads((tmp_path / "output" / REPORT).read_text()) == report
    assert (tmp_path / "output" / PREDICTIONS).read_text().count("\n") == 13


def test_the_worker_metadata_file_cannot_be_forged(input_dir, tmp_path, capsys):
    folder = hostile(tmp_path, """
        with open(os.path.join(OUTPUT, "metadata"), "w") as f:
            f.write("ingestionExitCode: 0\\n")
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and not (tmp_path / "output" / "metadata").exists()
    assert report["error"]["message"] == (f"the submission's process wrote {tmp_path / 'output' / 'metadata'}, "
                                          f"the worker's own file (removed)")


def start_and_wait_for_fit(input_dir, tmp_path, folder):
    output = tmp_path / "output"
    process = subprocess.Popen([sys.executable, str(ROOT / "ingestion_program" / "ingestion.py"), str(input_dir),
                                str(output), str(tmp_path / "program"), str(folder)],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = json.loads((output / REPORT).read_text()) if (output / REPORT).exists() else {}
        if report.get("stage") == "fit":
            return process
        time.sleep(0.2)
    raise AssertionError("the fit stage never started")


def submission_processes(folder: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()


def test_sigterm_stops_the_run_and_every_process(input_dir, tmp_path):
    folder = hostile(tmp_path, "time.sleep(120)")
    process = start_and_wait_for_fit(input_dir, tmp_path, folder)
    assert submission_processes(folder)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=30)[1]
    report = json.loads((tmp_path / "output" / REPORT).read_text())
    assert process.returncode == 128 + signal.SIGTERM
    assert report["status"] == "failed" and report["error"]["message"] == (
        "ingestion was interrupted (SIGTERM) during fit; the submission's processes were stopped")
    assert stderr.rstrip().splitlines()[-1].startswith("ingestion failed during fit: ingestion was interrupted")
    assert submission_processes(folder) == []


def test_the_submission_dies_with_a_killed_ingestion(input_dir, tmp_path):
    """A worker's SIGKILL at its time limit reaches ingestion only; the submission's process follows it."""
    folder = hostile(tmp_path, "time.sleep(120)")
    process = start_and_wait_for_fit(input_dir, tmp_path, folder)
    process.kill()
    process.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while submission_processes(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert submission_processes(folder) == []


@pytest.mark.parametrize("plant, kind", [
    ("os.symlink('/etc/hostname', os.path.join(OUTPUT, 'hostname'))", "symbolic link to /etc/hostname"),
    ("os.mkfifo(os.path.join(OUTPUT, 'pipe'))", "FIFO"),
    ("os.makedirs(os.path.join(OUTPUT, 'deep', 'er')); os.symlink('/proc/self/pagemap', "
     "os.path.join(OUTPUT, 'deep', 'er', 'map'))", "symbolic link to /proc/self/pagemap"),
])
def test_links_fifos_and_devices_left_in_the_output_fail_the_run(input_dir, tmp_path, capsys, plant, kind):
    folder = hostile(tmp_path, plant)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1
    assert report["error"]["message"].startswith(f"the submission's process left a {kind} {tmp_path / 'output'}/")
    assert report["error"]["message"].endswith(" in the output folder (removed; links, FIFOs and devices are "
                                               "never followed)")
    left = sorted(os.listdir(tmp_path / "output"))  # ingestion's outputs, and the submission's own folder
    assert left == sorted([HEATMAPS, REPORT, PREDICTIONS, ds.EVIDENCE] + (["deep"] if "deep" in plant else []))
    assert not os.path.lexists(tmp_path / "output" / "deep" / "er" / "map")


def test_a_dangling_metadata_link_is_removed_not_written_through(input_dir, tmp_path, capsys):
    target = tmp_path / "created-through-the-link"
    folder = hostile(tmp_path, f"os.symlink({str(target)!r}, os.path.join(OUTPUT, 'metadata'))")
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["message"] == (
        f"the submission's process wrote {tmp_path / 'output' / 'metadata'}, the worker's own file (removed)")
    assert not os.path.lexists(tmp_path / "output" / "metadata") and not target.exists()


@pytest.mark.parametrize("plant, kind", [
    ("os.mkfifo(path)", "FIFO"),
    ("os.symlink('/proc/self/pagemap', path)", "symbolic link to /proc/self/pagemap"),
])
def test_a_link_or_fifo_in_place_of_its_predictions_is_refused_unread(input_dir, tmp_path, capsys, plant, kind):
    """Planted by explain(), after the submission's process wrote its predictions; reading either would block
    or never end."""
    folder = hostile(tmp_path, "pass")
    code = (folder / "model.py").read_text().replace("0.3)", "0.7)") + f"""
    def explain(self, X):
        path = os.path.join(sys.argv[3], "predictions.csv")  # the submission's process: its results folder
        os.unlink(path)
        {plant}
        return np.zeros_like(X["images"], dtype=float)
"""
    (folder / "model.py").write_text(code)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["message"] == (
        f"predictions.csv of the submission's process is a {kind}: refused without following or reading it")
    assert report["files"] == [] and report["durations"]["total"] < 60


@pytest.mark.parametrize("make, kind", [
    (lambda folder: (folder / "helper.py").symlink_to("/etc/hostname"), "symbolic link to /etc/hostname"),
    (lambda folder: os.mkfifo(folder / "data.bin"), "FIFO"),
    (lambda folder: [(folder / "model.py").rename(folder / "real.py"), (folder / "model.py").symlink_to("real.py")],
     "symbolic link to real.py"),
])
def test_a_submission_folder_with_a_link_or_fifo_is_refused(input_dir, tmp_path, capsys, make, kind):
    folder = hostile(tmp_path, "pass")
    make(folder)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["stage"] == "import"
    name = {"FIFO": "data.bin"}.get(kind, "model.py" if "real.py" in kind else "helper.py")
    assert report["error"]["message"] == (
        f"submission folder {folder}: {name} is a {kind}; a submission may hold only files and folders (links, "
        "FIFOs and devices are never followed)")


def test_an_empty_zip_is_named_as_such(input_dir, tmp_path, capsys):
    archive = tmp_path / "upload.zip"
    zipfile.ZipFile(archive, "w").close()
    (tmp_path / "program").mkdir()
    status, report, err = ingest(input_dir, tmp_path, archive, capsys)
    assert status == 1 and report["error"]["message"] == f"{archive}: the zip is empty"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("__MACOSX/._model.py", "")
    status, report, err = ingest(input_dir, tmp_path, archive, capsys)
    assert report["error"]["message"] == f"{archive}: the zip holds only system clutter (__MACOSX/._model.py)"


def test_a_refused_publish_is_the_reported_cause(input_dir, tmp_path, capsys):
    """explain() rewrites the predictions its process already wrote, with probabilities of 1.5: the run fails
    with that cause, not with the heatmaps that could then not be published."""
    folder = hostile(tmp_path, "pass")
    code = (folder / "model.py").read_text().replace("0.3)", "0.7)") + """
    def explain(self, X):
        path = os.path.join(sys.argv[3], "predictions.csv")
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:
            f.write("\\n".join([lines[0]] + [line.replace(",0.7,", ",1.5,") for line in lines[1:]]) + "\\n")
        return np.ones_like(X["images"], dtype=float)
"""
    (folder / "model.py").write_text(code)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["message"].startswith(
        "Model.predict_proba returned values outside [0, 1] for 6 valid images (min 1.5, max 1.5")
    assert report["files"] == []


def test_device_is_what_ingestion_sees_and_the_submissions_statements_are_claims(input_dir, tmp_path, capsys):
    folder = hostile(tmp_path, """
        claim = {"info": {"device": "cuda (NVIDIA H100 80GB HBM3)", "explanation": None}}
        os.write(int(sys.argv[4]), (json.dumps(claim) + "\\n").encode())  # the message channel to ingestion
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 0 and report["claims"] == {"device": "cuda (NVIDIA H100 80GB HBM3)", "explanation": None}
    gpus = sorted(Path("/proc/driver/nvidia/gpus").glob("*/information"))
    assert report["device"] == "cpu" if not gpus else report["device"].startswith("cpu; GPU: ")


def test_progress_messages_do_not_rewrite_the_report_each_time(input_dir, tmp_path, capsys, monkeypatch):
    """20,000 stage messages: the report is written at most every 0.25 s, not 20,000 times."""
    from hygieia.submission import ingestion

    saves = []
    original = ingestion.Ingestion.save
    monkeypatch.setattr(ingestion.Ingestion, "save", lambda self: saves.append(1) or original(self))
    folder = hostile(tmp_path, """
        fd = int(sys.argv[4])
        for _ in range(10_000):
            os.write(fd, b'{"stage": "fit"}\\n{"done": "fit"}\\n')
    """)
    start = time.monotonic()
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    elapsed = time.monotonic() - start
    assert status == 0 and report["status"] == "ok"
    assert len(saves) <= 6 + elapsed / 0.25, (len(saves), elapsed)


def test_ingestion_outside_a_container_says_so(input_dir, tmp_path, capsys):
    from hygieia.submission.isolation import UNSANDBOXED_WARNING

    status, report, err = ingest(input_dir, tmp_path, hostile(tmp_path, "pass"), capsys)
    assert status == 0 and UNSANDBOXED_WARNING in err
    assert "ingestion: WARNING: not inside a container or sandbox" in UNSANDBOXED_WARNING


def test_a_link_the_submission_locked_in_the_output_is_removed_and_the_folder_restored(input_dir, tmp_path, capsys):
    """A link inside folders the submission made unreadable, the output folder itself read-only: ingestion (its
    owner too: as root without CAP_DAC_OVERRIDE in Codabench's container) takes its access back."""
    folder = hostile(tmp_path, """
        deep = os.path.join(OUTPUT, "locked", "inner")
        os.makedirs(deep)
        os.symlink("/etc/hostname", os.path.join(deep, "link"))
        os.chmod(deep, 0)
        os.chmod(os.path.dirname(deep), 0)
        os.chmod(OUTPUT, 0o500)
    """)
    status, report, err = ingest(input_dir, tmp_path, folder, capsys)
    assert status == 1 and report["error"]["message"].startswith(
        "the submission's process changed the permissions of the output folder")
    link = tmp_path / "output" / "locked" / "inner" / "link"
    assert not os.path.lexists(link) and f"removed {link}: not written by this run" in err
    assert sorted(os.listdir(tmp_path / "output")) == sorted([ds.EVIDENCE, HEATMAPS, REPORT, "locked", PREDICTIONS])
