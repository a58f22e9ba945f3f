"""The built bundle on Codabench's own code: its v2 unpacker and its compute worker, run offline.

``../shared/codabench`` holds Codabench's files unchanged (see its README). The worker module is
imported as it is, with its service imports (celery, requests, websockets...) stubbed and docker
replaced by a shim that runs each container's command as a local process, its bind mounts mapped to
folders and only the program folder importable. The bundle's parts reach it through ``file://`` URLs,
zipped by Codabench's own ``zip_if_directory``, as the server stores them. Each run's status, scores
and logs are compared with ``hygieia run`` on the same bundle; the fact sheet goes through the server's
own validator and each submission's answers through its rules; and an all-positive submission shows,
in both phases, that nothing anyone can see of a run names or shows a hidden image.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shlex
import shutil
import site
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import SHARED
from hygieia.bundle.build import build_bundle
from hygieia.bundle.fact_sheet import answer_problems
from hygieia.bundle.worker import run_submission
from test_fact_sheet import codabench_validate_fact_sheet

CODABENCH = SHARED / "codabench"
WORKER_FILE = CODABENCH / "compute_worker" / "compute_worker.py"
UNPACKERS = CODABENCH / "src" / "apps"

pytestmark = pytest.mark.slow


def module(name: str, **attributes) -> types.ModuleType:
    stub = types.ModuleType(name)
    stub.__path__ = []  # importable as a package, for its stubbed submodules
    stub.__dict__.update(attributes)
    return stub


def install(monkeypatch, stubs: dict[str, types.ModuleType]) -> None:
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)


# -- docker, as a local process per container -------------------------------------------------------
class DockerShim:
    """The docker.APIClient calls the worker makes. ``start`` runs the container's command to the end."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.containers: dict[str, dict] = {}

    def pull(self, image, stream=True, decode=True):
        return iter(())

    def create_host_config(self, **config):
        return config

    def create_container(self, image, name, host_config, command, working_dir, environment, **_):
        self.containers[name] = {"binds": host_config["binds"], "command": command, "cwd": working_dir,
                                 "environment": environment}
        return {"Id": name}

    def spec(self, container) -> dict:
        """The worker passes a container as its Id or as create_container's answer."""
        return self.containers[container if isinstance(container, str) else container["Id"]]

    def start(self, container):
        spec = self.spec(container)
        mounts = {bind["bind"]: host for host, bind in spec["binds"].items()}

        def host(arg: str) -> str:
            for point in sorted(mounts, key=len, reverse=True):
                if arg == point or arg.startswith(point + "/"):
                    return mounts[point] + arg[len(point):]
            return arg

        argv = [host(arg) for arg in shlex.split(spec["command"])]  # docker-py splits with shlex
        if Path(argv[0]).name in ("python", "python3"):
            argv = [sys.executable, "-S"] + argv[1:]
        packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
        env = dict(e.split("=", 1) for e in spec["environment"])
        env.update(self.env, PATH=os.environ["PATH"],
                   PYTHONPATH=os.pathsep.join([mounts["/app/program"]] + packages))
        done = subprocess.run(argv, cwd=host(spec["cwd"]), env=env, capture_output=True, timeout=600)
        spec.update(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)

    def attach(self, container, demux=True, stream=False, logs=True):
        spec = self.spec(container)
        return iter(()) if stream else (spec.get("stdout") or None, spec.get("stderr") or None)

    def inspect_container(self, container):
        return {"State": {"Status": "exited"}}

    def wait(self, container):
        return {"StatusCode": self.spec(container)["returncode"]}

    def remove_container(self, *args, **kwargs):
        pass

    kill = remove_container


# -- the server's side: status updates, score upload, file storage ----------------------------------
class Server:
    def __init__(self):
        self.updates: list[dict] = []
        self.scores: dict | None = None

    def session(self):
        server = self

        class Response:
            status_code, content = 200, b""

        class Session:
            def mount(self, *args):
                pass

            def patch(self, url, data, timeout=None):
                server.updates.append(dict(data))
                return Response()

            def post(self, url, json=None):
                server.scores = json["scores"]
                return Response()

            def put(self, url, data=None, headers=None):
                payload = data.read() if hasattr(data, "read") else data
                Path(url.removeprefix("file://")).write_bytes(payload if isinstance(payload, bytes)
                                                              else str(payload).encode())
                return Response()

        return Session()

    @property
    def status(self) -> str:
        return [u["status"] for u in self.updates if "status" in u][-1]

    @property
    def details(self) -> str:
        return " ".join(str(u.get("status_details")) for u in self.updates if u.get("status") == "Failed")


