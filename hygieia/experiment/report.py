"""The shortcut experiment's report: the findings (``findings.py``) and figures (``figures.py``) as
Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from hygieia.experiment.figures import plot_accuracy, plot_examples, plot_explanations, plot_flips, plot_separation
from hygieia.experiment.findings import (EXPLANATION_DROP, RELIANCE, Results, classification_table,
                                         explanation_table, findings, model_scores, model_table, separation,
                                         separation_findings, separation_table)
from hygieia.files import write_csv, write_text


def _markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _bold_html(text: str) -> str:
    """Markdown's **bold** and `code` as HTML; everything else escaped."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if k % 2 else p for k, p in enumerate(parts))
    return "".join(f"<code>{p}</code>" if k % 2 else p for k, p in enumerate(text.split("`")))


def render(blocks: list[tuple], folder: Path) -> tuple[str, str]:
    """Markdown and self-contained HTML of blocks ("h1"/"h2"/"p", text), ("list", [text]),
    ("table", DataFrame), ("figure", path, caption)."""
    md, body = [], []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            md.append(("# " if kind == "h1" else "## ") + block[1])
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            md.append(block[1])
            body.append(f"<p>{_bold_html(block[1])}</p>")
        elif kind == "list":
            md.append("\n".join(f"- {item}" for item in block[1]))
            body.append("<ul>" + "".join(f"<li>{_bold_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            md.append(_markdown_table(block[1]))
            body.append(block[1].to_html(index=False, border=0, classes="results"))
        elif kind == "figure":
            path, caption = block[1], block[2]
            md.append(f"![{caption}]({path.relative_to(folder).as_posix()})\n\n*{caption}*")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
             "table.results{border-collapse:collapse;font-size:13px}"
             "table.results td,table.results th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "img{max-width:100%}figcaption{font-style:italic;font-size:13px}")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Hygieia shortcut experiment</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return "\n\n".join(md) + "\n", page


def command_line(config) -> str:
    """The command that reproduces this run (the weights path aside)."""
    lung_strengths = ",".join(f"{p:g}" for p in config.lung_strengths) or "none"
    return (f"hygieia experiment shortcut --patients {config.patients} "
            f"--strengths {','.join(f'{p:g}' for p in config.strengths)} --lung-strengths {lung_strengths} "
            f"--probe-share {config.probe_share:g} --seed {config.seed}" + (" --fast" if config.fast else ""))


def setup_text(config, results: Results) -> list[str]:
    sizes = config.sizes
    return [f"Reproduce with `{command_line(config)}` (phantoms and prepared data are cached in OUT/cache, "
            "trained runs in OUT/runs).",
            f"Phantom: {config.patients} patients, seed {config.seed}; prepared at 3:2 normal:opacity into "
            f"{sizes.get('train')} train / {sizes.get('valid')} valid / {sizes.get('test')} test samples, the "
            f"same patients and ids in every variant.",
            f"Marker strengths P (share of opacity images carrying it; 1−P of the normals carry it): "
            f"{', '.join(f'{p:g}' for p in results.strengths)} at the film's edge"
            + (f"; {', '.join(f'{p:g}' for p in results.lung_strengths)} inside a lung field, where crop windows "
               "and off-box probes can show it." if results.lung_strengths else "."),
            f"Off-box probes (windows cut from opacity films away from every box, served as ordinary test "
            f"items, marked only in the reference data): {config.probe_share:g} per test opacity, in the crops "
            "and features test sets. A probe of a marked opacity film whose window holds the marker shows the "
            "marker without the opacity. Whole images hold no probe (a whole film shows its boxes). The "
            "features of a probe are those of its whole film (opacity included), so the features' shortcut "
            "gap measures the opacity as well as any shortcut.",
            f"Data versions: **crops** ({config.crop}×{config.crop} around the lung region, the competition's data), "
            f"**whole images** (the radiograph at {config.full_size}×{config.full_size}, the original design's Table 2 "
            "setting) and **features** (the 1280 MobileNetV2 features, computed from the whole radiograph).",
            "Each model is the sample submission (frozen ImageNet MobileNetV2 + linear layer at 128 px, Grad-CAM on "
            "its last block; the features version: the tabular sample), trained by the real ingestion program and "
            f"scored by the real scoring program{' (HYGIEIA_FAST=1: quick training)' if config.fast else ''}.",
            "Test sets, the same patients: **clean** (no marker), **confounded** (the training strength), "
            "**counterfactual** (P = 0: the marker on every negative, on no positive). Flip rate: share of test "
            "predictions that differ between clean and counterfactual, where only the negatives differ, by the marker.",
            f"Thresholds: a model *uses the marker* when its flip rate exceeds the clean-trained model's by more "
            f"than {RELIANCE:.0%}; an explanation score *drops* when it falls by more than {EXPLANATION_DROP}. "
            f"With {sizes.get('test')} test images, one flipped prediction is "
            f"{1 / sizes['test'] if sizes.get('test') else float('nan'):.1%} of them."]


def write_report(config, table: pd.DataFrame) -> Path:
    """OUT/report/: report.md, report.html (self-contained), results.csv, figures/*.png."""
    folder = Path(config.out) / "report"
    figures = folder / "figures"
    results = Results(table, {"crops": config.crop, "whole": config.full_size})
    write_csv(folder / "results.csv", table)
    models = model_scores(results)
    separated = separation(models)
    write_csv(folder / "models.csv", models)
    write_csv(folder / "separation.csv", separated)
    blocks = [("h1", "Hygieia shortcut experiment: does cropping remove a marker shortcut, and which scores "
                     "catch it?"),
              ("h2", "Setup"), ("list", setup_text(config, results)),
              ("h2", "Which scores catch the marker"), ("list", separation_findings(models, separated)),
              ("p", "Every score below is the scoring program's (scores.json), on the model's own test "
                    "distribution: the confounded test, or the clean test for the clean-trained control. "
                    "Flip rate: predictions changed by pasting the marker onto the negatives (in brackets, the "
                    "clean-trained control's). Probes: off-box probes in that test set, and the share of them "
                    "whose window shows the marker. — : the model cannot have the score (no heatmaps for the "
                    "features; no probes in whole images)."),
              ("table", model_table(models)),
              ("p", "Separation: AUROC of each score as a detector of the marker users (the score's direction "
                    "from the metric table: a user should score worse), over every model that has the score "
                    "and within each data version; users and non-users are the models counted."),
              ("table", separation_table(separated)),
              ("figure", plot_separation(models, figures / "separation.png"),
               "Each trust score of every model: marker users (right) against the others (left)"),
              ("h2", "What the numbers show"), ("list", findings(results)),
              ("h2", "Classification"), ("table", classification_table(results)),
              ("figure", plot_accuracy(results, figures / "accuracy.png"),
               "Accuracy against the marker's strength, per data version"),
              ("figure", plot_flips(results, figures / "flip_rate.png"),
               "Flip rate: predictions changed by pasting the marker onto the negatives")]
    if any(v != "features" for v in results.versions):
        blocks += [("h2", "Explanations"), ("table", explanation_table(results)),
                   ("figure", plot_explanations(results, figures / "explanations.png"),
                    "Explanation scores and heatmap mass on the marker (confounded test unless marked) against "
                    "the marker's strength; dashed: the clean-trained model on the clean test")]
        examples = plot_examples(results, Path(config.out) / "runs", figures / "examples.png")
        if examples:
            blocks.append(("figure", examples, "Grad-CAM of predicted positives that show the marker (cyan: marker "
                                               "box, red: opacity box), for the strongest edge marker and the lung "
                                               "stress case"))
    markdown, page = render(blocks, folder)
    write_text(folder / "report.md", markdown)
    write_text(folder / "report.html", page)
    return folder
