"""Write starting_kit/README.ipynb, the participants' notebook, from the cells below.

The notebook is kept here as Python source so that changes to it read as ordinary diffs; the
generated file has no outputs and fixed cell ids, so the same source always gives the same bytes.
Run ``python tools/make_starting_kit.py`` after editing, and commit both files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "starting_kit" / "README.ipynb"

CELLS = [
    ("md", r"""
# Hygieia starting kit: pneumonia detection from chest X-rays, with an explanation score

In about ten minutes this notebook shows you the whole challenge:

1. the public data: 100×100 chest X-ray crops, their labels (normal 0 / lung opacity 1), the
   radiologists' opacity boxes, and the patients' metadata;
2. the two versions of the data (pixels and MobileNetV2 features) and why the features are suspect;
3. the Model API and how your model's explanations are scored against hidden boxes;
4. a local run of the real ingestion and scoring programs on a hold-out carved from the public
   training data, for the baseline CNN and for the tabular baseline;
5. the zip you upload, checked by the same worker steps as on Codabench.

**Setup.** In the unpacked starting kit, with Python ≥ 3.10:

```bash
pip install -r requirements.txt    # numpy, pandas, scikit-learn, torch, torchvision, captum, matplotlib, jupyter ...
jupyter notebook README.ipynb
```

Nothing else is installed: the competition's own code (the `hygieia` package) comes vendored inside
`ingestion_program/` and `scoring_program/`, and this notebook imports it from there.

**Settings** (environment variables, read by the next cell):

- `HYGIEIA_FAST=1`: a quick run (a few hundred images, short training) that finishes in a few minutes
  on a laptop; without it the notebook uses all the public data.
- `HYGIEIA_DATA`: another data folder (an `input_data/` folder, or a folder holding one); default
  `input_data/` beside this notebook.
- `HYGIEIA_MOBILENET_WEIGHTS`: a torchvision `mobilenet_v2` state_dict, for offline machines; online,
  torchvision downloads the ImageNet weights the first time.
"""),
    ("code", r"""
import json
import os
import sys
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from sklearn.metrics import ConfusionMatrixDisplay

FAST = os.environ.get("HYGIEIA_FAST") == "1"
KIT = Path.cwd()                                   # the unpacked starting kit
DATA = Path(os.environ.get("HYGIEIA_DATA", KIT / "input_data"))
if (DATA / "input_data").is_dir():
    DATA = DATA / "input_data"
WORK = KIT / "local_run"                           # everything this notebook writes goes here

sys.path[:0] = [str(KIT), str(KIT / "scoring_program")]   # the helpers beside this notebook; hygieia
from hygieia import dataset as ds
from hygieia.scoring.keys import LEADERBOARD_COLUMNS
from hygieia.submission.loading import zip_submission
import figures
import local_eval

%matplotlib inline
print(f"Python {sys.version.split()[0]} ({sys.executable})")
print(f"data: {DATA}\nfast: {FAST}")
"""),
    ("md", r"""
## 1. The public data

`input_data/` holds three splits, each a folder of NumPy arrays and CSV tables:

| file | content |
|---|---|
| `images.npy` | (N, 100, 100) uint8 grayscale crops |
| `features.npy` | (N, 1280) float32 MobileNetV2 features (see section 2) |
| `meta.csv` | `id, age, sex` (the view position is withheld: on its own it predicts the label) |
| `labels.csv` | `id, label` — **train only** |
| `boxes.csv` | `id, x, y, width, height` of the opacity boxes, in crop pixels — **train only** |

The labels and boxes of `valid` (development phase) and `test` (final phase) are hidden: the scoring
program compares your predictions against them. `hygieia.dataset.load_input_split` reads a split as
the dict `X` your model receives.
"""),
    ("code", r"""
splits = {split: ds.load_input_split(DATA, split) for split in ds.SPLITS}
train = splits["train"]

def balance(X):
    if "labels" not in X:
        return {"normal (0)": "hidden", "opacity (1)": "hidden", "opacity share": "hidden", "boxes": "hidden"}
    labels = X["labels"]
    return {"normal (0)": int((labels == 0).sum()), "opacity (1)": int(labels.sum()),
            "opacity share": round(float(labels.mean()), 3), "boxes": len(X["boxes"])}

pd.DataFrame({split: {"images": X["images"].shape, "features": X["features"].shape, **balance(X)}
              for split, X in splits.items()}).T
"""),
    ("md", r"""