class Progress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


async def _noop(*args, **kwargs):
    return None


class _Socket:
    send = close = staticmethod(_noop)


async def _connect(*args, **kwargs):
    return _Socket()


def import_worker(monkeypatch, tmp: Path, server: Server, env: dict[str, str]):
    """compute_worker.py, unchanged, with its services stubbed; its folders under ``tmp``."""
    celery = module("celery", Celery=lambda: types.SimpleNamespace(config_from_object=lambda *a: None,
                                                                     conf=types.SimpleNamespace()),
                    shared_task=lambda **kw: (lambda f: f),
                    utils=types.SimpleNamespace(nodenames=types.SimpleNamespace(gethostname=lambda: "test")),
                    signals=types.SimpleNamespace(setup_logging=types.SimpleNamespace(connect=lambda f: f)))
    errors = module("docker.errors", APIError=type("APIError", (Exception,), {}),
                    NotFound=type("NotFound", (Exception,), {}))
    shim = DockerShim(env)
    install(monkeypatch, {
        "docker": module("docker", APIClient=lambda **kw: shim, errors=errors), "docker.errors": errors,
        "rich": module("rich"), "rich.pretty": module("rich.pretty", pprint=lambda *a, **k: None),
        "rich.progress": module("rich.progress", Progress=Progress),
        "requests": module("requests", Session=server.session,
                           adapters=types.SimpleNamespace(HTTPAdapter=lambda **kw: None),
                           exceptions=types.SimpleNamespace(ReadTimeout=TimeoutError)),
        "websockets": module("websockets", connect=_connect, WebSocketException=OSError,
                             ConnectionClosedError=OSError),
        "billiard": module("billiard"), "billiard.exceptions": module(
            "billiard.exceptions", SoftTimeLimitExceeded=type("SoftTimeLimitExceeded", (Exception,), {})),
        "celery": celery, "celery.signals": celery.signals,
        "kombu": module("kombu", Queue=lambda *a, **k: None, Exchange=lambda *a, **k: None),
        "urllib3": module("urllib3", Retry=lambda **kw: None),
        "logs_loguru": module("logs_loguru", configure_logging=lambda *a: None, colorize_run_args=str),
    })
    spec = importlib.util.spec_from_file_location("codabench_compute_worker", WORKER_FILE)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    base = str(tmp / "codabench") + "/"
    os.makedirs(base, exist_ok=True)
    # the worker's container folder and the host folder are the same place here
    worker.BASE_DIR = worker.HOST_DIRECTORY = base
    worker.CACHE_DIR = os.path.join(base, "cache")
    return worker


# -- Codabench's v2 unpacker --------------------------------------------------------------------------
def import_unpacker(monkeypatch):
    """competitions/unpackers/v2.py, unchanged, with Django and the server's models stubbed."""
    import datetime

    now = lambda: datetime.datetime.now(datetime.timezone.utc)  # noqa: E731
    stubs = {"django": module("django"), "django.core": module("django.core"),
             "django.core.files": module("django.core.files", File=object),
             "django.test": module("django.test", RequestFactory=lambda: types.SimpleNamespace()),
             "django.utils": module("django.utils", timezone=types.SimpleNamespace(now=now)),
             "api": module("api"), "api.serializers": module("api.serializers"),
             "api.serializers.competitions": module("api.serializers.competitions", CompetitionSerializer=None),
             "api.serializers.leaderboards": module("api.serializers.leaderboards", LeaderboardSerializer=None),
             "api.serializers.tasks": module("api.serializers.tasks", TaskSerializer=None, SolutionSerializer=None),
             "competitions.models": module("competitions.models", Phase=types.SimpleNamespace(
                 CURRENT="Current", NEXT="Next", PREVIOUS="Previous")),
             "datasets": module("datasets"), "datasets.models": module("datasets.models", Data=None),
             "queues": module("queues"), "queues.models": module("queues.models", Queue=None),
             "tasks": module("tasks"), "tasks.models": module("tasks.models", Task=None, Solution=None),
             "utils": module("utils"), "utils.storage": module("utils.storage", md5=None)}
    install(monkeypatch, stubs)
    monkeypatch.syspath_prepend(str(UNPACKERS))
    for name in [n for n in sys.modules if n == "competitions" or n.startswith("competitions.unpackers")]:
        monkeypatch.delitem(sys.modules, name)
    v2 = importlib.import_module("competitions.unpackers.v2")
    utils = importlib.import_module("competitions.unpackers.utils")
    for name in [n for n in sys.modules if n == "competitions" or n.startswith("competitions.unpackers")]:
        monkeypatch.delitem(sys.modules, name)  # leave no trace for other tests
    return v2.V2Unpacker, utils.zip_if_directory


