"""USVLM-Phantom v1 (training/usvlm_training/phantom): physics, labels, data set writer, CLI.

The physics and per-class appearance tests pin the nominal v1 ranges of PHANTOM.md, so they run
with SPEC_CONFIG (the v1 images, bit for bit); VARIETY_CONFIG widens those ranges on purpose
(near-isoechoic lesions, no shadow, no halo, dark or bright gains, non-Rayleigh speckle, phased
arrays: Testing/test_phantom_variety.py). Labels, overlays and determinism run with both.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, signal
from skimage import io as skio

from usvlm.cli import main
from usvlm_training.phantom import (DEFAULT_CONFIG, GENERATOR, KINDS, PROBES, SPEC_CONFIG,
                                   VARIETY_CONFIG, generate_sample, write_dataset)
from usvlm_training.phantom import dataset as dataset_module
from usvlm_training.phantom.formation import (beam_envelope, pulse_sigma_mm, rf_pulse,
                                              sample_acquisition)
from usvlm_training.phantom.probe import ProbeGeometry

RAYLEIGH_MEAN_OVER_STD = np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2)   # 1.913


@pytest.fixture(scope="module")
def batch():
    """A mixed batch of small images (random organ, probe, lesions), nominal v1 ranges."""
    return [generate_sample(2026, i, size=256, config=SPEC_CONFIG) for i in range(16)]


@pytest.fixture(scope="module")
def variety_batch():
    """The same with the variety's wider ranges."""
    return [generate_sample(2026, i, size=256, config=VARIETY_CONFIG) for i in range(16)]


def _kind_samples(kind: str, n: int = 3, probe: str = "linear", config=SPEC_CONFIG):
    return [generate_sample(77, i, size=256, kinds=[kind], probe=probe, config=config)
            for i in range(n)]


BOTH_CONFIGS = pytest.mark.parametrize("config", [SPEC_CONFIG, VARIETY_CONFIG],
                                       ids=["spec", "variety"])


# ----- image formation

@pytest.mark.parametrize("kind", ["linear", "convex"])
def test_envelope_is_rayleigh_in_uniform_tissue(kind):
    geometry = ProbeGeometry(kind, (256, 256), 0.15, radius_mm=30.0, angle_deg=60.0)
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(3):
        acq = sample_acquisition(rng, DEFAULT_CONFIG.formation, geometry.beam_range_mm)
        acq = dataclasses.replace(acq, residual_tgc_db=(0.0, 0.0))   # no depth trend
        echo = np.full(geometry.beam_shape, 0.5, np.float32)
        env = beam_envelope(echo, geometry, acq, DEFAULT_CONFIG.formation, rng, 0.6)
        inner = env[16:-16, 16:-16]
        ratios.append(inner.mean() / inner.std())
    assert np.allclose(ratios, RAYLEIGH_MEAN_OVER_STD, atol=0.1), ratios


def test_generated_envelope_is_rayleigh_in_flat_tissue():
    # Without the low-frequency texture the glandular layer is uniform: the envelope that
    # generate_sample exposes (before log compression) must be Rayleigh there.
    flat = dataclasses.replace(SPEC_CONFIG, texture_amplitude=(0.0, 0.0))
    sample = generate_sample(5, 0, size=256, organ="breast", probe="linear", kinds=["cyst"],
                             config=flat, return_envelope=True)
    tops = {layer["name"]: layer["top_mm"] for layer in sample.layers}
    start = int((tops["gland"] + 4) / sample.spacing_mm)      # below the wavy fat boundary
    rows = slice(start, start + 40)
    assert "muscle" not in tops or rows.stop * sample.spacing_mm < tops["muscle"] - 2
    clear = ~ndimage.binary_dilation(sample.masks[0], iterations=40)
    patch = sample.envelope[rows][clear[rows]]
    assert patch.size > 2000
    assert abs(patch.mean() / patch.std() - RAYLEIGH_MEAN_OVER_STD) < 0.1


