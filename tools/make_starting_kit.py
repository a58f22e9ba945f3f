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

This notebook shows you the whole challenge:

1. the public data: chest X-ray crops, their labels (normal 0 / lung opacity 1), the radiologists'
   opacity boxes, and the patients' metadata;
2. the two versions of the data (pixels and MobileNetV2 features) and why the features are suspect;
3. the Model API and how your model's explanations are scored against hidden boxes;
4. a stratified 5-fold cross-validation of the baseline CNN on the public training data, with its
   spread, then one run of it through the real ingestion and scoring programs;
5. the tabular baseline, cross-validated the same way;
6. one use of the training boxes: a heatmap model trained on them;
7. the zip you upload, scored by `score_locally.py` as Codabench scores it.

**Setup**: the commands are in this kit's `README.md` (`pip install -r requirements.txt`, then this
notebook, in a browser or headless with `jupyter nbconvert`). Everything runs from the kit alone: the
competition's own code, the `hygieia` package, is in the kit's `hygieia/` folder.

**Settings** (environment variables, read by the next cell):

- `HYGIEIA_FAST=1`: a quick run: at most 300 training images (all of them when train is smaller)
  and short training; without it the notebook uses all the public data.
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
FOLDS = 5

sys.path.insert(0, str(KIT))                       # the kit's hygieia package and the helpers beside this notebook
from hygieia import dataset as ds
from hygieia.submission.loading import zip_submission
import box_heatmap
import figures
import local_eval

LIMIT = local_eval.FAST_IMAGES if FAST else None   # training images used here, None: all
%matplotlib inline
print(f"Python {sys.version.split()[0]} ({sys.executable})")
print(f"data: {DATA}\nfast: {FAST}")
source = KIT / "dataset_card" / "source.json"
if source.is_file() and json.loads(source.read_text())["source"] == "phantom":
    display(Markdown("**Synthetic data**: this kit was built from Hygieia's phantom, computer-generated "
                     "radiographs, not images of real patients."))
"""),
    ("md", r"""
## 1. The public data

`input_data/` holds three splits, each a folder of NumPy arrays and CSV tables:

| file | content |
|---|---|
| `images.npy` | (N, 100, 100) uint8 grayscale crops |
| `features.npy` | (N, 1280) float32 MobileNetV2 features (see section 2) |
| `meta.csv` | `id, age, sex`, and in **train only** `view_position` (AP or PA: on its own it predicts the label) |
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
The metadata (age, sex) is given for every split; the film's view position for train only. AP
radiographs are often taken at the bedside of patients too ill to stand, and in RSNA's data "opacity if AP"
alone beats always answering "normal" by about 20 points of accuracy, so valid and test withhold it
and are balanced on it (the scoring program's bias report uses it). Age and sex on their own do no
better than the majority class (the table after the plots gives the share of opacities per sex in
train). In train, the view lets you balance the groups class × view while training (group
reweighting, GroupDRO); in valid and test a view rule is worthless. Crops can still carry such cues
(markers, devices); the scores are there to catch that.
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
## 4. Cross-validation of the baseline

The hidden labels are not here, so we estimate a model's score on the public **train** split by
stratified k-fold cross-validation (scikit-learn's `StratifiedKFold`, 5 folds, the class shares kept
in every fold): the model is fitted on four folds, exactly as ingestion fits it (the dict `X` with
boxes, and `y`), and predicts the fifth, whose labels and boxes it does not see. Every image is
predicted once; the spread over the folds tells you how far a difference between two models is noise.

The kit ships the three sample submissions as the zips you would upload; we unpack them to folders you
can edit. `sample_submission/model.py` is the original design's baseline: an ImageNet MobileNetV2,
frozen, with a linear layer trained on top (crops resized to 128×128), and Grad-CAM on its last
convolutional block through `gradcam_target()`. With `HYGIEIA_FAST=1` it trains on at most 300
images.
"""),
    ("code", r"""
for name in ["sample_submission", "sample_submission_boxes", "sample_submission_tabular"]:
    if not (KIT / name / "model.py").is_file():
        with zipfile.ZipFile(KIT / f"{name}.zip") as archive:
            archive.extractall(KIT / name)
print((KIT / "sample_submission" / "model.py").read_text())
"""),
    ("code", r"""
METRICS = ["accuracy", "balanced_accuracy", "fbeta2", "recall", "precision", "auroc"]

def spread(folds):
    return pd.DataFrame({"mean": folds[METRICS].mean(), "sd": folds[METRICS].std(ddof=1)}).T.round(3)

cv = {"baseline (MobileNetV2)": local_eval.cross_validate(KIT / "sample_submission", train, FOLDS, LIMIT)}
display(cv["baseline (MobileNetV2)"].round(3))
display(spread(cv["baseline (MobileNetV2)"]))
"""),
    ("md", r"""
### One run through the real programs

Cross-validation calls the model directly. `score_locally.py` (see `README.md`) runs a zip the way
Codabench does: a local copy of Codabench's compute worker unpacks it, runs this kit's
`ingestion_program/` on it with only the program folder importable, then `scoring_program/`, on a
stratified 30 % of train held out as the local reference. Here it runs the baseline's zip; the
leaderboard row and the detailed results below come from that run.
"""),
    ("code", r"""
run = local_eval.score_submission(KIT, KIT / "sample_submission.zip", DATA, WORK / "baseline", fast=FAST)
LOCAL = WORK / "baseline_data"                    # the local split: input_data/ and reference_data/
scored = run.out_dir / "scoring" / "output"       # scores.json, detailed_scores.json, detailed_results.html
ingested = run.out_dir / "prediction" / "output"  # predictions.csv, heatmaps.npz
pd.DataFrame([dict(run.row)], index=["baseline (MobileNetV2)"])
"""),
    ("md", r"""
### Detailed results

The scoring program also writes `detailed_results.html` (open it in a browser) and the same results
as data in `detailed_scores.json`. On Codabench that page holds aggregates only, in both phases:
anyone may read it once the competition is published, so it names no image and shows none. Here the
hold-out's labels are yours, so `score_locally.py` asks for the per-image results too: the page adds
the ROC curve, galleries of the most confident false positives and false negatives and of the best
and worst maps against the boxes, and the per-image table. The explanation columns score 0 when there
is nothing to explain (a model without an explanation method, or no true positive);
`detailed_scores.json` then says why. Below they are re-plotted: the confusion matrix; the metrics per
sex and per view position (a model much better on one group than another may have learnt the group
rather than the lungs); then the heatmaps of the true positives over their crops, with the boxes and
the 95% rectangle.
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
EXPLANATION_METRICS = ["activation_in_box", "iou_95", "cc_map", "pointing_game"]
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
    figures.show_metric_histograms(per_image, EXPLANATION_METRICS)
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
explanation method, so its explanation columns score 0. Compare its cross-validated scores with the
CNN's, fold by fold, and remember the warning of section 2: a high accuracy on features of whole
radiographs may come from what surrounds the lungs.
"""),
    ("code", r"""
print((KIT / "sample_submission_tabular" / "model.py").read_text())
cv["tabular"] = local_eval.cross_validate(KIT / "sample_submission_tabular", train, FOLDS, LIMIT)
figures.show_folds(cv, ["accuracy", "fbeta2", "auroc"])
plt.show()
pd.concat({name: spread(folds) for name, folds in cv.items()})
"""),
    ("md", r"""
## 6. Using the training boxes: in the decision, not beside it

The headline explanation column, **`box_reliance`**, is not computed from your map. The ingestion
program takes a sample of each split's images, fills in one cell of a coarse grid at a time and asks
*your model's own* `predict_proba` what it thinks of each altered copy. Scoring then compares, on
the opacity crops, the probability lost when the box's cells are filled in with the probability lost
for as much area elsewhere (chance: 0). A map handed in by `explain` or drawn by Grad-CAM plays no
part in it: a map from elsewhere cannot raise it.

**A separate box-finder scores at chance.** `box_heatmap.BoxHeatmap` is a small fully convolutional
network fitted, pixel by pixel, to the box masks of the training opacity crops: its output is a map
of where boxes are, whatever the classifier does. We take the baseline's run of section 4, replace
its maps with the box-finder's (trained on the local training part only) and score again with the
kit's scoring program. The plausibility columns (`activation_in_box`, `activation_over_prior` ...)
move wherever there are true positives to explain; `box_reliance` stays exactly where it was,
because the classifier did not change.
"""),
    ("code", r"""
import shutil
from hygieia.scoring.score import score

local_train = ds.load_input_split(LOCAL / "input_data", "train")
crops = {}                                        # the local valid and test crops by id
for split in ("valid", "test"):
    local = ds.load_input_split(LOCAL / "input_data", split, features=False)
    crops.update(zip(local["ids"], local["images"]))
finder = box_heatmap.BoxHeatmap().fit(*box_heatmap.opacity_masks(local_train, np.arange(len(local_train["ids"]))))
COLUMNS = ["accuracy", "worst_group_accuracy", "box_reliance", "activation_in_box", "activation_over_prior"]

def with_box_finder(ingested_dir, name):
    # A copy of ingestion's output with the box-finder's maps in place of the model's, scored again.
    swapped, scores_dir = WORK / f"{name}_with_box_finder", WORK / f"{name}_with_box_finder_scores"
    shutil.rmtree(swapped, ignore_errors=True)
    shutil.copytree(ingested_dir, swapped)
    with np.load(ingested_dir / "heatmaps.npz", allow_pickle=False) as saved:
        explained = saved["ids"]
    maps = finder.heatmaps(np.stack([crops[key] for key in explained])) if len(explained) else np.zeros((0, 100, 100))
    np.savez_compressed(swapped / "heatmaps.npz", ids=explained, maps=maps.astype(np.float16))
    scores_dir.mkdir(parents=True, exist_ok=True)
    score(LOCAL / "reference_data" / "valid", swapped, scores_dir, progress=False)
    return scores_dir

def row(scores_dir):
    detailed = json.loads((Path(scores_dir) / "detailed_scores.json").read_text())
    values = {key: None if detailed["scores"].get(key) is None else round(detailed["scores"][key], 3)
              for key in COLUMNS}
    low, high = detailed["ci"]["box_reliance"]
    return {**values, "box_reliance 95% interval": f"[{low:+.3f}, {high:+.3f}]"}

rows = {"baseline (Grad-CAM of its classifier)": row(scored),
        "baseline + the box-finder's map": row(with_box_finder(ingested, "baseline"))}
pd.DataFrame(rows).T
"""),
    ("md", r"""
**A model whose decision is its map.** To win `box_reliance` the *decision* has to rest on the
opacity. `sample_submission_boxes/model.py` does this: a frozen MobileNetV2 cut after its 13th block
gives an 8×8 grid of cells, a small head scores every cell for opacity, and the image's probability
comes from its 4 most opaque cells, so the image is positive *because* some cells are. Training
uses the boxes as cell targets (inside a box: opacity; the rest of every crop, including the film
around the box of an opacity crop: none) and weights the groups class × view position
(`X["meta"]["view_position"]`, given for training only) so that the rare groups count as much as the
common ones. Its `explain` returns the 4 cells it decided on. Here it runs through the same local
worker as the baseline, on the same hold-out, and its maps too are swapped for the box-finder's.
"""),
    ("code", r"""
print((KIT / "sample_submission_boxes" / "README.md").read_text().split("## Training")[0])
boxes_run = local_eval.score_submission(KIT, KIT / "sample_submission_boxes.zip", DATA, WORK / "boxes", fast=FAST)
boxes_ingested = boxes_run.out_dir / "prediction" / "output"
rows["decision is its map (sample_submission_boxes)"] = row(boxes_run.out_dir / "scoring" / "output")
rows["sample_submission_boxes + the box-finder's map"] = row(with_box_finder(boxes_ingested, "boxes"))
table = pd.DataFrame(rows).T
display(table)
reliance = table["box_reliance"].tolist()
for own, swapped in ((0, 1), (2, 3)):
    print(f"box_reliance {table.index[own]}: {reliance[own]:+.3f}; with the box-finder's map "
          f"{reliance[swapped]:+.3f} ({'identical' if reliance[own] == reliance[swapped] else 'CHANGED'})")
"""),
    ("md", r"""
Why the scores come out this way. The box-finder's map sits on the boxes, so the map columns
(`activation_in_box`, `activation_over_prior`) follow it wherever there are true positives to explain,
but `box_reliance` does not move by a digit: it was measured through the model's `predict_proba`,
which the map does not touch. A baseline that finds few opacities here has few maps to score at all.

The cell model's own maps sit on the boxes too (they are the cells it decided on), and it separates
the classes better. Its `box_reliance` depends on the data. On the organizers' real radiographs, with
full training, it is above chance in both preparations and both hidden splits (+0.043 to +0.062,
every interval above 0, against −0.006 to +0.025 for the baseline; its `README.md` and the *Evaluation* page
give the table): filling in the opacity's cells costs it more probability than filling in as much
film elsewhere. On synthetic crops (the phantom, the tests' fakes) the opacity is a large, plain
patch: the model is sure of it from many cells, filling in any one of the 16 cells of the grid leaves
enough of the patch to keep its probability near 1, and `box_reliance` sits near 0. With
`HYGIEIA_FAST=1` it also trains on at most 300 crops, and the local hold-out is small: read the
intervals, not only the points.
"""),
    ("md", r"""
## 7. Your submission

Edit `sample_submission/model.py` (or start a new folder with a `model.py`), rerun sections 4 to 6,
and when you are happy zip the folder: `model.py` must be at the zip's root, with any helper files
beside it. `zip_submission` does exactly that, leaving out caches and hidden files.

Some directions: start from `sample_submission_boxes/` (section 6); fine-tune the backbone instead
of freezing it; augment the crops; use the groups of `X["meta"]` (GroupDRO instead of reweighting).
Mind the time: the ingestion program stops a run after its time budget (the platform kills it at
the phase's time limit); `HYGIEIA_TIME_BUDGET` changes that budget for local runs.
"""),
    ("code", r"""
SUBMISSION = zip_submission(KIT / "sample_submission", WORK / "submission.zip")
with zipfile.ZipFile(SUBMISSION) as archive:
    print(SUBMISSION, [info.filename for info in archive.infolist()])
"""),
    ("md", r"""
Finally, check the zip itself as Codabench will handle it, with the kit's command
`python score_locally.py local_run/submission.zip` (run here from the notebook). Status `Finished`
means the zip is ready: upload `local_run/submission.zip` on the competition's *My Submissions* page.
"""),
    ("code", r"""
local_eval.run_program(KIT / "score_locally.py", SUBMISSION, tail=40)
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
