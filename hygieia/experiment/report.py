"""The shortcut experiment's report: the findings (``findings.py``) and figures (``figures.py``) as
Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import html
import shutil
from pathlib import Path

import pandas as pd

from hygieia.experiment.figures import (plot_accuracy, plot_examples, plot_explanations, plot_flips,
                                        plot_separation, plot_separation_by_seed)
from hygieia.experiment.findings import (EXPLANATION_DROP, GOAL_AUROC, IMAGE_VERSIONS, RELIANCE, Results,
                                         classification_table, explanation_table, findings, interval_halfwidths,
                                         label_stability, model_scores, model_table, over_seeds, position_findings,
                                         precision_findings,
                                         separation_by_seed, separation_findings, separation_table,
                                         stability_findings, summary_table, fmt)
from hygieia.files import write_csv, write_text
from hygieia.rsna.markers import OFF_BOX_MARGIN
from hygieia.scoring.metrics import HEADLINE_EXPLANATION_KEY
from hygieia.submission.evidence import GRID, SAMPLE_PER_SPLIT


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
    """Markdown and self-contained HTML of blocks ("h1"/"h2"/"h3"/"p", text), ("list", [text]),
    ("table", DataFrame), ("figure", path, caption)."""
    md, body = [], []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            md.append("#" * int(kind[1]) + " " + block[1])
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
    offbox_strengths = ",".join(f"{p:g}" for p in config.offbox_strengths) or "none"
    return (f"hygieia experiment shortcut --patients {config.patients} "
            f"--strengths {','.join(f'{p:g}' for p in config.strengths)} --lung-strengths {lung_strengths} "
            f"--off-box-strengths {offbox_strengths} "
            f"--probe-share {config.probe_share:g} --seeds {','.join(str(s) for s in config.seeds)}"
            + (" --fast" if config.fast else "") + (" --reuse-data" if config.reuse_data else ""))


def _sizes_text(config) -> str:
    sizes = {seed: config.sizes.get(seed, {}) for seed in config.seeds}
    distinct = {tuple(v.get(k) for k in ("train", "valid", "test")) for v in sizes.values()}
    if len(distinct) == 1:
        train, valid, test = distinct.pop()
        return f"{train} train / {valid} valid / {test} test samples in every seed"
    return "; ".join(f"seed {seed}: {v.get('train')} / {v.get('valid')} / {v.get('test')}" for seed, v in sizes.items()
                     ) + " train / valid / test samples"


def setup_text(config, results: Results) -> list[str]:
    tests = [config.sizes[seed]["test"] for seed in config.seeds if config.sizes.get(seed)]
    return [f"Reproduce with `{command_line(config)}` (phantoms and prepared data are cached in OUT/cache, "
            "trained models and their scores in OUT/runs/s<seed>/; a change of the scoring code re-scores "
            "without re-training).",
            f"Seeds {', '.join(str(s) for s in config.seeds)}: each a complete replicate — its own phantoms "
            f"({config.patients} patients), prepared splits, trainings and scores. Prepared at 3:2 normal:opacity "
            f"into {_sizes_text(config)}, the same patients and ids in every variant of a seed.",
            f"Marker strengths P (share of opacity images carrying it; 1−P of the normals carry it): "
            f"{', '.join(f'{p:g}' for p in results.strengths)} at the film's edge"
            + (f"; {', '.join(f'{p:g}' for p in results.lung_strengths)} inside a lung field, where crop windows "
               "and off-box probes can show it" if results.lung_strengths else "")
            + (f"; {', '.join(f'{p:g}' for p in results.offbox_strengths)} over the lungs but at least "
               f"{OFF_BOX_MARGIN} film pixels (of 1024) from every opacity box (`offbox`): a shortcut beside the "
               "opacity, which evidence taken cell by cell can tell from it (a `lung` marker often shares a grid "
               "cell with its film's box)" if results.offbox_strengths else "")
            + ".",
            f"Off-box probes (windows cut from opacity films away from every box, served as ordinary test "
            f"items, marked only in the reference data): {config.probe_share:g} per test opacity, in the crops "
            "and features test sets. A probe of a marked opacity film whose window holds the marker shows the "
            "marker without the opacity. Whole images hold no probe (a whole film shows its boxes). The "
            "features of a probe are those of its whole film (opacity included), so the features' shortcut "
            "gap measures the opacity as well as any shortcut.",
            f"Data versions: **crops** ({config.crop}×{config.crop} around the lung region, the competition's data), "
            f"**whole images** (the radiograph at {config.full_size}×{config.full_size}, the original design's Table 2 "
            "setting) and **features** (the 1280 MobileNetV2 features, computed from the whole radiograph); "
            "**crops_boxes** and **whole_boxes**: the same crops and whole images, for the box-supervised sample. "
            f"The *image models* are those of the {', '.join(IMAGE_VERSIONS)} versions: their predictions can "
            "depend on the image's pixels. A features model cannot be altered through the image: a column measured "
            "by altering the image and asking the model again scores it the same whether or not it uses the marker.",
            "Each model is the sample submission (frozen ImageNet MobileNetV2 + linear layer at 128 px, Grad-CAM on "
            "its last block; the features version: the tabular sample; the *_boxes versions: "
            "`sample_submission_boxes`, whose decision is the mean of its 4 most opaque cells, each cell supervised by "
            "the training boxes, its map those cells), trained by the real ingestion program and "
            f"scored by the real scoring program{' (HYGIEIA_FAST=1: quick training)' if config.fast else ''}.",
            f"Evidence through the model (the headline explanation column `{HEADLINE_EXPLANATION_KEY}` and "
            "`faithfulness`): ingestion asks each model's own predict_proba again on copies of up to "
            f"{SAMPLE_PER_SPLIT} images per scored split with one cell of a {GRID}×{GRID} grid filled in (valid: the "
            "clean set; test: the confounded and counterfactual sets together, so each holds about half of that "
            "split's sample when it is larger). Box reliance: the probability lost when the opacity box's cells "
            "are filled in, minus that lost elsewhere; a model that reads a marker outside the box loses it there. "
            "Grad-CAM's map columns (`activation_in_box`...) grade the map alone.",
            "Test sets, the same patients: **clean** (no marker), **confounded** (the training strength), "
            "**counterfactual** (P = 0: the marker on every negative, on no positive). Flip rate: share of test "
            "predictions that differ between clean and counterfactual, where only the negatives differ, by the marker.",
            f"Thresholds: a model *uses the marker* when its flip rate exceeds the clean-trained model's by more "
            f"than {RELIANCE:.0%}; Grad-CAM's map *drops* when it falls by more than {EXPLANATION_DROP}; in the list "
            "of marker users, a column *catches* a user when it falls below the clean control's by more than its own "
            "95 % interval on the user's test set. "
            + (f"With {min(tests)} test images, one flipped prediction is {1 / min(tests):.1%} of them." if tests
               else "")]


def timing_table(seconds: dict) -> pd.DataFrame:
    """Minutes per seed and stage, as recorded when each cached stage was built."""
    rows = [{"seed": seed, **{stage: f"{value / 60:.1f}" for stage, value in stages.items()},
             "total": f"{sum(stages.values()) / 60:.1f}"} for seed, stages in seconds.items()]
    return pd.DataFrame(rows)


def seed_blocks(config, results: Results, models: pd.DataFrame, by_seed: pd.DataFrame, figures: Path,
                examples: bool) -> list[tuple]:
    """The appendix of one seed: its findings, the scores of every model, its separation, classification
    and explanation tables and figures."""
    seed = results.seed
    mine = figures / f"s{seed}"
    blocks = [("h2", f"Appendix: seed {seed}"), ("list", findings(results)),
              ("p", "Every score below is the scoring program's (scores.json), on the model's own test "
                    "distribution: the confounded test, or the clean test for the clean-trained control. "
                    "Flip rate: predictions changed by pasting the marker onto the negatives (in brackets, the "
                    "clean-trained control's). Probes: off-box probes in that test set, and the share of them "
                    "whose window shows the marker. — : the model cannot have the score (no heatmaps for the "
                    "features; no probes in whole images)."),
              ("table", model_table(models)),
              ("p", f"Separation in seed {seed}: AUROC of each score as a detector of the marker users (the score's "
                    "direction from the metric table: a user should score worse), over every model that has the "
                    "score, over the image models and within each data version; users and non-users are the "
                    "models counted."),
              ("table", separation_table(by_seed.drop(columns="seed"))),
              ("figure", plot_separation(models, mine / "separation.png"),
               f"Seed {seed}: each trust score of every model, marker users (right) against the others (left)"),
              ("h3", f"Classification, seed {seed}"), ("table", classification_table(results)),
              ("figure", plot_accuracy(results, mine / "accuracy.png"),
               f"Seed {seed}: accuracy against the marker's strength, per data version"),
              ("figure", plot_flips(results, mine / "flip_rate.png"),
               f"Seed {seed}: flip rate, predictions changed by pasting the marker onto the negatives")]
    if any(v != "features" for v in results.versions):
        blocks += [("h3", f"Explanations, seed {seed}"), ("table", explanation_table(results)),
                   ("figure", plot_explanations(results, mine / "explanations.png"),
                    f"Seed {seed}: explanation scores and heatmap mass on the marker (confounded test unless "
                    "marked) against the marker's strength; dashed: the clean-trained model on the clean test")]
        picture = (plot_examples(results, Path(config.out) / "runs" / f"s{seed}", mine / "examples.png")
                   if examples else None)
        if picture:
            blocks.append(("figure", picture, f"Seed {seed}: Grad-CAM of predicted positives that show the marker "
                                              "(cyan: marker box, red: opacity box), for the strongest edge marker "
                                              "and the lung stress case"))
    return blocks


def write_report(config, table: pd.DataFrame, seconds: dict | None = None) -> Path:
    """OUT/report/: report.md, report.html (self-contained), the tables as CSV, figures/*.png."""
    folder = Path(config.out) / "report"
    figures = folder / "figures"
    shutil.rmtree(figures, ignore_errors=True)  # no figure of an earlier run stays behind
    sizes = {v.name: config.image_size(v) for v in config.versions_used()}
    per_seed = {int(seed): Results(mine.reset_index(drop=True), sizes) for seed, mine in table.groupby("seed")}
    models = pd.concat([model_scores(results) for results in per_seed.values()], ignore_index=True)
    by_seed = separation_by_seed(models)
    summary = over_seeds(by_seed)
    stability = label_stability(models)
    halves = interval_halfwidths(table)
    write_csv(folder / "results.csv", table)
    write_csv(folder / "models.csv", models)
    write_csv(folder / "separation.csv", by_seed)
    write_csv(folder / "separation_over_seeds.csv", summary)
    write_csv(folder / "marker_users.csv", stability)
    write_csv(folder / "intervals.csv", halves)
    if seconds:
        write_csv(folder / "timing.csv", pd.DataFrame([{"seed": seed, **stages} for seed, stages in seconds.items()]))
    first = next(iter(per_seed.values()))
    blocks = [("h1", "Hygieia shortcut experiment: does cropping remove a marker shortcut, and which scores "
                     "catch it?"),
              ("h2", "Setup"), ("list", setup_text(config, first)),
              ("h2", "Which scores catch the marker"), ("list", separation_findings(models, summary)),
              ("p", "Where the marker lies, and what the users lose of box reliance (image models, all seeds):"),
              ("list", position_findings(models)),
              ("p", "Separation: AUROC of each score as a detector of the marker users (the score's direction from "
                    "the metric table: a user should score worse), per seed, over every model that has the score, "
                    "over the image models, over the image models as changes from their clean-trained controls "
                    "(each marker-trained model's score minus that of the same network trained on the same patients "
                    "without the marker; the controls themselves left out) and within each data version; shown as "
                    "the mean [min, max] over the seeds where it is defined. Users / non-users: the models counted "
                    "(all models), per seed."),
              ("table", summary_table(summary)),
              ("figure", plot_separation_by_seed(by_seed, figures / "separation_by_seed.png", GOAL_AUROC),
               "Separation AUROC of every score, one point per seed (bar: the mean), over all models, over "
               "the image models and over their changes from their controls; dashed: chance (0.5) and the goal"),
              ("h2", "Marker users across seeds"), ("list", stability_findings(stability)),
              ("table", stability),
              ("h2", "How precise one score is"), ("list", precision_findings(halves)),
              ("p", "Half-width of each score's 95 % bootstrap interval (the scoring program's detailed_scores.json) "
                    "over every scored test set (the clean and confounded sets of every model and seed): the median, "
                    "per data version and the largest."),
              ("table", _formatted(halves))]
    if seconds:
        blocks += [("h2", "Time"),
                   ("p", "Minutes per seed and stage on this machine (2 shared CPU cores), as recorded when each "
                         "cached stage was built; a rerun reuses what its key has not changed."),
                   ("table", timing_table(seconds))]
    for k, (seed, results) in enumerate(per_seed.items()):
        blocks += seed_blocks(config, results, models[models["seed"] == seed].reset_index(drop=True),
                              by_seed[by_seed["seed"] == seed].reset_index(drop=True), figures, examples=k == 0)
    markdown, page = render(blocks, folder)
    write_text(folder / "report.md", markdown)
    write_text(folder / "report.html", page)
    return folder


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = [fmt(v) for v in shown[column]]
    return shown
