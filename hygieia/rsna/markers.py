"""Burnt-in text markers ("PORTABLE", "L", "R") as radiographs carry them: the phantom's confounder.

``draw_marker`` is also used by the shortcut experiment to paste a marker onto any image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hygieia.errors import HygieiaError

MARKER_TEXTS = ("PORTABLE", "L", "R")
MARKER_POSITIONS = ("corner", "lung")
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


def place_marker(rng: np.random.Generator, position: str, image_size: int = 1024) -> tuple[str, int, int, int]:
    """Choose a marker's text, top-left corner and letter height for a 1024-pixel radiograph.

    ``corner``: where real markers are (top corners, top of the film), outside the lungs;
    ``lung``: inside a lung field (a stress case: inside typical crop windows)."""
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
    else:
        centre_u = 0.29 if rng.random() < 0.5 else 0.71
        x = int(image_size * (centre_u + rng.uniform(-0.04, 0.04)) - w / 2)
        y = int(image_size * rng.uniform(0.35, 0.6) - h / 2)
    return text, int(x), int(y), height
