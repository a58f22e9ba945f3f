"""The participants' Model API, and the checks ingestion applies to what a model returns.

A submission is a zip (or folder) with ``model.py`` at its root, or inside one wrapper folder.
``model.py`` defines a class ``Model``; ingestion imports it with the submission folder on
``sys.path`` (helper modules and files bundled beside ``model.py`` work; find them with
``pathlib.Path(__file__).parent``, not the working directory). The class is used like this::

    model = Model()
    model.fit(X_train, y_train)           # y_train: (N,) int64 array of 0/1 (1 = lung opacity)
    proba = model.predict_proba(X)        # (N,) floats in [0, 1]: probability of lung opacity
    label = model.predict(X)              # optional, (N,) of 0/1; default: proba >= 0.5

``X`` is a dict, one split of the input data as ``hygieia.dataset.load_input_split`` reads it:

- ``ids``: list of N str
- ``images``: (N, H, W) uint8 array, grayscale crops, 100 x 100 in the competition
- ``features``: (N, 1280) float32 array, ImageNet MobileNetV2 features of the whole radiograph each
  crop was cut from (not of the crop)
- ``meta``: pandas DataFrame indexed by id with columns age and sex
- ``boxes`` (train only): DataFrame id, x, y, width, height of the opacity boxes, in crop pixels

Labels are never in ``X``: they are the ``y`` argument of ``fit``.

Explanations are optional. A model may define either

- ``explain(X)`` → (N, H, W) non-negative heatmaps, by any method, one per image of ``X``; or
- ``gradcam_target()`` → ``(module, layer)``: ``module`` is a ``torch.nn.Module`` that takes a
  float32 tensor (N, 1, H, W) of pixels / 255 and returns logits (N, 2) (class 1 = lung opacity)
  or one opacity logit per image, (N,) or (N, 1); ``layer`` is a submodule of it (usually the
  last convolutional block). Ingestion puts ``module`` in eval mode and computes Grad-CAM with
  Captum's ``LayerGradCam`` for the opacity logit, ReLU'd and upsampled bilinearly to (H, W),
  on the device that holds ``module``'s parameters.

Ingestion stores every heatmap divided by its own maximum (float16; an all-zero map stays zero and
is counted in ingestion.json).

A model with neither gets no explanation: its explanation columns score as all-zero maps do.
Ingestion explains only the valid and test images that the model predicts positive.
"""

from __future__ import annotations

import numpy as np

from hygieia import dataset as ds
from hygieia.errors import DataError, HygieiaError

MODEL_CLASS = "Model"
REQUIRED_METHODS = ("fit", "predict_proba")
THRESHOLD = 0.5


class SubmissionError(HygieiaError):
    """The submission broke the Model API; the message names the cause for the participant."""


def as_array(values, what: str) -> np.ndarray:
    """A numpy array from what a model returned (numpy, list, or a torch tensor on any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise SubmissionError(f"{what} returned {type(values).__name__}, not an array ({err})") from err
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise SubmissionError(f"{what} returned an array of {array.dtype}, not numbers")
    return array


def _check_length(array: np.ndarray, ids: list[str], what: str, split: str) -> None:
    n = len(ids)
    if array.ndim == 1 and len(array) != n:
        raise SubmissionError(f"{what} returned {len(array)} values for {n} {split} images")
    if array.ndim != 1:
        hint = " (for scikit-learn's predict_proba, return [:, 1])" if array.ndim == 2 else ""
        raise SubmissionError(f"{what} returned shape {array.shape}; expected ({n},){hint}")


def check_probabilities(values, ids: list[str], split: str) -> np.ndarray:
    """(N,) float64 probabilities in [0, 1] from ``predict_proba``'s output, or SubmissionError."""
    what = "Model.predict_proba"
    array = as_array(values, what)
    _check_length(array, ids, what, split)
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise SubmissionError(f"{what} returned NaN or infinite values for {bad.sum()} {split} images "
                              f"(first ids: {ds.first_ids(ids, bad)})")
    outside = (array < 0) | (array > 1)
    if outside.any():
        raise SubmissionError(f"{what} returned values outside [0, 1] for {outside.sum()} {split} images "
                              f"(min {array.min():.4g}, max {array.max():.4g}; first ids: "
                              f"{ds.first_ids(ids, outside)})")
    return array


def check_labels(values, ids: list[str], split: str) -> np.ndarray:
    """(N,) int64 labels of 0/1 from ``predict``'s output, or SubmissionError."""
    what = "Model.predict"
    array = as_array(values, what)
    _check_length(array, ids, what, split)
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        raise SubmissionError(f"{what} returned labels other than 0 and 1 for {bad.sum()} {split} images "
                              f"(e.g. {array[bad][0].item()!r}; first ids: {ds.first_ids(ids, bad)})")
    return array.astype(np.int64)


def check_heatmaps(values, ids: list[str], shape: tuple[int, int], split: str, what: str) -> np.ndarray:
    """(N, H, W) float16 heatmaps, each divided by its own maximum (an all-zero map stays zero), from
    what a model returned: the rules of ``hygieia.dataset.check_heatmaps`` (one finite, non-negative
    map per image, any scale), or SubmissionError. Rescaling first keeps tiny (1e-9) and huge
    (> 65504) maps whole in float16; every metric is scale-invariant."""
    array = as_array(values, what).astype(np.float64)
    try:
        ds.check_heatmaps(array, ids, shape, f"{what} returned", f"{split} images")
    except DataError as err:
        raise SubmissionError(str(err)) from err
    peak = array.max(axis=(1, 2), keepdims=True) if array.size else np.zeros((len(ids), 1, 1))
    return np.divide(array, peak, out=np.zeros_like(array), where=peak > 0).astype(np.float16)


def explanation_method(model) -> str | None:
    """"explain" or "gradcam" (what ``model`` offers, explain first), or None."""
    if callable(getattr(model, "explain", None)):
        return "explain"
    if callable(getattr(model, "gradcam_target", None)):
        return "gradcam"
    return None
