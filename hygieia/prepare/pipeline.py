"""``prepare``: from an RSNA download (or the phantom) to the competition's prepared dataset.

The dataset is built in a staging folder beside OUT_DIR and moved into place only when complete,
so a failure never leaves a half-written dataset nor harms a previous one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hygieia import dataset as ds
from hygieia.errors import DataError, HygieiaError
from hygieia.files import write_bytes, write_csv, write_json, write_npy
from hygieia.prepare.card import write_card
from hygieia.prepare.crops import DEFAULT_CONTEXT, make_window, off_box_window
from hygieia.prepare.decode import DecodeJobs, Decoded, Job, collate
from hygieia.prepare.features import FeatureExtractor
from hygieia.prepare.prior import box_prior, prior_scores
from hygieia.prepare.select import DEFAULT_PROBE_SHARE, assign_ids, draw_key, fitting_ap_share, keyed_order, select
from hygieia.prepare.views import patient_views
from hygieia.rsna.tables import BOX_FIELDS, IMAGES_DIR, NORMAL, OPACITY, read_tables
from hygieia.weights import resolve_weights_path

PRIVATE_DIR = "private"
SAMPLES_FILE = "samples.csv"
SECRET_FILE = "id_secret.txt"  # the key of the ids and of every draw: never published, not even hashed
SAMPLE_COLUMNS = ["id", "patientId", "split", "label", "probe", "view", "window_x", "window_y", "window_side"]
MANIFEST = "manifest.json"
BATCH_SIZE = 32
MIN_SECRET_CHARS = 32


def prepare(rsna_dir, out_dir, *, train=10000, valid=2000, test=2000, ratio=(3, 2), crop=100,
            context=DEFAULT_CONTEXT, window=None, full_size=None, id_secret=None,
            hidden_ap_share="auto", probe_share=DEFAULT_PROBE_SHARE, weights=None, workers=0,
            skip_bad=False, progress=True) -> dict:
    """Select, crop, decode and featurise RSNA radiographs into OUT_DIR (see docs/architecture.md).

    ``id_secret`` keys the ids and every random draw: which film goes where, the windows, the probes
    (default: the one kept in OUT_DIR/private/ by an earlier run, else a new random one); the same
    secret and arguments give the same bytes, and nothing public replays them. ``hidden_ap_share``:
    the AP share of both classes in valid and test; "auto" is the share nearest 0.5 the patients
    allow, None keeps RSNA's mix. ``probe_share``: off-box probes
    per hidden split, as a share of its opacities. Returns a summary: counts per split and label,
    probes, the best fixed map's scores, skipped files, output folder, seconds taken.
    """
    started = time.perf_counter()
    rsna_dir, out_dir = Path(rsna_dir), Path(out_dir)
    arguments = _check_arguments(rsna_dir, out_dir, train=train, valid=valid, test=test, ratio=ratio, crop=crop,
                                 context=context, window=window, full_size=full_size,
                                 hidden_ap_share=hidden_ap_share, probe_share=probe_share,
                                 weights=weights, workers=workers, skip_bad=skip_bad)
    secret = _id_secret(out_dir, id_secret)
    key = draw_key(secret)
    tables = read_tables(rsna_dir, skip_bad=skip_bad)
    patients, view_skipped = _with_views(rsna_dir, tables.patients, skip_bad)
    sizes = {"train": train, "valid": valid, "test": test}
    if hidden_ap_share == "auto":
        hidden_ap_share = fitting_ap_share(patients, sizes, tuple(ratio))
    samples, pools = select(patients, sizes, tuple(ratio), key, hidden_ap_share)
    boxes_of = {pid: group[BOX_FIELDS].to_numpy(np.float64)
                for pid, group in tables.boxes.groupby("patientId", sort=False)}
    train_positives = samples.loc[(samples["split"] == "train") & (samples["label"] == 1), "patientId"]
    if not len(train_positives):
        raise HygieiaError("the training split holds no Lung Opacity patient, so windows have no box "
                           "distribution to draw from; ask for a larger --train or another --ratio")
    box_pool = np.concatenate([boxes_of[pid] for pid in train_positives])
    geometry = dict(key=key, context=context, window=window, boxes_of=boxes_of, box_pool=box_pool)
    probes = Probes(pools, key, geometry)
    samples = pd.concat([samples.assign(probe=0), probes.pick(samples, probe_share)], ignore_index=True)
    extractor = FeatureExtractor(weights)  # before the long work: missing weights fail fast

    decoded, skipped, todo = {}, list(tables.skipped) + view_skipped, samples
    while len(todo):
        jobs = [_job(rsna_dir / IMAGES_DIR, row.patientId, row.label, probes.windows.get(row.patientId),
                     **geometry) for row in todo.itertuples()]
        bad = _decode(jobs, decoded, extractor, crop=crop, full_size=full_size, workers=workers,
                      skip_bad=skip_bad, progress=progress)
        samples, todo = _replace(samples, bad, pools, probes, decoded, balanced=hidden_ap_share is not None)
        skipped += [{"patientId": item.patient_id, "error": item.error} for item in bad]

    samples = assign_ids(samples, secret)
    staging = _staging_dir(out_dir)
    try:
        scores = _write_all(staging, samples, decoded, crop=crop, full_size=full_size)
        write_bytes(staging / PRIVATE_DIR / SECRET_FILE, (secret + "\n").encode())
        summary = _summary(samples, skipped, arguments, scores)
        write_card(staging / "card", samples, decoded, tables, summary)
        _write_manifest(staging, arguments, summary)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**summary, "out_dir": str(out_dir), "seconds": round(time.perf_counter() - started, 1)}


def _check_arguments(rsna_dir: Path, out_dir: Path, **args) -> dict:
    for name in ("train", "valid", "test"):
        if int(args[name]) < 1:
            raise HygieiaError(f"--{name} must be at least 1, got {args[name]}")
    if int(args["crop"]) < 8:
        raise HygieiaError(f"--crop must be at least 8 pixels, got {args['crop']}")
    if args["window"] is not None and int(args["window"]) < 1:
        raise HygieiaError(f"--window must be a positive number of pixels, got {args['window']}")
    if args["window"] is None and not float(args["context"]) > 0:
        raise HygieiaError(f"--context must be positive, got {args['context']}")
    if args["full_size"] is not None and int(args["full_size"]) < 8:
        raise HygieiaError(f"--full-size must be at least 8 pixels, got {args['full_size']}")
    share = args["hidden_ap_share"]
    if share not in (None, "auto") and not 0 <= float(share) <= 1:
        raise HygieiaError(f"--hidden-ap-share must lie in [0, 1] (or be 'none'), got {share}")
    if not 0 <= float(args["probe_share"]) <= 1:
        raise HygieiaError(f"--probe-share must lie in [0, 1], got {args['probe_share']}")
    if int(args["workers"]) < 0:
        raise HygieiaError(f"--workers must be 0 or more, got {args['workers']}")
    if not (rsna_dir / IMAGES_DIR).is_dir():
        raise DataError(f"{rsna_dir / IMAGES_DIR}: folder not found (RSNA_DIR must hold {IMAGES_DIR}/ "
                        "and the two label CSV files)")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise HygieiaError(f"{out_dir}: exists, is not empty and is not a prepared dataset; "
                           "choose a new or empty folder")
    weights = resolve_weights_path(args["weights"])
    args = {key: value for key, value in args.items() if key != "workers"}  # no effect on the bytes
    return {**args, "rsna_dir": str(rsna_dir.resolve()), "ratio": [int(v) for v in args["ratio"]],
            "weights": str(weights.resolve()) if weights else None,
            "weights_sha256": _sha256(weights) if weights else None}


def _id_secret(out_dir: Path, given: str | None) -> str:
    """The secret (the key of the ids and of every draw): ``given``, else the one an earlier run left in
    OUT_DIR/private/, else a new one."""
    if given is not None:
        given = given.strip()
        if len(given) < MIN_SECRET_CHARS:
            raise HygieiaError(f"the id secret must hold at least {MIN_SECRET_CHARS} characters (a guessable "
                               "secret gives the hidden labels away); omit it to have one generated")
        return given
    kept = out_dir / PRIVATE_DIR / SECRET_FILE
    if kept.is_file():
        return kept.read_text().strip()
    return secrets.token_hex(32)


def _with_views(rsna_dir: Path, patients: pd.DataFrame, skip_bad: bool) -> tuple[pd.DataFrame, list[dict]]:
    """The Normal and Lung Opacity patients with their view position (AP/PA)."""
    eligible = patients[patients["class"].isin([NORMAL, OPACITY])]
    views, skipped = patient_views(rsna_dir, eligible["patientId"], skip_bad)
    eligible = eligible[eligible["patientId"].isin(views.index)]
    return eligible.assign(view=eligible["patientId"].map(views)), skipped


def _rng(key: bytes, patient_id: str, *stream: int) -> np.random.Generator:
    """The random stream of one patient's draws, keyed by the secret's draw key."""
    digest = hmac.new(key, f"window:{patient_id}".encode(), hashlib.sha256).digest()
    return np.random.default_rng([int.from_bytes(digest, "big"), *stream])


class Probes:
    """Off-box probes: windows cut from Lung Opacity films that are not otherwise served, placed as a
    normal's window is (around a training box drawn at random) but overlapping none of the film's
    boxes. A film without room for one is passed over."""

    def __init__(self, pools: dict, key: bytes, geometry: dict):
        self.pools, self.key, self.geometry = pools, key, geometry
        unused = pd.Series(pools[(1, "AP")] + pools[(1, "PA")], dtype=object)
        self.queue = keyed_order(unused, key, "probe").tolist()
        self.windows: dict[str, tuple[int, int, int]] = {}
        self.passed_over = 0

    def pick(self, samples: pd.DataFrame, share: float) -> pd.DataFrame:
        """round(share × positives) probes for each hidden split."""
        rows = []
        for split in ds.SCORED_SPLITS:
            wanted = int(round(share * ((samples["split"] == split) & (samples["label"] == 1)).sum()))
            rows += [self.next(split) for _ in range(wanted)]
        return pd.DataFrame(rows, columns=["patientId", "label", "view", "split", "probe"])

    def next(self, split: str) -> tuple:
        """The next unused Lung Opacity film with room for an off-box window, taken from the pools."""
        g = self.geometry
        while self.queue:
            pid = self.queue.pop(0)
            view = next((v for (label, v), pool in self.pools.items() if label == 1 and pid in pool), None)
            if view is None:  # taken meanwhile to replace a bad file
                continue
            window = off_box_window(g["boxes_of"][pid], g["box_pool"], _rng(self.key, pid, 1),
                                    context=g["context"], window=g["window"])
            if window is None:
                self.passed_over += 1
                continue
            self.pools[(1, view)].remove(pid)
            self.windows[pid] = window
            return pid, 1, view, split, 1
        raise HygieiaError(f"not enough unused {OPACITY} films for the off-box probes ({len(self.windows)} "
                           f"found, {self.passed_over} films without room for a window away from their "
                           "boxes); ask for a smaller --probe-share or smaller splits")


def _job(images_dir: Path, patient_id: str, label: int, probe_window, *, key, context, window, boxes_of,
         box_pool) -> Job:
    """The window of one patient: a probe's own window, around one of its boxes, or for a normal
    around a training positive's box; random choices depend on (secret, patient) only."""
    rng = _rng(key, patient_id)
    boxes = boxes_of.get(patient_id, np.zeros((0, 4)))
    if probe_window is not None:
        return Job(patient_id, images_dir / f"{patient_id}.dcm", probe_window, boxes)
    anchor = boxes[rng.integers(len(boxes))] if label == 1 else box_pool[rng.integers(len(box_pool))]
    return Job(patient_id, images_dir / f"{patient_id}.dcm",
               make_window(anchor, rng, context=context, window=window), boxes)