# -- the test -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codabench() -> Path:
    if not WORKER_FILE.is_file():
        pytest.skip(f"{WORKER_FILE} is not available (../shared/codabench holds Codabench's own code)")
    return CODABENCH


def run_on_codabench(monkeypatch, tmp: Path, parts: dict[str, Path], submission: Path, phase_limit: int,
                     env: dict[str, str]) -> tuple[Server, Server, Path]:
    """Both steps of one submission, as the server sends them (tasks.py _send_to_compute_worker)."""
    server = Server()
    worker = import_worker(monkeypatch, tmp, server, env)
    url = lambda path: f"file://{path}"  # noqa: E731
    logs = {name: tmp / f"{name}.txt" for name in (
        "prediction_stdout", "prediction_stderr", "prediction_ingestion_stdout", "prediction_ingestion_stderr",
        "scoring_stdout", "scoring_stderr", "scoring_ingestion_stdout", "scoring_ingestion_stderr")}
    common = {"user_pk": 1, "id": 7, "submissions_api_url": "http://codabench.test/api", "secret": "s",
              "docker_image": "hygieia-tests/hygieia:0.1.0-cpu", "execution_time_limit": min(600, phase_limit),
              "ingestion_only_during_scoring": False, **{k: url(v) for k, v in logs.items()}}
    prediction, scores = tmp / "prediction_result.zip", tmp / "scoring_result.zip"
    worker.run_wrapper({**common, "is_scoring": False, "program_data": url(submission),
                        "ingestion_program": url(parts["ingestion_program"]),
                        "input_data": url(parts["input_data"]), "prediction_result": url(prediction)})
    prediction_server = server
    scoring_server = Server()
    worker = import_worker(monkeypatch, tmp, scoring_server, env)
    worker.run_wrapper({**common, "is_scoring": True, "program_data": url(parts["scoring_program"]),
                        "reference_data": url(parts["reference_data"]), "prediction_result": url(prediction),
                        "scoring_result": url(scores), "detailed_results_url": url(tmp / "detailed.html")})
    return prediction_server, scoring_server, tmp


def uploaded_row(competition: dict, scores: dict) -> dict:
    """The server's score upload (api/views/submissions.py): keys without a column are dropped."""
    columns = [c["key"] for c in competition["leaderboards"][0]["columns"]]
    return {key: value for key, value in scores.items() if key in columns}


@pytest.fixture(scope="module")
def on_codabench(codabench, phantom_prepared, tmp_path_factory):
    """The phantom's bundle as Codabench's own v2 unpacker reads it: (bundle folder, its
    competition.yaml, what the unpacker made of it, each phase's parts as the server stores them)."""
    tmp = tmp_path_factory.mktemp("codabench_bundle")
    bundle_zip = build_bundle(phantom_prepared, tmp / "bundle.zip", docker_image="hygieia-tests/hygieia:0.1.0-cpu").path
    folder = tmp / "bundle"
    with zipfile.ZipFile(bundle_zip) as archive:
        archive.extractall(folder)
        for name in ("sample_submission", "sample_submission_tabular"):
            (tmp / f"{name}.zip").write_bytes(archive.read(f"starting_kit/{name}.zip"))
    competition = yaml.safe_load((folder / "competition.yaml").read_text())
    with pytest.MonkeyPatch.context() as patch:
        V2Unpacker, zip_if_directory = import_unpacker(patch)
        unpacker = V2Unpacker(competition, str(folder), types.SimpleNamespace(id=1, username="organizer"))
        unpacker.unpack()
        unpacked = unpacker.competition
        parts_by_phase = {}
        for phase in unpacked["phases"]:
            task = unpacked["tasks"][phase["tasks"][0]]
            parts_by_phase[phase["name"]] = {kind: Path(zip_if_directory(task[kind]["file_path"]))
                                             for kind in ("ingestion_program", "input_data", "scoring_program",
                                                          "reference_data")}
    return types.SimpleNamespace(folder=folder, competition=competition, unpacked=unpacked, parts=parts_by_phase,
                                 samples=tmp)


