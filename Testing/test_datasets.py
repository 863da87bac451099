"""Training data: the three data set layouts, broken data sets, prompts, augmentation, few-shot
subsets and the torch data sets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from skimage import io as skio

from usvlm.errors import InputError
from usvlm.io import Segment, read_image, write_seg_nrrd
from usvlm.io.geometry import Geometry
from usvlm.preprocess import prepare
from usvlm_training.data import (AugmentConfig, PromptSampler, Sample, Structure, augment_image,
                                 few_shot, open_dataset)
from usvlm_training.data.prompts import target_indices
from usvlm_training.data.bank_prompts import bank_prompts, is_held_out
from usvlm_training.data.torch_dataset import (ImageTextDataset, MultiPromptDataset, SegmentationDataset,
                                               collate)
from usvlm_training.phantom import write_dataset

# -- builders of small data sets ----------------------------------------------------------------


def _square_mask(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def _speckle(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (60 + 60 * rng.random(shape)).astype(np.uint8)


def make_paper(root: Path, n: int = 6, shape: tuple[int, int] = (64, 80)) -> Path:
    """images/, masks/ (binary PNGs, same stem), split files naming files, labels.csv."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    labels = ["benign", "malignant", "0", "1", "Benign", "MALIGNANT"]
    for i in range(n):
        skio.imsave(root / "images" / f"case{i}.png", _speckle(shape, i), check_contrast=False)
        mask = _square_mask(shape, 10 + i, 12 + 2 * i, 16)
        skio.imsave(root / "masks" / f"case{i}.png", mask.astype(np.uint8) * 255, check_contrast=False)
    (root / "labels.csv").write_text("image,label\n" + "".join(
        f"case{i}.png,{labels[i % len(labels)]}\n" for i in range(n)))
    (root / "train.txt").write_text("case0.png\ncase1.png\ncase2\n# a comment\ncase3\n")
    (root / "val.txt").write_text("case4\n")
    (root / "test.txt").write_text("images/case5.png\n")
    return root


def make_slicer(root: Path) -> Path:
    """Slicer exports: NRRD images with anisotropic spacing and a PNG image, each with a .seg.nrrd
    of named segments; one segmentation saved with a cropped extent. No split files."""
    root.mkdir(parents=True)
    shape = (60, 70)
    for i in range(4):
        volume = sitk.GetImageFromArray(_speckle(shape, 10 + i))
        volume.SetSpacing((0.1, 0.2))  # x (columns), y (rows)
        sitk.WriteImage(volume, str(root / f"scan{i}.nrrd"))
        geometry = read_image(root / f"scan{i}.nrrd").geometry
        cyst = _square_mask(shape, 5, 5, 12)
        mass = _square_mask(shape, 30, 30 + i, 15)
        write_seg_nrrd(root / f"scan{i}.seg.nrrd",
                       [Segment("Cyst", cyst), Segment("malignant_mass 2", mass)], geometry)
    skio.imsave(root / "shot.png", _speckle(shape, 20), check_contrast=False)
    write_seg_nrrd(root / "shot.seg.nrrd", [Segment("Nodule", _square_mask(shape, 20, 20, 10))],
                   read_image(root / "shot.png").geometry)
    # a segmentation stored on its own extent: rows 40-49, columns 8-27 of the image grid
    volume = sitk.GetImageFromArray(_speckle(shape, 30))
    volume.SetSpacing((0.1, 0.2))
    sitk.WriteImage(volume, str(root / "cropped.nrrd"))
    image_geometry = read_image(root / "cropped.nrrd").geometry
    origin = image_geometry.ijk_to_ras_points(np.array([[8, 40, 0]]))[0]
    cropped = Geometry(spacing=image_geometry.spacing, origin=origin, direction=image_geometry.direction)
    write_seg_nrrd(root / "cropped.seg.nrrd", [Segment("cyst", np.ones((10, 20), bool))], cropped)
    return root


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "phantom"
    write_dataset(root, count=6, seed=11, size=256, progress=False)
    return root


@pytest.fixture(scope="module")
def paper_dir(tmp_path_factory) -> Path:
    return make_paper(tmp_path_factory.mktemp("data") / "paper")


@pytest.fixture(scope="module")
def slicer_dir(tmp_path_factory) -> Path:
    return make_slicer(tmp_path_factory.mktemp("data") / "slicer")


