"""detailed_results.html: the participant's page of detailed results, one self-contained file.

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
from matplotlib.patches import Rectangle  # noqa: E402

from hygieia import dataset as ds  # noqa: E402
from hygieia.scoring import explanation as xp  # noqa: E402
from hygieia.scoring.keys import LEADERBOARD_COLUMNS  # noqa: E402

GALLERY_SIZE = 4
GALLERY_TAU = 0.5
DPI = 80
OVERLAY_ALPHA = 0.45
JET = matplotlib.colormaps["jet"]
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:980px;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.92em}.error{background:#fff0f0;border:1px solid #d33;padding:1em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}img{max-width:100%}
"""


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _number(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(ci) -> str:
    return "—" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def roc_figure(roc: dict, auroc: float) -> str:
    figure, axis = plt.subplots(figsize=(3.4, 3.2))
    axis.plot(roc["fpr"], roc["tpr"], color="#c0392b", label=f"AUROC {auroc:.3f}")
    axis.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve",
             xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def distribution_figure(images: list[dict]) -> str:
    figure, axes = plt.subplots(1, 2, figsize=(6.8, 2.6))
    for axis, key, title in zip(axes, ("activation_in_box", "iou_95"),
                                ("Activation inside the boxes", "IoU of the 95% rectangle")):
        values = [row[key] for row in images]
        axis.hist(values, bins=20, range=(0, 1), color="#2e86c1", edgecolor="white")
        axis.axvline(np.mean(values), color="#c0392b", linewidth=1.2, label=f"mean {np.mean(values):.3f}")
        axis.set(title=title, xlabel=key, ylabel="true positives")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _draw_boxes(axis, boxes, offset, color: str, width: float = 1.2, style: str = "-") -> None:
    """Outline (x, y, width, height) boxes on an image drawn at ``offset`` (x, y) in the axis."""
    for x, y, w, h in np.asarray(boxes).reshape(-1, 4):
        axis.add_patch(Rectangle((x + offset[0] - 0.5, y + offset[1] - 0.5), w, h, fill=False,
                                 edgecolor=color, linewidth=width, linestyle=style))


def _overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB image with the heatmap (scaled to its maximum) blended over it in the jet colormap."""
    gray = np.repeat(image[..., None] / 255.0, 3, axis=2)
    peak = heatmap.max()
    colors = JET(heatmap / peak if peak > 0 else heatmap)[..., :3]
    return (1 - OVERLAY_ALPHA) * gray + OVERLAY_ALPHA * colors


def gallery_figure(rows: list[dict], images: dict, heatmaps: dict, boxes: dict) -> str:
    """Top: the image and its ground-truth boxes (red). Bottom: the heatmap over the image, the 95%
    rectangle (orange, dashed) and the connected-component boxes at tau = 0.5 (magenta).
    One axis holds all tiles (drawing many small axes is slow)."""
    height, width = images[rows[0]["id"]].shape
    gap = max(2, width // 12)
    canvas = np.ones((2 * height + gap, len(rows) * (width + gap) - gap, 3))
    figure, axis = plt.subplots(figsize=(1.7 * len(rows), 3.8))
    for column, row in enumerate(rows):
        image, heatmap = images[row["id"]], heatmaps[row["id"]].astype(np.float64)
        x0 = column * (width + gap)
        canvas[:height, x0:x0 + width] = np.repeat(image[..., None] / 255.0, 3, axis=2)
        canvas[height + gap:, x0:x0 + width] = _overlay(image, heatmap)
        _draw_boxes(axis, boxes[row["id"]], (x0, 0), "#e74c3c")
        _draw_boxes(axis, boxes[row["id"]], (x0, height + gap), "#e74c3c", 0.9)
        if row["rectangle_95"] is not None:
            _draw_boxes(axis, xp.rectangle_to_box(row["rectangle_95"]), (x0, height + gap), "#f39c12",
                        1.4, "--")
        _draw_boxes(axis, xp.component_boxes(heatmap, GALLERY_TAU)[0], (x0, height + gap), "#ff00ff", 1.1)
        axis.text(x0 + width / 2, -2, f"{row['id']}\nin box {row['activation_in_box']:.2f}",
                  ha="center", va="bottom", fontsize=7)
        axis.text(x0 + width / 2, 2 * height + gap + 2,
                  f"IoU95 {row['iou_95']:.2f}\nccmAP {row['cc_map']:.2f}", ha="center", va="top", fontsize=7)
    axis.imshow(canvas, interpolation="nearest")
    axis.set_axis_off()
    figure.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.12)
    return _png(figure)


def scores_section(results: dict) -> str:
    classification, explanation = results["classification"], results["explanation"]
    rows = []
    for column in LEADERBOARD_COLUMNS:
        key = column["key"]
        ci = classification["ci"].get(key) if key in classification["ci"] else explanation["ci"].get(key)
        rows.append([column["title"], _number(results["scores"][key]), _interval(ci)])
    rows.append(["Balanced accuracy", _number(classification["balanced_accuracy"]),
                 _interval(classification["ci"]["balanced_accuracy"])])
    bernoulli = (f"Accuracy {classification['accuracy']:.4f} ± {classification['accuracy_std_error']:.4f} "
                 f"(Bernoulli standard error sqrt(p(1−p)/N), N = {classification['n']}).")
    boot = results["bootstrap"]
    return ("<h2>Scores</h2>" + _table(["metric", "value", "95% bootstrap interval"], rows)
            + f"<p class='note'>{html.escape(bernoulli)} Intervals: {boot['resamples']} bootstrap "
              f"resamples of the images (seed {boot['seed']}); explanation intervals resample the true "
              "positives.</p>")


def classification_section(results: dict) -> str:
    c = results["classification"]
    (tn, fp), (fn, tp) = c["confusion_matrix"]
    matrix = _table(["", "predicted normal (0)", "predicted opacity (1)"],
                    [["true normal (0)", tn, fp], ["true opacity (1)", fn, tp]])
    return (f"<h2>Classification</h2><p>{c['n']} images scored, {c['n_positive']} with opacity; the model "
            f"predicted {c['n_predicted_positive']} positives.</p>{matrix}"
            + roc_figure(c["roc"], c["auroc"]))


def explanation_section(results: dict, ref: dict, run: dict) -> str:
    e = results["explanation"]
    method = e["method"] or "none"
    parts = [f"<h2>Explanations</h2><p>Method: <b>{html.escape(method)}</b>. "
             f"{e['n_true_positives']} true positives of {e['n_positives']} positives are assessed.</p>"]
    if e["reason"]:
        parts.append(f"<p class='error'>{html.escape(e['reason'][0].upper() + e['reason'][1:])}.</p>")
        return "".join(parts)
    full = e["full_positive_set"]
    parts.append(_table(["metric", "mean over true positives", "mean over all positives (missed = 0)"],
                        [[k, _number(e["means"][k]), _number(full[k])] for k in e["means"]]))
    parts.append("<p class='note'>Component mAP is the mean over the thresholds tau below; each column is "
                 "the RSNA challenge's per-image score of the connected-component boxes of the map "
                 "thresholded at tau × its maximum.</p>")
    parts.append(_table(["tau", *e["cc_map_by_tau"].keys()],
                        [["cc_map", *(_number(v) for v in e["cc_map_by_tau"].values())]]))
    parts.append(f"<p>Median enrichment (activation inside the boxes ÷ the share of the image they cover): "
                 f"{_number(e['enrichment_median'], 2)} (1 = no better than a uniform map).</p>")
    parts.append(distribution_figure(e["images"]))
    ranked = sorted(e["images"], key=lambda row: (-row["iou_95"], -row["activation_in_box"], row["id"]))
    images = dict(zip(ref["ids"], ref["images"]))
    boxes = ds.boxes_by_id(ref["boxes"])
    best = ranked[:GALLERY_SIZE]
    worst = ranked[::-1][:GALLERY_SIZE]
    parts.append("<h3>Best explanations (by IoU of the 95% rectangle)</h3>"
                 + gallery_figure(best, images, run["heatmaps"], boxes))
    parts.append("<h3>Worst explanations</h3>" + gallery_figure(worst, images, run["heatmaps"], boxes))
    parts.append("<p class='note'>Red: ground-truth boxes. Orange dashed: the smallest rectangle holding "
                 "95% of the activation. Magenta: connected-component boxes at tau = 0.5.</p>")
    parts.append(per_image_table(e["images"]))
    return "".join(parts)


def per_image_table(images: list[dict]) -> str:
    """Every true positive's explanation metrics and enrichment, folded away by default."""
    rows = [[r["id"], _number(r["activation_in_box"]), _number(r["iou_95"]), _number(r["cc_map"]),
             _number(r["pointing_game"], 0), _number(r["box_share"], 3), _number(r["enrichment"], 2)]
            for r in sorted(images, key=lambda row: row["id"])]
    return (f"<details><summary>Every true positive ({len(images)}), with its enrichment</summary>"
            + _table(["id", "activation_in_box", "iou_95", "cc_map", "pointing_game", "box share",
                      "enrichment"], rows) + "</details>")


def bias_section(results: dict) -> str:
    parts = ["<h2>Bias report</h2><p class='note'>The same metrics within each group of the scored "
             "split. Large gaps between groups suggest the model relies on how an image was taken.</p>"]
    for column, rows in results["bias"].items():
        parts.append(f"<h3>By {html.escape(column.replace('_', ' '))}</h3>")
        parts.append(_table(
            ["group", "images", "positives", "accuracy", "recall", "precision", "F-beta (2)", "AUROC",
             "true positives explained", "activation in box"],
            [[r["group"], r["n"], r["n_positive"], _number(r["accuracy"]), _number(r["recall"]),
              _number(r["precision"]), _number(r["fbeta2"]), _number(r["auroc"]),
              r["n_true_positives_explained"], _number(r["activation_in_box"])] for r in rows]))
    return "".join(parts)


def render_report(results: dict, ref: dict, run: dict) -> str:
    """The whole detailed_results.html page of a scored run."""
    # On Codabench the reference folder is always named "ref", which says nothing about the split.
    split = results["split"] if results["split"] not in ("", "ref") else None
    title = f"Hygieia — detailed results ({html.escape(split)})" if split else "Hygieia — detailed results"
    body = (f"<h1>{title}</h1>" + scores_section(results)
            + classification_section(results) + explanation_section(results, ref, run)
            + bias_section(results))
    return _page("Hygieia detailed results", body)


def render_error(message: str, traceback: str | None = None) -> str:
    """The detailed_results.html page of a refused run: the cause and, if any, ingestion's traceback."""
    body = ("<h1>Hygieia — scoring refused this run</h1>"
            f"<p class='error'>{html.escape(message)}</p>"
            "<p>No score was recorded. Fix the cause above and submit again.</p>")
    if traceback:
        body += f"<h2>Ingestion's traceback</h2><pre>{html.escape(traceback[-6000:])}</pre>"
    return _page("Hygieia scoring refused", body)