About 3 crops in 5 are normal and 2 in 5 show a lung opacity, in every split. An opacity crop is a
square window around one of the radiologists' boxes (red below; other boxes that fall in the window
are given too), 1.5 times the box's size with the box's centre anywhere in it (part of the box may
fall outside), resized to 100×100. A normal crop is cut from a healthy
radiograph around a box drawn from the training opacities' boxes, so that the crop's place and scale
in the chest do not give its label away.
"""),
    ("code", r"""
figures.show_crops(train, per_class=6)
plt.show()
"""),
    ("md", r"""
The metadata (age, sex) is given for every split. The film's view position is not: AP radiographs
are often taken at the bedside of patients too ill to stand, and in RSNA's data "opacity if AP"
alone beats always answering "normal" by about 20 points of accuracy, so it is kept for the scoring
program's bias report (validation and test are balanced on it). Age and sex on their own do no
better than the majority class (the table after the plots gives the share of opacities per sex in
train). Crops can still carry such cues (markers, devices); the scores are there to catch that.
"""),
    ("code", r"""
figures.show_metadata(splits)
plt.show()
opacity_rate = pd.Series(train["labels"], index=train["meta"].index).groupby(train["meta"]["sex"])
display(opacity_rate.agg(["count", "mean"]).rename(columns={"mean": "opacity share"}).round(3))
"""),
    ("md", r"""
## 2. Two versions of the data, and a warning

