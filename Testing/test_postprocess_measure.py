"""Post-processing invariants and measurements in mm on shapes of known size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.draw import ellipse, polygon

from usvlm.measure import measure_mask
from usvlm.postprocess import PostprocessOptions, postprocess

prob_maps = arrays(np.float32, st.tuples(st.integers(8, 40), st.integers(8, 40)),
                   elements=st.floats(0, 1, width=32))


@settings(max_examples=50, deadline=None)
@given(prob=prob_maps, t1=st.floats(0.05, 0.95), t2=st.floats(0.05, 0.95))
def test_threshold_monotone_and_inside_field_of_view(prob, t1, t2):
    lo, hi = sorted((t1, t2))
    fov = np.zeros(prob.shape, bool)
    fov[2:-2, 1:] = True
    kw = dict(keep_largest=False, fill_holes=False)
    m_lo = postprocess(prob, PostprocessOptions(threshold=lo, **kw), (0.1, 0.1), fov)
    m_hi = postprocess(prob, PostprocessOptions(threshold=hi, **kw), (0.1, 0.1), fov)
    assert not (m_hi & ~m_lo).any(), "a higher threshold never adds pixels"
    full = postprocess(prob, PostprocessOptions(threshold=lo), (0.1, 0.1), fov)
    assert not (full & ~fov).any(), "masks stay inside the field of view"


def _two_blobs() -> np.ndarray:
    prob = np.zeros((60, 80), np.float32)
    prob[10:20, 10:20] = 0.9  # 100 px
    prob[30:50, 40:70] = 0.8  # 600 px, with a hole
    prob[38:42, 50:55] = 0.1
    return prob


def test_component_under_click_largest_and_holes():
    prob = _two_blobs()
    largest = postprocess(prob, PostprocessOptions(), (1.0, 1.0))
    assert largest[35, 45] and not largest[15, 15]
    assert largest[40, 52], "hole filled"
    clicked = postprocess(prob, PostprocessOptions(point=(15, 15)), (1.0, 1.0))
    assert clicked.sum() == 100
    missed = postprocess(prob, PostprocessOptions(point=(2, 2)), (1.0, 1.0))
    assert not missed.any()
    no_fill = postprocess(prob, PostprocessOptions(fill_holes=False), (1.0, 1.0))
    assert not no_fill[40, 52]


def test_min_area_in_mm2_uses_spacing():
    prob = _two_blobs()
    opts = PostprocessOptions(min_area_mm2=2.0, keep_largest=False)
    # At 0.1 mm the 100 px blob is 1 mm^2 (removed); at 0.2 mm it is 4 mm^2 (kept).
    assert not postprocess(prob, opts, (0.1, 0.1))[15, 15]
    assert postprocess(prob, opts, (0.2, 0.2))[15, 15]


def test_cine_is_processed_per_frame():
    prob = np.stack([_two_blobs(), np.zeros((60, 80), np.float32)])
    masks = postprocess(prob, PostprocessOptions(), (1.0, 1.0))
    assert masks.shape == (2, 60, 80) and masks[0].any() and not masks[1].any()


def test_invalid_options():
    with pytest.raises(ValueError):
        PostprocessOptions(threshold=1.5)


@pytest.mark.parametrize("spacing", [(0.1, 0.1), (0.08, 0.15)])
def test_ellipse_axes_and_area_in_mm(spacing):
    sx, sy = spacing
    # An ellipse 12 mm wide (x) and 6 mm deep (y): semi-axes 6 mm and 3 mm.
    shape = (int(10 / sy), int(20 / sx))
    mask = np.zeros(shape, bool)
    rr, cc = ellipse(shape[0] / 2, shape[1] / 2, 3.0 / sy, 6.0 / sx, shape=shape)
    mask[rr, cc] = True
    m = measure_mask(mask, spacing)
    assert m.unit == "mm" and m.calibrated
    assert m.long_axis == pytest.approx(12.0, rel=0.03)
    assert m.short_axis == pytest.approx(6.0, rel=0.04)
    assert m.area == pytest.approx(np.pi * 6 * 3, rel=0.03)
    assert not m.taller_than_wide
    # Ramanujan's perimeter of the 6 x 3 mm ellipse gives circularity 0.840.
    perimeter = np.pi * (3 * 9 - np.sqrt((3 * 6 + 3) * (6 + 3 * 3)))
    assert m.circularity == pytest.approx(4 * np.pi * np.pi * 18 / perimeter**2, rel=0.04)


def test_taller_than_wide_rotated_rectangle_and_uncalibrated():
    mask = np.zeros((200, 200), bool)
    # A 40 x 100 px rectangle rotated by 30 degrees from vertical.
    a = np.deg2rad(30)
    u, v = np.array([np.sin(a), np.cos(a)]), np.array([np.cos(a), -np.sin(a)])
    c = np.array([100, 100])
    corners = [c + s * 50 * u + t * 20 * v for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    xs, ys = zip(*corners)
    rr, cc = polygon(ys, xs, shape=mask.shape)
    mask[rr, cc] = True
    m = measure_mask(mask, (0.3, 0.3), calibrated=False)
    assert m.unit == "px" and not m.calibrated
    assert m.long_axis == pytest.approx(np.hypot(100, 40), rel=0.03)  # the diagonal
    assert m.taller_than_wide


def test_circularity_lower_for_spiculated_margin():
    yy, xx = np.mgrid[0:200, 0:200]
    r, t = np.hypot(xx - 100, yy - 100), np.arctan2(yy - 100, xx - 100)
    disk = measure_mask(r < 50, (0.1, 0.1))
    spiky = measure_mask(r < 50 * (1 + 0.3 * np.cos(12 * t)), (0.1, 0.1))
    assert disk.circularity > 0.95 and spiky.circularity < 0.7


def test_relative_echogenicity():
    image = np.full((80, 80), 120.0)
    mask = np.zeros((80, 80), bool)
    mask[30:50, 30:50] = True
    image[mask] = 12.0
    m = measure_mask(mask, (0.2, 0.2), image=image)
    assert m.echogenicity_ratio == pytest.approx(0.1)
    assert m.echogenicity_db == pytest.approx(-20.0)


def test_empty_mask_measures_zero():
    m = measure_mask(np.zeros((10, 10), bool), (0.1, 0.1))
    assert m.area == 0 and m.components == 0


@settings(max_examples=80, deadline=None)
@given(mask=arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_fast_fill_holes_equals_scipy(mask):
    from scipy import ndimage

    from usvlm.postprocess import fill_holes

    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
