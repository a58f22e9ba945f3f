"""A model that attacks ingestion, its parent: ptrace, /proc/<pid>/mem, prlimit, kill, a fork chain.

Each attack is refused, or ends the run Failed with its cause, and an innocent run afterwards gives
the same predictions as before. Three places, as root (as CI runs):

- ``host``: ingestion in this process, as ``hygieia ingest`` on a developer's machine; the submission
  runs in its own user and PID namespaces (the "namespaces" mechanism).
- ``bwrap``: ingestion as an unprivileged uid with no capability under bubblewrap, as the local worker
  runs it: namespaces nested in bubblewrap's, without a /proc of their own.
- ``codabench``: ingestion as the PID 1 of its namespace, uid 0 without a capability and unable to
  create a namespace, as in Codabench's container (Docker's seccomp profile forbids namespaces; here
  bubblewrap's --disable-userns does): the "alone" mechanism.
- ``docker`` (marked ``docker``): Codabench's container itself, as compute_worker.py creates it: root,
  the capabilities it drops, no-new-privileges, Docker's default seccomp profile, in the small test
  image of tests/docker_image.py.
"""

from __future__ import annotations

import functools
import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT
from docker_image import docker_problem, ensure_image
from fakes import write_fake_dataset
from hygieia import dataset as ds
from hygieia.bundle.sandbox import CODABENCH_CAP_DROP
from hygieia.submission.isolation import alone_in_pid_namespace, choose
from hygieia.submission.ingestion import PREDICTIONS, REPORT, main

BASE = """\
import ctypes, errno, json, os, resource, signal, sys, time
import numpy as np

LIBC = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
RECORD, OUTPUT, INGESTION = {record!r}, {output!r}, {ingestion!r}


def outcome(call):
    try:
        call()
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    return "succeeded"


def checked(result):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def targets():
    # the parent, as any process can name it; and ingestion's own pid where the test knows it
    return {{"parent": os.getppid(), **({{"ingestion": INGESTION}} if INGESTION else {{}})}}


def lower_open_files(pid):
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft - 1, hard))


def record(found):
    with open(RECORD, "w") as f:
        json.dump(found, f)


class Model:
    def fit(self, X, y):
{fit}

    def predict_proba(self, X):
        return np.where(np.arange(len(X["ids"])) % 2 == 0, 0.8, 0.2)
"""
INNOCENT_FIT = "pass"


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("fake"), sizes=(10, 6, 6)) / ds.INPUT_DIR


@functools.cache
def place_problem(name: str) -> str | None:
    """Why ``name`` cannot be laid out here as it is meant (the mechanism it should get), or None. Where
    user namespaces are refused (a chroot, a container's seccomp profile), ingestion falls back to "session",
    in which the submission may signal its parent: these attacks would hit the test runner itself."""
    if name == "host":  # as ingestion will choose, in this very process
        chosen = choose()
        return None if chosen.mechanism == MECHANISM[name] else (
            f"host: ingestion's isolation here is {chosen.mechanism!r}, not 'namespaces' ({chosen.why_not_namespaces});"
            " the fallbacks are tested by test_without_namespaces_*")
    probe = [sys.executable, "-c", "from hygieia.submission.isolation import choose; print(choose().mechanism)"]
    if name in SANDBOXES:
        if shutil.which("bwrap") is None:
            return "bubblewrap is not installed"
        probe = ["bwrap", *SANDBOXES[name], *SANDBOX_BINDS, "--", *probe]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if done.returncode != 0:
        return f"{name}: the probe does not run here: {done.stderr.strip()[-300:]}"
    mechanism = done.stdout.strip()
    if mechanism != MECHANISM[name]:
        return (f"{name}: ingestion's isolation here is {mechanism!r}, not {MECHANISM[name]!r} (user namespaces "
                "refused?); the fallbacks are tested by test_without_namespaces_*")
    return None