def phase_limit(competition: dict, phase: str) -> int:
    return next(p for p in competition["phases"] if p["name"] == phase)["execution_time_limit"]


# What each sample submission answers on the upload form (the fact sheet of competition.yaml).
ANSWERS = {"sample_submission": {"explanation_method": "Grad-CAM via gradcam_target()", "training_boxes": "not used",
                                 "external_resources": "nothing", "details": "",
                                 "code_url": "https://example.org/hygieia/sample_submission"},
           "sample_submission_tabular": {"explanation_method": "none", "training_boxes": "not used",
                                         "external_resources": "nothing", "details": "", "code_url": ""}}


def test_bundle_on_codabench_worker_matches_hygieia_run(on_codabench, weights_path, tmp_path, monkeypatch):
    competition, unpacked = on_codabench.competition, on_codabench.unpacked
    # Codabench's own v2 unpacker accepts the bundle and finds every part
    assert [p["name"] for p in unpacked["phases"]] == ["Development", "Final"]
    assert unpacked["phases"][-1]["is_final_phase"] and unpacked["docker_image"] == competition["docker_image"]
    assert [c["key"] for c in unpacked["leaderboards"][0]["columns"]] == \
        [c["key"] for c in competition["leaderboards"][0]["columns"]]
    # its fact sheet, as the server validates it, and each submission's answers to it
    fact_sheet = unpacked["fact_sheet"]
    assert fact_sheet == competition["fact_sheet"] and codabench_validate_fact_sheet()(fact_sheet) == fact_sheet

    env = {"HYGIEIA_FAST": "1", "HYGIEIA_MOBILENET_WEIGHTS": str(weights_path), "MPLBACKEND": "Agg"}
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("model.py", "class Model:\n    def fit(self, X, y):\n"
                                     "        raise ValueError('the lungs are on strike')\n"
                                     "    def predict_proba(self, X):\n        return [0.5] * len(X['ids'])\n")
    cases = [("broken", "Development"), ("sample_submission", "Development"),
             ("sample_submission_tabular", "Development"), ("sample_submission_tabular", "Final"),
             ("sample_submission", "Final")]
    for name, phase in cases:
        submission = broken if name == "broken" else on_codabench.samples / f"{name}.zip"
        answers = ANSWERS.get(name, ANSWERS["sample_submission_tabular"])
        assert answer_problems(fact_sheet, answers) == [], name   # the server would take the submission
        work = tmp_path / f"{name}-{phase}"
        work.mkdir()
        prediction, scoring, _ = run_on_codabench(monkeypatch, work, on_codabench.parts[phase], submission,
                                                  phase_limit(competition, phase), env)
        local = run_submission(submission, on_codabench.folder, phase=phase, out_dir=tmp_path / "runs" / work.name,
                               echo=False, env=env)
        assert prediction.status == "Scoring", (name, phase, prediction.updates)
        if name == "broken":
            assert scoring.status == "Failed" and local.status == "Failed"
            assert "the lungs are on strike" in (work / "scoring_stderr.txt").read_text()
            assert "the lungs are on strike" in local.error
            assert "Could not find scores file" not in local.error
            continue
        assert scoring.status == "Finished", (name, phase, scoring.details,
                                              (work / "scoring_stderr.txt").read_text()[-2000:])
        row = uploaded_row(competition, scoring.scores)
        assert sorted(row) == sorted(c["key"] for c in competition["leaderboards"][0]["columns"])
        assert local.status == "Finished", local.report()
        assert row == uploaded_row(competition, local.scores), (name, phase)
        assert (work / "detailed.html").read_bytes().startswith(b"<!DOCTYPE html") or \
            b"<html" in (work / "detailed.html").read_bytes()[:500]
        with zipfile.ZipFile(io.BytesIO((work / "scoring_result.zip").read_bytes())) as result:
            assert "scores.json" in result.namelist() and "metadata" in result.namelist()
    shutil.rmtree(tmp_path / "runs")


