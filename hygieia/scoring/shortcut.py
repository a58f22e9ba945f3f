"""The shortcut gap: do off-box probes get called positive more often than normal films?

A probe is a window cut from a Lung Opacity film away from every box: it shows no opacity, only the
film around it (its view, devices, markers, exposure). A model that reads the opacity calls probes
positive about as often as normal films (gap near 0); a model that reads the film calls them positive
like the opacity films they come from (gap up to its recall minus its false-positive rate).
"""

from __future__ import annotations

import numpy as np

from hygieia.scoring import classification as cls


def shortcut_gap(truth: np.ndarray, predicted: np.ndarray, probes: np.ndarray) -> dict:
    """Probes' positive rate − false-positive rate on normal (non-probe) films, with its 95% bootstrap
    interval (resampling probes and normal films). ``value`` None, with ``reason``, when the split
    holds no probe or no normal film."""
    probes = np.asarray(probes).astype(bool)
    normal = (np.asarray(truth) == 0) & ~probes
    called = np.asarray(predicted).astype(np.float64)
    result = {"n_probes": int(probes.sum()), "n_normal": int(normal.sum()), "value": None, "ci": None,
              "probe_positive_rate": None, "false_positive_rate": None, "reason": None}
    if not probes.any() or not normal.any():
        result["reason"] = ("this split holds no off-box probe, so the shortcut gap is not measured"
                            if not probes.any() else "this split holds no normal film")
        return result
    result["probe_positive_rate"] = float(called[probes].mean())
    result["false_positive_rate"] = float(called[normal].mean())
    result["value"] = result["probe_positive_rate"] - result["false_positive_rate"]
    used = np.flatnonzero(probes | normal)
    counts = cls.bootstrap_counts(len(used)).astype(np.float64)
    is_probe, hits = probes[used].astype(np.float64), called[used]
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = ((counts @ (is_probe * hits)) / (counts @ is_probe)
                - (counts @ ((1 - is_probe) * hits)) / (counts @ (1 - is_probe)))
    result["ci"] = cls.percentile_interval(gaps)
    return result
