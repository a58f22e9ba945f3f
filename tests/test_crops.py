"""Window geometry: box transform, clipping at image borders, context 1, fixed windows, jitter."""

from __future__ import annotations

import numpy as np
import pytest

from hygieia.errors import HygieiaError
from hygieia.prepare.crops import (boxes_in_window, crop_image, make_window, place_window, resize_image,
                                   scale_boxes, window_side)

SIZE = 1024


def _inside(inner, outer) -> bool:
    x, y, w, h = inner
    x0, y0, side = outer
    return x >= x0 and y >= y0 and x + w <= x0 + side and y + h <= y0 + side


def test_box_transform_to_crop_pixels():
    window = (100, 200, 400)
    out = boxes_in_window([[150, 250, 100, 200]], window, 100)
    np.testing.assert_allclose(out, [[12.5, 12.5, 25, 50]])


def test_boxes_clipped_to_window_and_outside_boxes_dropped():
    window = (100, 100, 200)
    boxes = [[50, 150, 100, 20],     # sticks out on the left: clipped to x 100..150
             [600, 600, 50, 50],     # outside: dropped
             [290, 290, 40, 40]]     # sticks out at bottom right: clipped to 290..300
    out = boxes_in_window(boxes, window, 100)
    np.testing.assert_allclose(out, [[0, 25, 25, 10], [95, 95, 5, 5]])
    assert boxes_in_window(np.zeros((0, 4)), window, 100).shape == (0, 4)


def test_window_is_shifted_inside_the_image_not_shrunk():
    box = (950, 10, 70, 60)  # near the top-right corner
    for seed in range(30):
        x0, y0, side = make_window(box, np.random.default_rng(seed), context=2.0)
        assert side == 140
        assert 0 <= x0 and x0 + side <= SIZE and 0 <= y0 and y0 + side <= SIZE
        assert _inside(box, (x0, y0, side))
    assert window_side((0, 0, 900, 300), context=2.0) == SIZE  # never larger than the image


def test_jitter_keeps_box_inside_and_is_not_always_centred():
    box = (400, 300, 120, 200)
    corners = set()
    for seed in range(50):
        window = make_window(box, np.random.default_rng(seed), context=2.0)
        assert window[2] == 400 and _inside(box, window)
        corners.add(window[:2])
    assert len(corners) > 40
    xs = [c[0] for c in corners]
    assert min(xs) < 260 < max(xs)  # on both sides of the centred position 400 + 60 - 200


def test_context_one_box_fills_the_crop():
    box = (300, 200, 150, 250)  # taller than wide: fills the crop vertically
    for seed in range(10):
        window = make_window(box, np.random.default_rng(seed), context=1.0)
        assert window[1] == 200 and window[2] == 250
        (x, y, w, h), = boxes_in_window([box], window, 100)
        assert y == 0 and h == 100 and w == pytest.approx(60)


def test_fixed_window_constant_scale():
    for box in [(100, 100, 50, 60), (500, 400, 200, 300)]:
        window = make_window(box, np.random.default_rng(0), window=512)
        assert window[2] == 512 and _inside(box, window)
    # a box larger than the fixed window: the window lies inside the box along that axis
    x0, y0, side = make_window((100, 100, 300, 600), np.random.default_rng(1), window=256)
    assert 100 <= y0 and y0 + side <= 700 and 100 <= x0 <= 144


def test_place_window_deterministic_for_rng():
    box = (200, 200, 100, 100)
    assert place_window(box, 300, np.random.default_rng(7)) == place_window(box, 300, np.random.default_rng(7))


def test_crop_image_takes_the_window():
    pixels = np.zeros((SIZE, SIZE), np.uint8)
    pixels[200:450, 300:450] = 255  # a bright box (300, 200, 150, 250)
    crop = crop_image(pixels, (250, 200, 250), 100)
    assert crop.shape == (100, 100) and crop.dtype == np.uint8
    # the box spans crop columns 20..80 and all rows
    assert crop[:, 25:75].min() > 240 and crop[:, :15].max() < 15 and crop[:, 85:].max() < 15
    with pytest.raises(HygieiaError, match="not inside"):
        crop_image(pixels, (900, 0, 200), 100)


def test_resize_and_scale_boxes_agree():
    pixels = np.zeros((SIZE, SIZE), np.uint8)
    pixels[512:768, 256:512] = 200
    small = resize_image(pixels, 128)
    (x, y, w, h), = scale_boxes([[256, 512, 256, 256]], (SIZE, SIZE), 128)
    assert (x, y, w, h) == (32, 64, 32, 32)
    assert small[70:90, 38:58].min() > 190 and small[:60].max() < 10
