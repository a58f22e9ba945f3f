"""What a participant or the public can see of a run, searched for hidden ids and hidden images.

``find_leaks`` looks through text (HTML, JSON, logs) for any id of a hidden split, and through every
picture for any hidden image: PNG files, and PNGs inlined as base64 in HTML or JSON. A picture shows
an image when, sampled every 1 to 4 pixels (undoing an integer upscaling, at any offset), some
window of it correlates with the image at ``MATCH`` or more (normalized cross-correlation of the
luminance), or when the whole picture, resized to the image's shape, does.
That finds the report's thumbnails and a picture of an image alone at any size; a chart (bars,
lines, text) correlates with no radiograph.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image
from scipy import fft as sfft

MATCH = 0.9
SCALES = (1, 2, 3, 4)
INLINE_PNG = re.compile(rb"data:image/png;base64,([A-Za-z0-9+/=]+)")


def pictures_in(data: bytes) -> list[np.ndarray]:
    """Every picture in a file's bytes, as luminance arrays: the file itself if it is a PNG, and the
    PNGs inlined as base64."""
    found = [data] if data.startswith(b"\x89PNG") else [base64.b64decode(m) for m in INLINE_PNG.findall(data)]
    return [np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64) for png in found]


class Candidate:
    """A picture (or a rescaled copy) ready for normalized cross-correlation with (h, w) templates:
    its spectrum and each window's standard deviation are computed once."""

    def __init__(self, picture: np.ndarray, h: int, w: int):
        self.shape = tuple(sfft.next_fast_len(n + k - 1, real=True) for n, k in zip(picture.shape, (h, w)))
        self.valid = (picture.shape[0] - h + 1, picture.shape[1] - w + 1)
        self.h, self.w = h, w
        self.spectrum = sfft.rfft2(picture.astype(np.float32), self.shape, workers=-1)
        sums = self._window_sums(picture)
        squares = self._window_sums(picture ** 2)
        variance = np.maximum(squares - sums ** 2 / (h * w), 0)
        self.std = np.sqrt(variance)
        self.textured = variance > 1e-6 * h * w

    def _window_sums(self, values: np.ndarray) -> np.ndarray:
        table = np.pad(values, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        h, w = self.h, self.w
        return table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]

    def best_matches(self, templates: np.ndarray, chunk: int = 16) -> np.ndarray:
        """The highest correlation of each (h, w) template with any window of the picture."""
        centred = templates - templates.mean(axis=(1, 2), keepdims=True)
        norms = np.sqrt((centred ** 2).sum(axis=(1, 2)))
        best = np.zeros(len(templates))
        for start in range(0, len(templates), chunk):
            part = centred[start:start + chunk, ::-1, ::-1].astype(np.float32)
            full = sfft.irfft2(self.spectrum * sfft.rfft2(part, self.shape, workers=-1), self.shape, workers=-1)
            numerator = full[:, self.h - 1:self.h - 1 + self.valid[0], self.w - 1:self.w - 1 + self.valid[1]]
            peak = np.where(self.textured, numerator / np.where(self.textured, self.std, 1), 0.0)
            best[start:start + chunk] = peak.reshape(len(part), -1).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(norms > 0, best / norms, 0.0)


def candidates(picture: np.ndarray, h: int, w: int) -> list[Candidate]:
    """The picture resized to (h, w), and the picture sampled every ``scale`` pixels (an image
    upscaled by an integer factor, by repeating or interpolating its pixels, comes back whole,
    whatever its offset), wherever an (h, w) window fits."""
    whole = np.asarray(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                       dtype=np.float64)
    found = [Candidate(whole, h, w)]
    for scale in SCALES:
        sampled = picture[::scale, ::scale]
        if sampled.shape[0] >= h and sampled.shape[1] >= w:
            found.append(Candidate(sampled, h, w))
    return found


def shown_images(picture: np.ndarray, images: np.ndarray) -> list[int]:
    """Indices of the ``images`` (N, H, W) that ``picture`` shows (see the module's docstring)."""
    h, w = images.shape[1:]
    best = np.max([candidate.best_matches(images.astype(np.float64)) for candidate in candidates(picture, h, w)],
                  axis=0)
    return np.flatnonzero(best >= MATCH).tolist()


def find_leaks(seen: dict[str, bytes], ids: list[str], images: np.ndarray) -> dict[str, dict]:
    """{name: {"ids": [...], "images": [...]}} for every seen file that names a hidden id or shows a
    hidden image; an empty mapping when nothing leaks."""
    leaks = {}
    for name, data in seen.items():
        text = data.decode("utf-8", errors="replace")
        named = [i for i in ids if i in text]
        shown = sorted({k for picture in pictures_in(data) for k in shown_images(picture, images)})
        if named or shown:
            leaks[name] = {"ids": named[:5], "n_ids": len(named), "images": shown[:5], "n_images": len(shown)}
    return leaks
