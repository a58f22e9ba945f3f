"""The submission's own process: load the data, import ``model.py``, fit, predict, explain.

Ingestion (``hygieia.submission.ingestion``) starts it as ``python -m hygieia.submission.child
INPUT_DATA SUBMISSION_FOLDER RESULTS_FOLDER MESSAGE_FD PARENT_PID EVIDENCE_INPUT`` in a session of its own,
where the machine allows under the init of its own user and PID namespaces (``hygieia.submission.isolation``;
PARENT_PID is its parent's pid as this process sees it: 1 there, ingestion's elsewhere). EVIDENCE_INPUT holds
ingestion's altered copies of sampled images, laid out as input splits. It dies with its parent
(``PR_SET_PDEATHSIG``), which dies with ingestion. MESSAGE_FD is the one channel to ingestion; another
(ingestion to this process) would be passed the same way. Nothing this
process does is trusted: it reports progress as JSON lines on MESSAGE_FD (``{"stage": name}``,
``{"done": name}``, ``{"info": {...}}``, ``{"error": {...}}``, ``{"finished": true}``) and writes
``predictions.csv``, ``evidence.csv`` (its probabilities of the altered copies), ``heatmaps.npz`` and, for
Grad-CAM, ``randomisation.json`` into RESULTS_FOLDER, a private folder; ingestion checks
them after this process and all its descendants have ended, and writes the output folder itself.

It ends with ``os._exit``: the submission's ``atexit`` handlers and leftover threads never run
after the last message.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from hygieia import dataset as ds
from hygieia.errors import HygieiaError
from hygieia.files import write_csv, write_json, write_npz
from hygieia.submission.api import (THRESHOLD, SubmissionError, check_heatmaps, check_labels,
                                    check_probabilities, explanation_method)
from hygieia.submission import evidence
from hygieia.submission.gradcam import SANITY_IMAGES, gradcam_heatmaps, randomisation_check
from hygieia.submission.loading import describe_error, import_model_class
from hygieia.submission.processes import die_with_parent

def device_name() -> str:
    """"cuda (<GPU name>)" when the submission uses torch and torch sees a GPU, else "cpu"."""
    torch = sys.modules.get("torch")  # not imported for a submission that does not use it (it takes seconds)
    if torch is not None and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def call_model(what: str, folder: Path, function, *args):
    """Call the participant's ``function``; anything it raises becomes a SubmissionError naming ``what``."""
    try:
        return function(*args)
    except SubmissionError:
        raise
    except BaseException as err:  # untrusted code: SystemExit and KeyboardInterrupt are failures too
        raise SubmissionError(f"{what} failed: {describe_error(err, folder)}") from err


def subset(X: dict, mask: np.ndarray) -> dict:
    """The rows of a split mapping where ``mask`` is true (ids, images, features, meta)."""
    ids = [i for i, keep in zip(X["ids"], mask) if keep]
    return {"ids": ids, "images": X["images"][mask], "features": X["features"][mask],
            "meta": X["meta"].loc[ids]}


