"""The competition pages and the kit's README are filled at build time from the packed data:
no unfilled placeholder, no split size the data do not have, a synthetic notice for phantom data."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import zipfile
from pathlib import Path

import pytest

from fakes import write_fake_dataset
from hygieia.bundle import pages
from hygieia.bundle.build import build_bundle
from hygieia.errors import HygieiaError

ROOT = Path(__file__).resolve().parents[1]
SIZES = (60, 25, 15)  # all different, so a swapped split shows
# "N = 2,000", "2,000 images", "150 training images", "the 50 validation images" ...
STATED_SIZE = re.compile(r"\bN = (\d[\d,]*)|(?<![\w,×])(?<!than )(?<!under )(\d[\d,]*) "
                         r"(?:(?:training|validation|test) )?(?:images|crops)\b")


def stated_sizes(text: str) -> set[int]:
    return {int((a or b).replace(",", "")) for a, b in STATED_SIZE.findall(text)}


def build(tmp_path: Path, source: str | None) -> dict[str, str]:
    data = write_fake_dataset(tmp_path / "data", sizes=SIZES)
    if source:
        (data / "card").mkdir()
        (data / "card" / "dataset_card.md").write_text("# Dataset card\n")
        (data / "card" / pages.SOURCE_FILE).write_text(json.dumps({"source": source}))
    bundle = build_bundle(data, tmp_path / "bundle.zip").path
    with zipfile.ZipFile(bundle) as archive:
        return {name: archive.read(name).decode("utf-8") for name in archive.namelist() if pages.is_template(name)}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    return build(tmp_path_factory.mktemp("pages"), "rsna")


def test_every_page_and_the_kit_readme_are_filled(built):
    assert {"pages/overview.md", "pages/data.md", "pages/evaluation.md", "pages/model_api.md",
            "pages/terms.md", "starting_kit/README.md"} <= set(built)
    for name, text in built.items():
        left = [match.group(0) for match in pages.PLACEHOLDER.finditer(text)]
        assert left == [], name


def test_pages_state_only_the_split_sizes_of_the_data(built):
    train, valid, test = SIZES
    for name, text in built.items():
        assert stated_sizes(text) <= set(SIZES) | {pages.FAST_IMAGES if train > pages.FAST_IMAGES else train}, name
    data = built["pages/data.md"]
    assert f"| train (public labels) | {train} |" in data and f"| test (Final phase) | {test} |" in data
    evaluation = built["pages/evaluation.md"]
    assert f"N = {valid}" in evaluation and f"±{math.sqrt(0.8 * 0.2 / valid):.3f}" in evaluation
    assert f"N = {test}" in evaluation
    assert f"at most\n{train} training images" in built["starting_kit/README.md"] or \
        f"at most {train} training images" in built["starting_kit/README.md"].replace("\n", " ")


def test_the_size_check_catches_a_size_from_elsewhere():
    assert stated_sizes("with p = 0.8 and N = 2,000 that is ±0.009; the 150 training images") == {2000, 150}
    assert stated_sizes("100×100 crops, 1,280 features") == set()


def test_kit_readme_describes_only_what_the_kit_holds(built):
    readme = built["starting_kit/README.md"]
    for wrong in ("pip install -e", "clone", "repository", "--bundle"):
        assert wrong not in readme
    for name, text in built.items():
        assert "pip install -e" not in text and "in the repository" not in text, name


def test_metric_table_is_filled_from_the_scoring_module(built):
    assert pages.metric_table_markdown() in built["pages/evaluation.md"]


def test_a_phantom_bundle_says_it_is_synthetic_on_every_page(tmp_path, built):
    phantom = build(tmp_path, "phantom")
    for name, text in phantom.items():
        assert "**Synthetic data.**" in text, name
        assert text.startswith("# ") and text.index("Synthetic") > text.index("\n"), name  # under the title
    assert not any("Synthetic data" in text for text in built.values())


def test_an_unknown_placeholder_is_an_error_naming_the_page():
    with pytest.raises(HygieiaError, match=r"pages/x\.md: no value for the placeholder \{\{nope\}\}"):
        pages.render("a {{nope}} b", {"side": "100"}, "pages/x.md")
    assert pages.render("{{ side }}x{{side}}", {"side": "100"}, "p") == "100x100"
    with pytest.raises(HygieiaError, match=r"no value for the placeholder \{\{metric_table\}\}"):
        pages.render("{{metric_table}}", {"side": "100"}, "p")


def test_fast_cap_is_the_sample_submissions_and_the_kits():
    tree = ast.parse((ROOT / "sample_submission" / "model.py").read_text())
    constants = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)}
    constants.update({element.id: value for node in tree.body if isinstance(node, ast.Assign)
                      and isinstance(node.targets[0], ast.Tuple)
                      for element, value in zip(node.targets[0].elts, node.value.elts)})
    assert ast.literal_eval(constants["FAST_IMAGES"]) == pages.FAST_IMAGES
    spec = importlib.util.spec_from_file_location("local_eval", ROOT / "starting_kit" / "local_eval.py")
    local_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_eval)
    assert local_eval.FAST_IMAGES == pages.FAST_IMAGES


def test_the_phantom_marks_its_download_and_prepare_records_it(tmp_path):
    from hygieia.prepare.card import card_text
    from hygieia.rsna.phantom import generate_phantom
    from hygieia.rsna.tables import read_tables

    folder = generate_phantom(tmp_path / "phantom", patients=3, seed=0, progress=False)
    assert read_tables(folder).phantom
    (folder / "hygieia_phantom.json").unlink()
    assert not read_tables(folder).phantom
    import pandas as pd
    table = pd.DataFrame({"split": ["train"], "label": [0], "age": [50], "sex": ["F"], "view_position": ["PA"]})
    counts = {split: {"normal": 1, "opacity": 0, "probes": 0} for split in ("train", "valid", "test")}
    summary = {"ratio": [3, 2], "skipped": [], "counts": counts, "hidden_ap_share": None,
               "hidden_ap_share_used": None, "best_fixed_map_training_halves": {"ratio": None}}
    assert "synthetic data" in card_text(table, summary, 0, phantom=True)
    assert "synthetic" not in card_text(table, summary, 0, phantom=False)


@pytest.mark.slow
def test_a_bundle_built_from_the_prepared_phantom_says_so_and_states_its_own_sizes(tmp_path, phantom_prepared):
    from conftest import PHANTOM_SIZES

    assert json.loads((phantom_prepared / "card" / pages.SOURCE_FILE).read_text()) == {"source": "phantom"}
    assert "synthetic data" in (phantom_prepared / "card" / "dataset_card.md").read_text()
    bundle = build_bundle(phantom_prepared, tmp_path / "bundle.zip").path
    with zipfile.ZipFile(bundle) as archive:
        texts = {name: archive.read(name).decode() for name in archive.namelist() if pages.is_template(name)}
    for name, text in texts.items():
        assert "**Synthetic data.**" in text, name
        assert stated_sizes(text) <= set(PHANTOM_SIZES), name