SANDBOXES = {
    "bwrap": ["--unshare-all", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"],
    "codabench": ["--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-net", "--unshare-ipc",
                  "--as-pid-1", "--uid", "0", "--gid", "0", "--cap-drop", "ALL"],
}
# The machine read-only, a /tmp of its own, this checkout (which may lie in /tmp) read-only again.
SANDBOX_BINDS = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                 "--ro-bind", str(ROOT), str(ROOT)]
PLACES = ["host", pytest.param("bwrap", marks=pytest.mark.slow), pytest.param("codabench", marks=pytest.mark.slow),
          pytest.param("docker", marks=[pytest.mark.slow, pytest.mark.docker])]
MECHANISM = {"host": "namespaces", "bwrap": "namespaces", "codabench": "alone", "docker": "alone"}


def docker_run_argv(image: str, name: str, folders: list[Path], budget: float) -> list[str]:
    """``docker run`` as Codabench's compute worker creates the container (compute_worker.py, 963-1010): root
    (the image's user), its dropped capabilities, no-new-privileges, the host's user namespace, Docker's
    default seccomp profile; the folders at their own paths, this checkout read-only."""
    argv = ["docker", "run", "--rm", "--name", name, "--pull", "never", "--network", "none", "--userns", "host",
            "--security-opt", "no-new-privileges", "--workdir", str(folders[0]),
            "--env", "PYTHONUNBUFFERED=1", "--env", f"HYGIEIA_TIME_BUDGET={budget}"]
    for capability in CODABENCH_CAP_DROP:
        argv += ["--cap-drop", capability]
    for folder in folders:
        argv += ["--mount", f"type=bind,source={folder},target={folder}"]
    argv += ["--mount", f"type=bind,source={ROOT},target={ROOT},readonly"]
    return argv + [image, "python3"]


class Place:
    """Where ingestion runs: ``run(fit)`` writes a model whose fit is ``fit`` and runs ingestion on it."""

    def __init__(self, name: str, input_dir: Path, tmp_path: Path, capsys):
        self.image = None
        if name == "docker":
            if problem := docker_problem():
                pytest.skip(f"docker tests: {problem}")
            self.image = ensure_image()[0]
        self.name, self.input_dir, self.tmp_path, self.capsys = name, input_dir, tmp_path, capsys
        self.runs = 0

    @property
    def output(self) -> Path:
        return self.tmp_path / f"output{self.runs}"

    def run(self, fit: str, budget: float = 60) -> tuple[int, dict, str]:
        self.runs += 1
        folder, program = self.tmp_path / f"submission{self.runs}", self.tmp_path / "program"
        folder.mkdir()
        program.mkdir(exist_ok=True)
        ingestion = os.getpid() if self.name == "host" else None
        code = BASE.format(record=str(self.tmp_path / "record.json"), output=str(self.output), ingestion=ingestion,
                           fit=textwrap.indent(textwrap.dedent(fit).strip(), " " * 8))
        (folder / "model.py").write_text(code)
        args = [str(self.input_dir), str(self.output), str(program), str(folder)]
        if self.name == "host":
            os.environ["HYGIEIA_TIME_BUDGET"] = str(budget)
            try:
                status = main(args)
            finally:
                del os.environ["HYGIEIA_TIME_BUDGET"]
            err = self.capsys.readouterr().err
        elif self.name == "docker":
            name = f"hygieia-isolation-test-{os.getpid()}-{self.runs}"
            argv = docker_run_argv(self.image, name, [self.tmp_path, self.input_dir], budget)
            done = subprocess.run([*argv, str(ROOT / "ingestion_program" / "ingestion.py"), *args],
                                  capture_output=True, text=True, timeout=300)
            status, err = done.returncode, done.stderr
        else:
            binds = [*SANDBOX_BINDS, "--bind", str(self.tmp_path), str(self.tmp_path),
                     "--ro-bind", str(self.input_dir), str(self.input_dir)]
            argv = ["bwrap", *SANDBOXES[self.name], "--die-with-parent", "--new-session", *binds,
                    "--setenv", "HYGIEIA_TIME_BUDGET", str(budget), "--",
                    sys.executable, str(ROOT / "ingestion_program" / "ingestion.py"), *args]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            status, err = done.returncode, done.stderr
        return status, json.loads((self.output / REPORT).read_text()), err

    def record(self) -> dict:
        return json.loads((self.tmp_path / "record.json").read_text())


