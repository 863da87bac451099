"""Geometry: IJK <-> RAS as Slicer computes it, LPS conversion, and the Slicer array layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usvlm.io.geometry import Geometry
from usvlm.io.volume_arrays import image_from_volume_array, mask_to_volume_array

spacings = st.floats(min_value=0.01, max_value=5.0)
coords = st.floats(min_value=-500, max_value=500)


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@settings(max_examples=60, deadline=None)
@given(sx=spacings, sy=spacings, sz=spacings, origin=st.tuples(coords, coords, coords),
       angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
       ijk=st.lists(st.tuples(*[st.floats(-100, 1000)] * 3), min_size=1, max_size=5))
def test_ijk_ras_round_trip(sx, sy, sz, origin, angles, ijk):
    g = Geometry(spacing=(sx, sy, sz), origin=origin, direction=_rotation(angles))
    pts = np.array(ijk)
    back = g.ras_to_ijk_points(g.ijk_to_ras_points(pts))
    np.testing.assert_allclose(back, pts, atol=1e-6 * max(1.0, np.abs(pts).max()))
    # The matrix rebuilds the same geometry.
    again = Geometry.from_ijk_to_ras(g.ijk_to_ras())
    np.testing.assert_allclose(again.ijk_to_ras(), g.ijk_to_ras(), atol=1e-9)


def test_default_placement_matches_slicer_for_files_without_position():
    g = Geometry.for_pixels(0.2, 0.3)
    # Slicer loads a PNG / position-less image with IJK-to-RAS = diag(-sx, -sy, 1).
    np.testing.assert_allclose(g.ijk_to_ras(), np.diag([-0.2, -0.3, 1.0, 1.0]))
    np.testing.assert_allclose(g.ijk_to_lps(), np.diag([0.2, 0.3, 1.0, 1.0]))


def test_from_lps_flips_first_two_axes():
    g = Geometry.from_lps((0.5, 0.5, 1.0), (10.0, -20.0, 3.0), np.eye(3))
    assert g.origin == (-10.0, 20.0, 3.0)
    np.testing.assert_allclose(g.origin_lps, (10.0, -20.0, 3.0))


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (float("nan"), 1.0, 1.0)])
def test_invalid_spacing_refused(spacing):
    with pytest.raises(ValueError):
        Geometry(spacing=spacing)


def test_volume_array_layouts():
    m = np.diag([-0.1, -0.1, 1.0, 1.0])
    grey2d = image_from_volume_array(np.zeros((1, 20, 30), np.uint8), m, is_vector=False, calibrated=True)
    assert grey2d.pixels.shape == (20, 30) and not grey2d.is_cine and not grey2d.is_rgb
    rgb2d = image_from_volume_array(np.zeros((1, 20, 30, 3), np.uint8), m, is_vector=True, calibrated=True)
    assert rgb2d.pixels.shape == (20, 30, 3) and rgb2d.is_rgb
    cine = image_from_volume_array(np.zeros((7, 20, 30), np.uint8), m, is_vector=False, calibrated=True)
    assert cine.is_cine and cine.frames == 7
    assert mask_to_volume_array(np.ones((20, 30), bool)).shape == (1, 20, 30)
    assert mask_to_volume_array(np.ones((7, 20, 30), bool)).shape == (7, 20, 30)