def test_baseband_pulse_is_the_envelope_of_the_rf_pulse():
    acq = sample_acquisition(np.random.default_rng(1), DEFAULT_CONFIG.formation, 40.0)
    z = np.linspace(-1.5, 1.5, 4001)                    # mm; finely sampled RF
    envelope = np.abs(signal.hilbert(rf_pulse(acq, z)))
    gaussian = np.exp(-z ** 2 / (2 * pulse_sigma_mm(acq, 1540.0) ** 2))
    assert np.max(np.abs(envelope - gaussian)[1000:3000]) < 0.02


def _ring(sample, k: int) -> np.ndarray:
    """Tissue around structure k, above its lower edge (so shadows do not count)."""
    mask = sample.masks[k]
    ring = ndimage.binary_dilation(mask, iterations=10) & ~ndimage.binary_dilation(mask, iterations=3)
    ring[sample.structures[k]["bbox"][3]:] = False
    for j, other in enumerate(sample.masks):
        if j != k:
            ring &= ~other
    return ring & sample.fov_mask & ~sample.overlay_mask


def _contrast(sample, region: np.ndarray, k: int = 0) -> float:
    image = sample.image.astype(float)
    return image[region].mean() - image[_ring(sample, k)].mean()


def _core(sample, k: int = 0) -> np.ndarray:
    """The structure's mask without its named parts (hilum, halo, calcifications)."""
    core = sample.masks[k].copy()
    for part in sample.parts[k].values():
        core &= ~part
    return core


# Expected contrast of the lesion body vs surrounding tissue on the uint8 image (grey levels).
@pytest.mark.parametrize("kind, low, high", [
    ("cyst", -255, -50),                    # anechoic: much darker
    ("benign mass", -60, -4),               # hypoechoic
    ("malignant mass", -255, -25),          # markedly hypoechoic
    ("benign lymph node", -255, -10),       # hypoechoic cortex
    ("malignant lymph node", -255, -10),
    ("benign thyroid nodule", -60, 8),      # iso- or hypoechoic
    ("malignant thyroid nodule", -255, -20),
])
def test_lesion_contrast(kind, low, high):
    for sample in _kind_samples(kind):
        assert [s["kind"] for s in sample.structures] == [kind]
        contrast = _contrast(sample, _core(sample))
        assert low <= contrast <= high, (sample.index, contrast)


def test_malignant_masses_darker_than_benign():
    benign = np.mean([_contrast(s, _core(s)) for s in _kind_samples("benign mass")])
    malignant = np.mean([_contrast(s, _core(s)) for s in _kind_samples("malignant mass")])
    assert malignant < benign - 10


def test_lymph_node_hilum_and_nodule_features():
    for sample in _kind_samples("benign lymph node"):
        image = sample.image.astype(float)
        hilum = sample.parts[0]["hilum"]
        assert image[hilum].mean() > image[_core(sample)].mean() + 20
    for sample in _kind_samples("malignant lymph node"):
        assert "hilum" not in sample.parts[0]
        assert "without fatty hilum" in sample.structures[0]["description"]
    for sample in _kind_samples("benign thyroid nodule"):
        halo = sample.parts[0]["halo"]
        assert _contrast(sample, halo) < -8
        attributes = sample.structures[0]["attributes"]
        assert attributes["echo pattern"] in ("isoechoic", "hypoechoic")
        x0, y0, x1, y1 = sample.structures[0]["bbox"]
        assert x1 - x0 > y1 - y0                                     # wider than tall
    for sample in _kind_samples("malignant thyroid nodule"):
        image = sample.image.astype(float)
        calcifications = sample.parts[0]["calcifications"]
        assert calcifications.any()
        assert image[calcifications].mean() > image[_core(sample)].mean() + 25
        assert "taller-than-wide" in sample.structures[0]["description"]


