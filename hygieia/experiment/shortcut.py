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
Every score of the clean and confounded sets (worst-group accuracy, shortcut gap, box reliance and
faithfulness from the evidence ingestion measured through the model, activation over prior, the
Grad-CAM columns...) is read from the scoring program's scores.json and detailed_scores.json, never
recomputed. The hidden sets hold ``prepare``'s off-box probes (a larger
share than the competition's, ``probe_share``, so that the shortcut gap is measured on enough of
them); a lung-field marker can fall inside a probe's window, so a probe from a marked opacity film
shows the marker without the opacity. Whole images hold no probe (a whole film shows its boxes).
The marker's mass share is the share of a heatmap on the marker box, mapped from the phantom's
``phantom_markers.csv`` into crop or whole-image pixels with ``private/samples.csv``'s windows.

Every seed is a complete replicate: its own phantoms, prepared splits, trainings and scores (the
results table's ``seed`` column); the report judges each score by its mean and range over seeds.

Caches (OUT/cache/ for phantoms and prepared data, OUT/runs/s<seed>/ for the models), each keyed by
what it is computed from, the code included (the ``hygieia`` modules its program imports):
phantom (generator code), prepared data (prepare's code and the phantom's key), a trained model
(ingestion's code, the sample submission and the prepared data's keys) and its scores (the scoring
program's code and the model's key). A change of the scoring code re-scores without re-training;
the rows (flip rates, marker mass) are recomputed from the cached outputs at every run. The data
caches also follow the modules shared with ingestion (``hygieia.dataset``...); ``reuse_data``
(``--reuse-data``) keeps them through a change known not to alter them, such as a new ingestion output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import hygieia
from hygieia import dataset as ds
from hygieia.boxes import box_mask
from hygieia.bundle.closure import import_closure
from hygieia.errors import HygieiaError
from hygieia.experiment import counterfactual as cf
from hygieia.files import write_csv, write_json, write_npy, write_npz
from hygieia.scoring import classification as cls
from hygieia.scoring.evidence import cell_shares
from hygieia.scoring.metrics import BY_KEY
from hygieia.scoring.score import DETAILED_JSON, SCORES_JSON

ROOT = Path(hygieia.__file__).resolve().parents[1]
INGESTION = ROOT / "ingestion_program"
SCORING = ROOT / "scoring_program"
SUBMISSIONS = {"image": ROOT / "sample_submission", "tabular": ROOT / "sample_submission_tabular",
               "boxes": ROOT / "sample_submission_boxes"}
CACHE_KEY_FILE = "experiment_key.json"
TIMING_FILE = "seconds.json"  # how long a cached stage took to build


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
    strengths: tuple[float, ...] = (0.8, 1.0)
    lung_strengths: tuple[float, ...] = (0.5, 0.8, 1.0)  # the marker inside a lung field; () for none
    offbox_strengths: tuple[float, ...] = (0.8, 1.0)  # over the lungs but away from every box; () for none
    probe_share: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    weights: Path | None = None
    fast: bool = False
    full_size: int = 128
    crop: int = 100
    test_fraction: float = 0.3
    workers: int = 1
    versions: tuple[str, ...] = ("crops", "whole", "features", "crops_boxes", "whole_boxes")
    reuse_data: bool = False  # keep cached phantoms and prepared data when only their code's digest changed
    sizes: dict = field(default_factory=dict)  # {seed: split sizes}, filled from each seed's clean phantom

    def check(self) -> None:
        if self.patients < 20:
            raise HygieiaError(f"--patients must be at least 20, got {self.patients}")
        if not 0.0 < self.probe_share <= 1.0:
            raise HygieiaError(f"the probe share must lie in (0, 1], got {self.probe_share:g}")
        for p in (*self.strengths, *self.lung_strengths, *self.offbox_strengths):
            if not 0.0 <= p <= 1.0:
                raise HygieiaError(f"confounder strengths must lie in [0, 1], got {p:g}")
        if not self.strengths:
            raise HygieiaError("--strengths: give at least one strength")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise HygieiaError(f"--seeds: give distinct non-negative seeds, got {list(self.seeds)}")
        unknown = set(self.versions) - set(VERSION_NAMES)
        if unknown:
            raise HygieiaError(f"unknown data version(s) {sorted(unknown)}; choose from {list(VERSION_NAMES)}")

    def versions_used(self) -> list[Version]:
        whole = f"full_{self.full_size}"
        every = {"crops": Version("crops", "", "image", whole=False),
                 "whole": Version("whole", whole, "image", whole=True),
                 "features": Version("features", "", "tabular", whole=False),
                 "crops_boxes": Version("crops_boxes", "", "boxes", whole=False),
                 "whole_boxes": Version("whole_boxes", whole, "boxes", whole=True)}
        return [every[name] for name in self.versions]

    def image_size(self, version: Version) -> int:
        """The side in pixels of ``version``'s images: the whole film's or the crop's."""
        return self.full_size if version.whole else self.crop


VERSION_NAMES = ("crops", "whole", "features", "crops_boxes", "whole_boxes")


def training_variants(config: ShortcutConfig) -> list[Variant]:
    """The clean control, the marker at each strength at the film's edge, inside a lung field, then over the
    lungs away from every opacity box."""
    corner = [Variant("marker", float(p), "corner") for p in config.strengths]
    lung = [Variant("marker", float(p), "lung") for p in config.lung_strengths]
    offbox = [Variant("marker", float(p), "offbox") for p in config.offbox_strengths]
    return [CLEAN, *corner, *lung, *offbox]


def counterfactual_of(variant: Variant) -> Variant:
    return Variant("marker", 0.0, "corner" if variant.confounder == "none" else variant.position)


# ---------------------------------------------------------------------------------------- caching

def _files_digest(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def code_files(*entry_points: str) -> set[Path]:
    """The files (``ROOT``-relative) or folders given and every ``hygieia`` module their Python files
    import (``hygieia.bundle.closure``, what the bundle vendors)."""
    files = set()
    for entry in entry_points:
        path = ROOT / entry
        sources = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files.update(sources)
        for source in sources:
            if source.suffix == ".py":
                files.update(import_closure(source, ROOT))
    return files


@functools.cache
def code_digest(*entry_points: str) -> str:
    """A digest of ``code_files``: a cached stage is redone when the code it ran changes."""
    return _files_digest(code_files(*entry_points))


PHANTOM_CODE = ("hygieia/rsna/phantom.py",)
PREPARE_CODE = ("hygieia/prepare/pipeline.py",)
SCORING_CODE = ("scoring_program/score.py",)


def training_entries(submission: str) -> tuple[str, ...]:
    """Ingestion (the trusted parent, the child process it starts) and the sample submission it trains."""
    return "ingestion_program/ingestion.py", SUBMISSIONS[submission].relative_to(ROOT).as_posix()


def phantom_code() -> str:
    return code_digest(*PHANTOM_CODE)


def prepare_code() -> str:
    return code_digest(*PREPARE_CODE)


def training_code(submission: str) -> str:
    return code_digest(*training_entries(submission))


def scoring_code() -> str:
    return code_digest(*SCORING_CODE)


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _read_key(folder: Path, name: str = CACHE_KEY_FILE):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _cached(folder: Path, key: dict, build) -> Path:
    """``build(staging)`` once per ``key``: a finished folder holds the key and how long it took;
    a changed key rebuilds."""
    if _read_key(folder) == key:
        return folder
    staging = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build(staging)
    write_json(staging / TIMING_FILE, {"seconds": round(time.perf_counter() - started, 1)})
    write_json(staging / CACHE_KEY_FILE, key)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def seconds_of(folder: Path) -> float:
    """How long a cached folder took to build (0 where not recorded)."""
    return float((_read_key(folder, TIMING_FILE) or {}).get("seconds", 0.0))


def _data_key(config: ShortcutConfig, folder: Path, key: dict) -> dict:
    """``key``; with ``config.reuse_data``, the cached folder's own key where the two differ only in the
    code digest (the data is kept, and what is computed from it keeps its key too)."""
    if config.reuse_data:
        cached = _read_key(folder)
        if cached is not None and {**cached, "code": key["code"]} == key:
            return cached
    return key


def phantom_folder(config: ShortcutConfig, variant: Variant, seed: int) -> Path:
    return config.out / "cache" / "phantom" / f"{variant.name}-n{config.patients}-s{seed}"


def phantom_key(config: ShortcutConfig, variant: Variant, seed: int) -> dict:
    key = {"patients": config.patients, "seed": seed, **variant.phantom_args(), "code": phantom_code()}
    return _data_key(config, phantom_folder(config, variant, seed), key)


def phantom(config: ShortcutConfig, variant: Variant, seed: int) -> Path:
    """The phantom download of one variant and seed, generated once (cached under OUT/cache/phantom/)."""
    from hygieia.rsna.phantom import generate_phantom

    folder = phantom_folder(config, variant, seed)
    return _cached(folder, phantom_key(config, variant, seed), lambda staging: generate_phantom(
        staging, patients=config.patients, seed=seed, workers=config.workers, progress=False,
        **variant.phantom_args()))


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


def id_secret(seed: int) -> str:
    """One id secret per seed, for every variant: the counterfactual matches a patient's crops across
    variants by id, and prepare's choices drawn from the secret stay the same for a seed."""
    return f"shortcut-experiment-ids-seed-{seed}".ljust(32, "-")


def prepared_folder(config: ShortcutConfig, variant: Variant, seed: int) -> Path:
    return config.out / "cache" / "prepared" / phantom_folder(config, variant, seed).name


def prepared_key(config: ShortcutConfig, variant: Variant, seed: int) -> dict:
    key = {"phantom": _key_digest(phantom_key(config, variant, seed)), **config.sizes[seed], "crop": config.crop,
           "full_size": config.full_size, "seed": seed, "id_secret": id_secret(seed),
           "probe_share": config.probe_share, "weights": str(config.weights) if config.weights else None,
           "code": prepare_code()}
    return _data_key(config, prepared_folder(config, variant, seed), key)


def prepared(config: ShortcutConfig, variant: Variant, seed: int) -> Path:
    """``prepare`` of one variant's phantom (crops and whole images), cached under OUT/cache/prepared/."""
    from hygieia.prepare.pipeline import prepare

    # one secret per seed for every variant (it keys the ids and every draw of prepare): the counterfactual
    # matches a patient's crops across variants by id. Public, like the phantom it prepares.
    source = phantom(config, variant, seed)
    folder = prepared_folder(config, variant, seed)
    return _cached(folder, prepared_key(config, variant, seed), lambda staging: prepare(
        source, staging, **config.sizes[seed], crop=config.crop, full_size=config.full_size,
        id_secret=id_secret(seed), probe_share=config.probe_share, weights=config.weights, progress=False))


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
    test = the others' test splits, ids tagged with the set's name."""
    inputs = run_dir / ds.INPUT_DIR
    shutil.copytree(train_root / ds.INPUT_DIR / "train", inputs / "train", dirs_exist_ok=True)
    parts = [(name, root / ds.INPUT_DIR / "test", root / ds.REFERENCE_DIR / "test")
             for name, root in eval_roots.items()]
    _concat_splits(parts[:1], inputs / "valid")
    _concat_splits(parts[1:], inputs / "test")


def build_references(run_dir: Path, eval_roots: dict[str, Path]) -> None:
    """``run_dir/ref/<set>``: each evaluation set's hidden test split, ids tagged, to score it."""
    shutil.rmtree(run_dir / "ref", ignore_errors=True)
    for name, root in eval_roots.items():
        _reference_set(name, root / ds.REFERENCE_DIR / "test", run_dir / "ref" / name)


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
    """The ingestion output restricted to ``ids`` (one evaluation set), for the scoring program: predictions,
    heatmaps and the evidence measured through the model (box reliance, faithfulness)."""
    predictions = pd.read_csv(output / ds.PREDICTIONS, dtype={"id": str})
    write_csv(out / ds.PREDICTIONS, predictions[predictions["id"].isin(set(ids))])
    with np.load(output / ds.HEATMAPS, allow_pickle=False) as archive:
        keep = np.isin(archive["ids"], ids)
        write_npz(out / ds.HEATMAPS, ids=archive["ids"][keep], maps=archive["maps"][keep])
    with np.load(output / ds.EVIDENCE, allow_pickle=False) as archive:  # what ingestion measured through the model
        keep = np.isin(archive["ids"], ids)
        write_npz(out / ds.EVIDENCE, ids=archive["ids"][keep], cells=archive["cells"], base=archive["base"][keep],
                  drops=archive["drops"][keep])
    shutil.copy2(output / ds.INGESTION_REPORT, out / ds.INGESTION_REPORT)


def score(run_dir: Path, name: str, output: Path, env: dict, key: dict) -> dict:
    """The scoring program on one evaluation set (cached in ``run_dir/scores/<name>`` by ``key``): its
    scores.json, each score's interval half-width (``<key>_ci_half``, from detailed_scores.json) and the
    probe counts and rates of its shortcut section."""
    scores = run_dir / "scores" / name
    if _read_key(scores) != key:
        score_input = run_dir / "score_input" / name
        shutil.rmtree(score_input, ignore_errors=True)
        shutil.rmtree(scores, ignore_errors=True)
        shutil.copytree(run_dir / "ref" / name, score_input / "ref")
        ids = ds.read_table(score_input / "ref" / ds.LABELS, ds.LABEL_COLUMNS)["id"].tolist()
        results_subset(output, ids, score_input / "res")
        started = time.perf_counter()
        _run([sys.executable, str(SCORING / "score.py"), str(score_input), str(scores)],
             run_dir / f"score_{name}.log", env, f"scoring of {run_dir} ({name})")
        write_json(scores / TIMING_FILE, {"seconds": round(time.perf_counter() - started, 1)})
        write_json(scores / CACHE_KEY_FILE, key)
        shutil.rmtree(score_input)
    detailed = json.loads((scores / DETAILED_JSON).read_text())
    halves = {f"{k}{CI_HALF}": (ci[1] - ci[0]) / 2 if ci and None not in ci else None
              for k, ci in detailed["ci"].items()}
    return {**json.loads((scores / SCORES_JSON).read_text()), **halves,
            **{k: detailed["shortcut"][k] for k in PROBE_KEYS}}


CI_HALF = "_ci_half"  # the results column of a score's 95 % interval half-width: "<key>_ci_half"
PROBE_KEYS = ("n_probes", "probe_positive_rate", "false_positive_rate")


def load_heatmaps(output: Path) -> dict[str, np.ndarray]:
    with np.load(output / ds.HEATMAPS, allow_pickle=False) as archive:
        return {i: m.astype(np.float32) for i, m in zip(archive["ids"].tolist(), archive["maps"])}


def marker_boxes_of_run(config: ShortcutConfig, version: Version, variants: dict[str, Variant],
                        seed: int) -> pd.DataFrame:
    """The marker box of every evaluation image that shows one, in that image's pixels (tagged ids)."""
    size = config.image_size(version)
    rows = []
    for name, variant in variants.items():
        if variant.confounder == "none":
            continue
        root = prepared(config, variant, seed)
        samples = cf.read_samples(root)
        test_ids = samples.index[samples["split"] == "test"].tolist()
        boxes = cf.marker_boxes(cf.read_markers(phantom(config, variant, seed)), samples, test_ids, size,
                                version.whole)
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


def marker_shares_box_cell(name: str, markers: pd.DataFrame, boxes: pd.DataFrame, cells: np.ndarray,
                           size: int) -> float:
    """For one evaluation set: the share of its opacity images showing the marker whose marker touches a cell
    of the evidence grid (``cells``, as in evidence.npz) that also holds part of the image's own opacity boxes:
    there, filling in the box's cells removes the marker too, and box reliance cannot tell the two apart."""
    mine = ds.boxes_by_id(markers[markers["id"].str.startswith(name + "-")])
    opacity = ds.boxes_by_id(boxes[boxes["id"].str.startswith(name + "-")])
    shown = [i for i in mine if i in opacity]
    if not shown:
        return float("nan")
    shared = [bool(((cell_shares(cells, mine[i], (size, size)) > 0)
                    & (cell_shares(cells, opacity[i], (size, size)) > 0)).any()) for i in shown]
    return float(np.mean(shared))


def evaluation_sets(train: Variant) -> dict[str, Variant]:
    sets = {"clean": CLEAN, "confounded": train, "counterfactual": counterfactual_of(train)}
    if train == CLEAN:
        sets.pop("confounded")
    return sets


def run_folder(config: ShortcutConfig, seed: int, version: Version, train: Variant) -> Path:
    return config.out / "runs" / f"s{seed}" / version.name / train.name


def training_key(config: ShortcutConfig, version: Version, train: Variant, seed: int) -> dict:
    """What a trained model depends on: the prepared data of its training and evaluation sets, the
    data version, ingestion's and the sample submission's code, the quick-training switch."""
    used = {"train": train, **evaluation_sets(train)}
    data = {name: _key_digest(prepared_key(config, v, seed)) for name, v in used.items()}
    return {"data": data, "version": asdict(version), "train": asdict(train), "fast": config.fast,
            "weights": str(config.weights) if config.weights else None, "code": training_code(version.submission)}


def trained(config: ShortcutConfig, version: Version, train: Variant, seed: int) -> Path:
    """Train ``version`` on ``train`` through the ingestion program (cached by its training key); its
    output folder."""
    run_dir = run_folder(config, seed, version, train)
    key = training_key(config, version, train, seed)
    if _read_key(run_dir) == key:
        return run_dir / "ingestion"
    shutil.rmtree(run_dir, ignore_errors=True)
    roots = {name: prepared(config, v, seed) / version.subdir for name, v in evaluation_sets(train).items()}
    build_run_input(run_dir, prepared(config, train, seed) / version.subdir, roots)
    started = time.perf_counter()
    output = ingest(run_dir, SUBMISSIONS[version.submission], program_env(config))
    write_json(run_dir / TIMING_FILE, {"seconds": round(time.perf_counter() - started, 1)})
    shutil.rmtree(run_dir / ds.INPUT_DIR)  # rebuilt from the prepared data if ever needed
    write_json(run_dir / CACHE_KEY_FILE, key)
    return output


def run_one(config: ShortcutConfig, version: Version, train: Variant, seed: int) -> list[dict]:
    """Train ``version`` on ``train`` and evaluate it (trainings and scores cached); one result row per
    evaluation set."""
    variants = evaluation_sets(train)
    output = trained(config, version, train, seed)
    run_dir = output.parent
    roots = {name: prepared(config, v, seed) / version.subdir for name, v in variants.items()}
    build_references(run_dir, roots)
    env = program_env(config)
    scoring_key = {"model": _key_digest(_read_key(run_dir)), "code": scoring_code()}
    predictions = pd.read_csv(output / ds.PREDICTIONS, dtype={"id": str}).set_index("id")
    markers = marker_boxes_of_run(config, version, variants, seed)
    write_csv(run_dir / "marker_boxes.csv", markers)
    heatmaps = load_heatmaps(output)
    with np.load(output / ds.EVIDENCE, allow_pickle=False) as archive:
        cells = archive["cells"]
    size = config.image_size(version)
    rows = []
    for name in variants:
        reference = ds.read_table(run_dir / "ref" / name / ds.LABELS, ds.REFERENCE_LABEL_COLUMNS)
        is_probe = reference["probe"].astype(int) == 1
        probe_ids = reference.loc[is_probe, "id"].tolist()
        truth = reference.loc[~is_probe, ds.LABEL_COLUMNS]  # flips and counterfactual scores leave probes out
        # The counterfactual set needs only predictions; the scoring program scores the other two.
        scores = (classification_scores(truth, predictions) if name == "counterfactual"
                  else score(run_dir, name, output, env, scoring_key))
        untagged = truth["id"].str.split("-", n=1).str[1]
        clean_labels = _set_labels(predictions, "clean").loc[untagged]
        labels = _set_labels(predictions, name)
        negatives = untagged[truth["label"].to_numpy() == 0]
        rows.append({"seed": seed, "version": version.name, "train": train.name, "position": train.position,
                     "strength": train.strength if train.confounder != "none" else float("nan"),
                     "eval": name, **{k: _number(v) for k, v in scores.items()},
                     **marker_summary(name, markers, heatmaps, size, probe_ids),
                     "marker_shares_box_cell": marker_shares_box_cell(
                         name, markers, ds.read_table(run_dir / "ref" / name / ds.BOXES, ds.BOX_COLUMNS), cells, size),
                     "flip_rate": cf.flip_rate(clean_labels, labels),
                     "flip_rate_negatives": cf.flip_rate(clean_labels.loc[negatives], labels)})
    return rows


def seconds_of_seed(config: ShortcutConfig, seed: int, variants, jobs) -> dict[str, float]:
    """The recorded build time of one seed's stages (cached stages counted at what they cost once)."""
    data = [(phantom(config, v, seed), prepared(config, v, seed)) for v in variants]
    runs = [run_folder(config, seed, version, train) for version, train in jobs]
    return {"phantoms": sum(seconds_of(p) for p, _ in data), "prepare": sum(seconds_of(p) for _, p in data),
            "training": sum(seconds_of(r) for r in runs),
            "scoring": sum(seconds_of(s) for r in runs for s in (r / "scores").glob("*"))}


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


# ------------------------------------------------------------------------------------ the whole run

def run_experiment(config: ShortcutConfig) -> pd.DataFrame:
    """Generate, prepare, train, score every seed; write the report (OUT/report/); return the results
    table (one row per seed × data version × training variant × evaluation set)."""
    from hygieia.experiment.report import write_report

    config.check()
    for program in (INGESTION / "ingestion.py", SCORING / "score.py", *[p / "model.py" for p in SUBMISSIONS.values()]):
        if not program.is_file():
            raise HygieiaError(f"{program}: not found; the experiment runs the bundle's programs from a "
                               "source checkout of Hygieia")
    config.out = Path(config.out)
    trains = training_variants(config)
    needed = sorted({CLEAN, *trains, *[counterfactual_of(v) for v in trains]}, key=lambda v: v.name)
    jobs = [(version, train) for version in config.versions_used() for train in trains]
    rows, seconds = [], {}
    for seed in config.seeds:
        config.sizes[seed] = split_sizes(phantom(config, CLEAN, seed), config.test_fraction, config.probe_share)
        for variant in tqdm(needed, desc=f"seed {seed}: phantoms + prepare", unit="variant", file=sys.stderr):
            prepared(config, variant, seed)
        for version, train in tqdm(jobs, desc=f"seed {seed}: train + score", unit="run", file=sys.stderr):
            rows += run_one(config, version, train, seed)
        seconds[seed] = seconds_of_seed(config, seed, needed, jobs)
    results = pd.DataFrame(rows)
    write_report(config, results, seconds)
    return results