def _decode(jobs: list[Job], decoded: dict, extractor: FeatureExtractor, *, crop, full_size, workers,
            skip_bad, progress) -> list[Decoded]:
    """Decode the jobs (``workers`` processes) and featurise them in batches; good results go into
    ``decoded``; bad ones stop the run, or with ``skip_bad`` are returned."""
    from torch.utils.data import DataLoader

    loader = DataLoader(DecodeJobs(jobs, crop, full_size), batch_size=BATCH_SIZE, num_workers=workers,
                        collate_fn=collate)
    bad = []
    with tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in loader:
            good = [item for item in batch if item.error is None]
            bad += [item for item in batch if item.error is not None]
            if bad and not skip_bad:
                raise DataError(f"{bad[0].error} (--skip-bad replaces bad files with other patients "
                                "and lists them in the dataset card)")
            if good:
                features = extractor(np.stack([item.net_input for item in good]))
                for item, vector in zip(good, features):
                    item.net_input, item.features = None, vector
                    decoded[item.patient_id] = item
            bar.update(len(batch))
    return bad


def _replace(samples: pd.DataFrame, bad: list[Decoded], pools: dict, probes: Probes, decoded: dict,
             balanced: bool):
    """Swap each bad sample for the next unused patient of its label, in the same split: of its view
    in balanced hidden splits, of its view if any is left elsewhere (a bad probe for the next probe film)."""
    if not bad:
        return samples, samples.iloc[:0]
    samples = samples.copy()
    for item in bad:
        row = samples.index[samples["patientId"] == item.patient_id][0]
        label, view, split = int(samples.at[row, "label"]), samples.at[row, "view"], samples.at[row, "split"]
        if samples.at[row, "probe"]:
            samples.loc[row, ["patientId", "label", "view", "split", "probe"]] = probes.next(split)
            continue
        views = [view] if balanced and split in ds.SCORED_SPLITS else sorted({view, "AP", "PA"}, key=view.__ne__)
        source = next((v for v in views if pools[(label, v)]), None)
        if source is None:
            raise HygieiaError(f"--skip-bad: no unused {' or '.join(views)} patient of label {label} is left to "
                               f"replace {item.patient_id} ({item.error})")
        samples.loc[row, ["patientId", "view"]] = pools[(label, source)].pop(0), source
    return samples, samples[~samples["patientId"].isin(decoded)]


