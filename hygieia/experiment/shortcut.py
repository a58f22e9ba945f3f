"""The shortcut experiment: does cropping remove a burnt-in marker shortcut, and which of the scoring
program's trust scores catch a model that uses it?

Phantom variants share patients, classes, boxes and anatomy (same seed); they differ only in the
marker. A variant at strength P puts the marker on a share P of opacity images and 1-P of the others.
For each data version (100x100 crops, whole images, the 1280 features) and each training variant,
the baseline submission is trained through the real ingestion program and scored by the real scoring
program on three test sets of the same patients:

    clean           no marker anywhere
    confounded      the training variant's own test split (same P)
    counterfactual  strength 0: the marker on every negative and on no positive

The flip rate is the share of test images whose predicted label differs between clean and
counterfactual; only negatives differ between the two, by the marker alone. (In the results table each
set's ``flip_rate`` compares it with the clean set; the counterfactual row's is the one reported.)
Every score of the clean and confounded sets (worst-group accuracy, shortcut gap, activation over
prior, the Grad-CAM columns...) is read from the scoring program's scores.json and
detailed_scores.json, never recomputed. The hidden sets hold ``prepare``'s off-box probes (a larger
share than the competition's, ``probe_share``, so that the shortcut gap is measured on enough of
them); a lung-field marker can fall inside a probe's window, so a probe from a marked opacity film
shows the marker without the opacity. Whole images hold no probe (a whole film shows its boxes).
The marker's mass share is the share of a heatmap on the marker box, mapped from the phantom's
``phantom_markers.csv`` into crop or whole-image pixels with ``private/samples.csv``'s windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import hygieia
from hygieia import dataset as ds
from hygieia.boxes import box_mask
from hygieia.errors import HygieiaError
from hygieia.experiment import counterfactual as cf
from hygieia.files import write_csv, write_json, write_npy, write_npz
from hygieia.scoring import classification as cls
from hygieia.scoring.metrics import BY_KEY
from hygieia.scoring.score import DETAILED_JSON, SCORES_JSON

ROOT = Path(hygieia.__file__).resolve().parents[1]
INGESTION = ROOT / "ingestion_program"
SCORING = ROOT / "scoring_program"
SUBMISSIONS = {"image": ROOT / "sample_submission", "tabular": ROOT / "sample_submission_tabular"}
CACHE_KEY_FILE = "experiment_key.json"


@dataclass(frozen=True)
class Variant:
    """One phantom: no marker (``confounder`` "none"), or a marker at ``strength`` and ``position``."""
    confounder: str
    strength: float = 0.0
    position: str = "corner"

    @property
    def name(self) -> str:
        return "clean" if self.confounder == "none" else f"{self.position}-{self.strength:g}"

    def phantom_args(self) -> dict:
        if self.confounder == "none":
            return {"confounder": "none"}
        return {"confounder": "marker", "strength": self.strength, "marker_position": self.position}


CLEAN = Variant("none")


@dataclass(frozen=True)
class Version:
    """A data version: where its images live in a prepared dataset, and which sample submission."""
    name: str
    subdir: str
    submission: str
    whole: bool


@dataclass
class ShortcutConfig:
    out: Path
    patients: int = 1500
    strengths: tuple[float, ...] = (0.5, 0.8, 0.95, 1.0)
    lung_strengths: tuple[float, ...] = (0.8, 1.0)  # the marker inside a lung field; () for none
    probe_share: float = 0.5
    seed: int = 0
    weights: Path | None = None
    fast: bool = False
    full_size: int = 128
    crop: int = 100
    test_fraction: float = 0.3
    workers: int = 1
    versions: tuple[str, ...] = ("crops", "whole", "features")
    sizes: dict = field(default_factory=dict)  # filled from the clean phantom's classes

    def check(self) -> None:
        if self.patients < 20:
            raise HygieiaError(f"--patients must be at least 20, got {self.patients}")
        if not 0.0 < self.probe_share <= 1.0:
            raise HygieiaError(f"the probe share must lie in (0, 1], got {self.probe_share:g}")
        for p in (*self.strengths, *self.lung_strengths):
            if not 0.0 <= p <= 1.0:
                raise HygieiaError(f"confounder strengths must lie in [0, 1], got {p:g}")
        if not self.strengths:
            raise HygieiaError("--strengths: give at least one strength")
        unknown = set(self.versions) - set(VERSION_NAMES)
        if unknown:
            raise HygieiaError(f"unknown data version(s) {sorted(unknown)}; choose from {list(VERSION_NAMES)}")

    def versions_used(self) -> list[Version]:
        every = {"crops": Version("crops", "", "image", whole=False),
                 "whole": Version("whole", f"full_{self.full_size}", "image", whole=True),
                 "features": Version("features", "", "tabular", whole=False)}
        return [every[name] for name in self.versions]


VERSION_NAMES = ("crops", "whole", "features")


def training_variants(config: ShortcutConfig) -> list[Variant]:
    """The clean control, the marker at each strength at the film's edge, then inside a lung field."""
    corner = [Variant("marker", float(p), "corner") for p in config.strengths]
    lung = [Variant("marker", float(p), "lung") for p in config.lung_strengths]
    return [CLEAN, *corner, *lung]


