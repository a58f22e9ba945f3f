"""The fact sheet each submission answers: ``bundle check`` against Codabench's own code.

Codabench's v2 unpacker reads ``fact_sheet`` from the built bundle, and the server's own
``validate_fact_sheet`` (``api/serializers/competitions.py`` of ``../shared/codabench``, imported
unchanged with Django REST framework stubbed) accepts it. Every sheet the server refuses,
``bundle check`` refuses too; it also refuses sheets that the server stores but whose form cannot be
answered (``hygieia/bundle/fact_sheet.py`` says why for each)."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml

from bundle_helpers import build_fake_bundle, edit_yaml, extract
from conftest import SHARED
from hygieia.bundle.check import check_bundle
from hygieia.bundle.fact_sheet import answer_problems, question_problems

ROOT = Path(__file__).resolve().parents[1]
SERIALIZERS = SHARED / "codabench" / "src" / "apps" / "api" / "serializers" / "competitions.py"
FACT_SHEET = yaml.safe_load((ROOT / "competition.yaml").read_text())["fact_sheet"]
SAMPLE_ANSWERS = {"explanation_method": "Grad-CAM via gradcam_target()", "training_boxes": "not used",
                  "external_resources": "nothing", "details": "",
                  "code_url": "https://example.org/hygieia-baseline"}


class _StubType(type):
    """A class whose every attribute is another stub class, as the serializers' module needs at import."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(name)


class _Stub(metaclass=_StubType):
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()

    def __call__(self, *args, **kwargs):
        return _Stub()


_STUBS: dict[str, type] = {}


def _stub(name: str) -> type:
    return _STUBS.setdefault(name, _StubType(name, (_Stub,), {}))


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(name)


class ValidationError(Exception):
    """rest_framework.exceptions.ValidationError, as the server raises it."""


@pytest.fixture(scope="module")
def validate_fact_sheet():
    return codabench_validate_fact_sheet()


