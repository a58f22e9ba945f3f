"""The shortcut gap: do off-box probes get called positive more often than normal films of the same view?

A probe is a window cut from a Lung Opacity film away from every box: it shows no opacity, only the
film around it (its view, devices, markers, exposure). A model that reads the opacity calls probes
positive about as often as normal films (gap near 0); a model that reads the film calls them positive
like the opacity films they come from (gap up to its recall minus its false-positive rate).

Each probe is compared with the normal films of its own stratum (the film's view position): probes
come from the opacity films left over after the hidden splits are drawn, which are mostly AP, while
the hidden normals are view-balanced. Without the matching, a rule that reads only the view would
score the difference of the two AP shares, an artefact of how probes are drawn, not a measurement.
In a view-balanced split the view carries no label; reliance on it shows in worst-group accuracy.

A gap below 0 is no better than 0: the column is max(gap, 0). Probes can be guessed (an item whose
whole-film features say "opacity" while its crop looks clean is likely one), and calling the likely
probes negative drives the raw gap below 0 (from +0.02 / +0.03 to −0.24 / −0.32 for the tabular
sample, in a review): ranked as is, that would beat every model that reads the opacity, whose gap
is 0 up to noise. The raw gap and its interval stay in the detailed results.
"""

from __future__ import annotations

import numpy as np

from hygieia.scoring import classification as cls


def shortcut_gap(truth: np.ndarray, predicted: np.ndarray, probes: np.ndarray,
                 strata: np.ndarray | None = None) -> dict:
    """max(0, mean over probes of (probe called positive − false-positive rate on the normal, non-probe
    films of the probe's stratum)) as ``value``, with its 95% bootstrap interval (resampling probes and
    normal films) as ``ci``; the gap itself as ``raw`` and ``raw_ci``.

    Probes of a stratum without normal films cannot be matched: they are counted in ``n_unmatched``
    and left out. ``value`` None, with ``reason``, when no probe can be matched."""
    probes = np.asarray(probes).astype(bool)
    normal = (np.asarray(truth) == 0) & ~probes
    called = np.asarray(predicted).astype(np.float64)
    strata = np.full(len(probes), "all") if strata is None else np.asarray(strata).astype(str)
    if not len(strata) == len(probes) == len(called) == len(normal):
        raise ValueError("shortcut_gap: truth, predicted, probes and strata differ in length")
    rows = [stratum_row(name, called, probes & (strata == name), normal & (strata == name))
            for name in sorted(set(strata[probes]))]
    matched = [row for row in rows if row["n_normal"] > 0]
    result = {"n_probes": int(probes.sum()), "n_normal": int(normal.sum()),
              "n_unmatched": int(sum(row["n_probes"] for row in rows if row["n_normal"] == 0)),
              "strata": rows, "value": None, "ci": None, "raw": None, "raw_ci": None, "probe_positive_rate": None,
              "false_positive_rate": None, "reason": None}
    if not matched:
        result["reason"] = ("this split holds no off-box probe, so the shortcut gap is not measured"
                            if not probes.any() else "no probe has a normal film of its view to compare with")
        return result
    weight = np.array([row["n_probes"] for row in matched], dtype=np.float64)
    result["probe_positive_rate"] = float(weight @ [r["probe_positive_rate"] for r in matched] / weight.sum())
    result["false_positive_rate"] = float(weight @ [r["false_positive_rate"] for r in matched] / weight.sum())
    result["raw"] = result["probe_positive_rate"] - result["false_positive_rate"]
    result["raw_ci"] = bootstrap_interval(called, [(probes & (strata == r["stratum"]),
                                                    normal & (strata == r["stratum"])) for r in matched])
    result["value"] = max(result["raw"], 0.0)
    result["ci"] = [max(bound, 0.0) for bound in result["raw_ci"]]
    return result


def stratum_row(name: str, called: np.ndarray, probes: np.ndarray, normal: np.ndarray) -> dict:
    return {"stratum": str(name), "n_probes": int(probes.sum()), "n_normal": int(normal.sum()),
            "probe_positive_rate": float(called[probes].mean()),
            "false_positive_rate": float(called[normal].mean()) if normal.any() else None}


def bootstrap_interval(called: np.ndarray, masks: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Resample every probe and normal film used; in each resample, strata left without a normal film
    drop out with their probes."""
    used = np.flatnonzero(np.logical_or.reduce([p | n for p, n in masks]))
    counts = cls.bootstrap_counts(len(used)).astype(np.float64)
    return cls.percentile_interval(weighted_gap(counts, called[used], [(p[used], n[used]) for p, n in masks]))


def weighted_gap(weights: np.ndarray, called: np.ndarray, masks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The raw gap under each row of ``weights`` (R, n) over n items (``called``: 0/1 per item; ``masks``: each
    stratum's (probes, normal films) over the items): over the strata that keep a normal film, (probes called
    positive − their weight × the stratum's weighted false-positive rate) summed, over their probes' weight.
    NaN where no stratum keeps both."""
    hits = np.asarray(called, dtype=np.float64)
    probe_sum, gap_sum = np.zeros(len(weights)), np.zeros(len(weights))
    for probe_mask, normal_mask in masks:
        is_probe, is_normal = np.asarray(probe_mask, np.float64), np.asarray(normal_mask, np.float64)
        n_probe, n_normal = weights @ is_probe, weights @ is_normal
        with np.errstate(invalid="ignore", divide="ignore"):
            fpr = (weights @ (is_normal * hits)) / n_normal
        kept = n_normal > 0
        gap_sum[kept] += (weights @ (is_probe * hits))[kept] - n_probe[kept] * fpr[kept]
        probe_sum[kept] += n_probe[kept]
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap_sum / probe_sum