# -- the three layouts --------------------------------------------------------------------------


def test_phantom_layout(phantom_dir):
    data = open_dataset(phantom_dir)
    assert data.layout == "phantom" and len(data) == 6 and data.split_source == "files"
    for name in ("train", "val", "test"):
        listed = (phantom_dir / f"{name}.txt").read_text().split()
        assert data.splits[name] == listed
    records = {r["id"]: r for r in map(json.loads, (phantom_dir / "samples.jsonl").read_text().splitlines())}
    for sample in data.samples:
        record = records[sample.id]
        assert sample.spacing_mm == (record["spacing_mm"], record["spacing_mm"])
        assert sample.organ == record["organ"] and sample.probe == record["probe"]
        assert [s.class_name for s in sample.structures] == [s["class"] for s in record["structures"]]
        assert [s.malignancy for s in sample.structures] == [s["malignancy"] for s in record["structures"]]
        assert [s.description for s in sample.structures] == [s["description"] for s in record["structures"]]
        masks = sample.load_masks()
        image = sample.load_image()
        assert image.geometry.spacing_y == pytest.approx(record["spacing_mm"])
        for mask, st in zip(masks, record["structures"]):
            assert mask.dtype == bool and mask.shape == image.frame_shape
            assert int(mask.sum()) == st["area_px"]
        assert sample.label == (1 if any(s["malignancy"] == "malignant" for s in record["structures"]) else 0)


def test_paper_layout(paper_dir):
    data = open_dataset(paper_dir, class_map={"lesion": "breast lesion"})
    assert data.layout == "paper" and len(data) == 6
    assert data.splits == {"train": ["case0", "case1", "case2", "case3"], "val": ["case4"], "test": ["case5"]}
    assert [s.label for s in data.samples] == [0, 1, 0, 1, 0, 1]
    sample = data["case2"]
    assert sample.spacing_mm is None and sample.shape == (64, 80)
    (structure,) = sample.structures
    assert structure.class_name == "breast lesion" and structure.malignancy == "benign"
    np.testing.assert_array_equal(sample.load_masks()[0], _square_mask((64, 80), 12, 16, 16))
    assert open_dataset(paper_dir, spacing_mm=(0.1, 0.1))["case0"].spacing_mm == (0.1, 0.1)


def test_slicer_layout(slicer_dir):
    data = open_dataset(slicer_dir, class_map={"nodule": "thyroid nodule"})
    assert data.layout == "slicer" and data.split_source == "seeded"
    assert sorted(s.id for s in data.samples) == ["cropped", "scan0", "scan1", "scan2", "scan3", "shot"]
    scan = data["scan1"]
    assert scan.spacing_mm == pytest.approx((0.2, 0.1))  # (row, column)
    cyst, mass = scan.structures
    assert (cyst.class_name, cyst.malignancy, cyst.name) == ("cyst", None, "Cyst")
    assert (mass.class_name, mass.malignancy) == ("malignant mass", "malignant")
    masks = scan.load_masks()
    np.testing.assert_array_equal(masks[0], _square_mask((60, 70), 5, 5, 12))
    np.testing.assert_array_equal(masks[1], _square_mask((60, 70), 30, 31, 15))
    assert data["shot"].structures[0].class_name == "thyroid nodule" and data["shot"].spacing_mm is None
    # the cropped-extent segmentation lands where it was drawn on the image grid
    (placed,) = data["cropped"].load_masks()
    assert placed.shape == (60, 70)
    np.testing.assert_array_equal(placed, np.pad(np.ones((10, 20), bool), ((40, 10), (8, 42))))
    # seeded split: a partition, the same for the same seed
    ids = [i for part in data.splits.values() for i in part]
    assert sorted(ids) == sorted(s.id for s in data.samples)
    assert open_dataset(slicer_dir, seed=0).splits == data.splits


# -- broken data sets ---------------------------------------------------------------------------


def _copy_paper(tmp_path: Path) -> Path:
    return make_paper(tmp_path / "paper")


def test_missing_mask_named(tmp_path):
    root = _copy_paper(tmp_path)
    (root / "masks" / "case3.png").unlink()
    with pytest.raises(InputError, match=r"case3: no mask"):
        open_dataset(root)
    with pytest.warns(UserWarning, match="1 problem"):
        data = open_dataset(root, on_error="skip")
    assert "case3" not in {s.id for s in data.samples} and "case3" not in data.splits["train"]
    assert len(data.problems) == 1 and "case3" in data.problems[0]