ALL_POSITIVE = """
import numpy as np


class Model:
    def fit(self, X, y):
        pass

    def predict_proba(self, X):
        return np.full(len(X["ids"]), 0.97)

    def explain(self, X):
        return X["images"].astype(np.float32) / 255 + 0.01   # non-zero maps: each image itself
"""


def seen_on_codabench(work: Path, prediction: Server, scoring: Server) -> dict[str, bytes]:
    """What Codabench shows of a run: the detailed results (public once the competition is published),
    the scoring output and the logs of both steps (the participant's), the status messages. The
    prediction output is the participant's own predictions and maps, keyed by the public input ids."""
    seen = {"detailed_results.html": (work / "detailed.html").read_bytes()}
    with zipfile.ZipFile(work / "scoring_result.zip") as result:
        seen.update({f"scoring output/{name}": result.read(name) for name in result.namelist()})
    seen.update({log.name: log.read_bytes() for log in sorted(work.glob("*_std*.txt"))})
    seen["status"] = "\n".join(str(u) for u in prediction.updates + scoring.updates).encode()
    return seen


def seen_locally(result) -> dict[str, bytes]:
    seen = {f"scoring output/{p.name}": p.read_bytes() for p in (result.out_dir / "scoring" / "output").iterdir()}
    seen.update({f"logs/{p.name}": p.read_bytes() for p in (result.out_dir / "logs").iterdir()})
    seen["report"] = result.report().encode()
    return seen


def test_an_all_positive_submission_reveals_no_hidden_id_or_image_in_either_phase(on_codabench, tmp_path,
                                                                                   monkeypatch):
    """Issue 22: everything a participant or the public can see of a run, on Codabench's own worker and
    on ``hygieia run``, in both phases, holds no id and no picture of a hidden image (pixel-compared)."""
    from leaks import find_leaks

    from hygieia import dataset as ds

    submission = tmp_path / "all_positive.zip"
    with zipfile.ZipFile(submission, "w") as archive:
        archive.writestr("model.py", ALL_POSITIVE)
    competition = on_codabench.competition
    env = {"MPLBACKEND": "Agg"}
    for phase, split in (("Development", "valid"), ("Final", "test")):
        hidden = ds.load_reference_split(on_codabench.folder / "reference_data" / split)
        assert hidden["labels"].sum() > 0
        work = tmp_path / phase
        work.mkdir()
        prediction, scoring, _ = run_on_codabench(monkeypatch, work, on_codabench.parts[phase], submission,
                                                  phase_limit(competition, phase), env)
        assert scoring.status == "Finished", (phase, scoring.details)
        local = run_submission(submission, on_codabench.folder, phase=phase, out_dir=tmp_path / f"run-{phase}",
                               echo=False, env=env)
        assert local.status == "Finished", local.report()
        assert uploaded_row(competition, scoring.scores) == uploaded_row(competition, local.scores)
        assert scoring.scores["recall"] == 1.0 and scoring.scores["activation_in_box"] > 0   # it did call all positive
        for where, seen in (("Codabench", seen_on_codabench(work, prediction, scoring)),
                            ("local", seen_locally(local))):
            assert b"Worst-group accuracy" in seen["scoring output/detailed_results.html"], where
            assert find_leaks(seen, hidden["ids"], hidden["images"]) == {}, (where, phase)

    # the organizer's own look, on request: the same search finds the ids and the images
    own = run_submission(submission, on_codabench.folder, phase="Development", out_dir=tmp_path / "own",
                         echo=False, env=env, per_image=True)
    hidden = ds.load_reference_split(on_codabench.folder / "reference_data" / "valid")
    leaks = find_leaks(seen_locally(own), hidden["ids"], hidden["images"])["scoring output/detailed_results.html"]
    assert leaks["n_ids"] > 4 and leaks["n_images"] >= 8, leaks
