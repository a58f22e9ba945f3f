"""detailed_results.html: the participant's page of detailed results, one self-contained file.

Once a competition is published, Codabench serves this page to anyone. The page is built from
``SECTIONS``, each a function of the aggregate results alone (``score.aggregates_only``): what they
draw cannot name or show a hidden image. ``PER_IMAGE_SECTIONS`` (the ROC curve, galleries of the most
confident errors and of the best and worst maps with the boxes, the per-image table) also read the
reference images and the heatmaps; they are added only when the results were computed per image,
for labels the requester owns (the starting kit's local scoring, ``hygieia run --per-image``). A new
section is one more function in either tuple.

Figures are matplotlib (Agg) PNGs inlined as base64; the CSS is inline; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from hygieia import dataset as ds  # noqa: E402
from hygieia.scoring import explanation as xp  # noqa: E402
from hygieia.scoring.groups import SMALL_GROUP  # noqa: E402
from hygieia.scoring.metrics import BY_KEY, EVIDENCE_KEYS, EXPLANATION_KEYS, METRICS  # noqa: E402

GALLERY_SIZE = 4
GALLERY_TAU = 0.5
TILE_PX = 200
RED, ORANGE, MAGENTA = "#e74c3c", "#f39c12", "#ff00ff"
BLUE, GRAY = "#2e86c1", "#888888"
DPI = 80       # figure inches to displayed CSS pixels
HIDPI = 2      # PNG pixels per displayed pixel
OVERLAY_ALPHA = 0.45
JET = matplotlib.colormaps["jet"]
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;padding:0 1em;max-width:1200px;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.92em}.error{background:#fff0f0;border:1px solid #d33;padding:1em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}img{max-width:100%;height:auto}
.wide{overflow-x:auto}.gallery{display:flex;flex-wrap:wrap;gap:12px}
.figures{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.notice{background:#f2f7fc;border-left:4px solid #2e86c1;padding:.6em .9em;margin:1em 0}
.private{background:#fff6e5;border-left:4px solid #e67e22;padding:.6em .9em;margin:1em 0}
h3{font-size:1.05em;margin-bottom:.3em}td small{white-space:nowrap}.groups td,.groups th{font-size:.9em}
code{font-size:.92em;background:#f3f3f3;padding:0 .2em}
figure{margin:0;width:200px;max-width:100%}figure img{display:block;margin-bottom:4px;image-rendering:pixelated}
figcaption{font-size:.9em;line-height:1.3;overflow-wrap:anywhere}small{color:#555}
@media (max-width:600px){body{margin:.8em auto}h1{font-size:1.3em}td,th{padding:.2em .3em;font-size:.88em}}
"""


def _png(figure, alt: str = "figure") -> str:
    """The figure as an inline PNG drawn at HIDPI times its displayed size (sharp on phones)."""
    buffer = io.BytesIO()
    width = round(figure.get_figwidth() * DPI)
    figure.savefig(buffer, format="png", dpi=DPI * HIDPI, metadata={"Software": None})
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" width="{width}" src="data:image/png;base64,{data}">'


