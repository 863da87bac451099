"""Evaluation metrics: known values, anisotropic spacing, empty masks counted, agreement with MONAI,
and classification metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from usvlm_training.metrics import (aggregate, asd, classification_scores, dice, hd95, iou, roc_curve,
                                    score, surface, surface_distances)


def square(top: int, left: int, size: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def brute_force_distances(pred, gt, spacing):
    """Every surface pixel to every other surface pixel, no distance transform."""
    scale = np.asarray(spacing, dtype=float)
    a, b = np.argwhere(surface(pred)) * scale, np.argwhere(surface(gt)) * scale
    d = cdist(a, b)
    return d.min(axis=1), d.min(axis=0)


# -- known values -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
def test_offset_squares(k):
    a = 20
    gt, pred = square(10, 10, a), square(10, 10 + k, a)
    assert dice(pred, gt) == pytest.approx((a - k) / a)
    assert iou(pred, gt) == pytest.approx((a - k) / (a + k))
    assert hd95(pred, gt) == pytest.approx(k)
    assert hd95(pred, gt, spacing=0.3) == pytest.approx(0.3 * k)
    d1, d2 = brute_force_distances(pred, gt, (1.0, 1.0))
    assert asd(pred, gt) == pytest.approx((d1.sum() + d2.sum()) / (d1.size + d2.size))


def test_anisotropic_spacing():
    spacing = (0.5, 0.2)  # (rows, columns) in mm
    gt = square(10, 10, 20)
    across, down = square(10, 14, 20), square(14, 10, 20)  # 4 columns right, 4 rows down
    assert hd95(across, gt, spacing) == pytest.approx(4 * 0.2)
    assert hd95(down, gt, spacing) == pytest.approx(4 * 0.5)
    for pred in (across, down):
        d1, d2 = brute_force_distances(pred, gt, spacing)
        ours = surface_distances(pred, gt, spacing)
        np.testing.assert_allclose(np.sort(ours[0]), np.sort(d1))
        np.testing.assert_allclose(np.sort(ours[1]), np.sort(d2))
        assert asd(pred, gt, spacing) == pytest.approx((d1.sum() + d2.sum()) / (d1.size + d2.size))


def test_surface_is_boundary_pixels_and_image_border_counts():
    mask = square(0, 0, 5, (8, 8))
    expected = mask.copy()
    expected[1:4, 1:4] = False  # the border of the image closes the square
    np.testing.assert_array_equal(surface(mask), expected)


def test_identical_masks_and_bad_input():
    mask = square(5, 5, 9)
    s = score(mask, mask, (0.1, 0.1))
    assert (s.dice, s.iou, s.hd95, s.asd) == (1.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="binary"):
        dice(mask * 0.7, mask)
    with pytest.raises(ValueError, match="shape"):
        dice(mask, mask[:-1])
    with pytest.raises(ValueError, match="spacing"):
        hd95(mask, mask, spacing=(0.0, 1.0))


# -- empty masks --------------------------------------------------------------------------------


def test_empty_masks_convention_and_counts():
    empty, full = np.zeros((32, 32), bool), square(8, 8, 10, (32, 32))
    both = score(empty, empty, 0.2)
    assert (both.dice, both.iou, both.hd95, both.asd, both.both_empty) == (1.0, 1.0, 0.0, 0.0, True)
    missed = score(empty, full, 0.2)
    assert (missed.dice, missed.empty_pred, missed.empty_gt) == (0.0, True, False)
    assert math.isinf(missed.hd95) and math.isinf(missed.asd) and not missed.has_distances
    false_alarm = score(full, empty, 0.2)
    assert false_alarm.dice == 0.0 and false_alarm.empty_gt and math.isinf(false_alarm.hd95)
    good = score(square(8, 9, 10, (32, 32)), full, 0.2)

    summary = aggregate([good, missed, false_alarm, both])
    assert summary.n == 4
    assert summary.dice.n == 4 and summary.dice.mean == pytest.approx((good.dice + 0 + 0 + 1) / 4)
    assert summary.hd95.n == 1 and summary.hd95.mean == pytest.approx(good.hd95)
    assert (summary.empty_pred, summary.empty_gt, summary.both_empty, summary.distance_excluded) == (2, 2, 1, 3)
    penalised = aggregate([good, missed, false_alarm, both], empty_penalty_mm=50.0)
    assert penalised.hd95.n == 4 and penalised.distance_excluded == 0
    assert penalised.hd95.mean == pytest.approx((good.hd95 + 50 + 50 + 0) / 4)
    assert math.isnan(aggregate([missed]).hd95.mean) and aggregate([]).n == 0


# -- agreement with MONAI -----------------------------------------------------------------------


def random_masks(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Blobby masks of random size, smoothness and number of parts."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(1.5, 6.0))
    return noise > np.quantile(noise, rng.uniform(0.5, 0.95))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notices
def test_metrics_equal_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    import torch

    rng = np.random.default_rng(2024)
    for case in range(25):
        shape = (int(rng.integers(24, 80)), int(rng.integers(24, 80)))
        pred, gt = random_masks(rng, shape), random_masks(rng, shape)
        spacing = (float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.05, 1.0)))
        p = torch.from_numpy(pred)[None, None].float()
        g = torch.from_numpy(gt)[None, None].float()
        ours = score(pred, gt, spacing)
        expected_dice = float(monai_metrics.compute_dice(p, g, include_background=True))
        expected_hd = float(monai_metrics.compute_hausdorff_distance(
            p, g, include_background=True, percentile=95, spacing=list(spacing)))
        expected_asd = float(monai_metrics.compute_average_surface_distance(
            p, g, include_background=True, symmetric=True, spacing=list(spacing)))
        assert ours.dice == pytest.approx(expected_dice, rel=1e-5), case
        assert ours.hd95 == pytest.approx(expected_hd, rel=1e-4), case
        assert ours.asd == pytest.approx(expected_asd, rel=1e-4), case


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_metric_properties(seed):
    rng = np.random.default_rng(seed)
    pred, gt = random_masks(rng, (20, 24)), random_masks(rng, (20, 24))
    s, t = score(pred, gt, (0.3, 0.2)), score(gt, pred, (0.3, 0.2))
    assert (s.dice, s.iou, s.hd95, s.asd) == pytest.approx((t.dice, t.iou, t.hd95, t.asd))  # symmetric
    assert 0 <= s.iou <= s.dice <= 1 and s.iou == pytest.approx(s.dice / (2 - s.dice))
    d1, d2 = brute_force_distances(pred, gt, (0.3, 0.2))
    assert s.hd95 <= max(d1.max(), d2.max()) + 1e-9


# -- classification -----------------------------------------------------------------------------


def test_classification_known_values():
    probabilities = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7]
    labels = [1, 1, 1, 0, 0, 0, -1]  # the last one unknown: left out, counted
    s = classification_scores(probabilities, labels)
    assert s.confusion == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert (s.n, s.n_positive, s.n_unknown) == (6, 3, 1)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert s.specificity == pytest.approx(2 / 3) and s.f1 == pytest.approx(2 / 3)
    assert s.auc == pytest.approx(8 / 9)  # 8 of the 9 (malignant, benign) pairs ranked right
    strict = classification_scores(probabilities, labels, threshold=0.85)
    assert strict.confusion == {"tn": 3, "fp": 0, "fn": 2, "tp": 1} and strict.precision == 1.0
    assert strict.recall == pytest.approx(1 / 3) and strict.f1 == pytest.approx(0.5)


def test_roc_curve_points_and_edge_cases():
    two_column = np.array([[0.1, 0.9], [0.4, 0.6], [0.8, 0.2], [0.7, 0.3]])
    curve, auc = roc_curve(two_column, [1, 0, 0, 1])
    assert (curve.fpr[0], curve.tpr[0], curve.fpr[-1], curve.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.tpr) >= 0)
    assert all(0 <= t <= 1 for t in curve.thresholds)
    assert auc == pytest.approx(0.75)
    one_class = classification_scores([0.2, 0.7], [0, 0])
    assert math.isnan(one_class.auc) and one_class.precision == 0.0 and one_class.accuracy == 0.5
    with pytest.raises(ValueError):
        classification_scores([0.5, 1.5], [0, 1])
    with pytest.raises(ValueError):
        classification_scores([0.5], [-1])
