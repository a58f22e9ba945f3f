"""Trust scores on real radiographs: five models through the real ingestion and scoring programs.

    hygieia prepare RSNA_DIR DATA_DIR --train 630 --valid 200 --test 200 --full-size 128
    python tools/real_radiographs.py DATA_DIR OUT_DIR [--reuse] [--markdown TABLE.md] [--json OUT.json]

DATA_DIR is a ``hygieia prepare`` output with view-balanced hidden splits and a whole-film version
(``--full-size 128``). The models:

- the CNN baseline (``sample_submission/``) on the crops;
- the tabular baseline (``sample_submission_tabular/``): MobileNetV2 features of the whole film;
- a view-only rule: "positive if AP", read from the reference metadata (``X`` does not carry the
  view) and written into the submission as a lookup table;
- the CNN baseline trained on the crops to predict the film's view (AP = 1) instead of the label,
  with the training views from ``private/samples.csv``: a crop model that uses the view on purpose;
- the CNN baseline fed whole films (``full_128/``), which hold no probes, so no shortcut gap.

Each is ingested once (``hygieia ingest``) and scored on valid and test (``hygieia score``), as
subprocesses of this interpreter; OUT_DIR/<model>/ keeps every run's outputs (``--reuse`` keeps a
successful ingestion instead of running it again). Prints one markdown row per model and split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hygieia import dataset as ds  # noqa: E402
from hygieia.errors import HygieiaError  # noqa: E402
from hygieia.scoring import shortcut  # noqa: E402
from hygieia.scoring.metrics import EXPLANATION_KEYS  # noqa: E402

FULL = "full_128"

VIEW_ONLY_MODEL = '''"""A view-only rule: probability 1 for AP films, 0 for PA films, from views.csv (id,view),
written by tools/real_radiographs.py from the reference metadata. It never looks at the pixels."""
import csv
from pathlib import Path

import numpy as np


class Model:
    def __init__(self):
        with open(Path(__file__).resolve().parent / "views.csv", newline="") as file:
            self.views = {row["id"]: row["view"] for row in csv.DictReader(file)}

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        missing = [i for i in X["ids"] if i not in self.views]
        if missing:
            raise KeyError(f"views.csv has no view for {len(missing)} id(s), e.g. {missing[:3]}")
        return np.array([float(self.views[i] == "AP") for i in X["ids"]])
'''

VIEW_CNN_MODEL = '''"""The CNN baseline trained to predict the film's view (AP = 1) instead of the label: a crop model
that uses the view on purpose. Training views: train_views.csv (id,view), written by
tools/real_radiographs.py from the organizers' private samples table."""
import csv
from pathlib import Path

import numpy as np

from baseline_model import Model as Baseline


class Model(Baseline):
    def fit(self, X, y):
        with open(Path(__file__).resolve().parent / "train_views.csv", newline="") as file:
            views = {row["id"]: row["view"] for row in csv.DictReader(file)}
        return super().fit(X, np.array([int(views[i] == "AP") for i in X["ids"]]))