def test_mask_size_mismatch_and_bad_label(tmp_path):
    root = _copy_paper(tmp_path)
    skio.imsave(root / "masks" / "case1.png", np.zeros((32, 32), np.uint8), check_contrast=False)
    (root / "labels.csv").write_text("image,label\ncase0.png,benign\ncase2.png,normal\n")
    with pytest.raises(InputError) as info:
        open_dataset(root)
    message = str(info.value)
    assert "2 problem(s)" in message and "case1: mask case1.png is 32 x 32 pixels" in message
    assert "case2: labels.csv line 3: label 'normal'" in message


def test_unknown_split_id_and_leak(tmp_path):
    root = _copy_paper(tmp_path)
    (root / "val.txt").write_text("case4\ncase9\n")
    with pytest.raises(InputError, match=r"val.txt line 2: unknown sample id 'case9'"):
        open_dataset(root)
    (root / "val.txt").write_text("case4\ncase0\n")
    with pytest.raises(InputError, match=r"case0: listed in both train.txt and val.txt"):
        open_dataset(root)


def test_unknown_class_empty_split_and_not_a_dataset(tmp_path, paper_dir, slicer_dir):
    with pytest.raises(InputError, match=r"class 'cyst' is not in the class list"):
        open_dataset(slicer_dir, classes=["malignant mass", "nodule"])
    root = _copy_paper(tmp_path)
    (root / "test.txt").write_text("")
    data = open_dataset(root)
    assert data.split("test", allow_empty=True) == []
    with pytest.raises(InputError, match="split 'test' is empty"):
        data.split("test")
    with pytest.raises(InputError, match="not a data set"):
        open_dataset(tmp_path / "paper" / "images")


def test_slicer_unreadable_image_and_missing_image(tmp_path):
    root = make_slicer(tmp_path / "slicer")
    (root / "scan0.nrrd").write_bytes(b"NRRD0004\ngarbage")
    (root / "shot.png").unlink()
    with pytest.raises(InputError) as info:
        open_dataset(root)
    assert "scan0:" in str(info.value) and "shot: no image file for shot.seg.nrrd" in str(info.value)


# -- prompts ------------------------------------------------------------------------------------


def test_prompts_vary_seeded_and_respect_held_out():
    structure = Structure("lymph node", mask=np.ones((4, 4)), malignancy="malignant",
                          description="round, hypoechoic lymph node without hilum")
    sampler = PromptSampler(bank_prompts={"Lymph-Node": ["enlarged node"]}, held_out=["node"])
    texts = [sampler.sample(structure, np.random.default_rng([3, i])).text for i in range(300)]
    assert texts == [sampler.sample(structure, np.random.default_rng([3, i])).text for i in range(300)]
    counts = Counter(texts)
    assert len(counts) > 15  # language, not one label
    assert {"lymph node", "malignant lymph node", "enlarged node", structure.description} <= set(counts)
    assert "node" not in counts


def test_prompt_targets_select_structures():
    structures = [Structure("cyst", mask=np.ones((2, 2)), malignancy="benign"),
                  Structure("thyroid nodule", mask=np.ones((2, 2)), malignancy="benign"),
                  Structure("thyroid nodule", mask=np.ones((2, 2)), malignancy="malignant")]
    sampler = PromptSampler()
    by_kind = sampler.candidates(structures[2])
    assert target_indices(by_kind["class"][0], structures) == [1, 2]
    assert target_indices(by_kind["finding"][0], structures) == [2]
    assert target_indices(PromptSampler.canonical(structures[0]), structures) == [0]


# -- augmentation -------------------------------------------------------------------------------


def test_default_augmentation_never_flips_vertically():
    # the mask is the top half: any crop the defaults allow keeps the top row inside it and the
    # bottom row outside, unless the image is turned upside down
    image = np.tile(np.linspace(0.2, 0.8, 64, dtype=np.float32)[:, None], (1, 48))
    top_half = np.zeros((64, 48), bool)
    top_half[:32] = True
    for seed in range(150):  # zoom-out pads the top row with black: tested on its own below
        out = augment_image(image, top_half, seed=seed, config=AugmentConfig(zoom_out_p=0.0))
        assert not out.params["vflip"]
        assert out.masks[0].all() and not out.masks[-1].any(), seed
    flipped = augment_image(image, top_half, seed=0, config=AugmentConfig(vflip_p=1.0))
    assert flipped.params["vflip"] and flipped.masks[-1].all() and not flipped.masks[0].any()


