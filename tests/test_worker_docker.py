"""``hygieia run --sandbox docker``: the ``docker run`` of each step, and issue 14's hostile cases under it.

The integration tests (marked ``docker``) need a Docker daemon; they run in a small image that
tests/docker_image.py builds offline from this machine's Python (no registry is reachable here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from docker_image import docker_problem, ensure_image
from hygieia.bundle import sandbox
from hygieia.bundle.limits import Limits
from hygieia.bundle.sandbox import CODABENCH_CAP_DROP, Step, docker_argv
from hygieia.bundle.worker import fresh_out_dir, run_submission
from hygieia.errors import HygieiaError
from test_worker import (HOSTILE, ROOT, bundle_dir, pristine_copy, start_sleepy_run,  # noqa: F401
                         wait_until_gone, write_model, write_sleepy_model)


def prediction_step(tmp_path: Path) -> Step:
    mounts = {f"/app/{name}": tmp_path / name for name in ("program", "ingested_program", "input_data", "output")}
    mounts["/tmp"] = tmp_path / "tmp"
    return Step("ingestion", mounts, {"/app/program", "/app/input_data"},
                "python3 /app/program/ingestion.py /app/input_data /app/output /app/program '/app/ingested_program'",
                600)


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_docker_run_mirrors_codabenchs_container(tmp_path):
    step = prediction_step(tmp_path)
    argv = docker_argv(step, "me/hygieia:0.1.0-cpu", "hygieia-ingestion-abc", {"HYGIEIA_FAST": "1"}, user="1000:100",
                       limits=Limits(memory=3 * 2**30))
    image = argv.index("me/hygieia:0.1.0-cpu")
    assert argv[:2] == ["docker", "run"] and option_values(argv, "--name") == ["hygieia-ingestion-abc"]
    assert argv[image + 1:] == ["python3", "/app/program/ingestion.py", "/app/input_data", "/app/output",
                                "/app/program", "/app/ingested_program"]   # shlex, as docker-py splits it
    assert option_values(argv, "--workdir") == ["/app/program"]
    assert option_values(argv, "--network") == ["none"] and option_values(argv, "--pull") == ["never"]
    assert option_values(argv, "--user") == ["1000:100"] and option_values(argv, "--userns") == ["host"]
    assert option_values(argv, "--security-opt") == ["no-new-privileges"]
    assert option_values(argv, "--cap-drop") == list(CODABENCH_CAP_DROP)
    assert "--read-only" in argv[:image]   # the image's files too: /tmp is the step's scratch folder
    assert option_values(argv, "--memory") == option_values(argv, "--memory-swap") == [str(3 * 2**30)]
    assert sorted(option_values(argv, "--env")) == ["HOME=/tmp", "HYGIEIA_FAST=1", "PYTHONUNBUFFERED=1",
                                                    "http_proxy=", "https_proxy="]
    assert sorted(option_values(argv, "--mount")) == [
        f"type=bind,source={tmp_path / 'ingested_program'},target=/app/ingested_program",
        f"type=bind,source={tmp_path / 'input_data'},target=/app/input_data,readonly",
        f"type=bind,source={tmp_path / 'output'},target=/app/output",
        f"type=bind,source={tmp_path / 'program'},target=/app/program,readonly",
        f"type=bind,source={tmp_path / 'tmp'},target=/tmp"]
    assert "--gpus" not in argv and all(option not in argv for option in ("--privileged", "-v", "--volume"))
    with_gpus = docker_argv(step, "img", "n", {}, gpus=True)
    assert option_values(with_gpus, "--gpus") == ["all"] and "--read-only" not in with_gpus   # NVIDIA's hooks write
    # an unprivileged user: the caller, or nobody when the caller is root
    expected = "65534:65534" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    assert option_values(docker_argv(step, "img", "n", {}), "--user") == [expected]


def test_a_path_with_a_comma_is_quoted_in_the_mount(tmp_path):
    step = Step("scoring", {"/app/input": tmp_path / "a,b"}, {"/app/input"}, "python3 x.py", 600)
    assert option_values(docker_argv(step, "img", "n", {}), "--mount") == \
        [f'type=bind,"source={tmp_path}/a,b",target=/app/input,readonly']


def test_auto_says_in_one_line_why_docker_was_not_used(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: None)
    assert sandbox.choose_sandbox("auto", None).kind == "bwrap"
    assert capsys.readouterr().err == ("run: not using Docker: competition.yaml names no docker_image and no "
                                       "--docker-image was given\n")
    real_which = sandbox.shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "docker" else real_which(name))
    assert sandbox.choose_sandbox("auto", "me/hygieia:1").kind == "bwrap"
    assert "not using Docker: the docker command is not installed" in capsys.readouterr().err
    with pytest.raises(HygieiaError, match="--sandbox docker: the docker command is not installed"):
        sandbox.choose_sandbox("docker", "me/hygieia:1")


# -- under a Docker daemon --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def test_image() -> str:
    problem = docker_problem()
    if problem:
        pytest.skip(f"docker tests: {problem}")
    tag, seconds = ensure_image()
    if seconds is not None:
        print(f"\nbuilt the docker test image {tag} in {seconds:.0f} s")
    return tag


def containers_named(prefix: str) -> list[str]:
    listed = subprocess.run(["docker", "ps", "--all", "--format", "{{.Names}}"], capture_output=True, text=True,
                            check=True).stdout
    return [name for name in listed.split() if name.startswith(prefix)]


@pytest.mark.docker
def test_a_missing_image_is_named(bundle_dir, tmp_path, test_image, capsys):  # noqa: F811
    with pytest.raises(HygieiaError, match="the image hygieia-tests/absent:0 is not present locally"):
        run_submission(ROOT / "sample_submission_tabular", bundle_dir, out_dir=tmp_path / "run", echo=False,
                       sandbox="docker", docker_image="hygieia-tests/absent:0")


@pytest.mark.docker
@pytest.mark.slow
def test_tabular_sample_scores_the_same_under_docker_and_bwrap(bundle_dir, tmp_path, test_image):  # noqa: F811
    docker = run_submission(ROOT / "sample_submission_tabular", bundle_dir, out_dir=tmp_path / "docker",
                            echo=False, docker_image=test_image)
    assert docker.sandbox == "docker" and f"sandbox: docker ({test_image})" in docker.report()
    assert docker.status == "Finished", docker.report()
    bwrap = run_submission(ROOT / "sample_submission_tabular", bundle_dir, out_dir=tmp_path / "bwrap",
                           echo=False, sandbox="bwrap")
    assert bwrap.status == "Finished", bwrap.report()
    assert docker.scores == bwrap.scores and docker.row == bwrap.row
    assert docker.detailed_results == tmp_path / "docker" / "scoring" / "output" / "detailed_results.html"
    # every file the containers wrote belongs to their unprivileged user: the caller, or nobody as root
    owner = 65534 if os.geteuid() == 0 else os.getuid()
    for step in ("prediction", "scoring"):
        written = [p for p in (tmp_path / "docker" / step / "output").rglob("*") if p.name != "metadata"]
        assert written and all(path.lstat().st_uid == owner for path in written), step
    assert fresh_out_dir(tmp_path / "docker") == tmp_path / "docker"   # and the worker can replace them
    assert [step.container for step in docker.steps] and all(step.container for step in docker.steps)
    assert all(containers_named(step.container) == [] for step in docker.steps)


@pytest.mark.docker
@pytest.mark.slow
def test_hostile_submission_reaches_nothing_under_docker(pristine_copy, tmp_path, test_image):  # noqa: F811
    """The hostile submission of test_worker.py: no bundle file rewritten, no reference read, no network,
    no process left; an innocent run afterwards scores as before."""
    innocent = run_submission(ROOT / "sample_submission_tabular", pristine_copy, out_dir=tmp_path / "before",
                              echo=False, sandbox="docker", docker_image=test_image)
    assert innocent.status == "Finished", innocent.report()
    score_py = (pristine_copy / "scoring_program" / "score.py").read_bytes()
    marker = "hostile-beat-4712"
    sub = write_model(tmp_path / "hostile", HOSTILE.format(bundle=str(pristine_copy), marker=marker,
                                                           beat="/app/output/beat.txt"))
    result = run_submission(sub, pristine_copy, out_dir=tmp_path / "hostile_run", echo=False, sandbox="docker",
                            docker_image=test_image)
    assert result.sandbox == "docker"
    report = json.loads((tmp_path / "hostile_run" / "prediction" / "output" / "hostile.json").read_text())
    assert report["rewrite_scoring"] in ("FileNotFoundError", "PermissionError", "OSError")
    assert report["read_reference"] == "FileNotFoundError"
    assert report["rewrite_ingestion"] in ("PermissionError", "OSError")
    assert report["network"] != "done"
    assert (pristine_copy / "scoring_program" / "score.py").read_bytes() == score_py
    assert wait_until_gone(marker, seconds=2) == []
    beat_file = tmp_path / "hostile_run" / "prediction" / "output" / "beat.txt"
    if beat_file.exists():
        last = beat_file.read_text()
        time.sleep(1)
        assert beat_file.read_text() == last
    assert all(containers_named(step.container) == [] for step in result.steps)
    after = run_submission(ROOT / "sample_submission_tabular", pristine_copy, out_dir=tmp_path / "after",
                           echo=False, sandbox="docker", docker_image=test_image)
    assert after.status == "Finished" and after.scores == innocent.scores


@pytest.mark.docker
@pytest.mark.slow
def test_time_limit_kills_the_container_and_its_setsid_child(pristine_copy, tmp_path, test_image):  # noqa: F811
    from bundle_helpers import edit_yaml

    limit, marker = 20, "303.4711"
    edit_yaml(pristine_copy, lambda c: c["phases"][0].update(execution_time_limit=limit))
    sub = write_sleepy_model(tmp_path / "sleepy", marker)
    result = run_submission(sub, pristine_copy, out_dir=tmp_path / "run", echo=False, sandbox="docker",
                            docker_image=test_image)
    assert result.status == "Failed" and result.sandbox == "docker"
    assert f"Execution Time Limit exceeded. Limit was {limit} seconds" in result.error
    assert result.steps[0].timed_out and result.steps[0].elapsed < limit + 15 and len(result.steps) == 1
    assert wait_until_gone(marker) == []
    assert containers_named(result.steps[0].container) == []


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_removes_the_container(bundle_dir, tmp_path, test_image):  # noqa: F811
    marker = "304.4711"
    run = start_sleepy_run(bundle_dir, tmp_path, marker, "--sandbox", "docker", "--docker-image", test_image)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) != 0
    assert wait_until_gone(marker) == []
    assert containers_named("hygieia-ingestion-") == []