def _number(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(ci) -> str:
    return "—" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


class WithInterval(str):
    """A table cell: a value with its interval below it in small type."""

    def __new__(cls, value, ci):
        return super().__new__(cls, f"{_number(value)} {_interval(ci)}")

    def html(self) -> str:
        value, _, interval = self.partition(" ")
        return f"{html.escape(value)}<br><small>{html.escape(interval)}</small>"


def _cell(content) -> str:
    return content.html() if isinstance(content, WithInterval) else html.escape(str(content))


def _table(header: list[str], rows: list[list], css_class: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{f' class={css_class!r}' if css_class else ''}><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def roc_figure(roc: dict, auroc: float) -> str:
    """Per image only: with the participant's own probabilities, the curve's steps give the labels."""
    figure, axis = plt.subplots(figsize=(3.4, 3.2))
    axis.plot(roc["fpr"], roc["tpr"], color="#c0392b", label=f"AUROC {auroc:.3f}")
    axis.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve",
             xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def scores_figure(results: dict, keys: list[str], title: str) -> str:
    """Each measured score as a dot on its 95% interval, beside the chance reference (gray tick) and
    the baseline (orange diamond): the scores table, as a picture."""
    keys = [k for k in keys if results["scores"][k] is not None]
    baseline = results["baseline"] or {}
    figure, axis = plt.subplots(figsize=(5.6, 0.42 * len(keys) + 1.1))
    rows = np.arange(len(keys))[::-1]
    lowest = 0.0
    for row, key in zip(rows, keys):
        value, ci, chance = results["scores"][key], results["ci"].get(key), results["chance"].get(key)
        if ci:
            axis.plot(ci, [row, row], color=BLUE, linewidth=2.4, solid_capstyle="butt")
        axis.plot(value, row, "o", color=BLUE, markersize=5.5, zorder=3)
        if chance is not None:
            axis.plot(chance, row, "|", color=GRAY, markersize=13, markeredgewidth=2.2, zorder=2)
        if baseline.get(key) is not None:
            axis.plot(baseline[key], row, "D", markerfacecolor="none", markeredgecolor=ORANGE, markersize=6.5,
                      markeredgewidth=1.6, zorder=4)
        lowest = min([lowest, value, *(ci or []), *([chance] if chance is not None else [])])
    labels = [f"{BY_KEY[k].title} {'↑' if BY_KEY[k].sorting == 'desc' else '↓'}" for k in keys]
    axis.set_yticks(rows, labels, fontsize=11)
    axis.tick_params(axis="x", labelsize=10)
    axis.set_ylim(-0.7, len(keys) - 0.3)
    axis.set_xlim(min(-0.05, np.floor(lowest * 10) / 10 - 0.05), 1.05)
    axis.axvline(0, color="#ccc", linewidth=0.8, zorder=0)
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title, fontsize=12, loc="left")
    handles = [plt.Line2D([], [], color=BLUE, marker="o", linewidth=2.4, label="score, 95% interval"),
               plt.Line2D([], [], color=GRAY, marker="|", linestyle="none", markersize=11, markeredgewidth=2,
                          label="chance")]
    if any(baseline.get(k) is not None for k in keys):
        handles.append(plt.Line2D([], [], color=ORANGE, marker="D", markerfacecolor="none", linestyle="none",
                                  label="baseline"))
    axis.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.4, -0.07 - 0.5 / (len(keys) + 2)),
                ncol=len(handles), fontsize=9.5, frameon=False, handletextpad=0.4, columnspacing=1.0)
    figure.tight_layout()
    return _png(figure, f"{title}: each score with its 95% interval, chance and baseline")


def histogram_figure(edges: list[float], counts: list[int], key: str, mean: float) -> str:
    """The published histogram of one explanation metric over the true positives (coarse bins)."""
    figure, axis = plt.subplots(figsize=(3.6, 2.6))
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=BLUE, edgecolor="white")
    axis.axvline(mean, color="#c0392b", linewidth=1.3, label=f"mean {mean:.3f}")
    axis.set(title=BY_KEY[key].title, xlabel=key, ylabel="true positives", xlim=(0, 1))
    axis.title.set_fontsize(10)
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure, f"histogram of {key} over the true positives")


def _figures(pictures: list[str]) -> str:
    return f"<div class='figures'>{''.join(pictures)}</div>"