def _staging_dir(out_dir: Path) -> Path:
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Replace OUT_DIR (empty or a previous prepared dataset) by the finished staging folder."""
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, out_dir)


def _write_all(root: Path, samples: pd.DataFrame, decoded: dict, *, crop: int, full_size) -> dict:
    """Both versions and the private table; returns the best fixed map's scores on the crops."""
    scores = _write_dataset(root, samples, decoded, "crop", "crop_boxes", crop)
    if full_size:  # probes are crops: a whole film would show its boxes
        _write_dataset(root / f"full_{full_size}", samples[samples["probe"] == 0], decoded, "full", "full_boxes",
                       full_size)
    windows = np.array([decoded[p].window for p in samples["patientId"]], dtype=np.int64).reshape(-1, 3)
    private = samples.assign(window_x=windows[:, 0], window_y=windows[:, 1], window_side=windows[:, 2])
    write_csv(root / PRIVATE_DIR / SAMPLES_FILE, private[SAMPLE_COLUMNS])
    return scores


def _write_dataset(root: Path, samples: pd.DataFrame, decoded: dict, image_key: str, boxes_key: str,
                   size: int) -> dict:
    """One version (crops or whole images); returns the best fixed map's scores on its hidden positives."""
    boxes_of = {}
    for split in ds.SPLITS:
        rows = samples[samples["split"] == split]
        items = [decoded[pid] for pid in rows["patientId"]]
        ids = rows["id"].tolist()
        images = np.stack([getattr(item, image_key) for item in items])
        features = np.stack([item.features for item in items]).astype(np.float32)
        meta = pd.DataFrame([{"id": i, **item.header} for i, item in zip(ids, items)], columns=ds.META_COLUMNS)
        labels = pd.DataFrame({"id": ids, "label": rows["label"].astype(np.int64).tolist(),
                               "probe": rows["probe"].astype(np.int64).tolist()})
        boxes = pd.DataFrame([(i, *box) for i, item in zip(ids, items) for box in getattr(item, boxes_key)],
                             columns=ds.BOX_COLUMNS)
        positives = rows["id"][(rows["label"] == 1) & (rows["probe"] == 0)]
        boxes_of[split] = [boxes.loc[boxes["id"] == i, BOX_FIELDS].to_numpy() for i in positives]
        public = root / ds.INPUT_DIR / split
        write_npy(public / ds.IMAGES, images)
        write_npy(public / ds.FEATURES, features)
        write_csv(public / ds.META, meta[ds.INPUT_META_COLUMNS])
        if split == "train":
            write_csv(public / ds.LABELS, labels[ds.LABEL_COLUMNS])
            write_csv(public / ds.BOXES, boxes)
            prior = box_prior(boxes_of["train"], (size, size))
        else:
            reference = root / ds.REFERENCE_DIR / split
            write_csv(reference / ds.LABELS, labels[ds.REFERENCE_LABEL_COLUMNS])
            write_csv(reference / ds.BOXES, boxes)
            write_csv(reference / ds.META, meta)
            write_npy(reference / ds.IMAGES, images)
            write_npy(reference / ds.BOX_PRIOR, prior)
            write_json(reference / ds.SPLIT_INFO, {"split": split, "final": split == "test"})
    return {"hidden": prior_scores(prior, boxes_of["valid"] + boxes_of["test"]),
            "training_halves": prior_scores(box_prior(boxes_of["train"][::2], (size, size)), boxes_of["train"][1::2])}