@pytest.fixture
def place(request, input_dir, tmp_path, capsys):
    if request.param != "docker" and (problem := place_problem(request.param)):
        pytest.skip(problem)
    return Place(request.param, input_dir, tmp_path, capsys)


def assert_innocent_run_as_before(place: Place, mechanism: str | None = None) -> None:
    status, report, err = place.run(INNOCENT_FIT)
    assert status == 0 and report["status"] == "ok", report["error"]
    assert report["isolation"]["mechanism"] == (mechanism or MECHANISM[place.name])
    assert ("WARNING: not inside a container or sandbox" in err) == (place.name == "host")
    predictions = (place.output / PREDICTIONS).read_text().splitlines()
    assert len(predictions) == 13 and [line.rsplit(",", 1)[1] for line in predictions[1:]] == ["1", "0"] * 6


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_ptrace_and_proc_mem_of_the_parent_are_refused(place):
    status, report, _ = place.run("""
        record({name: {"ptrace": outcome(lambda: checked(LIBC.ptrace(PTRACE_SEIZE, pid, None, None))),
                       "mem": outcome(lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR)))}
                for name, pid in targets().items()})
    """)
    assert status == 0 and report["status"] == "ok"
    found = place.record()
    assert found["parent"] == {"ptrace": "EPERM", "mem": "EACCES"}  # non-dumpable: ingestion, or the init
    if place.name == "host":  # ingestion's pid names no process in the submission's namespace
        assert found["ingestion"] == {"ptrace": "ESRCH", "mem": "ENOENT"}
    assert_innocent_run_as_before(place)


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_kill_on_the_parent_has_no_effect(place):
    status, report, _ = place.run("""
        if os.getppid() == INGESTION:  # no namespace after all: the parent is the test runner, spared
            found = {"parent": "not sent: the parent is the test runner"}
        else:
            found = {"parent": outcome(lambda: os.kill(os.getppid(), signal.SIGKILL))}
        if INGESTION:
            found["ingestion"] = outcome(lambda: os.kill(INGESTION, 0))
        found["group"] = outcome(lambda: os.killpg(0, signal.SIGCONT))  # its own session's group only
        record(found)
        time.sleep(0.5)
    """)
    # The parent is a namespace's PID 1 (the init, or ingestion in Codabench's container): a signal it
    # does not handle, sent from inside the namespace, is dropped.
    assert status == 0 and report["status"] == "ok"
    found = place.record()
    assert found["parent"] == "succeeded" and found["group"] == "succeeded"
    if place.name == "host":
        assert found["ingestion"] == "ESRCH"
    assert_innocent_run_as_before(place)


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_prlimit_on_the_parent_fails_the_run_with_its_cause(place):
    status, report, err = place.run("""
        record({name: outcome(lambda: lower_open_files(pid)) for name, pid in targets().items()})
    """)
    assert status == 1 and report["status"] == "failed"
    found = place.record()
    if MECHANISM[place.name] == "alone":  # the parent is ingestion: refused nowhere, found afterwards
        assert found == {"parent": "succeeded"}
        assert report["error"]["message"].startswith("the submission changed ingestion's resource limits "
                                                     "(RLIMIT_NOFILE (")
    else:  # the parent is the namespace's init, which checks its own limits
        assert found["parent"] == "succeeded" and found.get("ingestion", "ESRCH") == "ESRCH"
        assert report["error"]["message"].startswith("the submission changed the resource limits of its "
                                                     "namespace's init, its parent process (RLIMIT_NOFILE (")
    assert err.rstrip().splitlines()[-1] == (f"ingestion failed during {report['error']['stage']}: "
                                             f"{report['error']['message']}")
    assert_innocent_run_as_before(place)


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_a_ptrace_takeover_of_the_parent_is_refused_and_the_budget_holds(place):
    """The issue's attack: stop ingestion under ptrace, train past the budget, forge the outputs."""
    status, report, _ = place.run("""
        def take_over(pid):
            checked(LIBC.ptrace(PTRACE_ATTACH, pid, None, None))
            time.sleep(4)  # ingestion stopped: its budget of 2 s cannot end the run
            for name in ("predictions.csv", "ingestion.json"):
                with open(os.path.join(OUTPUT, name), "w") as f:
                    f.write('{"status": "ok"}')
            LIBC.ptrace(PTRACE_DETACH, pid, None, None)
        record({name: outcome(lambda: take_over(pid)) for name, pid in targets().items()})
        time.sleep(4)
    """, budget=2)
    assert place.record()["parent"] == "EPERM"
    assert status == 1 and report["error"]["message"] == ("time budget of 2 s ($HYGIEIA_TIME_BUDGET) exceeded "
                                                          "during fit; the submission's processes were stopped")
    assert not (place.output / PREDICTIONS).exists()
    assert_innocent_run_as_before(place)