def _overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB image with the heatmap (scaled to its maximum) blended over it in the jet colormap."""
    gray = np.repeat(image[..., None] / 255.0, 3, axis=2)
    peak = heatmap.max()
    colors = JET(heatmap / peak if peak > 0 else heatmap)[..., :3]
    return (1 - OVERLAY_ALPHA) * gray + OVERLAY_ALPHA * colors


def _tile(rgb: np.ndarray, outlines: list[tuple[np.ndarray, str, int]]) -> str:
    """One thumbnail at least TILE_PX wide (nearest-neighbour upscaling, so pixels stay visible), with
    (x, y, width, height) box outlines (boxes, colour, line width), as an inline PNG."""
    scale = max(1, -(-TILE_PX // rgb.shape[1]))
    picture = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(
        (rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for boxes, color, width in outlines:
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            draw.rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1], outline=color,
                           width=width)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="thumbnail" width="{picture.width}" src="data:image/png;base64,{data}">'


def _gray(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None] / 255.0, 3, axis=2)


def _figure(tiles: list[str], caption: str) -> str:
    return f"<figure>{''.join(tiles)}<figcaption>{caption}</figcaption></figure>"


def explanation_gallery(rows: list[dict], images: dict, heatmaps: dict, boxes: dict) -> str:
    """Each true positive: the image with its ground-truth boxes (red) above the heatmap over the image
    with the boxes, the 95% rectangle (orange) and the component boxes at tau = 0.5 (magenta)."""
    figures = []
    for row in rows:
        image, heatmap = images[row["id"]], heatmaps[row["id"]].astype(np.float64)
        outlines = [(boxes[row["id"]], RED, 2)]
        if row["rectangle_95"] is not None:
            outlines.append((xp.rectangle_to_box(row["rectangle_95"]), ORANGE, 2))
        outlines.append((xp.component_boxes(heatmap, GALLERY_TAU)[0], MAGENTA, 2))
        caption = (f"{html.escape(row['id'])}<br>in box {row['activation_in_box']:.2f} · IoU95 "
                   f"{row['iou_95']:.2f} · ccmAP {row['cc_map']:.2f}"
                   + (" · <b>all-zero map</b>" if row.get("all_zero") else ""))
        figures.append(_figure([_tile(_gray(image), [(boxes[row["id"]], RED, 2)]),
                                _tile(_overlay(image, heatmap), outlines)], caption))
    return f"<div class='gallery'>{''.join(figures)}</div>"


def mistakes_gallery(ids: list[str], probabilities: dict, images: dict, boxes: dict, heatmaps: dict) -> str:
    """Misclassified images with their probability (and boxes, and the heatmap when there is one)."""
    figures = []
    for image_id in ids:
        image = images[image_id]
        own = boxes.get(image_id, np.zeros((0, 4)))
        tiles = [_tile(_gray(image), [(own, RED, 2)])]
        if image_id in heatmaps:
            tiles.append(_tile(_overlay(image, heatmaps[image_id].astype(np.float64)), [(own, RED, 2)]))
        figures.append(_figure(tiles, f"{html.escape(image_id)}<br>p(opacity) = {probabilities[image_id]:.3f}"))
    return f"<div class='gallery'>{''.join(figures)}</div>"


def reference_note(results: dict) -> str:
    if results["baseline"] is None:
        return ("No baseline row: the reference data hold no baseline_scores.json (the organizers did not "
                "provide the baseline's scores for this split).")
    return "Baseline: the sample submission's scores on this split, provided by the organizers."


# -- the public sections: functions of the aggregate results alone ---------------------------------
def header(results: dict) -> str:
    phase = "Final phase, test split" if results["final"] else f"Development phase, {results['split']} split"
    parts = [f"<h1>Hygieia — detailed results</h1><p class='note'>{html.escape(phase)}: "
             f"{results['n_scored']} images scored.</p>"]
    if results["per_image"]:
        parts.append("<p class='private'><b>Per-image results included</b> (asked for with "
                     "<code>HYGIEIA_PER_IMAGE=1</code>: the starting kit's <code>score_locally.py</code>, "
                     "<code>hygieia run --per-image</code>). The last part of this page names images and "
                     "shows them with their boxes: keep it to labels you own, never publish it.</p>")
    else:
        parts.append("<p class='notice'>This page shows aggregates over the whole split with their 95% "
                     "intervals: no image, no id, no per-image row. Once the competition is published "
                     "anyone can read it. For galleries of your most confident errors and of your best and "
                     "worst maps against the boxes, run the starting kit's <code>score_locally.py</code> "
                     "on your zip: it scores a hold-out of the training data, whose labels you have.</p>")
    return "".join(parts)


def scores_section(results: dict) -> str:
    scores, chance, baseline = results["scores"], results["chance"], results["baseline"] or {}
    rows = []
    for metric in METRICS:
        value = scores[metric.key]
        shown = WithInterval(value, results["ci"].get(metric.key)) if value is not None else "not measured"
        better = "↑" if metric.sorting == "desc" else "↓"
        rows.append([f"{metric.title} {better}", shown, _number(chance.get(metric.key)),
                     _number(baseline.get(metric.key))])
    classification = results["classification"]
    rows.append(["Balanced accuracy ↑", WithInterval(classification["balanced_accuracy"],
                                                     classification["ci"]["balanced_accuracy"]), _number(0.5), "—"])
    bernoulli = (f"Accuracy {classification['accuracy']:.4f} ± {classification['accuracy_std_error']:.4f} "
                 f"(Bernoulli standard error sqrt(p(1−p)/N), N = {classification['n']}).")
    boot = results["bootstrap"]
    notes = [bernoulli, f"Intervals: {boot['resamples']} bootstrap resamples of the images (seed "
             f"{boot['seed']}); explanation intervals resample the true positives.",
             "Chance: what a model that ignores the pixels scores (label-blind rules for classification, "
             "the best box-blind map for explanations; see the evaluation page).", reference_note(results)]
    if results["shortcut"]["reason"]:
        notes.append(f"Shortcut gap not measured: {results['shortcut']['reason']}.")
    keys = [m.key for m in METRICS]
    explaining = (*EVIDENCE_KEYS, *EXPLANATION_KEYS)
    pictures = [scores_figure(results, [k for k in keys if k not in explaining], "Classification and trust"),
                scores_figure(results, [k for k in keys if k in explaining], "Explanations")]
    return ("<h2>Scores</h2><div class='wide'>" + _table(["metric", "value [95% interval]",
                                                          "chance", "baseline"], rows)
            + "</div>" + _figures(pictures) + f"<p class='note'>{' '.join(html.escape(n) for n in notes)}</p>")


def classification_section(results: dict) -> str:
    c = results["classification"]
    (tn, fp), (fn, tp) = c["confusion_matrix"]
    matrix = _table(["", "predicted normal (0)", "predicted opacity (1)"],
                    [["true normal (0)", tn, fp], ["true opacity (1)", fn, tp]])
    return (f"<h2>Classification</h2><p>{c['n']} images scored, {c['n_positive']} with opacity; the model "
            f"predicted {c['n_predicted_positive']} positives.</p>{matrix}")


def blind_table(results: dict) -> str:
    blind = results["blind_maps"]
    keys = list(EXPLANATION_KEYS)
    rows = [[name, *(_number(scores[k]) for k in keys)] for name, scores in blind["maps"].items()]
    rows.append(["this submission", *(_number(results["scores"][k]) for k in keys)])
    header = ["map", *(BY_KEY[k].title for k in keys)]
    return ("<h3>Against box-blind maps</h3><p class='note'>What maps drawn without looking at the image "
            "score on this split's positives; the chance reference of each column is the best of them. "
            f"The best fixed map's expected activation in box is the box prior's peak, "
            f"{blind['prior_reference']:.4f}: activation in box over prior subtracts it.</p><div class='wide'>"
            + _table(header, rows) + "</div>")


def explanation_section(results: dict) -> str:
    e = results["explanation"]
    method = e["method"] or "none"
    parts = [f"<h2>Your maps against the boxes (plausibility)</h2><p>Method: <b>{html.escape(method)}</b>. "
             f"{e['n_true_positives']} true positives of {e['n_positives']} positives are assessed.</p>"]
    if e["n_all_zero_maps"]:
        parts.append(f"<p class='error'>{e['n_all_zero_maps']} of the {e['n_predicted_positive_maps']} "
                     f"heatmaps of predicted positives are all zero ({e['n_true_positive_all_zero']} of "
                     "them true positives): an all-zero map points nowhere and scores 0 on every "
                     "explanation metric.</p>")
    if e["reason"]:
        parts.append(f"<p class='error'>{html.escape(e['reason'][0].upper() + e['reason'][1:])}.</p>")
        return "".join(parts)
    full = e["full_positive_set"]
    parts.append("<div class='wide'>" + _table(
        ["metric", "mean over true positives [95% interval]", "mean over all positives (missed = 0)"],
        [[BY_KEY[k].title, WithInterval(e["means"][k], e["ci"][k]), _number(full[k])] for k in e["means"]])
        + "</div>")
    histograms = e["histograms"]
    parts.append("<h3>Distribution over the true positives</h3>" + _figures(
        [histogram_figure(histograms["edges"], histograms[key], key, e["means"][key])
         for key in histograms if key != "edges"]))
    parts.append(f"<p class='note'>{len(histograms['edges']) - 1} fixed bins of "
                 f"{histograms['edges'][1] - histograms['edges'][0]:.1f}, coarse on purpose: with a bin per "
                 "image, a histogram would tell which images are true positives.</p>")
    parts.append(blind_table(results))
    parts.append("<p class='note'>Component mAP is the mean over the thresholds tau below; each column is "
                 "the RSNA challenge's per-image score of the connected-component boxes of the map "
                 "thresholded at tau × its maximum.</p>")
    parts.append("<div class='wide'>" + _table(["tau", *e["cc_map_by_tau"].keys()],
                 [["cc_map", *(_number(v) for v in e["cc_map_by_tau"].values())]]) + "</div>")
    parts.append(f"<p>Median enrichment (activation inside the boxes ÷ the share of the image they cover): "
                 f"{_number(e['enrichment_median'], 2)} (1 = no better than a uniform map).</p>")
    return "".join(parts)


def evidence_section(results: dict) -> str:
    """Where the model's own decision comes from: box reliance, the submitted map's faithfulness, and the
    randomisation check of Grad-CAM."""
    e, scores, ci = results["evidence"], results["scores"], results["ci"]
    reliance, faithful = e["box_reliance"], e["faithfulness"]
    parts = ["<h2>Where the model's decision comes from</h2><p class='note'>Measured through the model by "
             f"ingestion: each of {e['n_sampled']} sampled images of this split (the same images for every "
             f"submission) was cut into {e['grid'] or '?'}×{e['grid'] or '?'} cells, and your "
             "<code>predict_proba</code> was called on copies with one cell filled in from its surroundings. "
             "A cell's drop is what the image's probability loses. No map of yours is used here.</p>"]
    rows = [["Box reliance ↑", WithInterval(scores["box_reliance"], ci["box_reliance"]),
             f"{reliance['n_images']} opacity images",
             "drop of the box's cells − drop of the other cells, minus the same against the split's other boxes"],
            ["Map faithfulness ↑", WithInterval(scores["faithfulness"], ci["faithfulness"]),
             f"{faithful['n_images']} explained true positives",
             "rank correlation of your map's mass per cell with the model's drop per cell"]]
    parts.append("<div class='wide'>" + _table(["column", "value [95% interval]", "over", "what it is"], rows)
                 + "</div>")
    if not reliance["n_images"]:
        parts.append("<p class='error'>No sampled image of this split is an opacity image: box reliance scores "
                     "0.</p>")
    check = e.get("randomisation") or {}
    checks = check.get("stages") or []
    if check.get("error"):
        parts.append(f"<p class='error'>The randomisation check of Grad-CAM failed: {html.escape(check['error'])}</p>")
    if checks:
        check_rows = [[c["stage"], c["modules"], f"{c['parameters']:,}", _number(c["rank_correlation"], 3)]
                      for c in checks]
        parts.append("<h3>Randomisation check of Grad-CAM</h3><p class='note'>Grad-CAM again after re-initialising "
                     "the network from the top down (Adebayo et al., NeurIPS 2018): the rank correlation of the "
                     "new maps with yours, over the sampled explained images. A map that stays the same when "
                     "what the model learned is destroyed says little about the model (near 1: it fails the "
                     "check). Computed in the submission's process.</p><div class='wide'>"
                     + _table(["re-initialised", "modules", "parameters", "rank correlation"], check_rows)
                     + "</div>")
    return "".join(parts)


def shortcut_section(results: dict) -> str:
    gap = results["shortcut"]
    parts = ["<h2>Shortcut gap</h2><p class='note'>Some hidden items are off-box probes: windows cut "
             "from an opacity film away from every box. They show no opacity, so a model that reads the "
             "opacity calls them positive about as often as it calls normal films positive. Each probe is "
             "compared with the normal films of its own view (AP with AP, PA with PA), so the view alone "
             "makes no gap. Probes are left out of every other metric.</p>"]
    if gap["value"] is None:
        parts.append(f"<p class='error'>Not measured: {html.escape(gap['reason'])}.</p>")
        return "".join(parts)
    rows = [[f"view {row['stratum']}", row["n_probes"], f"{row['probe_positive_rate']:.4f}",
             row["n_normal"], "—" if row["false_positive_rate"] is None else f"{row['false_positive_rate']:.4f}"]
            for row in gap["strata"]]
    rows.append(["all (probe-weighted)", gap["n_probes"] - gap["n_unmatched"], f"{gap['probe_positive_rate']:.4f}",
                 gap["n_normal"], f"{gap['false_positive_rate']:.4f}"])
    parts.append("<div class='wide'>" + _table(["", "probes", "probes called positive", "normal films",
                                                "normal films called positive"], rows) + "</div>")
    if gap["n_unmatched"]:
        parts.append(f"<p class='note'>{gap['n_unmatched']} probes have no normal film of their view and "
                     "are left out.</p>")
    parts.append(f"<p><b>shortcut gap</b> {gap['value']:.4f} {_interval(gap['ci'])} (the leaderboard's: "
                 f"max(0, gap)); the gap itself {gap['raw']:+.4f} {_interval(gap['raw_ci'])}. A gap below 0 "
                 "is no better than 0: it comes from calling probe-like items negative, not from reading "
                 "the opacity.</p>")
    return "".join(parts)


def _group_table(rows: list[dict]) -> str:
    keys = ("accuracy", "recall", "precision", "fbeta2", "auroc")

    def cell(row, key):
        return WithInterval(row[key], row["ci"].get(key)) if row[key] is not None else "—"

    body = [[r["group"] + (" ⚠" if r["small"] else ""), r["n"], r["n_positive"], *(cell(r, k) for k in keys),
             r["n_true_positives_explained"],
             WithInterval(r["activation_in_box"], r["activation_in_box_ci"])
             if r["activation_in_box"] is not None else "—"] for r in rows]
    return "<div class='wide'>" + _table(["group", "images", "positives", "accuracy", "recall", "precision",
                                          "F-beta (2)", "AUROC", "TPs explained",
                                          "activation in box"], body, "groups") + "</div>"


def bias_section(results: dict) -> str:
    worst = results["worst_group"]
    parts = [f"<h2>Groups and bias</h2><p>Worst-group accuracy: <b>{worst['value']:.4f}</b> "
             f"{_interval(worst['ci'])}, in group <b>{html.escape(worst['group'])}</b>.</p>"
             "<p class='note'>The same metrics within each group of the scored split, each with its 95% "
             f"bootstrap interval. ⚠: fewer than {SMALL_GROUP} images, read with care. Large gaps between "
             "groups suggest the model relies on how an image was taken.</p>"]
    titles = {"class_view_position": "class × view position (worst-group accuracy)"}
    for column, rows in results["bias"].items():
        parts.append(f"<h3>By {html.escape(titles.get(column, column.replace('_', ' ')))}</h3>")
        parts.append(_group_table(rows))
    return "".join(parts)


# -- the per-image sections: only for labels the requester owns ----------------------------------
def roc_section(results: dict, ref: dict, run: dict) -> str:
    c = results["classification"]
    return "<h3>ROC curve</h3>" + roc_figure(c["roc"], c["auroc"])


def mistakes_section(results: dict, ref: dict, run: dict) -> str:
    scored = ref["probes"] == 0
    proba = dict(zip(run["predictions"].index, run["predictions"]["proba"]))
    predicted = dict(zip(run["predictions"].index, run["predictions"]["label"]))
    false_pos = [i for i, y, s in zip(ref["ids"], ref["labels"], scored) if s and y == 0 and predicted[i] == 1]
    false_neg = [i for i, y, s in zip(ref["ids"], ref["labels"], scored) if s and y == 1 and predicted[i] == 0]
    images, boxes = dict(zip(ref["ids"], ref["images"])), ds.boxes_by_id(ref["boxes"])
    parts = []
    for title, ids, key in (("Most confident false positives", false_pos, lambda i: (-proba[i], i)),
                            ("Most confident false negatives", false_neg, lambda i: (proba[i], i))):
        shown = sorted(ids, key=key)[:GALLERY_SIZE]
        parts.append(f"<h3>{title} ({len(ids)} in all)</h3>")
        parts.append(mistakes_gallery(shown, proba, images, boxes, run["heatmaps"]) if shown
                     else "<p>None.</p>")
    parts.append("<p class='note'>Red: ground-truth boxes. Under a false positive: its heatmap.</p>")
    return "".join(parts)


def explanation_galleries_section(results: dict, ref: dict, run: dict) -> str:
    e = results["explanation"]
    if e["reason"]:
        return ""
    ranked = sorted(e["images"], key=lambda row: (-row["iou_95"], -row["activation_in_box"], row["id"]))
    images = dict(zip(ref["ids"], ref["images"]))
    boxes = ds.boxes_by_id(ref["boxes"])
    return ("<h3>Best explanations (by IoU of the 95% rectangle)</h3>"
            + explanation_gallery(ranked[:GALLERY_SIZE], images, run["heatmaps"], boxes)
            + "<h3>Worst explanations</h3>"
            + explanation_gallery(ranked[::-1][:GALLERY_SIZE], images, run["heatmaps"], boxes)
            + "<p class='note'>Red: ground-truth boxes. Orange: the smallest rectangle holding 95% of the "
            "activation. Magenta: connected-component boxes at tau = 0.5.</p>" + per_image_table(e["images"]))


def per_image_table(images: list[dict]) -> str:
    """Every true positive's explanation metrics and enrichment, folded away by default."""
    rows = [[r["id"], _number(r["activation_in_box"]), _number(r["iou_95"]), _number(r["cc_map"]),
             _number(r["pointing_game"], 2), _number(r["box_share"], 3), _number(r["enrichment"], 2)]
            for r in sorted(images, key=lambda row: row["id"])]
    return (f"<details><summary>Every true positive ({len(images)}), with its enrichment</summary><div class='wide'>"
            + _table(["id", "activation_in_box", "iou_95", "cc_map", "pointing_game", "box share",
                      "enrichment"], rows) + "</div></details>")


SECTIONS = (scores_section, classification_section, evidence_section, explanation_section, shortcut_section,
            bias_section)
PER_IMAGE_SECTIONS = (roc_section, mistakes_section, explanation_galleries_section)


def render_report(results: dict, ref: dict, run: dict) -> str:
    """The whole detailed_results.html page of a scored run: the public sections, then the per-image
    ones when ``results`` were computed per image."""
    body = header(results) + "".join(section(results) for section in SECTIONS)
    if results["per_image"]:
        body += ("<h2>Per-image results (labels you own only)</h2>"
                 + "".join(section(results, ref, run) for section in PER_IMAGE_SECTIONS))
    return _page("Hygieia detailed results", body)


def render_error(message: str, traceback: str | None = None) -> str:
    """The detailed_results.html page of a refused run: the cause and, if any, ingestion's traceback."""
    body = ("<h1>Hygieia — scoring refused this run</h1>"
            f"<p class='error'>{html.escape(message)}</p>"
            "<p>No score was recorded. Fix the cause above and submit again.</p>")
    if traceback:
        body += f"<h2>Ingestion's traceback</h2><pre>{html.escape(traceback[-6000:])}</pre>"
    return _page("Hygieia scoring refused", body)