def _summary(samples: pd.DataFrame, skipped: list[dict], arguments: dict, prior: dict) -> dict:
    def count(split, label, probe=0):
        return int(((samples["split"] == split) & (samples["label"] == label) & (samples["probe"] == probe)).sum())

    counts = {split: {"normal": count(split, 0), "opacity": count(split, 1), "probes": count(split, 1, 1)}
              for split in ds.SPLITS}
    hidden = samples[samples["split"].isin(ds.SCORED_SPLITS) & (samples["probe"] == 0)]
    share = float((hidden["view"] == "AP").mean()) if len(hidden) else None
    return {"counts": counts, "ratio": arguments["ratio"], "hidden_ap_share": arguments["hidden_ap_share"],
            "hidden_ap_share_used": round(share, 4) if share is not None else None,
            "best_fixed_map": prior["hidden"], "best_fixed_map_training_halves": prior["training_halves"],
            "skipped": skipped}


def _write_manifest(root: Path, arguments: dict, summary: dict) -> None:
    import PIL
    import pydicom
    import torch
    import torchvision

    files = {path.relative_to(root).as_posix(): _sha256(path)
             for path in sorted(root.rglob("*")) if path.is_file() and path.name != SECRET_FILE}
    versions = {"numpy": np.__version__, "pandas": pd.__version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "pillow": PIL.__version__, "pydicom": pydicom.__version__}
    write_json(root / MANIFEST, {"arguments": arguments, "summary": summary, "versions": versions,
                                 "files": files})


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
