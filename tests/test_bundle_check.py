"""``hygieia bundle check``: a good bundle passes; each broken variant gets its own message."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from bundle_helpers import build_fake_bundle, edit_yaml, extract
from hygieia.bundle.check import check_bundle
from hygieia.bundle.commands import register
from hygieia.scoring.keys import SCORE_KEYS


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("check")
    return extract(build_fake_bundle(tmp, with_card=False), tmp / "pristine")


@pytest.fixture
def folder(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "bundle"))


def errors(bundle) -> list[str]:
    return [str(f) for f in check_bundle(bundle) if f.level == "error"]


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_built_bundle_passes(folder, capsys):
    assert errors(folder) == []
    assert run_cli("bundle", "check", str(folder)) == 0
    assert "0 error(s)" in capsys.readouterr().out


def _drop(key):
    return lambda c: c.pop(key)


def _set_phase(i, field, value):
    def change(c):
        c["phases"][i][field] = value
    return change


def _three_phases(c):
    middle = dict(c["phases"][0], index=1, name="Feedback", start="2027-04-01")
    middle.pop("end")
    c["phases"][1]["index"] = 2
    c["phases"][1]["start"] = "2027-05-01"
    c["phases"][1]["end"] = "2027-05-31"
    c["phases"].insert(1, middle)


def _singular_leaderboard(c):
    c["leaderboard"] = c.pop("leaderboards")[0]


def _duplicate_key(c):
    c["leaderboards"][0]["columns"][1]["key"] = "accuracy"


def _long_key(c):
    c["leaderboards"][0]["columns"][1]["key"] = "k" * 37


def _bad_computation(c):
    c["leaderboards"][0]["columns"].append({"title": "Mean", "key": "mean", "index": len(SCORE_KEYS), "sorting": "desc",
                                            "computation": "avg", "computation_indexes": [0, 42]})


def _no_scoring(c):
    c["tasks"][0].pop("scoring_program")


def _missing_path(c):
    c["tasks"][1]["reference_data"] = "reference_data/holdout"


@pytest.mark.parametrize("change, where, message", [
    (_drop("terms"), "terms", "missing: Codabench requires a terms page"),
    (_drop("image"), "image", "missing: Codabench requires a logo image"),
    (_singular_leaderboard, "leaderboard", "the singular `leaderboard` is CodaLab's v1 form"),
    (_no_scoring, "tasks[0].scoring_program", "has no scoring program"),
    (_set_phase(1, "start", "2027-03-01"), "phases[1].start", "phases overlap: 'Final' starts"),
    (_set_phase(1, "start", "2027-03-31"), "phases[1].start", "it must start after"),
    (_three_phases, "phases[1].end", "phase 'Feedback' must have an end because phase 'Final' comes after"),
    (_missing_path, "tasks[1].reference_data", "reference_data/holdout does not exist in the bundle"),
    (_duplicate_key, "leaderboards[0].columns[1].key", "duplicate column key 'accuracy'"),
    (_long_key, "leaderboards[0].columns[1].key", "longer than 36 characters"),
    (_bad_computation, f"leaderboards[0].columns[{len(SCORE_KEYS)}].computation_indexes",
     "column index 42 does not exist"),
    (_set_phase(0, "tasks", []), "phases[0].tasks", "must list at least one task"),
    (lambda c: c.update(version=1), "version", "must be 2"),
    (lambda c: c.update(solutions=[{"index": 0, "tasks": [0, 5], "path": "solution/"}]), "solutions[0].tasks",
     "unknown: [5]"),
    (lambda c: c.update(solutions=[{"index": 0, "tasks": [0], "path": "solution/"}]), "solutions[0].path",
     "solution/ does not exist in the bundle"),
])
def test_broken_yaml_is_rejected_with_its_message(folder, change, where, message):
    edit_yaml(folder, change)
    found = errors(folder)
    assert any(f.startswith(f"error: {where}:") and message in f for f in found), found


def test_empty_page(folder):
    (folder / "pages" / "evaluation.md").write_text("  \n")
    assert "error: pages[2].file (Evaluation): pages/evaluation.md is empty; Codabench requires content" \
        in errors(folder)


def test_empty_terms(folder):
    (folder / "pages" / "terms.md").write_text("")
    assert "error: terms: pages/terms.md is empty; Codabench requires content" in errors(folder)


def test_missing_logo_file(folder):
    (folder / "logo.png").unlink()
    assert "error: image: logo.png does not exist in the bundle" in errors(folder)


def test_program_without_command(folder):
    (folder / "ingestion_program" / "metadata.yaml").write_text("description: no command here\n")
    assert any("ingestion_program/metadata.yaml has no `command`" in e for e in errors(folder))


def test_scoring_keys_must_equal_leaderboard_keys(folder):
    columns = folder / "scoring_program" / "leaderboard.json"   # written by the builder from the metric table
    columns.write_text(columns.read_text().replace('"pointing_game"', '"pointing_game_v2"'))
    found = errors(folder)
    assert any(e.startswith("error: leaderboards: columns do not match the keys scoring_program writes")
               and "['pointing_game_v2']" in e and "['pointing_game']" in e for e in found), found


def test_scoring_program_without_its_columns(folder):
    (folder / "scoring_program" / "leaderboard.json").unlink()
    assert any("scoring_program/leaderboard.json not found" in e for e in errors(folder))
    (folder / "scoring_program" / "leaderboard.json").write_text('{"key": "accuracy"}')
    assert any("scoring_program/leaderboard.json: expected a list of columns" in e for e in errors(folder))


def test_zip_and_cli_exit_code(folder, tmp_path, capsys):
    edit_yaml(folder, _drop("terms"))
    zipped = shutil.make_archive(str(tmp_path / "broken"), "zip", folder)
    assert any(e.startswith("error: terms:") for e in errors(zipped))
    assert run_cli("bundle", "check", zipped) == 1
    assert "1 error(s)" in capsys.readouterr().out


def test_phases_out_of_order_are_a_warning(folder):
    edit_yaml(folder, lambda c: c["phases"].reverse())
    findings = check_bundle(folder)
    assert not [f for f in findings if f.level == "error"]
    assert any(f.level == "warning" and "not listed in index order" in f.message for f in findings)


def test_phases_without_index_keep_their_declaration_order(folder):
    edit_yaml(folder, lambda c: [phase.pop("index") for phase in c["phases"]])
    assert errors(folder) == []
    edit_yaml(folder, lambda c: c["phases"].reverse())
    assert any(e.startswith("error: phases[1].start: phases overlap") for e in errors(folder))


def test_placeholder_docker_image_is_an_error_unless_allowed(folder, capsys):
    edit_yaml(folder, lambda c: c.update(docker_image="USER/hygieia:0.1.0-cpu"))
    assert any(e.startswith("error: docker_image:") and "placeholder" in e for e in errors(folder))
    findings = check_bundle(folder, allow_placeholder_image=True)
    assert not [f for f in findings if f.level == "error"]
    assert any(f.level == "warning" and f.where == "docker_image" and "placeholder" in f.message
               for f in findings)
    assert run_cli("bundle", "check", str(folder)) == 1
    assert run_cli("bundle", "check", "--allow-placeholder-image", str(folder)) == 0


@pytest.mark.parametrize("image", ["", "Me/Hygieia:1", "me/hygieia:", "me//hygieia", "me/hygieia:1 2"])
def test_invalid_or_missing_docker_image_is_an_error(folder, image):
    edit_yaml(folder, lambda c: c.update(docker_image=image))
    assert any(e.startswith("error: docker_image:") for e in errors(folder))


@pytest.mark.parametrize("image", ["me/hygieia:0.1.0-cpu", "ghcr.io/me/hygieia:1", "localhost:5000/h",
                                   "codalab/codalab-legacy:py37", f"me/h@sha256:{'a' * 64}"])
def test_valid_docker_image_passes(folder, image):
    edit_yaml(folder, lambda c: c.update(docker_image=image))
    assert errors(folder) == []


def test_a_program_command_that_turns_on_per_image_results_is_an_error(folder):
    metadata = folder / "scoring_program" / "metadata.yaml"
    metadata.write_text("command: env HYGIEIA_PER_IMAGE=1 python3 $program/score.py $input $output\n")
    found = errors(folder)
    assert any(e.startswith("error: tasks[0].scoring_program:") and "would publish ids" in e for e in found), found
