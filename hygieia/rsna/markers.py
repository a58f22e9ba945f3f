"""Burnt-in text markers ("PORTABLE", "L", "R") as radiographs carry them: the phantom's confounder.

``draw_marker`` is also used by the shortcut experiment to paste a marker onto any image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hygieia.errors import HygieiaError

MARKER_TEXTS = ("PORTABLE", "L", "R")
MARKER_POSITIONS = ("corner", "lung", "offbox")
# "offbox": the marker's ink stays at least this far (in 1024-pixel film coordinates: half a cell of a 4 x 4 grid
# over the whole film) from every opacity box, so that evidence taken cell by cell can tell it from the opacity.
OFF_BOX_MARGIN = 128
OFF_BOX_TRIES = 200
BRIGHTNESS = 250


@lru_cache(maxsize=64)
def _font(height: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font at the size whose capital letters are ``height`` pixels tall."""
    reference = 100
    top, bottom = ImageFont.load_default(size=reference).getbbox("L")[1::2]
    return ImageFont.load_default(size=max(1, round(height * reference / (bottom - top))))


def marker_mask(text: str, height: int) -> np.ndarray:
    """The marker's ink as a float mask in [0, 1], cropped tight to its pixels."""
    font = _font(height)
    stroke = max(1, height // 14)  # bold, like lead letters
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke,
                                stroke_fill=255)
    box = canvas.getbbox()
    return np.asarray(canvas.crop(box), dtype=np.float32) / 255.0


def draw_marker(image: np.ndarray, text: str, x: int, y: int, height: int) -> tuple[int, int, int, int]:
    """Burn ``text`` into the uint8 ``image`` in place, its ink's top-left corner at (x, y).

    Returns the marker's pixel box (x, y, width, height); raises if it does not fit in the image."""
    mask = marker_mask(text, height)
    h, w = mask.shape
    if x < 0 or y < 0 or y + h > image.shape[0] or x + w > image.shape[1]:
        raise HygieiaError(f"marker {text!r} of {w}x{h} px at ({x}, {y}) does not fit in a "
                           f"{image.shape[1]}x{image.shape[0]} image")
    region = image[y:y + h, x:x + w]
    region[...] = np.maximum(region, np.rint(mask * BRIGHTNESS)).astype(np.uint8)
    return int(x), int(y), int(w), int(h)


def marker_size(text: str, height: int) -> tuple[int, int]:
    """(width, height) in pixels of the marker ``draw_marker`` draws."""
    h, w = marker_mask(text, height).shape
    return w, h


def place_marker(rng: np.random.Generator, position: str, image_size: int = 1024,
                 boxes=()) -> tuple[str, int, int, int]:
    """Choose a marker's text, top-left corner and letter height for a 1024-pixel radiograph.

    ``corner``: where real markers are (top corners, top of the film), outside the lungs;
    ``lung``: inside a lung field (a stress case: inside typical crop windows);
    ``offbox``: anywhere over the lungs and mediastinum but at least ``OFF_BOX_MARGIN`` from every box in
    ``boxes`` (x, y, width, height): a shortcut beside the opacity rather than on it. Where no such place is
    drawn in ``OFF_BOX_TRIES`` tries, the one farthest from the boxes."""
    if position not in MARKER_POSITIONS:
        raise HygieiaError(f"unknown marker position {position!r}; expected one of {MARKER_POSITIONS}")
    text = MARKER_TEXTS[rng.integers(len(MARKER_TEXTS))]
    height = int(rng.integers(40, 49) if text == "PORTABLE" else rng.integers(44, 65))
    w, h = marker_size(text, height)
    unit = image_size / 1024
    if position == "corner":
        if text == "PORTABLE":  # along the top edge of the film
            x = rng.integers(int(150 * unit), int(image_size - 150 * unit - w))
        else:
            left = rng.random() < 0.5
            x = rng.integers(int(20 * unit), int(140 * unit)) if left else \
                rng.integers(int(image_size - 140 * unit - w), int(image_size - 20 * unit - w))
        y = rng.integers(int(15 * unit), int(110 * unit))
    elif position == "lung":
        centre_u = 0.29 if rng.random() < 0.5 else 0.71
        x = int(image_size * (centre_u + rng.uniform(-0.04, 0.04)) - w / 2)
        y = int(image_size * rng.uniform(0.35, 0.6) - h / 2)
    else:
        x, y = _off_box(rng, (w, h), image_size, [np.asarray(b, dtype=float) * unit for b in boxes],
                        OFF_BOX_MARGIN * unit)
    return text, int(x), int(y), height


def _gap(x: float, y: float, size: tuple[int, int], box) -> float:
    """The distance between the rectangle at (x, y) of ``size`` and ``box``; 0 where they overlap."""
    dx = max(box[0] - (x + size[0]), x - (box[0] + box[2]), 0.0)
    dy = max(box[1] - (y + size[1]), y - (box[1] + box[3]), 0.0)
    return float(np.hypot(dx, dy))


def _off_box(rng: np.random.Generator, size: tuple[int, int], image_size: int, boxes, margin: float):
    best, best_gap = None, -1.0
    for _ in range(OFF_BOX_TRIES):
        x = int(rng.uniform(0.15 * image_size, 0.85 * image_size - size[0]))  # the ink inside the chest
        y = int(rng.uniform(0.25 * image_size, 0.75 * image_size - size[1]))
        gap = min((_gap(x, y, size, box) for box in boxes), default=np.inf)
        if gap >= margin:
            return x, y
        if gap > best_gap:
            best, best_gap = (x, y), gap
    return best
