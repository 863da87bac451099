"""Preprocessing: field of view, overlay suppression, letterbox transform and prepare()."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from scipy import ndimage

from usvlm.errors import InputError
from usvlm.io.image import ImageInfo, UltrasoundRegion, USImage
from usvlm.preprocess import (LetterboxTransform, detect_field_of_view, detect_overlays, prepare,
                              suppress_overlays)

# --- synthetic images ------------------------------------------------------------------------


def speckle(shape: tuple[int, ...], rng: np.random.Generator, mean: float = 110.0) -> np.ndarray:
    """Log-compressed, fully developed speckle (complex Gaussian scatterers through a PSF)."""
    sigma = (0,) * (len(shape) - 2) + (1.5, 1.0)
    z = [ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(2)]
    env = np.hypot(*z)
    db = 20 * np.log10(env / np.sqrt(np.mean(env ** 2)) + 1e-6)
    return np.clip(mean + db * 255 / 60, 0, 255).astype(np.uint8)


def fan_mask(shape: tuple[int, int], apex: tuple[float, float], r_in: float, r_out: float,
             half_angle_deg: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    dx, dy = xx - apex[0], yy - apex[1]
    d = np.hypot(dx, dy)
    return (d >= r_in) & (d <= r_out) & (np.abs(np.arctan2(dx, dy)) <= np.deg2rad(half_angle_deg)) & (dy > 0)


FONT = {  # 5 x 7 glyphs, enough for scanner-like strings
    "0": ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    "1": ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    "2": ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    "5": ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    "C": ["01110", "10001", "10000", "10000", "10000", "10001", "01110"],
    "M": ["10001", "11011", "10101", "10101", "10001", "10001", "10001"],
    "H": ["10001", "10001", "10001", "11111", "10001", "10001", "10001"],
    "z": ["00000", "00000", "11111", "00010", "00100", "01000", "11111"],
    " ": ["00000"] * 7,
}


def draw_text(img: np.ndarray, truth: np.ndarray, text: str, x: int, y: int, value: int = 255,
              scale: int = 1) -> None:
    for i, ch in enumerate(text):
        glyph = np.kron(np.array([[c == "1" for c in row] for row in FONT[ch]]), np.ones((scale, scale), bool))
        h, w = glyph.shape
        x0 = x + i * 6 * scale
        img[y:y + h, x0:x0 + w][glyph] = value
        truth[y:y + h, x0:x0 + w] |= glyph


def draw_cross(img: np.ndarray, truth: np.ndarray, x: int, y: int, arm: int = 5, value: int = 255) -> None:
    for sl in ((slice(y - arm, y + arm + 1), x), (y, slice(x - arm, x + arm + 1))):
        img[sl] = value
        truth[sl] = True


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


# --- real DICOM files ----------------------------------------------------------------------


def regions(ds: pydicom.Dataset) -> list[UltrasoundRegion]:
    return [UltrasoundRegion(int(r.RegionLocationMinX0), int(r.RegionLocationMinY0),
                             int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1),
                             int(r.RegionSpatialFormat), int(r.RegionDataType),
                             int(r.PhysicalUnitsXDirection), int(r.PhysicalUnitsYDirection),
                             float(r.PhysicalDeltaX), float(r.PhysicalDeltaY))
            for r in ds.get("SequenceOfUltrasoundRegions", [])]


def dicom_image(path: str | Path, cine: bool) -> USImage:
    ds = pydicom.dcmread(path)
    # pydicom 3 returns YBR as RGB already.
    return USImage(ds.pixel_array, info=ImageInfo(path=str(path), regions=regions(ds)),
                   is_rgb=True, is_cine=cine)


@pytest.fixture(scope="module")
def ybr_cine() -> USImage:
    return dicom_image(get_testdata_file("examples_ybr_color.dcm"), cine=True)


@pytest.fixture(scope="module")
def us1() -> USImage:
    data_store = pytest.importorskip("data_store")
    return dicom_image(Path(data_store.__file__).parent / "data" / "US1_UNCR.dcm", cine=False)


# --- field of view -------------------------------------------------------------------------


def test_fov_convex_fan(rng):
    shape = (420, 500)
    truth = fan_mask(shape, (250, -60), 90, 460, 32)
    img = speckle(shape, rng) * truth
    img[5:15, 10:80] = 255  # burned-in bars in the black corners
    img[380:395, 420:490] = 200
    fov = detect_field_of_view(USImage(img.astype(np.uint8)))
    assert fov.kind == "fan" and fov.source == "estimated"
    assert iou(fov.mask, truth) >= 0.95
    assert fov.apex == pytest.approx((250, -60), abs=3)
    assert np.rad2deg(fov.angles) == pytest.approx([-32, 32], abs=1.5)
    assert fov.radii == pytest.approx((90, 460), abs=3)
    assert np.array_equal(fov.outside, ~fov.mask)


def test_fov_linear_rectangle(rng):
    shape = (400, 520)
    truth = np.zeros(shape, bool)
    truth[60:380, 40:470] = True
    img = speckle(shape, rng) * truth
    truth_text = np.zeros(shape, bool)
    draw_text(img, truth_text, "12CM 5MHz", 40, 10, scale=2)  # a text bar above the field
    fov = detect_field_of_view(USImage(img.astype(np.uint8)))
    assert fov.kind == "rectangle"
    assert iou(fov.mask, truth) >= 0.95
    assert fov.box[1] >= 55


def test_fov_cine_uses_all_frames(rng):
    shape = (300, 360)
    truth = fan_mask(shape, (180, -40), 60, 320, 35)
    frames = speckle((6, *shape), rng).astype(np.float64)
    # A shadow that wanders over the fan: dark in each frame somewhere, never everywhere.
    for t in range(6):
        frames[t, :, 40 + 50 * t:90 + 50 * t] *= 0.02
    cine = USImage((frames * truth).astype(np.uint8), is_cine=True)
    fov = detect_field_of_view(cine)
    assert fov.kind == "fan" and iou(fov.mask, truth) >= 0.95


def test_fov_real_cine_inside_clipped_region(ybr_cine):
    # The region (84, 31, 595, 414) was written for the full-size image: clip it to 320 x 240.
    fov = detect_field_of_view(ybr_cine)
    assert fov.region == (84, 31, 319, 239)
    x0, y0, x1, y1 = fov.box
    assert x0 >= 84 and y0 >= 31 and x1 <= 319 and y1 <= 239
    outside_region = np.ones(ybr_cine.frame_shape, bool)
    outside_region[31:240, 84:320] = False
    assert not (fov.mask & outside_region).any()
    assert fov.mask.mean() > 0.2


def test_fov_real_cine_without_region_finds_the_sector(ybr_cine):
    fov = detect_field_of_view(USImage(ybr_cine.pixels, is_rgb=True, is_cine=True))
    assert fov.kind == "fan" and fov.source == "estimated"
    assert 150 < fov.apex[0] < 190 and -30 < fov.apex[1] < 20  # the phased array's apex, top centre
    assert np.rad2deg(fov.angles) == pytest.approx([-42, 42], abs=6)
    assert not fov.mask[:12].any() and not fov.mask[220:].any()  # text at the top, toolbar at the bottom


def test_fov_real_screen_capture_excludes_text(us1):
    fov = detect_field_of_view(us1)
    assert fov.source == "estimated" and fov.kind == "rectangle"
    x0, y0, x1, y1 = fov.box
    assert y0 > 100  # the text block at the top ends at row ~100
    assert y1 < 350  # "LYMPH NODE" and the scale bar lie below
    assert x0 < 20 and x1 > 600 and y0 < 115 and y1 > 330  # the whole scan area is kept


def test_fov_without_content_is_the_full_image():
    fov = detect_field_of_view(USImage(np.full((50, 60), 7, np.uint8)))
    assert fov.source == "full_image" and fov.mask.all() and fov.box == (0, 0, 59, 49)


# --- overlays --------------------------------------------------------------------------------


@pytest.mark.parametrize("mean,value", [(110, 255), (150, 220), (80, 200)])
def test_overlays_found_and_removed(rng, mean, value):
    img = speckle((400, 560), rng, mean)
    truth = np.zeros(img.shape, bool)
    draw_text(img, truth, "12CM 5MHz", 40, 40, value)
    draw_text(img, truth, "20 Hz", 40, 90, value, scale=2)
    draw_cross(img, truth, 300, 250, 5, value)
    draw_cross(img, truth, 420, 160, 4, value)
    for y in range(150, 380, 25):  # depth-scale ticks
        img[y, 520:526] = value
        truth[y, 520:526] = True
    found = detect_overlays(img)
    near = ndimage.binary_dilation(truth, iterations=2)
    assert (found & truth).sum() / truth.sum() >= 0.8  # recall
    assert (found & near).sum() / found.sum() >= 0.95  # precision (the rim counts)
    cleaned = suppress_overlays(img, found)
    assert cleaned.dtype == img.dtype and cleaned.shape == img.shape
    assert np.array_equal(cleaned[~found], img[~found])
    hit = truth & found
    assert abs(float(cleaned[hit].mean()) - float(img[~near].mean())) < 25  # looks like tissue now


@pytest.mark.parametrize("mean", [90, 130, 160])
def test_overlays_rare_on_plain_speckle(rng, mean):
    assert detect_overlays(speckle((480, 640), rng, mean)).mean() < 0.01


def test_overlays_keep_calcifications(rng):
    img = speckle((200, 200), rng).astype(np.float64)
    yy, xx = np.mgrid[:200, :200]
    for cx, cy, r in [(50, 50, 1.0), (100, 60, 1.5), (150, 140, 2.5), (60, 150, 3.0)]:
        img += 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    assert detect_overlays(np.clip(img, 0, 255).astype(np.uint8)).sum() == 0


def test_coloured_markers_in_grey_image(rng):
    grey = speckle((200, 240), rng)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    truth = np.zeros(grey.shape, bool)
    truth[100:104, 50:90] = True  # a yellow marker
    rgb[truth] = (230, 220, 30)
    found = detect_overlays(rgb)
    assert found[truth].all() and found.sum() < 2 * ndimage.binary_dilation(truth).sum()


def test_overlays_only_inside_the_field_box(rng):
    img = speckle((200, 200), rng)
    truth = np.zeros(img.shape, bool)
    draw_text(img, truth, "12", 10, 10)
    draw_text(img, truth, "12", 120, 120)
    fov = detect_field_of_view(USImage(np.pad(speckle((100, 100), rng), ((100, 0), (100, 0)))))
    found = detect_overlays(img, fov)
    assert not found[:100].any() and found[120:127, 120:131].any()


def test_overlay_batching_matches_frames(rng):
    frames = speckle((3, 120, 160), rng)
    for t in range(3):
        draw_text(frames[t], np.zeros((120, 160), bool), "10"[: t % 2 + 1], 20 + 10 * t, 30)
    cine = USImage(frames, is_cine=True)
    batched = detect_overlays(cine)
    single = np.stack([detect_overlays(frames[t]) for t in range(3)])
    assert np.array_equal(batched, single)
    filled = suppress_overlays(frames, batched)
    assert np.array_equal(filled, np.stack([suppress_overlays(frames[t], single[t]) for t in range(3)]))


# --- letterbox -------------------------------------------------------------------------------


@st.composite
def letterboxes(draw):
    h, w = draw(st.integers(16, 700)), draw(st.integers(16, 700))
    x0, y0 = draw(st.integers(0, w - 8)), draw(st.integers(0, h - 8))
    x1, y1 = draw(st.integers(x0 + 7, w - 1)), draw(st.integers(y0 + 7, h - 1))
    size = draw(st.integers(32, 512))
    return LetterboxTransform.compute((h, w), size, (x0, y0, x1, y1))


@settings(max_examples=60, deadline=None)
@given(letterboxes(), st.data())
def test_points_round_trip(tf, data):
    x0, y0, x1, y1 = tf.box
    x = np.array(data.draw(st.lists(st.floats(x0 - 0.5, x1 + 0.5), min_size=1, max_size=20)))
    y = np.resize(np.array(data.draw(st.lists(st.floats(y0 - 0.5, y1 + 0.5), min_size=1, max_size=20))), x.shape)
    u, v = tf.to_model(x, y)
    bx, by = tf.to_image(u, v)
    assert np.abs(bx - x).max() < 1e-6 and np.abs(by - y).max() < 1e-6
    # The crop's outer pixel edges land on the scaled content's outer edges.
    cx0, cy0, cx1, cy1 = tf.content_box
    assert tf.to_model(x0 - 0.5, y0 - 0.5) == pytest.approx((cx0 - 0.5, cy0 - 0.5))
    assert tf.to_model(x1 + 0.5, y1 + 0.5) == pytest.approx((cx1 + 0.5, cy1 + 0.5))


@settings(max_examples=60, deadline=None)
@given(letterboxes(), st.integers(0, 2**32 - 1))
def test_mask_round_trip(tf, seed):
    rng = np.random.default_rng(seed)
    mask = (ndimage.uniform_filter(rng.random(tf.input_shape), 5) > 0.5).astype(np.float32)
    x0, y0, x1, y1 = tf.box
    inside = np.zeros(tf.input_shape, bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    model = tf.forward(mask, mode="nearest")
    assert model.shape == (tf.size, tf.size) and model.dtype == np.float32
    assert (model[~tf.model_mask()] == tf.pad_value).all()
    sy, sx = tf.scale
    if sx >= 1 and sy >= 1:  # nothing merged: nearest there and back is the identity
        back = tf.inverse(model, mode="nearest")
        assert np.array_equal(back[inside], mask[inside]) and (back[~inside] == 0).all()
        # Each pixel centre lands in a model pixel whose centre maps back into the same pixel.
        ys, xs = np.nonzero(inside)
        u, v = tf.to_model(xs, ys)
        bx, by = tf.to_image(np.floor(u + 0.5), np.floor(v + 0.5))
        assert np.array_equal(np.floor(bx + 0.5), xs) and np.array_equal(np.floor(by + 0.5), ys)
    if (sx, sy) == (1.0, 1.0):  # scale 1: pad and crop only, bilinear is exact too
        assert np.array_equal(tf.inverse(model)[inside], mask[inside])
    const = tf.inverse(np.where(tf.model_mask(), 0.7, 0.0).astype(np.float32), fill=-1)
    assert np.allclose(const[inside], 0.7, atol=1e-5) and (const[~inside] == -1).all()


def test_scale_one_exact():
    tf = LetterboxTransform.compute((300, 400), 256, (10, 20, 265, 219))  # 256 wide: no scaling
    assert tf.scale == (1.0, 1.0) and tf.content_shape == (200, 256) and tf.offset == (28, 0)
    mask = np.zeros((300, 400), np.float32)
    mask[50:120, 30:200] = 1
    for mode in ("nearest", "bilinear"):
        assert np.array_equal(tf.inverse(tf.forward(mask, mode="nearest"), mode=mode),
                              mask * tf.inverse(np.ones((256, 256))))


def test_letterbox_batching_and_channels(rng):
    tf = LetterboxTransform.compute((90, 130), 64, (5, 7, 120, 80), pad_value=0.5)
    frames = rng.random((4, 90, 130, 3)).astype(np.float32)
    batched = tf.forward(frames)
    assert batched.shape == (4, 64, 64, 3)
    for t in range(4):
        assert np.allclose(batched[t], tf.forward(frames[t]), atol=1e-6)
        assert np.allclose(batched[t, ..., 1], tf.forward(frames[t, ..., 1]), atol=1e-6)
    maps = rng.random((4, 64, 64)).astype(np.float32)
    back = tf.inverse(maps)
    assert back.shape == (4, 90, 130)
    assert all(np.allclose(back[t], tf.inverse(maps[t]), atol=1e-6) for t in range(4))
    assert LetterboxTransform.from_dict(tf.to_dict()) == tf


# --- prepare -----------------------------------------------------------------------------


def test_prepare_cine(ybr_cine):
    prep = prepare(ybr_cine, 224)
    assert prep.pixels.shape == (30, 224, 224) and prep.pixels.dtype == np.float32
    assert 0 <= prep.pixels.min() and prep.pixels.max() <= 1
    assert prep.transform.box == prep.fov.box
    probs = np.ones((30, 224, 224), np.float32)
    back = prep.to_image(probs)
    assert back.shape == (30, 240, 320) and np.array_equal(back[0] > 0, prep.fov.mask)
    rgb = prepare(ybr_cine.frame(0), 224, keep_rgb=True)
    assert rgb.pixels.shape == (1, 224, 224, 3)


def test_prepare_blanks_outside_and_removes_text(rng):
    shape = (420, 500)
    truth = fan_mask(shape, (250, -60), 90, 460, 32)
    img = speckle(shape, rng) * truth
    text = np.zeros(shape, bool)
    draw_text(img, text, "12CM", 200, 200)
    img[5:15, 10:80] = 255
    prep = prepare(USImage(img.astype(np.uint8)), 256)
    u, v = prep.transform.to_model(*np.nonzero(text)[::-1])
    assert prep.pixels[0][np.rint(v).astype(int), np.rint(u).astype(int)].max() < 0.85
    # Model pixels made only of input pixels outside the field are black (edges blend).
    outside = prep.transform.forward((~prep.fov.mask).astype(np.float32)) > 1 - 1e-6
    assert outside.mean() > 0.1 and (prep.pixels[0][outside] == 0).all()
    grey = prepare(USImage(img.astype(np.uint8)), 256, keep_rgb=True)
    assert grey.pixels.shape == (1, 256, 256, 3)


def test_prepare_speed(rng):
    img = speckle((480, 640), rng) * fan_mask((480, 640), (320, -80), 100, 540, 35)
    image = USImage(img.astype(np.uint8))
    prepare(image, 256)
    start = time.perf_counter()
    prepare(image, 256)
    assert time.perf_counter() - start < 0.5  # ~25 ms on a free core; loose for shared CI


@pytest.mark.parametrize("pixels,problem", [
    (np.zeros((0, 10), np.uint8), "empty"),
    (np.full((20, 20), np.nan, np.float32), "NaN"),
    (np.zeros((2, 2, 2, 2, 2), np.uint8), "dimensions"),
])
def test_bad_input(pixels, problem):
    with pytest.raises(InputError, match=problem):
        detect_overlays(pixels)
    if pixels.ndim <= 4:
        with pytest.raises(InputError, match=problem):
            LetterboxTransform.compute((20, 20), 64).forward(pixels)


def test_bad_input_images():
    with pytest.raises(InputError, match="NaN"):
        prepare(USImage(np.full((20, 20), np.nan, np.float32)), 64)
    with pytest.raises(InputError, match="empty"):
        detect_field_of_view(USImage(np.zeros((0, 5), np.uint8)))
    with pytest.raises(InputError, match="size"):
        prepare(USImage(np.zeros((20, 20), np.uint8)), 0)
    with pytest.raises(InputError, match="shape"):
        LetterboxTransform.compute((20, 20), 64).inverse(np.zeros((32, 32)))


@pytest.mark.parametrize("shape,box,size", [((100, 130), (3, 5, 120, 90), 48), ((37, 50), None, 256),
                                            ((300, 40), (0, 10, 39, 299), 64)])
def test_resampling_matches_torch(rng, shape, box, size):
    torch = pytest.importorskip("torch")
    tf = LetterboxTransform.compute(shape, size, box)
    img = rng.random(shape).astype(np.float32)
    x0, y0, x1, y1 = tf.box
    crop = torch.from_numpy(img[y0:y1 + 1, x0:x1 + 1].copy())[None, None]
    shrink = tf.content_shape[0] < crop.shape[2] or tf.content_shape[1] < crop.shape[3]
    ref = torch.nn.functional.interpolate(crop, size=tf.content_shape, mode="bilinear",
                                          align_corners=False, antialias=shrink)[0, 0].numpy()
    cx0, cy0, cx1, cy1 = tf.content_box
    assert np.abs(tf.forward(img)[cy0:cy1 + 1, cx0:cx1 + 1] - ref).max() < 1e-5
