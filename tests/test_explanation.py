"""Explanation metrics on hand-built maps with known answers, and the exact 95% rectangle."""

import numpy as np
import pytest

from hygieia.boxes import box_iou, box_mask
from hygieia.scoring import explanation as xp
from hygieia.scoring.metrics import explain_image

SHAPE = (40, 40)


def block(shape, top, left, bottom, right, value=1.0):
    a = np.zeros(shape)
    a[top:bottom, left:right] = value
    return a


def blob(shape, cx, cy, sigma):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


def brute_rectangle(a, fraction=0.95):
    """Every rectangle, with the same tie rule: smallest area, larger mass, smaller top/left/bottom."""
    total = a.sum()
    best = None
    height, width = a.shape
    for top in range(height):
        for bottom in range(top + 1, height + 1):
            for left in range(width):
                for right in range(left + 1, width + 1):
                    mass = a[top:bottom, left:right].sum() / total
                    if mass >= fraction - xp.MASS_TOLERANCE:
                        key = ((bottom - top) * (right - left), -round(mass, 9), top, left, bottom)
                        if best is None or key < best[0]:
                            best = (key, (top, left, bottom, right))
                        break  # a wider rectangle from this left is larger
    return best[1]


def test_box_mask_uses_pixel_centres():
    mask = box_mask(np.array([[0.5, 1.4, 2.0, 1.0]]), (4, 4))
    # columns 0 (centre 0.5), 1 (1.5) lie in [0.5, 2.5), column 2 (2.5) not; rows: [1.4, 2.4) holds 1.5 only
    expected = np.zeros((4, 4), bool)
    expected[1, 0:2] = True
    assert (mask == expected).all()


def test_map_inside_the_box_scores_one():
    boxes = np.array([[10.0, 5.0, 20.0, 15.0]])
    heatmap = block(SHAPE, 5, 10, 20, 30)
    result = explain_image(heatmap, boxes)
    assert result["activation_in_box"] == 1.0
    assert result["pointing_game"] == 1.0
    assert result["cc_map"] == 1.0  # the single component's box is the ground-truth box
    assert result["iou_95"] >= 0.94  # 95% of a uniform block: one row or column less
    assert result["enrichment"] == pytest.approx(1 / result["box_share"])


def test_map_outside_the_box_scores_zero():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]])
    result = explain_image(block(SHAPE, 25, 25, 35, 35), boxes)
    assert result["activation_in_box"] == 0.0
    assert result["pointing_game"] == 0.0
    assert result["iou_95"] == 0.0
    assert result["cc_map"] == 0.0


def test_uniform_map_scores_the_box_share():
    boxes = np.array([[3.0, 4.0, 10.0, 7.0], [20.0, 20.0, 5.5, 5.0]])
    mask = box_mask(boxes, SHAPE)
    result = explain_image(np.full(SHAPE, 0.3), boxes)
    assert result["activation_in_box"] == pytest.approx(mask.mean())
    assert result["box_share"] == pytest.approx((10 * 7 + 5 * 5) / 1600)  # centre 25.5 is outside
    assert result["enrichment"] == pytest.approx(1.0)
    assert result["pointing_game"] == pytest.approx(mask.mean())  # every pixel ties: the box share


def test_pointing_game_shares_ties():
    boxes = [np.array([[0.0, 0.0, 10.0, 10.0]])]
    heatmap = np.zeros(SHAPE)
    heatmap[5, 5] = heatmap[30, 30] = heatmap[31, 2] = 2.0  # three maxima, one inside
    heatmap[6, 6] = 1.0
    assert xp.pointing_game(xp.Maps(heatmap, boxes))[0] == pytest.approx(1 / 3)
    assert xp.pointing_game(xp.Maps(heatmap > 0, boxes))[0] == pytest.approx(2 / 4)  # a boolean map is all ties


def test_the_batched_form_scores_each_map_as_alone_and_one_map_for_all():
    """One map per image gives each image's score alone; one map for every image (a box-blind map) gives
    that map's score on each image: the form the chance references use. To the last digit for maps as
    ingestion stores them (float16: their sums are exact in float64)."""
    rng = np.random.default_rng(3)
    maps = [blob(SHAPE, *rng.uniform(5, 35, 2), rng.uniform(2, 10)).astype(np.float16) for _ in range(6)]
    boxes = [np.array([[*rng.uniform(0, 20, 2), *rng.uniform(5, 20, 2)]]) for _ in range(5)]
    boxes.append(np.vstack([boxes[0], [[25.0, 25.0, 10.0, 10.0]]]))  # two boxes
    prior = np.mean([box_mask(b, SHAPE) for b in boxes], axis=0)
    measures = (xp.activation_in_box, xp.activation_over_prior, xp.pointing_game, xp.iou_95, xp.cc_map)
    together = xp.Maps(np.stack(maps), boxes, prior)
    for measure in measures:
        alone = [measure(xp.Maps(m, [b], prior))[0] for m, b in zip(maps, boxes)]
        assert measure(together).tolist() == alone, measure.__name__
        one_for_all = [measure(xp.Maps(maps[0], [b], prior))[0] for b in boxes]
        assert measure(xp.Maps(maps[0], boxes, prior)).tolist() == one_for_all, measure.__name__
    with pytest.raises(ValueError, match=r"shape \(2, 40, 40\) for 6 images"):
        xp.Maps(np.stack(maps[:2]), boxes)