class ModelRun:
    """The stages of one submission, reported on ``channel`` as they start and end."""

    def __init__(self, input_dir: Path, folder: Path, results: Path, evidence_dir: Path, channel):
        self.input_dir, self.folder, self.results, self.channel = input_dir, folder, results, channel
        self.evidence_dir = evidence_dir

    def send(self, **message) -> None:
        self.channel.write(json.dumps(message) + "\n")
        self.channel.flush()

    @contextmanager
    def stage(self, name: str):
        self.send(stage=name)
        yield
        self.send(done=name)

    def run(self) -> None:
        with self.stage("load"):
            data = {split: ds.load_input_split(self.input_dir, split) for split in ds.SPLITS}
            y = data["train"].pop("labels", None)
            if y is None:
                raise HygieiaError(f"{self.input_dir / 'train' / ds.LABELS}: file not found")
        with self.stage("import"):
            model_class = import_model_class(self.folder)
            model = call_model("Model()", self.folder, model_class)
            method = explanation_method(model)
            self.send(info={"explanation": method, "device": device_name()})
        with self.stage("fit"):
            call_model("Model.fit", self.folder, model.fit, dict(data["train"]), y.copy())
        with self.stage("predict"):
            predictions = {split: self.predict(model, data[split], split) for split in ds.SCORED_SPLITS}
            write_csv(self.results / ds.PREDICTIONS, pd.concat(predictions.values(), ignore_index=True))
        with self.stage("evidence"):
            answers = [self.predict_copies(model, split) for split in ds.SCORED_SPLITS]
            write_csv(self.results / evidence.ANSWERS, pd.concat(answers, ignore_index=True))
        with self.stage("explain"):
            ids, maps = self.explain(model, method, data, predictions)
            write_npz(self.results / ds.HEATMAPS, ids=np.array(ids, dtype=str), maps=maps)
            if method == "gradcam":
                write_json(self.results / evidence.RANDOMISATION, self.randomisation(data, ids, maps))

    def predict(self, model, X: dict, split: str) -> pd.DataFrame:
        # Models get shallow copies of X: one that pops or replaces a key does not break later stages.
        proba = check_probabilities(call_model("Model.predict_proba", self.folder, model.predict_proba, dict(X)),
                                    X["ids"], split)
        if callable(getattr(model, "predict", None)):
            label = check_labels(call_model("Model.predict", self.folder, model.predict, dict(X)), X["ids"], split)
        else:
            label = (proba >= THRESHOLD).astype(np.int64)
        return pd.DataFrame({"id": X["ids"], "proba": proba, "label": label})

    def predict_copies(self, model, split: str) -> pd.DataFrame:
        """``predict_proba`` on ingestion's altered copies of the split's sampled images (one cell filled in)."""
        X = ds.load_input_split(self.evidence_dir, split)
        what = f"{split} images (copies with one cell filled in, which ingestion uses to measure where the " \
               "model's decision comes from)"
        proba = check_probabilities(call_model("Model.predict_proba", self.folder, model.predict_proba, dict(X)),
                                    X["ids"], what)
        return pd.DataFrame({"id": X["ids"], "proba": proba})

    def randomisation(self, data: dict, ids: list[str], maps: np.ndarray) -> dict:
        """The randomisation check on the first ``SANITY_IMAGES`` explained images in the evidence's order; a
        failure is reported, not raised: the check describes the maps, it does not decide the run."""
        images = dict(zip(data["valid"]["ids"] + data["test"]["ids"],
                          np.concatenate([data["valid"]["images"], data["test"]["images"]])))
        chosen = evidence.sample_positions(ids, SANITY_IMAGES)
        module, layer = self.target
        try:
            return {"stages": randomisation_check(module, layer, np.stack([images[ids[k]] for k in chosen]),
                                                  maps[chosen].astype(np.float32)) if len(chosen) else [],
                    "images": len(chosen), "error": None}
        except Exception as err:  # the participant's module: say what went wrong, keep the run
            return {"stages": [], "images": len(chosen), "error": describe_error(err, self.folder)}

    def explain(self, model, method, data: dict, predictions: dict):
        """Heatmaps of the predicted positives of valid and test: (ids, (K, H, W) float16, each map / its max)."""
        shape = data["valid"]["images"].shape[1:]
        ids, maps = [], []
        if method == "gradcam":
            module, layer = self.target = self.gradcam_target(model)
        for split in ds.SCORED_SPLITS:
            positives = subset(data[split], predictions[split]["label"].to_numpy() == 1)
            if not positives["ids"] or method is None:
                continue
            if method == "explain":
                what = "Model.explain"
                raw = call_model(what, self.folder, model.explain, positives)
            else:
                what = "Grad-CAM on Model.gradcam_target()"
                raw = call_model(what, self.folder, lambda: gradcam_heatmaps(
                    module, layer, positives["images"], progress=True,
                    describe=lambda err: describe_error(err, self.folder)))
            maps.append(check_heatmaps(raw, positives["ids"], shape, split, what))
            ids.extend(positives["ids"])
        stacked = np.concatenate(maps) if maps else np.zeros((0, *shape), np.float16)
        return ids, stacked

    def gradcam_target(self, model):
        target = call_model("Model.gradcam_target", self.folder, model.gradcam_target)
        if not (isinstance(target, tuple) and len(target) == 2):
            raise SubmissionError(f"Model.gradcam_target() returned {type(target).__name__}; "
                                  f"expected a tuple (module, layer)")
        return target


def main(argv: list[str]) -> None:
    input_dir, folder, results, fd, parent, evidence_dir = argv
    die_with_parent(int(parent))
    channel = os.fdopen(int(fd), "w", encoding="utf-8")
    run = ModelRun(Path(input_dir), Path(folder), Path(results), Path(evidence_dir), channel)
    status = 0
    try:
        run.run()
        run.send(finished=True)
    except BaseException as err:  # every failure is reported to ingestion, which decides what it means
        status = 1
        message = str(err) if isinstance(err, HygieiaError) else f"{type(err).__name__}: {err}"
        try:
            run.send(error={"message": message, "traceback": "".join(traceback.format_exception(err))})
        except OSError:
            pass  # the channel is gone: ingestion reports the exit without a message
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