'''


def private_samples(data_dir: Path) -> pd.DataFrame:
    path = data_dir / "private" / "samples.csv"
    if not path.is_file():
        raise HygieiaError(f"{path}: missing; DATA_DIR must be a `hygieia prepare` output")
    return ds.read_table(path, ["id", "split", "view"])


def write_view_only(data_dir: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metas = [ds.read_table(data_dir / ds.REFERENCE_DIR / s / ds.META, ds.META_COLUMNS) for s in ds.SCORED_SPLITS]
    views = pd.concat(metas)[["id", "view_position"]].rename(columns={"view_position": "view"})
    views.to_csv(folder / "views.csv", index=False)
    (folder / "model.py").write_text(VIEW_ONLY_MODEL)
    return folder


def write_view_cnn(data_dir: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    samples = private_samples(data_dir)
    samples[samples["split"] == "train"][["id", "view"]].to_csv(folder / "train_views.csv", index=False)
    shutil.copyfile(ROOT / "sample_submission" / "model.py", folder / "baseline_model.py")
    (folder / "model.py").write_text(VIEW_CNN_MODEL)
    return folder


# (key, row title, data folder under DATA_DIR, submission: a folder of the repository or a writer)
MODELS = (
    ("cnn_crops", "CNN baseline (crops)", ".", ROOT / "sample_submission"),
    ("tabular", "tabular baseline (whole-film features)", ".", ROOT / "sample_submission_tabular"),
    ("view_only", "view-only rule (positive if AP)", ".", write_view_only),
    ("cnn_view", "CNN trained on the view (crops)", ".", write_view_cnn),
    ("cnn_whole_film", "CNN baseline fed whole films (128 px)", FULL, ROOT / "sample_submission"),
)


def hygieia(*args: Path | str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYGIEIA_FAST", None)   # full training: these are the numbers we publish
    return subprocess.run([sys.executable, "-m", "hygieia", *map(str, args)], env=env, capture_output=True,
                          text=True)


def ingest(input_data: Path, submission: Path, output: Path, reuse: bool) -> dict:
    report_path = output / "ingestion.json"
    if reuse and report_path.is_file() and json.loads(report_path.read_text())["status"] == "ok":
        return json.loads(report_path.read_text())
    if output.exists():
        shutil.rmtree(output)
    done = hygieia("ingest", input_data, output, submission)
    (output.parent / "ingestion.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise HygieiaError(f"ingestion of {submission} on {input_data} failed (exit {done.returncode}); "
                           f"see {output.parent / 'ingestion.log'}:\n{done.stderr[-2000:]}")
    return json.loads(report_path.read_text())


def score(ref_dir: Path, res_dir: Path, out_dir: Path) -> dict:
    done = hygieia("score", ref_dir, res_dir, out_dir)
    (out_dir.parent / f"score_{ref_dir.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise HygieiaError(f"scoring {res_dir} against {ref_dir} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return json.loads((out_dir / "detailed_scores.json").read_text())


def unmatched_gap(ref_dir: Path, res_dir: Path) -> dict:
    """For comparison with the leaderboard's view-matched gap: the gap with every probe compared with
    all normal films (what the leaderboard computed before 2026-12-03), and the AP share of probes and
    of normals. A rule that reads only the view scores there the difference of the two AP shares."""
    labels = ds.read_table(ref_dir / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS).set_index("id")
    view = ds.read_table(ref_dir / ds.META, ds.META_COLUMNS).set_index("id").loc[labels.index, "view_position"]
    called = ds.read_table(res_dir / "predictions.csv", ["id", "proba", "label"]).set_index("id").loc[labels.index]
    probes, normal = labels["probe"].to_numpy() == 1, (labels["label"].to_numpy() == 0)
    gap = shortcut.shortcut_gap(labels["label"].to_numpy(), called["label"].to_numpy(), probes)
    ap = (view == "AP").to_numpy()
    return {"unmatched_gap": gap["value"],
            "probe_ap_share": float(ap[probes].mean()) if probes.any() else None,
            "normal_ap_share": float(ap[normal & ~probes].mean())}


def summary(results: dict) -> dict:
    """The columns of the table from one detailed_scores.json."""
    scores, ci, gap = results["scores"], results["ci"], results["shortcut"]
    by_group = {row["group"]: row for row in results["bias"]["class_view_position"]}
    return {"n_scored": results["n_scored"], "n_probes": results["n_probes"],
            "accuracy": scores["accuracy"], "auroc": scores["auroc"],
            "worst_group_accuracy": scores["worst_group_accuracy"], "worst_group_ci": ci["worst_group_accuracy"],
            "worst_group": results["worst_group"]["group"],
            "group_accuracy": {g: row["accuracy"] for g, row in by_group.items()},
            "shortcut_gap": scores["shortcut_gap"], "shortcut_gap_ci": ci["shortcut_gap"],
            "probe_positive_rate": gap["probe_positive_rate"], "false_positive_rate": gap["false_positive_rate"],
            "explanation_method": results["explanation"]["method"],
            "n_true_positives": results["explanation"]["n_true_positives"],
            **{k: scores[k] for k in EXPLANATION_KEYS}}


def run_all(data_dir: Path, out_dir: Path, reuse: bool, only: list[str] | None = None) -> list[dict]:
    rows = []
    for key, title, folder, submission in MODELS:
        if only and key not in only:
            continue
        root = data_dir / folder
        if not (root / ds.INPUT_DIR).is_dir():
            raise HygieiaError(f"{root / ds.INPUT_DIR}: missing (prepare with --full-size 128 for {FULL}/)")
        if callable(submission):
            submission = submission(data_dir, out_dir / key / "submission")
        print(f"{title}: ingestion ...", file=sys.stderr, flush=True)
        report = ingest(root / ds.INPUT_DIR, submission, out_dir / key / "ingestion", reuse)
        for split in ds.SCORED_SPLITS:
            results = score(root / ds.REFERENCE_DIR / split, out_dir / key / "ingestion", out_dir / key / split)
            rows.append({"model": key, "title": title, "split": split, "fit_s": report["durations"].get("fit"),
                         **summary(results), **unmatched_gap(root / ds.REFERENCE_DIR / split,
                                                             out_dir / key / "ingestion")})
    return rows


def interval(value, ci) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.2f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| model | split | accuracy | AUROC | worst-group accuracy [95% CI] (group) | shortcut gap [95% CI] "
             "(probes called +, view-matched FP rate) | gap without view matching | "
             + " | ".join(EXPLANATION_KEYS) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(EXPLANATION_KEYS)]
    for r in rows:
        gap = ("n/a (whole films: no probes)" if r["shortcut_gap"] is None else
               f"{interval(r['shortcut_gap'], r['shortcut_gap_ci'])} ({r['probe_positive_rate']:.2f}, "
               f"{r['false_positive_rate']:.2f})")
        unmatched = "n/a" if r["unmatched_gap"] is None else f"{r['unmatched_gap']:.2f}"
        explained = (" | ".join(f"{r[k]:.3f}" for k in EXPLANATION_KEYS) if r["explanation_method"]
                     else " | ".join(["no maps"] * len(EXPLANATION_KEYS)))
        lines.append(f"| {r['title']} | {r['split']} | {r['accuracy']:.3f} | {r['auroc']:.3f} | "
                     f"{interval(r['worst_group_accuracy'], r['worst_group_ci'])} ({r['worst_group']}) | {gap} | "
                     f"{unmatched} | {explained} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="`hygieia prepare` output with --full-size 128")
    parser.add_argument("out_dir", type=Path, help="folder for the submissions, runs and scores")
    parser.add_argument("--reuse", action="store_true", help="keep a successful ingestion found in OUT_DIR")
    parser.add_argument("--only", nargs="+", choices=[m[0] for m in MODELS], help="run only these models")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    try:
        rows = run_all(args.data_dir, args.out_dir, args.reuse, args.only)
    except HygieiaError as err:
        sys.exit(f"real_radiographs: {err}")
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