def test_activation_over_prior_subtracts_the_prior_peak():
    prior = np.zeros(SHAPE, dtype=np.float32)
    prior[10:20, 10:20] = 0.25
    prior[12, 12] = 0.5
    boxes = np.array([[0.0, 0.0, 20.0, 20.0]])
    result = explain_image(block(SHAPE, 0, 0, 10, 10), boxes, prior)
    assert result["activation_over_prior"] == pytest.approx(1.0 - 0.5)
    assert explain_image(block(SHAPE, 0, 0, 10, 10), boxes)["activation_over_prior"] is None


def test_all_zero_map_scores_zero():
    result = explain_image(np.zeros(SHAPE), np.array([[0.0, 0.0, 40.0, 40.0]]))
    assert xp.rectangle_95(np.zeros(SHAPE)) is None
    assert [result[k] for k in ("activation_in_box", "iou_95", "cc_map", "pointing_game")] == [0, 0, 0, 0]


def test_two_blobs_in_two_boxes_low_iou_high_component_map():
    shape = (100, 100)
    boxes = np.array([[5.0, 5.0, 20.0, 20.0], [75.0, 75.0, 20.0, 20.0]])
    heatmap = block(shape, 5, 5, 25, 25) + block(shape, 75, 75, 95, 95)
    result = explain_image(heatmap, boxes)
    assert result["activation_in_box"] == 1.0
    assert result["iou_95"] < 0.2  # one rectangle must enclose both blobs
    assert result["cc_map"] == 1.0  # each component's box is one ground-truth box


@pytest.mark.parametrize("seed", range(5))
def test_metrics_are_invariant_to_the_map_scale(seed):
    rng = np.random.default_rng(seed)
    heatmap = blob(SHAPE, *rng.uniform(5, 35, 2), rng.uniform(2, 10)) + rng.random(SHAPE) * 0.2
    boxes = np.array([[*rng.uniform(0, 20, 2), *rng.uniform(5, 20, 2)]])
    reference = explain_image(heatmap, boxes)
    for scale in (1e-3, 7.5, 1e4):
        scaled = explain_image(heatmap * scale, boxes)
        for key, value in reference.items():
            assert scaled[key] == pytest.approx(value), key


@pytest.mark.parametrize("seed", range(40))
def test_rectangle_95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    heatmap = rng.random((12, 12)) ** rng.uniform(1, 8)
    if seed % 3 == 0:
        heatmap[rng.random((12, 12)) < 0.6] = 0  # sparse maps have many ties
    rectangle = xp.rectangle_95(heatmap)
    assert rectangle == brute_rectangle(heatmap)
    top, left, bottom, right = rectangle
    assert heatmap[top:bottom, left:right].sum() >= 0.95 * heatmap.sum() * (1 - 1e-9)


def test_rectangle_95_of_a_block_and_uniform_map():
    assert xp.rectangle_95(block(SHAPE, 10, 10, 11, 12)) == (10, 10, 11, 12)  # 2 pixels: both needed
    # 95% of a uniform 20x20 map: 380 pixels, a 19x20 or 20x19 rectangle; ties go to the top-left one
    assert xp.rectangle_95(np.ones((20, 20))) == (0, 0, 19, 20)


def test_box_iou_known_values():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[5.0, 0.0, 10.0, 10.0], [20.0, 20.0, 1.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    assert box_iou(a, b)[0] == pytest.approx([50 / 150, 0.0, 1.0])


def test_rsna_image_score_known_cases():
    truth = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert xp.rsna_image_score(truth, [1.0], truth) == 1.0
    assert xp.rsna_image_score(np.zeros((0, 4)), [], truth) == 0.0
    # IoU 0.5 beats thresholds 0.40 and 0.45 only (strictly greater): 2 of 8 thresholds score 1
    half = np.array([[0.0, 0.0, 10.0, 5.0]])
    assert xp.rsna_image_score(half, [1.0], truth) == pytest.approx(2 / 8)
    # a perfect box plus a false positive: TP / (TP + FP) = 1/2 at every threshold
    far = np.array([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 5.0, 5.0]])
    assert xp.rsna_image_score(far, [0.9, 0.8], truth) == pytest.approx(0.5)
    # two boxes on one truth: whichever is matched, the other is a false positive
    both = np.array([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    assert xp.rsna_image_score(both, [0.9, 0.1], truth) == pytest.approx(0.5)
    # two truths: a prediction matches each at most once, the second truth is missed
    two = np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 10.0, 10.0]])
    assert xp.rsna_image_score(truth, [1.0], two) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        xp.rsna_image_score(truth, [1.0], np.zeros((0, 4)))


def test_component_boxes_drop_small_and_keep_four_heaviest():
    heatmap = np.zeros((100, 100))
    heatmap[0:3, 0:3] = 1.0  # 9 pixels < 1% of the image: dropped
    for k in range(5):
        heatmap[10 + 15 * k: 20 + 15 * k, 40:50] = 0.6 + 0.05 * k  # five 10x10 squares
    boxes, masses = xp.component_boxes(heatmap, 0.2)
    assert len(boxes) == 4
    assert np.all(np.diff(masses) < 0)
    assert boxes[0].tolist() == [40.0, 70.0, 10.0, 10.0]  # the heaviest square comes first
    diagonal = np.eye(20)  # 8-connected: a diagonal line is one component
    assert len(xp.component_boxes(np.pad(diagonal, 5), 0.5)[0]) == 1  # 20 of 900 pixels
