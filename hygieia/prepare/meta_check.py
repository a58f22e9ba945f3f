"""Which header fields may models see? A field is kept in ``X["meta"]`` only if the best one-field
rule (a threshold for numbers, a label per category otherwise), fit on one half of the patients and
scored on the other (and the other way round), is no better than predicting the majority class: the
95 % bootstrap interval of its accuracy gain must reach 0.

    python -m hygieia.prepare.meta_check RSNA_DIR [RSNA_DIR ...]

RSNA_DIR with ``stage_2_train_dicom_headers.csv.gz`` is read from that table, otherwise from the
DICOM files' headers. Normal vs Lung Opacity, opacities subsampled to the competition's 3:2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from hygieia.dataset import read_table
from hygieia.errors import DataError, HygieiaError
from hygieia.prepare.select import LABEL_OF_CLASS, seeded_order
from hygieia.prepare.views import HEADERS_FILE
from hygieia.rsna.dicom import parse_age
from hygieia.rsna.tables import IMAGES_DIR, read_tables

FIELDS = ("age", "sex", "view_position")
NUMERIC = {"age"}


def header_table(rsna_dir: str | Path, ratio: tuple[int, int] = (3, 2), seed: int = 0) -> pd.DataFrame:
    """patientId, label, age, sex, view_position of the Normal and Lung Opacity patients, at ``ratio``."""
    rsna_dir = Path(rsna_dir)
    patients = read_tables(rsna_dir).patients
    patients = patients[patients["class"].isin(list(LABEL_OF_CLASS))]
    patients = patients.assign(label=patients["class"].map(LABEL_OF_CLASS))
    negatives, positives = (patients.loc[patients["label"] == k, "patientId"].reset_index(drop=True) for k in (0, 1))
    n_neg = min(len(negatives), len(positives) * ratio[0] // ratio[1])
    n_pos = n_neg * ratio[1] // ratio[0]
    keep = pd.concat([seeded_order(negatives, seed, "meta")[:n_neg], seeded_order(positives, seed, "meta")[:n_pos]])
    patients = patients[patients["patientId"].isin(set(keep))].reset_index(drop=True)
    return patients[["patientId", "label"]].join(_headers(rsna_dir, patients["patientId"]))


def _headers(rsna_dir: Path, patient_ids: pd.Series) -> pd.DataFrame:
    if (rsna_dir / HEADERS_FILE).is_file():
        table = read_table(rsna_dir / HEADERS_FILE, ["PatientID", "PatientAge", "PatientSex", "ViewPosition"],
                           dtype=str, keep_default_na=False).drop_duplicates("PatientID").set_index("PatientID")
        rows = table.reindex(patient_ids.tolist())
        return pd.DataFrame({"age": [parse_age(v, rsna_dir / HEADERS_FILE) for v in rows["PatientAge"]],
                             "sex": rows["PatientSex"].to_numpy(), "view_position": rows["ViewPosition"].to_numpy()})
    rows = []
    for pid in patient_ids:
        path = rsna_dir / IMAGES_DIR / f"{pid}.dcm"
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["PatientAge", "PatientSex", "ViewPosition"])
        except (InvalidDicomError, OSError, ValueError, EOFError) as err:
            raise DataError(f"{path}: not a readable DICOM file ({err})") from err
        rows.append({"age": parse_age(header.get("PatientAge"), path), "sex": str(header.get("PatientSex", "")),
                     "view_position": str(header.get("ViewPosition", ""))})
    return pd.DataFrame(rows)


def fit_rule(values: pd.Series, labels: np.ndarray, numeric: bool):
    """The best one-field rule on these rows, as a function values → 0/1 predictions."""
    majority = int(labels.mean() > 0.5)
    if not numeric:
        table = pd.DataFrame({"v": values.fillna("missing").astype(str).to_numpy(), "y": labels})
        by_value = table.groupby("v")["y"].mean()
        decision = {v: int(rate > 0.5) if rate != 0.5 else majority for v, rate in by_value.items()}
        return lambda new: new.fillna("missing").astype(str).map(decision).fillna(majority).astype(int).to_numpy()
    known = values.notna().to_numpy()
    x, y = values[known].astype(float).to_numpy(), labels[known]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    cuts = np.flatnonzero(np.diff(x)) + 1  # predict one class below each cut, the other above
    ones_below = np.concatenate([[0], np.cumsum(y)])[cuts]
    zeros_below = cuts - ones_below
    ones_above, zeros_above = y.sum() - ones_below, (len(y) - y.sum()) - zeros_below
    best = (max(y.sum(), len(y) - y.sum()), None, None)  # a constant rule
    for gain, high in ((zeros_below + ones_above, 1), (ones_below + zeros_above, 0)):
        if len(gain) and gain.max() > best[0]:
            k = int(np.argmax(gain))
            best = (gain[k], (x[cuts[k] - 1] + x[cuts[k]]) / 2, high)
    _, threshold, high = best
    if threshold is None:
        return lambda new: np.full(len(new), majority)
    return lambda new: np.where(new.isna(), majority, np.where(new.astype(float) > threshold, high, 1 - high))


def check_field(table: pd.DataFrame, field: str, seed: int = 0, resamples: int = 2000) -> dict:
    """Two-fold accuracy of the best one-field rule against the majority class, with a 95 % bootstrap
    interval of the gain. ``predicts_label``: the interval lies above 0."""
    labels = table["label"].to_numpy()
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(table), int)
    for k in (0, 1):  # stratified halves
        members = rng.permutation(np.flatnonzero(labels == k))
        fold[members[: len(members) // 2]] = 1
    rule_hit, majority_hit = np.zeros(len(table)), np.zeros(len(table))
    for part in (0, 1):
        fit, score = fold != part, fold == part
        rule = fit_rule(table[field][fit], labels[fit], field in NUMERIC)
        rule_hit[score] = rule(table[field][score]) == labels[score]
        majority_hit[score] = int(labels[fit].mean() > 0.5) == labels[score]
    gain = rule_hit - majority_hit
    boot = np.array([gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(resamples)])
    low, high = np.quantile(boot, [0.025, 0.975])
    return {"field": field, "n": len(table), "rule_accuracy": round(rule_hit.mean(), 4),
            "majority_accuracy": round(majority_hit.mean(), 4), "gain": round(gain.mean(), 4),
            "gain_low": round(float(low), 4), "gain_high": round(float(high), 4),
            "predicts_label": bool(low > 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hygieia.prepare.meta_check", description=__doc__.split("\n")[0])
    parser.add_argument("rsna_dirs", nargs="+", metavar="RSNA_DIR")
    args = parser.parse_args(argv)
    try:
        for rsna_dir in args.rsna_dirs:
            table = header_table(rsna_dir)
            print(f"{rsna_dir}: {len(table)} patients, {int(table['label'].sum())} Lung Opacity")
            for field in FIELDS:
                r = check_field(table, field)
                print(f"  {field:14s} rule {r['rule_accuracy']:.3f}  majority {r['majority_accuracy']:.3f}  "
                      f"gain {r['gain']:+.3f} [{r['gain_low']:+.3f}, {r['gain_high']:+.3f}]  "
                      f"{'PREDICTS THE LABEL: drop' if r['predicts_label'] else 'keep'}")
    except HygieiaError as err:
        print(f"meta_check: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
