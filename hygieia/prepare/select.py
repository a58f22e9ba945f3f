"""Which patients go where: Normal → 0, Lung Opacity → 1, the third class left out; one image per
patient; patient-disjoint splits at the requested normal:opacity ratio; hidden splits balanced on
view position within each class; opaque ids. Every order and every id is keyed by the organizer's
secret (``draw_key``), so that nobody without it can replay the selection from RSNA's public files."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

from hygieia.dataset import SCORED_SPLITS, SPLITS
from hygieia.errors import HygieiaError
from hygieia.rsna.tables import NORMAL, OPACITY

LABEL_OF_CLASS = {NORMAL: 0, OPACITY: 1}
CLASS_NAMES = {0: NORMAL, 1: OPACITY}
VIEWS = ("AP", "PA")
DEFAULT_AP_SHARE = 0.5  # the full RSNA data allow 0.16–0.68 at 10,000/2,000/2,000 and 3:2
DEFAULT_PROBE_SHARE = 0.1  # off-box probes per hidden split, as a share of its opacities


def class_counts(n: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """(normals, opacities) of a split of ``n`` at ``ratio`` normal:opacity; opacities = round(n * b/(a+b))."""
    negatives, positives = ratio
    n_pos = int(round(n * positives / (negatives + positives)))
    return n - n_pos, n_pos


def view_counts(n: int, ap_share: float) -> dict[str, int]:
    """{AP: round(n × share), PA: the rest}."""
    n_ap = int(round(n * ap_share))
    return {"AP": n_ap, "PA": n - n_ap}


def draw_key(secret: str) -> bytes:
    """The key of every random draw of ``prepare`` (selection, windows, probes), derived from the secret
    that also keys the ids: without it the draws cannot be replayed."""
    return hmac.new(secret.encode(), b"hygieia prepare draws", hashlib.sha256).digest()


def keyed_order(patient_ids: pd.Series, key: bytes, stream: str) -> pd.Series:
    """The patients in an order fixed by ``key`` (an HMAC of each patient, so adding or removing one
    patient does not move the others)."""
    codes = patient_ids.map(lambda pid: hmac.new(key, f"{stream}:{pid}".encode(), hashlib.sha256).hexdigest())
    return patient_ids.iloc[np.argsort(codes.to_numpy(), kind="stable")].reset_index(drop=True)


def seeded_order(patient_ids: pd.Series, seed: int, stream: str) -> pd.Series:
    """The patients in an order fixed by a public seed (``meta_check``'s analysis of RSNA's headers,
    which serves nothing: never for what ``prepare`` serves)."""
    keys = patient_ids.map(lambda pid: hashlib.sha256(f"{stream}:{seed}:{pid}".encode()).hexdigest())
    return patient_ids.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)


def select(patients: pd.DataFrame, sizes: dict[str, int], ratio: tuple[int, int], key: bytes,
           ap_share: float | None = DEFAULT_AP_SHARE) -> tuple[pd.DataFrame, dict[tuple[int, str], list[str]]]:
    """Pick the samples of each split.

    ``patients`` has patientId, class and view ("AP"/"PA"). The hidden splits (valid, test) are
    drawn first, with ``ap_share`` of AP films in each class (None: as they come); train is then
    drawn from the patients left, as they come (RSNA's mix). Returns (samples: patientId, label,
    view, split — in split order) and the unused patients per (label, view), in ``key``'s order, from
    which bad files are replaced and probes drawn.
    """
    if min(ratio) < 0 or sum(ratio) <= 0:
        raise HygieiaError(f"ratio {ratio[0]}:{ratio[1]} must be two non-negative numbers, not both 0")
    if ap_share is not None and not 0 <= ap_share <= 1:
        raise HygieiaError(f"the hidden splits' AP share must lie in [0, 1], got {ap_share}")
    needs = {split: class_counts(n, ratio) for split, n in sizes.items()}
    order, view_of = {}, dict(zip(patients["patientId"], patients["view"]))
    for label, name in CLASS_NAMES.items():
        eligible = patients.loc[patients["class"] == name, "patientId"].drop_duplicates()
        order[label] = keyed_order(eligible.reset_index(drop=True), key, "select").tolist()
    _check_enough(order, view_of, needs, sizes, ratio, ap_share)
    pools = {(label, view): [p for p in order[label] if view_of[p] == view] for label in (0, 1) for view in VIEWS}
    rows = []
    for split in [s for s in SCORED_SPLITS if s in needs] + [s for s in needs if s not in SCORED_SPLITS]:
        for label in (0, 1):
            n = needs[split][label]
            if split in SCORED_SPLITS and ap_share is not None:
                taken = []
                for view, k in view_counts(n, ap_share).items():
                    taken += pools[(label, view)][:k]
                    pools[(label, view)] = pools[(label, view)][k:]
            else:
                used = {p for p, *_ in rows}
                taken = [p for p in order[label] if p not in used][:n]
                chosen = set(taken)
                for view in VIEWS:
                    pools[(label, view)] = [p for p in pools[(label, view)] if p not in chosen]
            rows += [(pid, label, view_of[pid], split) for pid in taken]
    samples = pd.DataFrame(rows, columns=["patientId", "label", "view", "split"])
    rank = {split: i for i, split in enumerate(SPLITS)}
    samples = samples.sort_values("split", key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)
    return samples, pools


def _check_enough(order, view_of, needs, sizes, ratio, ap_share) -> None:
    """Refuse, with the numbers, a request the patients cannot meet."""
    request = ", ".join(f"{split}={n}" for split, n in sizes.items()) + f" at {ratio[0]}:{ratio[1]}"
    have = {label: len(order[label]) for label in (0, 1)}
    need = {label: sum(counts[label] for counts in needs.values()) for label in (0, 1)}
    if need[0] > have[0] or need[1] > have[1]:
        raise HygieiaError(
            f"not enough patients: {request} needs {need[0]} {NORMAL} and {need[1]} {OPACITY} patients; "
            f"the labels hold {have[0]} {NORMAL} and {have[1]} {OPACITY}")
    if ap_share is None:
        return
    short = []
    for label in (0, 1):
        for view in VIEWS:
            wanted = sum(view_counts(counts[label], ap_share)[view]
                         for split, counts in needs.items() if split in SCORED_SPLITS)
            held = sum(view_of[p] == view for p in order[label])
            if wanted > held:
                short.append(f"{wanted} {view} {CLASS_NAMES[label]} (the labels hold {held})")
    if short:
        raise HygieiaError(f"not enough patients: {request} with hidden splits at AP share {ap_share:g} in "
                           f"each class needs " + ", ".join(short) + "; ask for a smaller --valid/--test "
                           "or another --hidden-ap-share")


def fitting_ap_share(patients: pd.DataFrame, sizes: dict[str, int], ratio: tuple[int, int] = (3, 2),
                     target: float = DEFAULT_AP_SHARE) -> float:
    """The AP share nearest ``target`` (in steps of 0.05) that ``select`` can meet for these patients."""
    order = {label: patients.loc[patients["class"] == name, "patientId"].drop_duplicates().tolist()
             for label, name in CLASS_NAMES.items()}
    view_of = dict(zip(patients["patientId"], patients["view"]))
    needs = {split: class_counts(n, ratio) for split, n in sizes.items()}
    for share in sorted(np.round(np.arange(0, 1.0001, 0.05), 2), key=lambda s: (abs(s - target), s)):
        try:
            _check_enough(order, view_of, needs, sizes, ratio, float(share))
        except HygieiaError:
            continue
        return float(share)
    _check_enough(order, view_of, needs, sizes, ratio, None)  # names the class that is short
    raise HygieiaError(f"no AP share lets {sizes} be balanced on view position; ask for smaller --valid/--test")


def assign_ids(samples: pd.DataFrame, secret: str) -> pd.DataFrame:
    """Add opaque ids ("h" + 8 hex digits of an HMAC of the patient under ``secret``) and sort each
    split by id, which shuffles it. Unique across splits (a collision takes the next code)."""
    taken: set[str] = set()
    ids = []
    for pid in samples["patientId"]:
        attempt = 0
        while True:
            digest = hmac.new(secret.encode(), f"id:{pid}:{attempt}".encode(), hashlib.sha256).hexdigest()
            candidate = "h" + digest[:8]
            if candidate not in taken:
                break
            attempt += 1
        taken.add(candidate)
        ids.append(candidate)
    out = samples.assign(id=ids)
    rank = {split: i for i, split in enumerate(SPLITS)}
    out = out.assign(_split=out["split"].map(rank)).sort_values(["_split", "id"], kind="stable")
    return out.drop(columns="_split").reset_index(drop=True)
