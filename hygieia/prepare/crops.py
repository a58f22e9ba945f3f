"""Window placement and cropping. Boxes and windows are in pixels: boxes (x, y, width, height),
windows (x0, y0, side) squares with integer corners, x to the right and y down (``hygieia.boxes``
maps boxes into a window's crop)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hygieia.boxes import boxes_in_window
from hygieia.errors import HygieiaError


DEFAULT_CONTEXT = 1.5


def window_side(box, *, context: float = DEFAULT_CONTEXT, window: int | None = None,
                image_size: int = 1024) -> int:
    """The window's side: ``window`` pixels if given, else ``context`` × the box's larger side;
    never more than the image."""
    side = window if window is not None else context * max(box[2], box[3])
    return int(min(max(round(side), 1), image_size))


def place_window(box, side: int, rng: np.random.Generator, image_size: int = 1024) -> tuple[int, int, int]:
    """A square window of ``side`` whose corner puts the box's centre at a uniformly random place
    inside the window (so the box's place in the window says little about where it is; part of the
    box may fall outside), then shifted (not shrunk) to lie inside the image."""
    corner = []
    for start, length in ((box[0], box[2]), (box[1], box[3])):
        centre = start + length / 2
        low, high = int(np.ceil(centre - side)), int(np.floor(centre))
        position = int(rng.integers(low, high + 1))  # never empty: side >= 1
        corner.append(min(max(position, 0), image_size - side))
    return corner[0], corner[1], side


def make_window(box, rng: np.random.Generator, *, context: float = DEFAULT_CONTEXT, window: int | None = None,
                image_size: int = 1024) -> tuple[int, int, int]:
    """``place_window`` with ``window_side``."""
    return place_window(box, window_side(box, context=context, window=window, image_size=image_size),
                        rng, image_size)


def off_box_window(boxes, anchors, rng: np.random.Generator, *, context: float = DEFAULT_CONTEXT,
                   window: int | None = None, image_size: int = 1024, tries: int = 200):
    """A window placed as ``make_window`` around one of ``anchors`` (boxes of other films, drawn at
    random) that overlaps none of ``boxes``; None when ``tries`` draws all overlap."""
    for _ in range(tries):
        candidate = make_window(anchors[rng.integers(len(anchors))], rng, context=context, window=window,
                                image_size=image_size)
        if len(boxes_in_window(boxes, candidate, candidate[2])) == 0:
            return candidate
    return None


def crop_image(pixels: np.ndarray, window: tuple[int, int, int], size: int) -> np.ndarray:
    """The window of ``pixels`` (H, W) uint8, resized to ``size``×``size`` (antialiased)."""
    x0, y0, side = window
    height, width = pixels.shape
    if x0 < 0 or y0 < 0 or x0 + side > width or y0 + side > height:
        raise HygieiaError(f"window {window} is not inside the {width}x{height} image")
    return resize_image(pixels[y0:y0 + side, x0:x0 + side], size)


def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` (H, W) uint8 resized to ``size``×``size`` with PIL's antialiasing Lanczos filter."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