@BOTH_CONFIGS
def test_thyroid_nodules_lie_inside_the_thyroid_band(config):
    for sample in (_kind_samples("malignant thyroid nodule", config=config)
                   + _kind_samples("benign thyroid nodule", config=config)):
        assert sample.organ == "thyroid"
        tops = {layer["name"]: layer["top_mm"] for layer in sample.layers}
        _, y0, _, y1 = sample.structures[0]["bbox"]
        # Nominal layer depths; the interfaces undulate by < 1 mm.
        assert tops["thyroid"] - 1 < y0 * sample.spacing_mm
        assert y1 * sample.spacing_mm < tops["deep muscle"] + 1


def _posterior(sample) -> float:
    """Mean grey below the lesion's centre columns minus the same rows beside the lesion."""
    x0, _, x1, y1 = sample.structures[0]["bbox"]
    width = x1 - x0
    rows = slice(y1 + 2, min(y1 + 2 + max(width // 2, 10), sample.image.shape[0]))
    below = sample.image[rows, x0 + width // 4:x1 - width // 4]
    beside = np.concatenate([sample.image[rows, max(x0 - width // 2 - 5, 0):max(x0 - 5, 0)],
                             sample.image[rows, x1 + 5:x1 + width // 2 + 5]], axis=1)
    return float(below.mean()) - float(beside.mean())


def test_posterior_enhancement_and_shadowing():
    enhancement = [_posterior(s) for s in _kind_samples("cyst", 4)]
    shadowing = [_posterior(s) for s in _kind_samples("malignant mass", 4)]
    assert min(enhancement) > 5 and np.mean(enhancement) > 10, enhancement
    assert max(shadowing) < -10 and np.mean(shadowing) < -20, shadowing


def test_typical_grey_levels(batch, variety_batch):
    for sample in batch:
        tissue = sample.fov_mask & ~np.logical_or.reduce(sample.masks) & ~sample.overlay_mask
        assert 70 <= np.median(sample.image[tissue]) <= 170
    for sample in variety_batch:   # the variety's gains: darker and brighter, never black or white
        tissue = sample.fov_mask & ~np.logical_or.reduce(sample.masks) & ~sample.overlay_mask
        assert 35 <= np.median(sample.image[tissue]) <= 215


# ----- geometry and labels

@pytest.mark.parametrize("which", ["batch", "variety_batch"])
def test_ranges_and_labels(which, request):
    batch = request.getfixturevalue(which)
    config = VARIETY_CONFIG if which == "variety_batch" else SPEC_CONFIG
    random_sides = [generate_sample(9, i, config=config) for i in range(3)]
    for sample in batch + random_sides:
        rows, cols = sample.image.shape
        assert sample.image.dtype == np.uint8
        assert 256 <= rows <= 640 and 256 <= cols <= 640
        assert 0.08 <= sample.spacing_mm <= 0.25
        assert 30 - 1e-6 <= sample.depth_mm <= 60 + 1e-6
        assert 30 - 1e-6 <= sample.width_mm <= 50 + 1e-6
        assert np.isclose(sample.depth_mm, rows * sample.spacing_mm)
        assert 1 <= len(sample.masks) == len(sample.structures) <= 3
        stack = np.stack(sample.masks)
        assert stack.dtype == bool and stack.shape[1:] == sample.image.shape
        assert stack.sum(axis=0).max() == 1                         # no overlap
        for mask, info in zip(sample.masks, sample.structures):
            assert mask.any() and not (mask & ~sample.fov_mask).any()
            assert info["class"] in {"cyst", "benign mass", "malignant mass", "lymph node",
                                     "thyroid nodule"}
            assert info["malignancy"] in {"benign", "malignant"}
            assert info["area_px"] == mask.sum()
            x0, y0, x1, y1 = info["bbox"]
            assert mask[y0:y1, x0:x1].sum() == mask.sum()
            assert info["class"].split()[-1] in info["description"]
    assert {"linear", "convex"} <= {s.probe for s in batch} <= set(PROBES)
    assert {s.organ for s in batch} == {"breast", "thyroid", "neck"}
    assert len({s.image.shape for s in random_sides}) > 1


@BOTH_CONFIGS
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_descriptions_follow_attributes(kind, config):
    info = _kind_samples(kind, 1, config=config)[0].structures[0]
    text, attributes = info["description"], info["attributes"]
    for key in ("shape", "margin", "orientation", "echo pattern", "hilum", "halo", "posterior",
                "calcifications"):
        value = attributes.get(key, "none")
        if value == "none":
            continue
        for phrase in value.split(", "):
            phrase = "without " + phrase[3:] if phrase.startswith("no ") else phrase
            assert phrase in text, (key, phrase, text)
    noun = {"cyst": "cyst", "benign mass": "mass", "malignant mass": "mass",
            "lymph node": "lymph node", "thyroid nodule": "thyroid nodule"}[info["class"]]
    assert f"{attributes['echo pattern']} {noun}" in text
    assert info["malignancy"] == ("benign" if kind == "cyst" else kind.split()[0])


def test_malignant_mass_description_example():
    text = _kind_samples("malignant mass", 1)[0].structures[0]["description"]
    assert "not parallel" in text and "markedly hypoechoic mass with posterior acoustic shadowing" in text


def test_convex_fan_outside_is_zero():
    for index in range(3):
        sample = generate_sample(31, index, size=256, probe="convex")
        assert sample.probe == "convex"
        outside = ~sample.fov_mask
        assert outside.sum() > 0.05 * outside.size              # really a fan
        assert not outside[sample.image.shape[0] // 2:, sample.image.shape[1] // 2].any()
        assert (sample.image[outside] == 0).all()
        assert outside[0, 0] and outside[-1, 0]                  # corners: above / beside the arc


@pytest.mark.parametrize("which", ["batch", "variety_batch"])
def test_overlays_at_the_border_and_never_on_lesions(which, request):
    batch = request.getfixturevalue(which)
    with_overlay = [s for s in batch if s.has_overlay]
    assert len(with_overlay) >= 0.3 * len(batch)
    for sample in batch:
        assert sample.has_overlay == bool(sample.overlay_mask.any())
        assert not (sample.overlay_mask & np.logical_or.reduce(sample.masks)).any()
        assert not (sample.overlay_mask & ~sample.fov_mask).any()
        rows, cols = sample.image.shape
        for box in sample.overlay_boxes:
            x0, y0, x1, y1 = box["box"]
            assert box["kind"] in {"text", "depth scale", "caliper"}
            near_top_or_bottom = y0 < 0.2 * rows or y1 > 0.8 * rows
            near_side = x0 < 0.2 * cols or x1 > 0.8 * cols
            assert near_top_or_bottom or near_side, box
            if box["kind"] == "text":
                assert box["text"].split()[0] in {"BREAST", "THYROID", "NECK"} or "MHZ" in box["text"] \
                    or box["text"][:2] == "20"
    kinds = {box["kind"] for s in batch for box in s.overlay_boxes}
    assert kinds == {"text", "depth scale", "caliper"}
    # Burned in: the overlay pixels are bright.
    sample = with_overlay[0]
    assert sample.image[sample.overlay_mask].min() >= 190


@BOTH_CONFIGS
def test_deterministic_bit_for_bit(config):
    a = generate_sample(123, 4, size=256, config=config)
    b = generate_sample(123, 4, size=256, config=config)
    assert np.array_equal(a.image, b.image)
    assert len(a.masks) == len(b.masks) and all(map(np.array_equal, a.masks, b.masks))
    assert a.structures == b.structures and a.overlay_boxes == b.overlay_boxes
    assert not np.array_equal(a.image, generate_sample(124, 4, size=256, config=config).image)
    assert not np.array_equal(a.image, generate_sample(123, 5, size=256, config=config).image)


def test_bad_arguments():
    with pytest.raises(ValueError, match="organ"):
        generate_sample(0, 0, organ="liver")
    with pytest.raises(ValueError, match="640"):
        generate_sample(0, 0, size=1000)
    with pytest.raises(ValueError, match="do not occur"):
        generate_sample(0, 0, organ="breast", kinds=["benign lymph node"])


# ----- data set writer and CLI

def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_dataset_layout(tmp_path):
    out = tmp_path / "set"
    summary = write_dataset(out, 10, seed=4, size=256, progress=False)
    assert summary["count"] == 10 and summary["images_per_s"] > 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["generator"] == GENERATOR == "USVLM-Phantom v1"
    assert manifest["count"] == 10 and manifest["seed"] == 4 and manifest["version"]
    records = _read_jsonl(out / "samples.jsonl")
    assert [r["index"] for r in records] == list(range(10))
    for record in records:
        sample = generate_sample(4, record["index"], size=256)
        image = skio.imread(out / record["image"])
        assert image.dtype == np.uint8 and np.array_equal(image, sample.image)
        assert record["has_overlay"] == sample.has_overlay
        assert record["spacing_mm"] == sample.spacing_mm and record["organ"] == sample.organ
        for k, info in enumerate(record["structures"]):
            mask = skio.imread(out / info["mask"])
            assert set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask == 255, sample.masks[k])
            assert info["area_px"] == int((mask == 255).sum())
            assert info["class"] in KINDS[info["kind"]] and info["description"]
    splits = {name: (out / f"{name}.txt").read_text().split() for name in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [8, 1, 1]
    assert sorted(sum(splits.values(), [])) == sorted(r["id"] for r in records)
    again = tmp_path / "again"
    write_dataset(again, 10, seed=4, size=256, progress=False)
    assert all((again / f"{n}.txt").read_text() == "\n".join(v) + "\n" for n, v in splits.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "set"]     # no temp folders


def test_write_dataset_refuses_and_overwrites(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(dataset_module.OutputError, match="not empty"):
        write_dataset(out, 2, seed=0, progress=False)
    assert (out / "keep.txt").exists()
    # Overwrite replaces only a data set the generator wrote, never a folder of the user's.
    with pytest.raises(dataset_module.OutputError, match="not a phantom data set"):
        write_dataset(out, 2, seed=0, progress=False, overwrite=True)
    assert (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    write_dataset(out, 1, seed=0, progress=False)
    write_dataset(out, 2, seed=0, progress=False, overwrite=True)
    assert (out / "images" / "000001.png").exists()
    with pytest.raises(dataset_module.InputError, match="count"):
        write_dataset(tmp_path / "none", 0, seed=0, progress=False)
    assert not (tmp_path / "none").exists()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = dataset_module.generate_sample

    def failing(seed, index, **kwargs):
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, **kwargs)

    monkeypatch.setattr(dataset_module, "generate_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "set", 5, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_in_process(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["phantom", "--out", str(out), "--count", "3", "--seed", "5", "--no-progress"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert len(_read_jsonl(out / "samples.jsonl")) == 3
    # A non-empty folder is refused, with one line on stderr and exit code 2.
    assert main(["phantom", "--out", str(out), "--count", "3"]) == 2
    assert "not empty" in capsys.readouterr().err
    missing = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:  # refused when parsed: usage and exit code 2
        main(["phantom", "--out", str(missing), "--count", "0"])
    assert exit_.value.code == 2 and "argument --count" in capsys.readouterr().err
    assert main(["phantom", "--out", str(missing), "--count", "2", "--size", "700"]) == 2
    assert not missing.exists()


def test_cli_without_training_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "usvlm_training.phantom", None)   # import now fails
    assert main(["phantom", "--out", str(tmp_path / "x"), "--count", "1"]) == 2
    assert "usvlm_training" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_subprocess(tmp_path):
    out = tmp_path / "sub"
    result = subprocess.run([sys.executable, "-m", "usvlm", "phantom", "--out", str(out),
                             "--count", "2", "--seed", "8", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout
    # Another process, the same bits.
    assert np.array_equal(skio.imread(out / "images" / "000001.png"),
                          generate_sample(8, 1, size=256).image)
