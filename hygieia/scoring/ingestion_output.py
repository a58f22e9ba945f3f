"""Reading ingestion's output folder for scoring, and refusing a broken run with its cause.

The folder's files are the data contract's (``hygieia.dataset``: predictions.csv, heatmaps.npz,
ingestion.json) and, on Codabench, the worker's ``metadata`` (YAML: exitCode, ingestionExitCode, ...).
Only the reference split's ids are scored; rows of the other split are expected and ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hygieia import dataset as ds
from hygieia.dataset import (EVIDENCE, EXPLANATION_METHODS, HEATMAPS, INGESTION_REPORT, PREDICTION_COLUMNS,
                             PREDICTIONS, WORKER_METADATA, IngestionFailed)
from hygieia.errors import DataError

EXIT_CODE_FIELDS = ("ingestionExitCode", "exitCode")


def _some(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return f"{shown} (and {len(values) - limit} more)" if len(values) > limit else shown


def read_ingestion_report(res_dir: Path) -> dict:
    path = res_dir / INGESTION_REPORT
    report = ds.read_json(path, "did ingestion run?")
    if not isinstance(report, dict):
        raise DataError(f"{path}: expected a JSON object")
    return report


def read_worker_metadata(res_dir: Path) -> dict:
    """Codabench's ``metadata`` file of the prediction step; {} when absent."""
    path = res_dir / WORKER_METADATA
    if not path.is_file():
        return {}
    try:
        metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid YAML ({err})") from err
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise DataError(f"{path}: expected key: value lines")
    return metadata


def check_ingestion_succeeded(report: dict, metadata: dict, res_dir: Path) -> None:
    """Raise IngestionFailed, quoting ingestion's own error, when ingestion did not end well."""
    error = report.get("error") or {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    own = error.get("message")
    status = report.get("status")
    if status == "failed":
        stage = error.get("stage") or report.get("stage") or "unknown"
        raise IngestionFailed(f"ingestion failed at stage '{stage}': {own or 'no message'}",
                              error.get("traceback"))
    failed_codes = {field: metadata[field] for field in EXIT_CODE_FIELDS
                    if metadata.get(field) not in (None, 0, "0")}
    if failed_codes:
        codes = ", ".join(f"{k}={v}" for k, v in failed_codes.items())
        raise IngestionFailed(f"ingestion exited with a failure ({codes} in {res_dir / WORKER_METADATA})"
                              + (f": {own}" if own else ""), error.get("traceback"))
    if status != "ok":
        raise IngestionFailed(f"{res_dir / INGESTION_REPORT}: ingestion did not finish (status {status!r}, "
                              f"stage {report.get('stage')!r})")


def read_predictions(res_dir: Path, ids: list[str]) -> pd.DataFrame:
    """The predictions of the reference ids, in their order, checked: (proba float, label int)."""
    path = res_dir / PREDICTIONS
    table = ds.read_table(path, PREDICTION_COLUMNS)
    duplicated = table["id"][table["id"].duplicated()].unique()
    if len(duplicated):
        raise DataError(f"{path}: duplicate id(s) {_some(duplicated)}")
    table = table.set_index("id")
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise DataError(f"{path}: {len(missing)} of the {len(ids)} scored ids have no prediction: "
                        f"{_some(missing)}")
    table = table.loc[ids]
    proba = pd.to_numeric(table["proba"], errors="coerce")
    if proba.isna().any():
        raise DataError(f"{path}: proba is missing, NaN or not a number for id(s) "
                        f"{_some(proba.index[proba.isna()])}")
    outside = ~proba.between(0, 1)
    if outside.any():
        raise DataError(f"{path}: proba outside [0, 1] for id(s) {_some(proba.index[outside])}")
    label = pd.to_numeric(table["label"], errors="coerce")
    wrong = ~label.isin([0, 1])
    if wrong.any():
        raise DataError(f"{path}: label must be 0 or 1; not so for id(s) {_some(label.index[wrong])}")
    return pd.DataFrame({"proba": proba.astype(np.float64), "label": label.astype(np.int64)})


def count_predicted_positives(res_dir: Path) -> int:
    """Rows labelled 1 in predictions.csv, of every split (heatmaps.npz holds valid's and test's)."""
    labels = ds.read_table(res_dir / PREDICTIONS, PREDICTION_COLUMNS)["label"]
    return int((pd.to_numeric(labels, errors="coerce") == 1).sum())


def read_heatmaps(res_dir: Path, wanted: list[str], shape: tuple[int, int],
                  limit: int | None = None) -> dict[str, np.ndarray]:
    """Heatmaps {id: (H, W) float32} of the ``wanted`` ids (the scored predicted positives), read and
    checked as the data contract says (``hygieia.dataset.read_heatmaps``; ``limit``: the predicted
    positives of predictions.csv, valid and test)."""
    path = res_dir / HEATMAPS
    if not path.is_file():
        raise DataError(f"{path}: file not found, but ingestion reports an explanation method")
    ids, maps = ds.read_heatmaps(path, shape, limit)
    position = pd.Index(ids)
    missing = [i for i in wanted if i not in position]
    if missing:
        raise DataError(f"{path}: no heatmap for {len(missing)} predicted positive(s): {_some(missing)}")
    return dict(zip(wanted, maps[position.get_indexer(wanted)].astype(np.float32)))


def read_evidence(res_dir: Path, ids: list[str], shape: tuple[int, int]) -> dict:
    """What ingestion measured through the model (``hygieia.dataset.read_evidence``), for the reference ids
    only: {"ids", "cells", "base", "drops"}."""
    known = ds.read_table(res_dir / PREDICTIONS, PREDICTION_COLUMNS)["id"]
    evidence = ds.read_evidence(res_dir / EVIDENCE, shape, known)
    keep = np.isin(evidence["ids"], ids)
    return {"ids": evidence["ids"][keep], "cells": evidence["cells"], "base": evidence["base"][keep],
            "drops": evidence["drops"][keep]}


def read_ingestion_output(res_dir: str | Path, ids: list[str], shape: tuple[int, int]) -> dict:
    """Everything scoring needs from ingestion's output, or a HygieiaError naming what is broken.

    Returns ``report`` (ingestion.json), ``worker`` (metadata), ``predictions`` (DataFrame indexed by
    the reference ids: proba, label), ``method`` (explanation method or None), ``heatmaps``
    ({id: map} for the scored predicted positives; {} when the method is None) and ``evidence``
    (``read_evidence``).
    """
    res_dir = Path(res_dir)
    if not res_dir.is_dir():
        raise DataError(f"{res_dir}: ingestion's output folder not found")
    metadata = read_worker_metadata(res_dir)
    report = read_ingestion_report(res_dir)
    check_ingestion_succeeded(report, metadata, res_dir)
    predictions = read_predictions(res_dir, ids)
    method = report.get("explanation")
    if method is not None and method not in EXPLANATION_METHODS:
        raise DataError(f"{res_dir / INGESTION_REPORT}: explanation must be one of "
                        f"{list(EXPLANATION_METHODS)} or null, got {method!r}")
    heatmaps = {}
    if method is not None:
        positives = predictions.index[predictions["label"] == 1].tolist()
        heatmaps = read_heatmaps(res_dir, positives, shape, count_predicted_positives(res_dir))
    return {"report": report, "worker": metadata, "predictions": predictions,
            "method": method, "heatmaps": heatmaps, "evidence": read_evidence(res_dir, ids, shape)}
