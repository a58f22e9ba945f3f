"""Which patients go where: Normal → 0, Lung Opacity → 1, the third class left out; one image per
patient; stratified, patient-disjoint splits at the requested normal:opacity ratio; opaque ids."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from hygieia.dataset import SPLITS
from hygieia.errors import HygieiaError
from hygieia.rsna.tables import NORMAL, OPACITY

LABEL_OF_CLASS = {NORMAL: 0, OPACITY: 1}
CLASS_NAMES = {0: NORMAL, 1: OPACITY}


def class_counts(n: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """(normals, opacities) of a split of ``n`` at ``ratio`` normal:opacity; opacities = round(n * b/(a+b))."""
    negatives, positives = ratio
    n_pos = int(round(n * positives / (negatives + positives)))
    return n - n_pos, n_pos


def seeded_order(patient_ids: pd.Series, seed: int, stream: str) -> pd.Series:
    """The patients in an order fixed by the seed (a keyed hash, so adding or removing one patient
    does not move the others)."""
    keys = patient_ids.map(lambda pid: hashlib.sha256(f"{stream}:{seed}:{pid}".encode()).hexdigest())
    return patient_ids.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)


def select(patients: pd.DataFrame, sizes: dict[str, int], ratio: tuple[int, int] = (3, 2),
           seed: int = 0) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Pick the samples of each split.

    ``patients`` has patientId and class (``hygieia.rsna.tables.RsnaTables.patients``).
    Returns (samples: patientId, label, split — in split order), and the pool of unused patients per
    label, in seeded order, from which bad files are replaced.
    """
    if min(ratio) < 0 or sum(ratio) <= 0:
        raise HygieiaError(f"ratio {ratio[0]}:{ratio[1]} must be two non-negative numbers, not both 0")
    needs = {split: class_counts(n, ratio) for split, n in sizes.items()}
    pools = {}
    for label, name in CLASS_NAMES.items():
        eligible = patients.loc[patients["class"] == name, "patientId"].drop_duplicates()
        pools[label] = seeded_order(eligible.reset_index(drop=True), seed, "select").tolist()
    need = [sum(counts[label] for counts in needs.values()) for label in (0, 1)]
    if need[0] > len(pools[0]) or need[1] > len(pools[1]):
        request = ", ".join(f"{split}={n}" for split, n in sizes.items())
        raise HygieiaError(
            f"not enough patients: {request} at {ratio[0]}:{ratio[1]} needs {need[0]} {NORMAL} and "
            f"{need[1]} {OPACITY} patients; the labels hold {len(pools[0])} {NORMAL} and "
            f"{len(pools[1])} {OPACITY}")
    rows = []
    for split, counts in needs.items():
        for label in (0, 1):
            taken, pools[label] = pools[label][:counts[label]], pools[label][counts[label]:]
            rows += [(pid, label, split) for pid in taken]
    return pd.DataFrame(rows, columns=["patientId", "label", "split"]), pools


def assign_ids(samples: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Add opaque ids ("h" + 8 hex digits of a keyed hash of seed and patient) and sort each split
    by id, which shuffles it. Unique across splits (a collision takes the next hash)."""
    taken: set[str] = set()
    ids = []
    for pid in samples["patientId"]:
        attempt = 0
        while True:
            digest = hashlib.sha256(f"id:{seed}:{pid}:{attempt}".encode()).hexdigest()
            candidate = "h" + digest[:8]
            if candidate not in taken:
                break
            attempt += 1
        taken.add(candidate)
        ids.append(candidate)
    out = samples.assign(id=ids)
    order = {split: i for i, split in enumerate(SPLITS)}
    out = out.assign(_split=out["split"].map(order)).sort_values(["_split", "id"], kind="stable")
    return out.drop(columns="_split").reset_index(drop=True)
