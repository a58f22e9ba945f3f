"""The dataset card: counts, ratio, age/sex/view statistics, skipped patients, and two figures
(box sizes, example crops with their boxes). Written byte-stably (no dates, no software tags).

The card is public: it states no per-class statistic of a hidden split (an extreme age in one class
names the items that have it, and RSNA's labels are public). Per class: the training split only; of
valid and test, what anyone computes from their input_data meta.csv (all served items, probes
included), the counts the design fixes, and nothing about their boxes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hygieia.dataset import INPUT_META_COLUMNS, SPLITS
from hygieia.files import write_bytes, write_json, write_text
from hygieia.prepare.select import CLASS_NAMES

CARD_FILE = "dataset_card.md"
BOX_SIZES_PNG = "box_sizes.png"
EXAMPLES_PNG = "example_crops.png"
SOURCE_FILE = "source.json"  # {"source": "rsna" | "phantom"}: the bundle's pages say when data are synthetic
EXAMPLES_PER_CLASS = 8


def write_card(folder: Path, samples: pd.DataFrame, decoded: dict, tables, summary: dict) -> None:
    """Write the card and its figures into ``folder``. ``samples`` has id, patientId, split, label, probe."""
    folder = Path(folder)
    meta = pd.DataFrame([decoded[pid].header for pid in samples["patientId"]], index=samples.index)
    table = pd.concat([samples.drop(columns="view", errors="ignore"), meta], axis=1)
    train_positives = samples.loc[(samples["split"] == "train") & (samples["label"] == 1), "patientId"]
    positives = tables.boxes[tables.boxes["patientId"].isin(train_positives)]
    write_png(folder / BOX_SIZES_PNG, box_size_figure(positives))
    write_png(folder / EXAMPLES_PNG, examples_figure(table[table["split"] == "train"], decoded))
    write_text(folder / CARD_FILE, card_text(table, summary, n_boxes=len(positives), phantom=tables.phantom))
    write_json(folder / SOURCE_FILE, {"source": "phantom" if tables.phantom else "rsna"})


def write_png(path: Path, figure: Figure) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    write_bytes(path, buffer.getvalue())


def card_text(table: pd.DataFrame, summary: dict, n_boxes: int, phantom: bool = False) -> str:
    ratio = summary["ratio"]
    source = ("Source: **synthetic data**, Hygieia's phantom (`hygieia phantom`): computer-generated "
              "radiographs in the format and class proportions of the RSNA Pneumonia Detection Challenge "
              "(2018) download, not images of real patients." if phantom else
              "Source: RSNA Pneumonia Detection Challenge (2018), stage 2 training set (Radiological Society "
              "of North America; annotations by RSNA and the Society of Thoracic Radiology; images from the "
              "NIH Clinical Center ChestX-ray14 collection).")
    lines = ["# Hygieia prepared dataset", "",
             source + " Classes: Normal → 0, Lung Opacity → 1; "
             "\"No Lung Opacity / Not Normal\" is left out. One image per patient; splits are "
             "patient-disjoint.", "",
             f"Requested ratio normal:opacity = {ratio[0]}:{ratio[1]}.", "",
             "## Samples", "", "| split | normal (0) | opacity (1) | off-box probes | total |",
             "|---|---|---|---|---|"]
    for split in SPLITS:
        c = summary["counts"][split]
        lines.append(f"| {split} | {c['normal']} | {c['opacity']} | {c['probes']} | "
                     f"{c['normal'] + c['opacity'] + c['probes']} |")
    lines += ["", f"Boxes of the training opacity patients (original pixels): {n_boxes}.", ""]
    lines += design_text(summary)
    lines += ["## Age (years)", "", HIDDEN_NOTE, "", "| split | items | n | mean | median | min | max | missing |",
              "|---|---|---|---|---|---|---|---|"]
    for split, items, rows in _groups(table):
        age = pd.to_numeric(rows["age"], errors="coerce")
        known = age.dropna()
        stats = (f"{known.mean():.1f} | {known.median():.0f} | {known.min():.0f} | {known.max():.0f}"
                 if len(known) else "– | – | – | –")
        lines.append(f"| {split} | {items} | {len(rows)} | {stats} | {int(age.isna().sum())} |")
    values = sorted(table["sex"].fillna("missing").astype(str).unique())
    lines += ["", "## Sex", "", "| split | items | " + " | ".join(values) + " |", "|---|---|" + "---|" * len(values)]
    for split, items, rows in _groups(table):
        counts = rows["sex"].fillna("missing").astype(str).value_counts()
        lines.append(f"| {split} | {items} | " + " | ".join(str(int(counts.get(v, 0))) for v in values) + " |")
    train = table[table["split"] == "train"]
    values = sorted(train["view_position"].fillna("missing").astype(str).unique())
    lines += ["", "## View position (training split; the hidden splits' is their design, above)", "",
              "| class | " + " | ".join(values) + " |", "|---|" + "---|" * len(values)]
    for label in (0, 1):
        counts = train.loc[train["label"] == label, "view_position"].fillna("missing").astype(str).value_counts()
        lines.append(f"| {CLASS_NAMES[label]} | " + " | ".join(str(int(counts.get(v, 0))) for v in values) + " |")
    skipped = summary["skipped"]
    lines += ["", f"## Skipped patients (bad label rows or DICOM files): {len(skipped)}", ""]
    lines += [f"- {item['patientId']}: {item['error']}" for item in skipped] or ["None."]
    lines += ["", "## Figures", "", f"![Box width and height]({BOX_SIZES_PNG})", "",
              f"![Example training crops with their boxes]({EXAMPLES_PNG})", ""]
    return "\n".join(lines)


def design_text(summary: dict) -> list[str]:
    """What the windows, the hidden splits, the probes and the metadata are, and why."""
    share = summary["hidden_ap_share_used"] if summary["hidden_ap_share"] is not None else None
    best = summary["best_fixed_map_training_halves"]
    balance = ("Validation and test are balanced on view position within each class: "
               f"{share:.0%} AP films among the normals and among the opacities, so that the film's view "
               "(AP films are mostly bedside films of sicker patients) does not predict the label there. "
               "Training is drawn from the patients left, as they come: its view mix is RSNA's, or more "
               "skewed where the hidden splits used up the rarer films (AP normals, PA opacities); see "
               "the view table below." if share is not None else
               "The hidden splits keep RSNA's view mix (no balancing was asked for).")
    fixed = (f"On half of the training opacity crops, the mean box mask of the other half (the best fixed map; "
             f"the reference data's `box_prior.npy` is that of all training boxes) scores activation_in_box "
             f"{best['activation_in_box']:.3f} against a mean box share of {best['box_share']:.3f}: "
             f"{best['ratio']:.2f} × the share ({best['images']} training opacity crops)."
             if best["ratio"] is not None else "Too few training opacity crops to measure the best fixed map.")
    return ["## Design", "",
            "**Windows.** Each crop is a square window whose side is a fixed multiple of an opacity box's "
            "larger side, placed so that the box's centre lands at a uniformly random point of the window "
            "(part of the box may fall outside), then shifted inside the radiograph. Normals' windows are "
            "drawn the same way around a box of a training opacity. So a map that ignores the pixels "
            "gains little from the box's place in the window. " + fixed, "",
            "**Hidden splits.** " + balance, "",
            "**Off-box probes.** Validation and test also hold windows cut from Lung Opacity films away "
            "from every box of the film, from films not otherwise used, served as ordinary items. Only "
            "the reference data mark them; they are left out of the classification metrics and measure "
            "how often a model calls a sick patient's film positive where no opacity is in view.", "",
            f"**Metadata.** Models see `{', '.join(INPUT_META_COLUMNS)}`; `view_position` is kept for the "
            "reference data's "
            "bias report only, because a rule on it alone beats the majority class by about 20 points "
            "of accuracy on RSNA's headers (`python -m hygieia.prepare.meta_check`).", ""]


HIDDEN_NOTE = ("Per class for the training split. Valid and test: all their served items together (both classes "
               "and the off-box probes), as anyone computes them from their `meta.csv`; a per-class figure of a "
               "hidden split would give labels away.")


def _groups(table: pd.DataFrame):
    """(split, items, rows): the training split per class, each hidden split whole (probes included)."""
    for split in SPLITS:
        rows = table[table["split"] == split]
        if split == "train":
            for label in (0, 1):
                yield split, CLASS_NAMES[label], rows[rows["label"] == label]
        else:
            yield split, "all served", rows


def box_size_figure(boxes: pd.DataFrame) -> Figure:
    """Histograms of box width and height in original pixels (the original design's Figure 2)."""
    figure = Figure(figsize=(8, 3.2))
    for axis, column in zip(figure.subplots(1, 2), ("width", "height")):
        axis.hist(boxes[column].to_numpy(), bins=30, color="#4c72b0")
        axis.set_xlabel(f"box {column} (pixels of the 1024×1024 radiograph)")
        axis.set_ylabel("boxes")
    figure.suptitle(f"Opacity boxes of the training patients (n = {len(boxes)})")
    figure.tight_layout()
    return figure


def examples_figure(train: pd.DataFrame, decoded: dict) -> Figure:
    """The first training crops of each class (rows: opacity, normal) with their boxes drawn."""
    figure = Figure(figsize=(EXAMPLES_PER_CLASS * 1.3, 3.4))
    axes = np.asarray(figure.subplots(2, EXAMPLES_PER_CLASS, squeeze=False))
    for row, label in enumerate((1, 0)):
        chosen = train[train["label"] == label].head(EXAMPLES_PER_CLASS)
        for column, axis in enumerate(axes[row]):
            axis.set_axis_off()
            if column >= len(chosen):
                continue
            sample = chosen.iloc[column]
            item = decoded[sample["patientId"]]
            axis.imshow(item.crop, cmap="gray", vmin=0, vmax=255)
            for x, y, w, h in item.crop_boxes:
                axis.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="red", linewidth=1))
            axis.set_title(f"{sample['id']} ({label})", fontsize=7)
    figure.suptitle("Training crops: opacity (top, boxes in red) and normal (bottom)", fontsize=9)
    figure.tight_layout()
    return figure
