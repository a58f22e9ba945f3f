"""detailed_results.html: self-contained, complete, escaped, with readable figures."""

import base64
import io
import re

import pytest
from fakes import write_fake_dataset, write_fake_ingestion_output
from PIL import Image

from hygieia.scoring import score as sc
from hygieia.scoring.report import render_error, render_report


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    dataset = write_fake_dataset(root / "data", sizes=(6, 40, 20), seed=3, probes=4)
    ref_dir = dataset / "reference_data" / "valid"
    res = write_fake_ingestion_output(root / "res", dataset, seed=4)
    return (*sc.load_inputs(ref_dir, res), ref_dir)


@pytest.fixture(scope="module")
def scored(inputs):
    """The published results: aggregates only."""
    ref, run, ref_dir = inputs
    return sc.compute_results(ref, run, ref_dir, progress=False), ref, run


@pytest.fixture(scope="module")
def scored_per_image(inputs):
    """The results a requester who owns the labels asks for: with the per-image rows."""
    ref, run, ref_dir = inputs
    return sc.compute_results(ref, run, ref_dir, progress=False, per_image=True), ref, run


def tiles(page):
    return [image for image in pngs(page) if image.width == image.height]


def figures(page):
    return [image for image in pngs(page) if image.width != image.height]


def pngs(page):
    return [Image.open(io.BytesIO(base64.b64decode(data)))
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_self_contained_and_complete(scored):
    results, ref, run = scored
    page = render_report(results, ref, run)
    assert not re.search(r"(src|href)=[\"'](?!data:)", page)  # nothing fetched
    assert "http" not in page
    assert len(figures(page)) == 4 and tiles(page) == []  # two score charts, two histograms; no image
    assert all(80 < image.width < 1200 and 80 < image.height < 1000 for image in figures(page))
    for text in ("95% bootstrap interval", "true opacity (1)", "By sex", "By view position",
                 "By class × view position", "Distribution over the true positives", "mean over all positives",
                 "Worst-group accuracy", "Shortcut gap", "Against box-blind maps", "No baseline row",
                 "score_locally.py"):
        assert text in page, text
    for text in ("Best explanations", "Most confident false positives", "ROC curve", "Every true positive"):
        assert text not in page, text
    small = sum(r["small"] for rows in results["bias"].values() for r in rows)
    assert small > 0 and page.count("⚠") == small + 1  # each small group, and the legend
    tp = results["classification"]["confusion_matrix"][1][1]
    assert f"{tp} true positives of" in page
    assert sum(sum(results["explanation"]["histograms"][k]) == tp for k in sc.HISTOGRAM_KEYS) == 2
    for tau in results["explanation"]["cc_map_by_tau"]:
        assert f"<th>{tau}</th>" in page
    for row in results["bias"]["view_position"]:
        flag = " ⚠" if row["small"] else ""
        assert f"<td>{row['group']}{flag}</td><td>{row['n']}</td>" in page
        assert f"{row['accuracy']:.4f}<br><small>[{row['ci']['accuracy'][0]:.4f}, " in page
        if row["activation_in_box"] is not None:
            assert f"{row['activation_in_box']:.4f}<br><small>[{row['activation_in_box_ci'][0]:.4f}, " in page
    assert not any(image_id in page for image_id in ref["ids"])


def test_per_image_report_adds_the_roc_curve_the_galleries_and_the_table(scored_per_image):
    results, ref, run = scored_per_image
    page = render_report(results, ref, run)
    assert len(figures(page)) == 5  # and the ROC curve
    e, c = results["explanation"], results["classification"]
    n_galleries = 2 * 2 * min(4, e["n_true_positives"])  # best and worst: image + heatmap each
    (tn, fp), (fn, tp) = c["confusion_matrix"]
    n_mistakes = min(4, fp) * 2 + min(4, fn)  # a false positive has a heatmap too
    assert len(tiles(page)) == n_galleries + n_mistakes > 0
    assert all(image.width >= 200 for image in tiles(page))
    for text in ("Per-image results included", "ROC curve", "Best explanations", "Worst explanations",
                 "Most confident false positives", "Most confident false negatives"):
        assert text in page, text
    for row in results["explanation"]["images"]:
        assert f"<td>{row['id']}</td><td>{row['activation_in_box']:.4f}</td>" in page
        assert f"<td>{row['enrichment']:.2f}</td></tr>" in page


def test_report_without_explanations_says_why(inputs):
    ref, run, ref_dir = inputs
    run = {**run, "method": None, "heatmaps": {}}
    results = sc.compute_results(ref, run, progress=False)
    page = render_report(results, ref, run)
    assert "offers no explanation" in page
    assert len(figures(page)) == 2 and "Distribution over the true positives" not in page  # the score charts
    results = sc.compute_results(ref, run, progress=False, per_image=True)
    page = render_report(results, ref, run)
    assert len(figures(page)) == 3  # and the ROC curve
    assert tiles(page) and all(image.width >= 200 for image in tiles(page))  # the mistakes, without heatmaps
    assert "Best explanations" not in page


def test_error_page_escapes_the_participants_text():
    page = render_error("ingestion failed: <script>alert(1)</script>", "Traceback\n  <b>x</b>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "No score was recorded" in page