def test_augmentation_keeps_masks_on_the_image():
    image = np.full((96, 96), 0.2, np.float32)
    square = _square_mask((96, 96), 40, 30, 20)  # off-centre: a flip of one alone would show
    image[square] = 0.9
    for seed in range(60):
        out = augment_image(image, square[None], seed=[7, seed])
        mask = out.masks[0]
        assert mask.any()
        inside, outside = out.image[mask].mean(), out.image[~mask & (out.support > 0.5)].mean()
        bright = out.image > (inside + outside) / 2
        # a zoomed-out square is smaller (down to 14 px), so its one-pixel edge weighs more
        limit = 0.75 if out.params["zoom_out"] else 0.85
        assert (bright & mask).sum() / (bright | mask).sum() > limit, seed


def test_zoom_out_shrinks_the_image_and_pads_it_black_outside_the_field_of_view():
    image = np.full((80, 80), 0.5, np.float32)
    square = _square_mask((80, 80), 30, 30, 20)
    image[square] = 0.9
    only_zoom = AugmentConfig(crop_p=0.0, hflip_p=0.0, intensity_p=0.0, depth_p=0.0, speckle_p=0.0,
                              blur_p=0.0, zoom_out_p=1.0, zoom_out_scale=(2.0, 2.0))
    for seed in range(10):
        out = augment_image(image, square[None], seed=seed, config=only_zoom)
        assert out.params["zoom_out"]
        assert abs(out.masks[0].sum() / square.sum() - 0.5) < 0.1  # half the area at 2x
        assert abs(out.support.mean() - 0.5) < 0.05  # the image fills half the output
        assert out.image[out.support < 0.5].max() == 0.0 and not out.masks[0][out.support < 0.5].any()
    kept = {augment_image(image, square[None], seed=s).params["zoom_out"] for s in range(40)}
    assert kept == {True, False}  # the default zooms out now and then


def test_augmentation_deterministic_torch_and_support():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 40, 50), dtype=np.float32))
    masks = torch.from_numpy(rng.random((2, 40, 50)) > 0.5)
    support = np.zeros((40, 50), bool)
    support[:, 10:40] = True
    a = augment_image(image, masks, seed=5, support=support)
    b = augment_image(image, masks, seed=5, support=support)
    c = augment_image(image, masks, seed=6, support=support)
    assert isinstance(a.image, torch.Tensor) and a.image.shape == (1, 40, 50) and a.masks.dtype == torch.bool
    assert torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.image, c.image)
    assert float(a.image[0][~torch.from_numpy(a.support)].abs().max()) == 0.0  # outside stays black
    unchanged = augment_image(image, masks, seed=5, config=AugmentConfig.none())
    assert torch.equal(unchanged.image, image) and torch.equal(unchanged.masks, masks)


# -- few-shot -----------------------------------------------------------------------------------


def _labelled(n_benign: int, n_malignant: int) -> list[Sample]:
    def sample(i: int, malignancy: str) -> Sample:
        return Sample(f"s{i:03d}", Path("none.png"),
                      (Structure("mass", mask=np.ones((2, 2)), malignancy=malignancy),))
    return ([sample(i, "benign") for i in range(n_benign)]
            + [sample(n_benign + i, "malignant") for i in range(n_malignant)])


def test_few_shot_stratified_seeded_nested():
    samples = _labelled(150, 50)
    for ratio in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        subset = few_shot(samples, ratio=ratio, seed=1)
        counts = Counter(s.label for s in subset)
        assert counts == {0: max(1, round(ratio * 150)), 1: max(1, round(ratio * 50))}
        assert [s.id for s in subset] == [s.id for s in few_shot(samples[::-1], ratio=ratio, seed=1)][::-1]
    small, large = few_shot(samples, ratio=0.05, seed=1), few_shot(samples, ratio=0.2, seed=1)
    assert {s.id for s in small} <= {s.id for s in large}
    assert {s.id for s in few_shot(samples, ratio=0.2, seed=2)} != {s.id for s in large}
    shots = few_shot(samples, shots=5, seed=0)
    assert Counter(s.label for s in shots) == {0: 5, 1: 5}
    assert len(few_shot(_labelled(3, 2), shots=4)) == 5
    with pytest.raises(InputError):
        few_shot(samples, ratio=5)
    with pytest.raises(InputError):
        few_shot(samples)