def counterfactual_of(variant: Variant) -> Variant:
    return Variant("marker", 0.0, "corner" if variant.confounder == "none" else variant.position)


# ---------------------------------------------------------------------------------------- caching

def _cached(folder: Path, key: dict, build) -> Path:
    """``build(staging)`` once per ``key``: a finished folder holds the key; a changed key rebuilds."""
    key_file = folder / CACHE_KEY_FILE
    if key_file.is_file() and json.loads(key_file.read_text()) == key:
        return folder
    staging = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    build(staging)
    write_json(staging / CACHE_KEY_FILE, key)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def phantom(config: ShortcutConfig, variant: Variant) -> Path:
    """The phantom download of one variant, generated once (cached under OUT/cache/phantom/)."""
    from hygieia.rsna.phantom import generate_phantom

    key = {"patients": config.patients, "seed": config.seed, **variant.phantom_args()}
    folder = config.out / "cache" / "phantom" / f"{variant.name}-n{config.patients}-s{config.seed}"
    return _cached(folder, key, lambda staging: generate_phantom(
        staging, patients=config.patients, seed=config.seed, workers=config.workers, **variant.phantom_args()))


def split_sizes(phantom_dir: Path, test_fraction: float, probe_share: float) -> dict[str, int]:
    """Train/valid/test sizes at 3:2 that use every Normal and Lung Opacity patient they can, less the
    opacity films ``prepare`` needs for its off-box probes (with a margin for films without room)."""
    from hygieia.rsna.tables import NORMAL, OPACITY, read_tables

    classes = read_tables(phantom_dir).patients["class"].value_counts()
    opacities = int(classes.get(OPACITY, 0))
    probe_films = int(np.ceil(1.5 * probe_share * opacities * (test_fraction + 0.05)))
    total = 5 * min(int(classes.get(NORMAL, 0)) // 3, (opacities - probe_films) // 2)
    test = int(round(total * test_fraction))
    valid = max(5, int(round(total * 0.05)))
    train = total - test - valid
    if train < 20 or test < 10:
        raise HygieiaError(f"{phantom_dir}: {dict(classes)} gives too few samples ({train} train, {test} test); "
                           "ask for more --patients")
    return {"train": train, "valid": valid, "test": test}


def prepared(config: ShortcutConfig, variant: Variant) -> Path:
    """``prepare`` of one variant's phantom (crops and whole images), cached under OUT/cache/prepared/."""
    from hygieia.prepare.pipeline import prepare

    source = phantom(config, variant)
    # one secret for every variant (it keys the ids and every draw of prepare): the counterfactual matches a
    # patient's crops across variants by id. Public, like the phantom it prepares.
    id_secret = f"shortcut-experiment-ids-seed-{config.seed}".ljust(32, "-")
    key = {"phantom": str(source), **config.sizes, "crop": config.crop, "full_size": config.full_size,
           "seed": config.seed, "id_secret": id_secret, "draws": "keyed by the secret",
           "probe_share": config.probe_share, "weights": str(config.weights) if config.weights else None}
    folder = config.out / "cache" / "prepared" / source.name
    return _cached(folder, key, lambda staging: prepare(
        source, staging, **config.sizes, crop=config.crop, full_size=config.full_size,
        id_secret=id_secret, probe_share=config.probe_share, weights=config.weights, progress=False))


# ------------------------------------------------------------------------- one training + its scores

def _retag(frame: pd.DataFrame, tag: str) -> pd.DataFrame:
    return frame.assign(id=tag + "-" + frame["id"])


def _concat_splits(parts: list[tuple[str, Path, Path]], public: Path) -> None:
    """Write one input split from (tag, input split dir, reference split dir) parts, ids tagged."""
    images = np.concatenate([ds.read_array(p / ds.IMAGES, np.uint8, 3) for _, p, _ in parts])
    features = np.concatenate([ds.read_array(p / ds.FEATURES, np.float32, 2) for _, p, _ in parts])
    meta = pd.concat([_retag(ds.read_table(p / ds.META, ds.INPUT_META_COLUMNS), t) for t, p, _ in parts])
    write_npy(public / ds.IMAGES, images)
    write_npy(public / ds.FEATURES, features)
    write_csv(public / ds.META, meta)


def _reference_set(tag: str, ref_split: Path, out: Path) -> None:
    """A scoring reference folder: ``ref_split`` with ids tagged."""
    for name, columns in ((ds.LABELS, ds.REFERENCE_LABEL_COLUMNS), (ds.BOXES, ds.BOX_COLUMNS),
                          (ds.META, ds.META_COLUMNS)):
        write_csv(out / name, _retag(ds.read_table(ref_split / name, columns), tag))
    write_npy(out / ds.IMAGES, ds.read_array(ref_split / ds.IMAGES, np.uint8, 3))
    for name in (ds.BOX_PRIOR, ds.SPLIT_INFO):
        shutil.copy2(ref_split / name, out / name)


def build_run_input(run_dir: Path, train_root: Path, eval_roots: dict[str, Path]) -> None:
    """``run_dir/input_data``: train of ``train_root``; valid = the first evaluation set's test split,
    test = the others' test splits, ids tagged with the set's name; ``run_dir/ref/<set>`` to score each."""
    inputs = run_dir / ds.INPUT_DIR
    shutil.copytree(train_root / ds.INPUT_DIR / "train", inputs / "train", dirs_exist_ok=True)
    parts = [(name, root / ds.INPUT_DIR / "test", root / ds.REFERENCE_DIR / "test")
             for name, root in eval_roots.items()]
    _concat_splits(parts[:1], inputs / "valid")
    _concat_splits(parts[1:], inputs / "test")
    for name, _, ref in parts:
        _reference_set(name, ref, run_dir / "ref" / name)


def _run(command: list[str], log: Path, env: dict, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise HygieiaError(f"{what} failed (exit {done.returncode}); log {log}:\n{tail}")


def program_env(config: ShortcutConfig) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if config.weights:
        env["HYGIEIA_MOBILENET_WEIGHTS"] = str(Path(config.weights).resolve())
    if config.fast:
        env["HYGIEIA_FAST"] = "1"
    else:
        env.pop("HYGIEIA_FAST", None)
    return env


def ingest(run_dir: Path, submission: Path, env: dict) -> Path:
    output = run_dir / "ingestion"
    shutil.rmtree(output, ignore_errors=True)
    _run([sys.executable, str(INGESTION / "ingestion.py"), str(run_dir / ds.INPUT_DIR), str(output),
          str(INGESTION), str(submission)], run_dir / "ingestion.log", env, f"ingestion of {run_dir}")
    report = json.loads((output / ds.INGESTION_REPORT).read_text())
    if report.get("status") != "ok":
        raise HygieiaError(f"ingestion of {run_dir} failed: {(report.get('error') or {}).get('message')}")
    return output


def results_subset(output: Path, ids: list[str], out: Path) -> None:
    """The ingestion output restricted to ``ids`` (one evaluation set), for the scoring program."""
    predictions = pd.read_csv(output / ds.PREDICTIONS, dtype={"id": str})
    write_csv(out / ds.PREDICTIONS, predictions[predictions["id"].isin(set(ids))])
    with np.load(output / ds.HEATMAPS, allow_pickle=False) as archive:
        keep = np.isin(archive["ids"], ids)
        write_npz(out / ds.HEATMAPS, ids=archive["ids"][keep], maps=archive["maps"][keep])
    shutil.copy2(output / ds.INGESTION_REPORT, out / ds.INGESTION_REPORT)


def score(run_dir: Path, name: str, output: Path, env: dict) -> dict:
    """Run the scoring program on one evaluation set: its scores.json, with the probe counts and rates
    of detailed_scores.json's shortcut section."""
    score_input = run_dir / "score_input" / name
    shutil.rmtree(score_input, ignore_errors=True)
    shutil.copytree(run_dir / "ref" / name, score_input / "ref")
    ids = ds.read_table(score_input / "ref" / ds.LABELS, ds.LABEL_COLUMNS)["id"].tolist()
    results_subset(output, ids, score_input / "res")
    scores = run_dir / "scores" / name
    _run([sys.executable, str(SCORING / "score.py"), str(score_input), str(scores)],
         run_dir / f"score_{name}.log", env, f"scoring of {run_dir} ({name})")
    shortcut = json.loads((scores / DETAILED_JSON).read_text())["shortcut"]
    return {**json.loads((scores / SCORES_JSON).read_text()),
            **{key: shortcut[key] for key in PROBE_KEYS}}


PROBE_KEYS = ("n_probes", "probe_positive_rate", "false_positive_rate")


def load_heatmaps(output: Path) -> dict[str, np.ndarray]:
    with np.load(output / ds.HEATMAPS, allow_pickle=False) as archive:
        return {i: m.astype(np.float32) for i, m in zip(archive["ids"].tolist(), archive["maps"])}


def marker_boxes_of_run(config: ShortcutConfig, version: Version, variants: dict[str, Variant]) -> pd.DataFrame:
    """The marker box of every evaluation image that shows one, in that image's pixels (tagged ids)."""
    size = config.full_size if version.whole else config.crop
    rows = []
    for name, variant in variants.items():
        if variant.confounder == "none":
            continue
        root = prepared(config, variant)
        samples = cf.read_samples(root)
        test_ids = samples.index[samples["split"] == "test"].tolist()
        boxes = cf.marker_boxes(cf.read_markers(phantom(config, variant)), samples, test_ids, size, version.whole)
        rows += [(f"{name}-{i}", *box) for i in test_ids for box in boxes[i]]
    return pd.DataFrame(rows, columns=ds.BOX_COLUMNS)


def marker_summary(name: str, markers: pd.DataFrame, heatmaps: dict[str, np.ndarray], size: int,
                   probe_ids: list[str]) -> dict:
    """For one evaluation set: mean share of heatmap mass on the marker over the explained images
    showing one, their count, the share of the image the marker covers (what a uniform map puts
    there), and the share of the set's probes that show the marker."""
    mine = markers[markers["id"].str.startswith(name + "-")]
    boxes = ds.boxes_by_id(mine)
    shares = cf.marker_mass({i: heatmaps[i] for i in boxes if i in heatmaps}, boxes)
    areas = [box_mask(b, (size, size)).mean() for b in boxes.values()]
    return {"marker_mass": float(shares.mean()) if len(shares) else float("nan"),
            "marker_images": int(len(shares)),
            "marker_area": float(np.mean(areas)) if areas else float("nan"),
            "probes_showing_marker": float(np.mean([i in boxes for i in probe_ids])) if probe_ids else float("nan")}


def run_one(config: ShortcutConfig, version: Version, train: Variant) -> list[dict]:
    """Train ``version`` on ``train`` and evaluate it; one result row per evaluation set."""
    variants = {"clean": CLEAN, "confounded": train, "counterfactual": counterfactual_of(train)}
    if train == CLEAN:
        variants.pop("confounded")
    roots = {name: prepared(config, v) / version.subdir for name, v in variants.items()}
    run_dir = config.out / "runs" / version.name / train.name
    key = {"config": _config_key(config), "version": asdict(version), "train": asdict(train),
           "code": _programs_digest()}
    rows_file = run_dir / "rows.json"
    if rows_file.is_file() and (run_dir / CACHE_KEY_FILE).is_file() and \
            json.loads((run_dir / CACHE_KEY_FILE).read_text()) == key:
        return json.loads(rows_file.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    build_run_input(run_dir, prepared(config, train) / version.subdir, roots)
    env = program_env(config)
    output = ingest(run_dir, SUBMISSIONS[version.submission], env)
    predictions = pd.read_csv(output / ds.PREDICTIONS, dtype={"id": str}).set_index("id")
    markers = marker_boxes_of_run(config, version, variants)
    write_csv(run_dir / "marker_boxes.csv", markers)
    heatmaps = load_heatmaps(output)
    size = config.full_size if version.whole else config.crop
    rows = []
    for name in variants:
        reference = ds.read_table(run_dir / "ref" / name / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)
        is_probe = reference["probe"].astype(int) == 1
        probe_ids = reference.loc[is_probe, "id"].tolist()
        truth = reference.loc[~is_probe, ds.LABEL_COLUMNS]  # flips and counterfactual scores leave probes out
        # The counterfactual set needs only predictions; the scoring program scores the other two.
        scores = (classification_scores(truth, predictions) if name == "counterfactual"
                  else score(run_dir, name, output, env))
        untagged = truth["id"].str.split("-", n=1).str[1]
        clean_labels = _set_labels(predictions, "clean").loc[untagged]
        labels = _set_labels(predictions, name)
        negatives = untagged[truth["label"].to_numpy() == 0]
        rows.append({"version": version.name, "train": train.name, "position": train.position,
                     "strength": train.strength if train.confounder != "none" else float("nan"),
                     "eval": name, **{k: _number(v) for k, v in scores.items()},
                     **marker_summary(name, markers, heatmaps, size, probe_ids),
                     "flip_rate": cf.flip_rate(clean_labels, labels),
                     "flip_rate_negatives": cf.flip_rate(clean_labels.loc[negatives], labels)})
    write_json(rows_file, _json_safe(rows))
    write_json(run_dir / CACHE_KEY_FILE, key)
    return rows


def classification_scores(truth: pd.DataFrame, predictions: pd.DataFrame) -> dict:
    """Accuracy, F-beta (2) and AUROC of one evaluation set, from ingestion's predictions (the metric
    table's computations)."""
    y = truth["label"].to_numpy()
    rows = predictions.loc[truth["id"]]
    counts = cls.Counts.of(y, rows["label"].to_numpy())
    auroc = BY_KEY["auroc"].score(y, rows["proba"].to_numpy()) if len(set(y)) == 2 else float("nan")
    return {"accuracy": float(BY_KEY["accuracy"].rate(counts)), "auroc": auroc,
            "fbeta2": float(BY_KEY["fbeta2"].rate(counts))}


def _set_labels(predictions: pd.DataFrame, name: str) -> pd.Series:
    """Predicted labels of one evaluation set, indexed by the untagged id."""
    rows = predictions[predictions.index.str.startswith(name + "-")]
    return pd.Series(rows["label"].to_numpy(), index=rows.index.str.split("-", n=1).str[1])


def _number(value):
    """A score as a float (NaN for a score the scoring program left empty)."""
    return float("nan") if value is None else float(value)


def _json_safe(rows: list[dict]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()} for row in rows]


def _config_key(config: ShortcutConfig) -> dict:
    return {"patients": config.patients, "seed": config.seed, "fast": config.fast, "sizes": config.sizes,
            "probe_share": config.probe_share,
            "full_size": config.full_size, "crop": config.crop,
            "weights": str(config.weights) if config.weights else None}


def _programs_digest() -> str:
    """A digest of the code that trains and scores a run (ingestion, scoring, the sample submissions),
    so that a cached run is redone when that code changes."""
    digest = hashlib.sha256()
    folders = [ROOT / "hygieia" / "submission", ROOT / "hygieia" / "scoring", *SUBMISSIONS.values()]
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ the whole run

def run_experiment(config: ShortcutConfig) -> pd.DataFrame:
    """Generate, prepare, train, score; write the report (OUT/report/); return the results table."""
    from hygieia.experiment.report import write_report

    config.check()
    for program in (INGESTION / "ingestion.py", SCORING / "score.py", *[p / "model.py" for p in SUBMISSIONS.values()]):
        if not program.is_file():
            raise HygieiaError(f"{program}: not found; the experiment runs the bundle's programs from a "
                               "source checkout of Hygieia")
    config.out = Path(config.out)
    config.sizes = split_sizes(phantom(config, CLEAN), config.test_fraction, config.probe_share)
    trains = training_variants(config)
    needed = {CLEAN, *trains, *[counterfactual_of(v) for v in trains]}
    for variant in tqdm(sorted(needed, key=lambda v: v.name), desc="phantoms + prepare", unit="variant",
                        file=sys.stderr):
        prepared(config, variant)
    jobs = [(version, train) for version in config.versions_used() for train in trains]
    rows = []
    for version, train in tqdm(jobs, desc="train + score", unit="run", file=sys.stderr):
        rows += run_one(config, version, train)
    results = pd.DataFrame(rows)
    write_report(config, results)
    return results