def codabench_validate_fact_sheet():
    """``CompetitionSerializer.validate_fact_sheet`` from Codabench's own file."""
    if not SERIALIZERS.is_file():
        pytest.skip(f"{SERIALIZERS} is not available (../shared/codabench holds Codabench's own code)")
    names = ["drf_writable_nested", "rest_framework", "api", "api.fields", "api.mixins", "api.serializers",
             "api.serializers.datasets", "api.serializers.leaderboards", "api.serializers.profiles",
             "api.serializers.submissions", "api.serializers.tasks", "api.serializers.queues", "competitions",
             "competitions.models", "forums", "forums.models", "leaderboards", "leaderboards.models", "profiles",
             "profiles.models", "tasks", "tasks.models", "django", "django.utils", "django.utils.timezone"]
    stubs = {name: _StubModule(name) for name in names}
    stubs["rest_framework.exceptions"] = types.ModuleType("rest_framework.exceptions")
    stubs["rest_framework.exceptions"].ValidationError = ValidationError
    with pytest.MonkeyPatch.context() as patch:
        for name, stub in stubs.items():
            patch.setitem(sys.modules, name, stub)
        spec = importlib.util.spec_from_file_location("codabench_competition_serializers", SERIALIZERS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return lambda sheet: module.CompetitionSerializer.validate_fact_sheet(None, sheet)


def codabench_accepts(validate, sheet) -> bool:
    try:
        validate(sheet)
    except ValidationError:
        return False
    return True


def test_the_competitions_fact_sheet_as_codabench_reads_it(validate_fact_sheet, tmp_path, monkeypatch, capsys):
    from test_codabench_worker import import_unpacker

    folder = extract(build_fake_bundle(tmp_path, with_card=False), tmp_path / "bundle")
    competition = yaml.safe_load((folder / "competition.yaml").read_text())
    V2Unpacker, _ = import_unpacker(monkeypatch)
    unpacker = V2Unpacker(competition, str(folder), types.SimpleNamespace(id=1, username="organizer"))
    unpacker.unpack()
    parsed = unpacker.competition["fact_sheet"]
    assert parsed == FACT_SHEET and validate_fact_sheet(parsed) == parsed
    assert [f for f in check_bundle(folder) if f.where.startswith("fact_sheet")] == []
    with capsys.disabled():
        print("\nfact_sheet as Codabench's v2 unpacker reads it:\n" + yaml.safe_dump(parsed, sort_keys=False))
    on_board = [q["title"] for q in parsed.values() if q["is_on_leaderboard"] == "true"]
    assert on_board == ["Explanation method", "Training boxes used", "Beyond train and ImageNet MobileNetV2"]
    assert answer_problems(parsed, SAMPLE_ANSWERS) == []


def _edit(name, **fields):
    def change(sheet):
        sheet[name].update(fields)
    return change


def _pop(name, field):
    return lambda sheet: sheet[name].pop(field)


# (change, message, does Codabench's server refuse it too)
BROKEN = {
    "not a mapping": (lambda s: s.clear() or s.update(x=["a"]), "must be a mapping with the fields", False),
    "missing field": (_pop("details", "is_on_leaderboard"), "missing ['is_on_leaderboard']", True),
    "extra field": (_edit("details", help="?"), "unknown ['help']", True),
    "key mismatch": (_edit("details", key="detail"), "does not match the question's name", True),
    "unknown type": (_edit("details", type="textarea"), "type must be one of", True),
    "boolean flag": (_edit("details", is_required=True), "must be the string \"true\" or \"false\"", False),
    "checkbox selection": (_edit("details", type="checkbox", selection=["yes", "no"]), "must be [true, false]",
                           False),
    "text selection": (_edit("details", selection=["a"]), "a text question's selection must be \"\"", False),
    "true option": (_edit("training_boxes", selection=["", "true", "false"]), "sends it as a boolean", False),
    "untrimmed option": (_edit("training_boxes", selection=["", " not used"]), "the form trims answers", False),
    "space in name": (lambda s: s.update({"code url": dict(s.pop("code_url"), key="code url")}),
                      "without whitespace", False),
    "task- name": (lambda s: s.update({"task-x": dict(s.pop("code_url"), key="task-x")}), "drops answers", False),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_fact_sheets_are_refused_like_codabench_and_beyond(case, validate_fact_sheet):
    change, message, server_refuses = BROKEN[case]
    sheet = copy.deepcopy(FACT_SHEET)
    change(sheet)
    errors = [m for level, _, m in question_problems(sheet) if level == "error"]
    assert any(message in m for m in errors), errors
    if case != "not a mapping":   # the server reads a question's fields before it would refuse a list
        assert codabench_accepts(validate_fact_sheet, sheet) is not server_refuses


def test_fact_sheet_warnings_and_the_check_command(tmp_path):
    sheet = copy.deepcopy(FACT_SHEET)
    sheet["training_boxes"]["selection"] = ["not used", "to train the maps, then the classifier"]
    warnings = [m for level, _, m in question_problems(sheet) if level == "warning"]
    assert any("splits options at commas" in m for m in warnings)
    assert any("preselects the first option ('not used')" in m for m in warnings)
    folder = extract(build_fake_bundle(tmp_path, with_card=False), tmp_path / "bundle")
    edit_yaml(folder, lambda c: c["fact_sheet"]["code_url"].update(is_on_leaderboard=False))
    assert any(f.level == "error" and f.where == "fact_sheet.code_url" for f in check_bundle(folder))
    shutil.rmtree(folder)


@pytest.mark.parametrize("answers, message", [
    ({**SAMPLE_ANSWERS, "training_boxes": "sometimes"}, "'sometimes' is not one of"),
    ({**SAMPLE_ANSWERS, "explanation_method": ""}, "'Explanation method' requires an answer"),
    ({k: v for k, v in SAMPLE_ANSWERS.items() if k != "code_url"}, "are not the questions'"),
])
def test_answers_are_checked_as_codabench_checks_them(answers, message):
    assert any(message in problem for problem in answer_problems(FACT_SHEET, answers))