# -- torch data sets ----------------------------------------------------------------------------


def test_segmentation_dataset_items_and_letterbox(phantom_dir):
    data = open_dataset(phantom_dir)
    evaluation = SegmentationDataset(data.samples, 96, train=False)
    assert len(evaluation) == sum(len(s.classes) for s in data.samples)
    for index in range(len(evaluation)):
        item = evaluation[index]
        sample, class_name = evaluation.item_info(index)
        assert item["image"].shape == (1, 96, 96) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 96, 96) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["prompt"] == class_name == item["class_name"]
        # the image is exactly what the engine's preprocessing gives
        prepared = prepare(sample.load_image(), 96)
        torch.testing.assert_close(item["image"][0], torch.from_numpy(prepared.pixels[0]))
        # the mask is the union of the class's structures, and maps back onto them
        union = np.any([m for m, s in zip(sample.load_masks(), sample.structures)
                        if s.class_name == class_name], axis=0)
        back = prepared.transform.inverse(item["mask"][0]) >= 0.5
        assert 2 * (back & union).sum() / (back.sum() + union.sum()) > 0.9
        assert torch.allclose(item["spacing"], torch.tensor(sample.spacing_mm, dtype=torch.float32))


def test_segmentation_dataset_training_and_collate(paper_dir):
    data = open_dataset(paper_dir)
    train = SegmentationDataset(data.split("train"), 64, train=True, seed=3)
    first = [train[i] for i in range(len(train))]
    again = [train[i] for i in range(len(train))]
    assert all(torch.equal(a["image"], b["image"]) and a["prompt"] == b["prompt"] for a, b in zip(first, again))
    train.set_epoch(1)
    assert any(not torch.equal(a["image"], train[i]["image"]) for i, a in enumerate(first))
    batch = collate(first)
    assert batch["image"].shape == (4, 1, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert isinstance(batch["prompt"], list) and all(isinstance(p, str) for p in batch["prompt"])
    assert batch["label"].tolist() == [0, 1, 0, 1]
    assert torch.isnan(batch["spacing"]).all()  # PNGs without a given spacing


def test_image_text_dataset(phantom_dir):
    data = open_dataset(phantom_dir)
    pairs = ImageTextDataset(data.samples, 64, train=True, seed=0)
    item = pairs[0]
    assert item["image"].shape == (1, 64, 64) and isinstance(item["text"], str) and item["text"]
    evaluation = ImageTextDataset(data.samples, 64, train=False)
    assert evaluation[0]["text"] == data.samples[0].structures[0].description
    batch = collate([pairs[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 64, 64) and len(batch["text"]) == 3


def test_multi_prompt_dataset_names_present_classes_then_absent_ones(phantom_dir):
    data = open_dataset(phantom_dir)
    classes = ["benign mass", "cyst", "lymph node", "malignant mass", "thyroid nodule"]
    ds = MultiPromptDataset(data.samples, 64, prompts_per_image=3, seed=4, class_names=classes)
    assert len(ds) == len(data.samples)
    for index, sample in enumerate(data.samples):
        item = ds[index]
        assert item["mask"].shape == (3, 64, 64) and len(item["prompt"]) == 3
        present = set(sample.classes)
        k = min(3, len(present))
        absent = item["absent"].tolist()
        assert absent == [False] * k + [True] * (3 - k)  # the image's classes first
        for text, mask, empty in zip(item["prompt"], item["mask"], absent):
            assert bool(mask.any()) != empty  # an absent class's target is empty, a present one's not
        assert item["class_name"] in present and item["label"] in (0, 1)
        again = ds[index]
        assert again["prompt"] == item["prompt"] and torch.equal(again["mask"], item["mask"])
    batch = collate([ds[i] for i in range(3)])
    assert batch["mask"].shape == (3, 3, 64, 64) and batch["absent"].shape == (3, 3)
    assert all(len(row) == 3 for row in batch["prompt"])
    # fewer classes than prompts asked: capped, so every item still stacks
    assert MultiPromptDataset(data.samples, 64, prompts_per_image=9, class_names=classes).prompts_per_image == 5


def test_bank_prompts_hold_out_a_stable_share_never_sampled():
    keys = ["cyst", "benign mass", "lymph node", "malignant lymph node", "no such class"]
    bank = bank_prompts(keys, [None, "breast", "thyroid", "neck"])
    assert "no such class" not in bank.train  # no bank entry: nothing added
    assert bank.train["benign mass"] and bank.held_out  # the breast bank's benign-mass ensemble
    for key in bank.train:
        train, held = set(bank.train[key]), set(bank.held_out.get(key, []))
        assert not train & held
        assert all(is_held_out(t) for t in held) and not any(is_held_out(t) for t in train)
    assert bank_prompts(keys, [None, "breast", "thyroid", "neck"]) == bank  # deterministic
    sampler = PromptSampler(bank_prompts=bank.train, held_out=bank.held_out_texts())
    structure = Structure("benign mass", mask=np.ones((4, 4)), malignancy="benign")
    drawn = {sampler.sample(structure, np.random.default_rng([1, i])).text for i in range(400)}
    assert drawn & set(bank.train["benign mass"])  # bank texts are trained on ...
    assert not drawn & set(bank.held_out_texts())  # ... the held-out ones never
    negatives = {sampler.sample_absent("cyst", np.random.default_rng(i)).text for i in range(200)}
    assert "cyst" in negatives and not negatives & set(bank.held_out_texts())


def test_classes_of_one_bank_structure_form_a_group_prompted_as_a_whole(phantom_dir):
    classes = ["benign mass", "cyst", "lymph node", "malignant mass", "thyroid nodule"]
    bank = bank_prompts(classes, [None, "breast", "thyroid", "neck"], classes=classes)
    # benign and malignant mass are classes of the breast bank's "mass"; the others stand alone
    assert bank.groups == {"breast mass": ["benign mass", "malignant mass"]}
    group_texts = set(bank.train["breast mass"]) | set(bank.held_out.get("breast mass", []))
    assert "a breast mass on ultrasound" in group_texts
    sampler = PromptSampler(bank_prompts=bank.train, held_out=bank.held_out_texts(), groups=bank.groups)
    assert sampler.group_of("malignant mass") == "breast mass" and sampler.group_of("cyst") is None
    drawn = {sampler.sample_group("breast mass", np.random.default_rng(i)).text for i in range(200)}
    assert drawn & set(bank.train["breast mass"]) and not drawn & set(bank.held_out_texts())

    data = open_dataset(phantom_dir)
    ds = MultiPromptDataset(data.samples, 64, prompts_per_image=3, seed=4, class_names=classes,
                            prompts=sampler, group_rate=1.0)
    masses = {"benign mass", "malignant mass"}
    seen = 0
    for index, sample in enumerate(data.samples):
        item = ds[index]
        for text, mask, absent in zip(item["prompt"], item["mask"], item["absent"].tolist()):
            if text not in drawn | {t.format("breast mass") for t in sampler.templates}:
                continue
            seen += 1
            # the target is every mass of the image, benign or malignant; empty when none
            assert absent == (not masses & set(sample.classes))
            expected = ds._prepared(sample)[1][[i for i, st in enumerate(sample.structures)
                                                if st.class_name in masses]]
            assert bool(mask.any()) == bool(len(expected))
    assert seen > 0
    with pytest.raises(ValueError, match="group_rate"):
        MultiPromptDataset(data.samples, 64, group_rate=1.5)


def test_phantoms_of_several_organs_in_turn(tmp_path):
    write_dataset(tmp_path / "two", 4, seed=2, size=256, progress=False, organ=["breast", "neck"],
                  probe="linear")
    data = open_dataset(tmp_path / "two")
    assert [s.organ for s in sorted(data.samples, key=lambda s: s.id)] == ["breast", "neck"] * 2
    assert {s.probe for s in data.samples} == {"linear"}
    assert json.loads((tmp_path / "two" / "dataset.json").read_text())["organ"] == ["breast", "neck"]
    with pytest.raises(InputError, match="organ"):
        write_dataset(tmp_path / "bad", 2, seed=2, progress=False, organ=["breast", "liver"])