FORK_CHAIN = """
    beat = os.path.join(os.path.dirname(RECORD), "beat")
    if os.fork() == 0:
        os.setsid()
        end = time.time() + 8
        while time.time() < end:  # each step forks the next and exits: a new pid every few hundred us
            if os.fork():
                os._exit(0)
            for path, text in ((os.path.join(OUTPUT, "predictions.csv"), "id,proba,label\\n"), (beat, "")):
                try:
                    with open(path, "w") as f:
                        f.write(text)
                except OSError:
                    pass
        os._exit(0)
    while not os.path.exists(beat):
        time.sleep(0.01)
"""


def beats_after(beat: Path, seconds: float) -> bool:
    """Whether ``beat`` is rewritten within ``seconds``."""
    before = beat.stat().st_mtime_ns
    time.sleep(seconds)
    return beat.stat().st_mtime_ns != before


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_a_fork_chain_does_not_outlive_ingestion(place):
    status, report, err = place.run(FORK_CHAIN)
    beat = place.tmp_path / "beat"
    assert status == 0 and report["status"] == "ok", report["error"]
    assert "more process(es) the submission had started" in err
    assert not beats_after(beat, 1.0)
    assert len((place.output / PREDICTIONS).read_text().splitlines()) == 13
    assert_innocent_run_as_before(place)


def test_without_namespaces_a_fork_chain_is_stopped_or_fails_the_run(input_dir, tmp_path, capsys, monkeypatch):
    """The last resort ("session": no namespace, not alone) kills by rounds: it stops the chain, or the run
    fails saying so, and nothing is published while a process of the submission may run."""
    monkeypatch.setenv("HYGIEIA_NO_NAMESPACES", "1")
    if alone_in_pid_namespace():
        pytest.skip("ingestion is alone in its PID namespace here: the fallback is 'alone', not 'session'")
    place = Place("host", input_dir, tmp_path, capsys)
    status, report, err = place.run(FORK_CHAIN)
    assert report["isolation"]["mechanism"] == "session" and report["isolation"]["missing"]
    assert "ingestion: WARNING: isolation: session: " in err
    if status == 0:
        assert not beats_after(tmp_path / "beat", 1.0)
        assert len((place.output / PREDICTIONS).read_text().splitlines()) == 13
    else:
        assert re.match(r"\d+ process\(es\) the submission started could not be stopped \(a fork chain\?\) under "
                        "the isolation 'session'", report["error"]["message"]), report["error"]["message"]
        assert report["files"] == []
        time.sleep(8)  # the chain's own end
    monkeypatch.delenv("HYGIEIA_NO_NAMESPACES")
    assert_innocent_run_as_before(place, choose().mechanism)  # "namespaces" where this machine allows them


def test_without_namespaces_prlimit_on_ingestion_is_found(input_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYGIEIA_NO_NAMESPACES", "1")
    if alone_in_pid_namespace():
        pytest.skip("ingestion is alone in its PID namespace here: the fallback is 'alone', not 'session'")
    place = Place("host", input_dir, tmp_path, capsys)
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    try:
        status, report, _ = place.run("record({'ingestion': outcome(lambda: lower_open_files(INGESTION))})")
    finally:
        __import__("resource").setrlimit(__import__("resource").RLIMIT_NOFILE, (soft, hard))
    assert place.record() == {"ingestion": "succeeded"}
    assert status == 1 and report["error"]["message"] == (
        f"the submission changed ingestion's resource limits (RLIMIT_NOFILE ({soft}, {hard}) -> ({soft - 1}, {hard}))")