- **Crops** (`X["images"]`): the 100×100 pixel crops above. The original design cropped the
  radiographs to the lung region to *reduce bias*: the surroundings of a radiograph (text, markers,
  the edge of the detector, the patient's position) carry information about the hospital and the
  patient's condition, not about the lungs.
- **Features** (`X["features"]`): 1280 numbers per image, the last convolutional activations of an
  ImageNet MobileNetV2, averaged over space. They let you start with any tabular method
  (logistic regression, gradient boosting ...).

**Warning from the original design report:** the features are computed on the **whole radiograph**
(resized to 224×224), not on the crop. They therefore carry the background, burnt-in markers and
positioning the crops were designed to remove, and "results on the tabular data might be severely
biased". A good score on the features may come from such shortcuts. Nothing in the features can be
explained pixel by pixel on the crop, so a features-only model gets no explanation score.
"""),
    ("code", r"""
print("features:", train["features"].shape, train["features"].dtype,
      f"min {train['features'].min():.2f}, mean {train['features'].mean():.2f}, max {train['features'].max():.2f}")
"""),
    ("md", r"""
## 3. The Model API and the explanation protocol

A submission is a zip with `model.py` at its root, defining a class `Model`. The ingestion program
does this (the full reference is the `README.md` of `sample_submission.zip`, unpacked to
`sample_submission/` in section 4):

```python
model = Model()
model.fit(X_train, y_train)        # X: the dict above; y: (N,) array of 0/1
proba = model.predict_proba(X)     # (N,) probabilities of lung opacity, for valid and test
label = model.predict(X)           # optional; default proba >= 0.5
```

Explanations are optional, through one of two methods:

- `gradcam_target()` → `(module, layer)`: a `torch.nn.Module` taking (N, 1, H, W) float32 pixels/255
  and returning logits (N, 2) (or one opacity logit), and one of its layers, usually the last
  convolutional block. The ingestion program computes **Grad-CAM** (Captum's `LayerGradCam`) for the
  opacity logit, keeps its positive part and upsamples it to the crop's size.
- `explain(X)` → (N, H, W) non-negative heatmaps computed however you like.

Heatmaps are made for the valid and test crops your model predicts positive. The scoring program
keeps the **true positives** (predicted positive, labelled opacity) and compares each heatmap with that
crop's hidden boxes. Every metric ignores the heatmap's scale; each is averaged over true positives,
between 0 and 1, higher is better:

- **activation_in_box**: the share of the heatmap's total activation that falls inside the boxes.
  A heatmap spread evenly over the crop scores the boxes' share of the crop; one that looks only
  inside the boxes scores 1.
- **iou_95**: the smallest rectangle holding 95% of the activation, compared with the best-matching
  box by intersection over union. It rewards compact heatmaps on the box, but one rectangle cannot
  describe two separate hot spots.
- **cc_map**: the heatmap is thresholded at 20%, 30% ... 80% of its maximum; the boxes around its
  connected regions (at most 4, not tiny) are scored as detections with the RSNA challenge's
  metric (mean over IoU thresholds 0.4 ... 0.75 of TP / (TP + FP + FN)), averaged over the thresholds.
  It handles several opacities per crop.
- **pointing_game**: 1 when the heatmap's hottest pixel is inside a box, else 0.

The leaderboard ranks by **accuracy**; recall, precision, F-beta (β = 2, recall weighted more: a
missed pneumonia costs more than a false alarm), AUROC and the four explanation scores are shown
beside it.
"""),
    ("md", r"""
## 4. A local run of the baseline

The hidden labels are not here, so we make our own: part of the public **train** split is held out,
with its labels and boxes, as a local "reference". The rest is the local training data.
`local_eval.write_local_dataset` lays both out exactly as the competition does
(`input_data/` for ingestion, `reference_data/valid` and `reference_data/test` for scoring), and the
real programs from `ingestion_program/` and `scoring_program/` then run on them.
"""),
    ("code", r"""
rows = local_eval.split_rows(train["labels"], holdout=0.3, limit=300 if FAST else None)
LOCAL = local_eval.write_local_dataset(train, rows, WORK / "data")
pd.DataFrame({split: {"images": len(index), "opacity share": round(float(train["labels"][index].mean()), 3)}
              for split, index in rows.items()}).T
"""),
    ("md", r"""
The kit ships the two sample submissions as the zips you would upload; we unpack them to folders you
can edit. `sample_submission/model.py` is the original design's baseline: an ImageNet MobileNetV2,
frozen, with a linear layer trained on top (crops resized to 128×128), and Grad-CAM on its last
convolutional block through `gradcam_target()`. With `HYGIEIA_FAST=1` it trains on at most 300
images.
"""),
    ("code", r"""
for name in ["sample_submission", "sample_submission_tabular"]:
    if not (KIT / name / "model.py").is_file():
        with zipfile.ZipFile(KIT / f"{name}.zip") as archive:
            archive.extractall(KIT / name)
print((KIT / "sample_submission" / "model.py").read_text())
"""),
    ("md", r"""
The ingestion program trains the model on the local train split and writes `predictions.csv` and
`heatmaps.npz` for the local valid and test crops; the scoring program compares the valid ones with
the local reference, as the development phase does on Codabench.
"""),
    ("code", r"""
ingested = local_eval.ingest(KIT, LOCAL / "input_data", KIT / "sample_submission", WORK / "baseline_ingestion")
scored = local_eval.score(KIT, LOCAL / "reference_data" / "valid", ingested, WORK / "baseline_scores")
"""),
    ("md", r"""
### The leaderboard row

`scores.json` holds the leaderboard's columns. The explanation columns score 0 when there is nothing
to explain (a model without an explanation method, or no true positive); `detailed_scores.json`
then says why.
"""),
    ("code", r"""
TITLES = {column["key"]: column["title"] for column in LEADERBOARD_COLUMNS}

def leaderboard_row(scores_dir, name):
    scores = json.loads((scores_dir / "scores.json").read_text())
    return pd.DataFrame([{TITLES[key]: scores[key] for key in TITLES}], index=[name])

leaderboard_row(scored, "baseline (MobileNetV2)")
"""),
    ("md", r"""
### Detailed results

The scoring program also writes `detailed_results.html` (open it in a browser: it is what Codabench
shows beside your submission) and the same results as data in `detailed_scores.json`. Below they are
re-plotted: the confusion matrix; the metrics per sex and per view position (a model much better on
one group than another may have learnt the group rather than the lungs); then the heatmaps of the
true positives over their crops, with the hidden boxes and the 95% rectangle.
"""),
    ("code", r"""
detailed = json.loads((scored / "detailed_scores.json").read_text())
reference = ds.load_reference_split(LOCAL / "reference_data" / "valid")
predictions = pd.read_csv(ingested / "predictions.csv", dtype={"id": str}).set_index("id").loc[reference["ids"]]
ConfusionMatrixDisplay.from_predictions(reference["labels"], predictions["label"],
                                        display_labels=["normal", "opacity"], colorbar=False)
plt.title(f"baseline, local {detailed['split']} split ({detailed['n_scored']} crops)")
plt.show()
display(Markdown(f"Full report: [{(scored / 'detailed_results.html').relative_to(KIT)}]"
                 f"({(scored / 'detailed_results.html').relative_to(KIT).as_posix()})"))
for column, groups in detailed["bias"].items():
    display(Markdown(f"**by {column}**"))
    display(pd.DataFrame(groups).set_index("group").round(3))
"""),
    ("code", r"""
METRICS = ["activation_in_box", "iou_95", "cc_map", "pointing_game"]
explanation = detailed["explanation"]
print(f"explanation method: {explanation['method']}; true positives explained: "
      f"{explanation['n_true_positives']} of {explanation['n_positives']} opacity crops")
if explanation["images"]:
    per_image = pd.DataFrame(explanation["images"]).set_index("id")
    with np.load(ingested / "heatmaps.npz", allow_pickle=False) as saved:
        heatmaps = dict(zip(saved["ids"].tolist(), saved["maps"].astype(np.float32)))
    boxes = ds.boxes_by_id(reference["boxes"])
    row_of = {key: i for i, key in enumerate(reference["ids"])}
    shown = per_image.index[:12]
    figures.show_explanations(reference["images"][[row_of[k] for k in shown]], [heatmaps[k] for k in shown],
                              [boxes[k] for k in shown], per_image.loc[shown].to_dict("records"), list(shown))
    plt.show()
    figures.show_metric_histograms(per_image, METRICS)
    plt.show()
else:
    print(explanation["reason"])
"""),
    ("md", r"""
Read the heatmaps critically: where the hot spots sit outside the red boxes, the model looks at
something other than the opacity. Improving the explanation scores means a model that finds the
opacity where the radiologists saw it.

## 5. The tabular baseline

`sample_submission_tabular/model.py` fits a logistic regression on `X["features"]`. It has no
explanation method, so its explanation columns score 0. Compare its row with the CNN's, and
remember the warning of section 2: a high accuracy on features of whole radiographs may come from
what surrounds the lungs.
"""),
    ("code", r"""
print((KIT / "sample_submission_tabular" / "model.py").read_text())
ingested_tabular = local_eval.ingest(KIT, LOCAL / "input_data", KIT / "sample_submission_tabular",
                                     WORK / "tabular_ingestion")
scored_tabular = local_eval.score(KIT, LOCAL / "reference_data" / "valid", ingested_tabular,
                                  WORK / "tabular_scores")
predictions = pd.read_csv(ingested_tabular / "predictions.csv", dtype={"id": str}).set_index("id").loc[reference["ids"]]
ConfusionMatrixDisplay.from_predictions(reference["labels"], predictions["label"],
                                        display_labels=["normal", "opacity"], colorbar=False)
plt.title("tabular baseline, local valid split")
plt.show()
pd.concat([leaderboard_row(scored, "baseline (MobileNetV2)"), leaderboard_row(scored_tabular, "tabular")])
"""),
    ("md", r"""
## 6. Your submission

Edit `sample_submission/model.py` (or start a new folder with a `model.py`), rerun section 4, and
when you are happy zip the folder: `model.py` must be at the zip's root, with any helper files
beside it. `zip_submission` does exactly that, leaving out caches and hidden files.

Some directions: fine-tune the backbone instead of freezing it; augment the crops; use
`X["meta"]`; and use the training boxes, `X["boxes"]`, which are public: they can teach a model
*where* to look (for instance a loss on its attention map), which is what the explanation columns
reward. Mind the time: the ingestion program stops a run after 540 s of training and prediction
(the platform kills it at 600 s); `HYGIEIA_TIME_BUDGET` changes that budget for local runs.
"""),
    ("code", r"""
SUBMISSION = zip_submission(KIT / "sample_submission", WORK / "submission.zip")
with zipfile.ZipFile(SUBMISSION) as archive:
    print(SUBMISSION, [info.filename for info in archive.infolist()])
"""),
    ("md", r"""
Finally, check the zip itself as Codabench will handle it. `hygieia.bundle.worker` is a local copy of
Codabench's compute worker: it unpacks the zip as the platform does, runs the ingestion program on it
with only the program folder importable (as in the competition's container), then the scoring
program, and reads `scores.json` into a leaderboard row. Here it runs on a small bundle made of this
kit's programs and the local hold-out. Status `Finished` means the zip is ready: upload
`local_run/submission.zip` on the competition's *My Submissions* page.
"""),
    ("code", r"""
checked = local_eval.check_submission(KIT, SUBMISSION, LOCAL, WORK / "submission_check")
pd.DataFrame([dict(checked.row)], index=["submission.zip"])
"""),
]


def build_notebook() -> nbformat.NotebookNode:
    cells = []
    for index, (kind, source) in enumerate(CELLS):
        make = new_markdown_cell if kind == "md" else new_code_cell
        cell = make(source.strip("\n"))
        cell["id"] = f"cell-{index:02d}"
        cells.append(cell)
    notebook = new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return notebook


def notebook_text() -> str:
    return nbformat.writes(build_notebook()) + "\n"


def main() -> int:
    NOTEBOOK.write_text(notebook_text(), encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
