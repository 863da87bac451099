"""The real data set layout (manifest.csv, images/, masks/: BUSI breast, HC18 fetal head), its
group split, prompts, captions and absent prompts, and the opt-in augmentation for real images.

Runs on the ten vendored images of Testing/Data/real_samples (see its README for provenance and
licences), never on a full data set."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io as skio

from usvlm.errors import InputError
from usvlm_training.data import (AugmentConfig, PromptSampler, Sample, Structure, augment_image,
                                 augment_preset, detect_layout, open_dataset, open_datasets)
from usvlm_training.data.layouts import ReadOptions, group_splits, parse_spacing, real_label, split_counts
from usvlm_training.data.prompts import image_captions
from usvlm_training.data.report_splits import main as report_main
from usvlm_training.data.torch_dataset import ImageTextDataset, MultiPromptDataset, SegmentationDataset

DATA = Path(__file__).parent / "Data" / "real_samples"
BUSI, HC18 = DATA / "busi", DATA / "hc18"


def _manifest(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as fh:
        return {r["stem"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def real():
    return open_dataset(DATA)


# -- layout, labels, classes, spacing -----------------------------------------------------------


def test_layout_detected_for_a_folder_and_a_folder_of_folders(real):
    assert detect_layout(BUSI) == detect_layout(HC18) == detect_layout(DATA) == "real"
    assert real.layout == "real" and len(real) == 10 and real.split_source == "groups"
    assert open_dataset(BUSI).layout == "real" and len(open_dataset(BUSI)) == 6
    summary = real.summary()
    assert summary["classes"] == {"breast mass": 4, "fetal head": 4}
    assert summary["groups"] == 9 and summary["without_structures"] == 2


def test_labels_classes_malignancy_spacing_organ_group(real):
    rows = {**_manifest(BUSI), **_manifest(HC18)}
    assert {s.id for s in real.samples} == set(rows)
    for sample in real.samples:
        row = rows[sample.id]
        assert sample.group == row["group"] and sample.organ == row["organ"]
        assert real_label(sample) == row["label"]
        image, masks = sample.load_image(), sample.load_masks()
        assert image.frame_shape == sample.shape == (int(row["height"]), int(row["width"]))
        if row["label"] in ("benign", "malignant"):
            (structure,) = sample.structures
            assert structure.class_name == "breast mass" and structure.malignancy == row["label"]
            assert structure.finding == f"{row['label']} breast mass"
            assert sample.label == (1 if row["label"] == "malignant" else 0)
            assert sample.spacing_mm is None and not image.geometry.calibrated  # BUSI: uncalibrated
            assert masks[0].any() and masks[0].shape == image.frame_shape
            assert set(sample.absent) == {"thyroid nodule", "fetal head"}
        elif row["label"] == "normal":
            assert sample.structures == () and masks == [] and sample.label == -1
            assert sample.absent[:2] == ("breast mass", "cyst")  # "nothing there" to learn
            assert sample.spacing_mm is None
        else:
            (structure,) = sample.structures
            assert structure.class_name == "fetal head" and structure.malignancy is None
            assert structure.finding == "fetal head" and sample.label == -1
            spacing = float(row["pixel_spacing_mm"])
            assert sample.spacing_mm == (spacing, spacing)  # HC18: calibrated, (row, column)
            assert image.geometry.calibrated
            assert np.isclose(image.geometry.spacing_x, spacing) and np.isclose(image.geometry.spacing_y, spacing)
            assert masks[0].any()
            assert set(sample.absent) == {"breast mass", "thyroid nodule", "lymph node"}


def test_parse_spacing():
    assert parse_spacing("") is None and parse_spacing("0.5") == (0.5, 0.5)
    assert parse_spacing("0.1 x 0.2") == (0.1, 0.2) and parse_spacing("[0.1, 0.2]") == (0.1, 0.2)
    for bad in ("abc", "0", "-0.1", "0.1 0.2 0.3"):
        with pytest.raises(ValueError):
            parse_spacing(bad)


def _copy(tmp_path: Path, folder: Path = BUSI) -> Path:
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    return out


def _rewrite(folder: Path, change) -> None:  # noqa: ANN001
    with open(folder / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows = change(rows)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_broken_real_data_sets_are_named(tmp_path):
    folder = _copy(tmp_path)
    # a normal image whose mask is not empty, an image missing, a size that disagrees
    skio.imsave(folder / "masks" / "busi_normal_078_mask.png",
                np.full(skio.imread(folder / "masks" / "busi_normal_078_mask.png").shape, 255, np.uint8),
                check_contrast=False)
    (folder / "images" / "busi_benign_286.png").unlink()

    def change(rows):
        for r in rows:
            if r["stem"] == "busi_malignant_076":
                r["width"] = "999"
        return rows

    _rewrite(folder, change)
    with pytest.raises(InputError) as info:
        open_dataset(folder)
    message = str(info.value)
    assert "busi_normal_078" in message and "not empty" in message
    assert "busi_benign_286" in message and "busi_malignant_076" in message
    with pytest.warns(UserWarning):
        data = open_dataset(folder, on_error="skip")
    assert len(data) == 3 and len(data.problems) == 3
    # a manifest without the real columns is no real data set (images/ and masks/: paper layout)
    _rewrite(folder, lambda rows: rows)
    (folder / "manifest.csv").write_text("stem,label\nbusi_benign_428,benign\n")
    assert detect_layout(folder) == "paper"
    with pytest.raises(InputError, match="not a real data set"):
        open_dataset(folder, layout="real")


# -- the group split ----------------------------------------------------------------------------


def test_group_split_whole_groups_every_label_in_val_no_test(real):
    train, val = real.split("train"), real.split("val")
    assert len(train) + len(val) == len(real)
    assert not {s.group for s in train} & {s.group for s in val}  # no group on both sides
    assert {s.group for s in train if s.id.startswith("hc18_686")} | {
        s.group for s in val if s.id.startswith("hc18_686")} == {"hc18-686"}
    assert {real_label(s) for s in val} == {"benign", "malignant", "normal", "fetal head"}
    assert {real_label(s) for s in train} == {"benign", "malignant", "normal", "fetal head"}
    assert real.split("test", allow_empty=True) == []  # held back by the judges, never made here
    with pytest.raises(InputError, match="empty"):
        real.split("test")
    # deterministic, and the same whether the sets are read together or one by one
    again = open_dataset(DATA)
    assert again.splits == real.splits
    busi = open_dataset(BUSI)
    assert busi.splits["val"] == [i for i in real.splits["val"] if i.startswith("busi")]
    assert open_dataset(DATA, val_fraction=0.0).splits["val"] == []
    # the training seed does not move the real split (runs of other seeds validate alike); the
    # split seed does
    assert open_dataset(DATA, seed=7).splits == real.splits
    assert any(open_dataset(DATA, split_seed=k).splits != real.splits for k in range(1, 6))
    counts = split_counts(real)
    assert counts["val"]["breast"]["normal"][0] >= 1 and counts["train"]["fetal head"]["fetal head"][0] >= 1
    with pytest.raises(InputError, match="val_fraction"):
        open_dataset(DATA, val_fraction=1.0)


def _synthetic(n_groups: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for g in range(n_groups):
        label = ["benign", "malignant", "normal"][g % 3]
        for k in range(int(rng.integers(1, 4))):
            structures = () if label == "normal" else (
                Structure("breast mass", mask=np.ones((2, 2)), malignancy=label),)
            samples.append(Sample(f"s{g:03d}_{k}", Path("none.png"), structures, organ="breast",
                                  group=f"g{g:03d}", absent=()))
    return samples


def test_group_split_stratified_seeded_stable():
    samples = _synthetic(300)
    options = ReadOptions(val_fraction=0.2, split_seed=0)
    split = group_splits(samples, options)
    group_of = {s.id: s.group for s in samples}
    val_groups = {group_of[i] for i in split["val"]}
    assert not val_groups & {group_of[i] for i in split["train"]} and split["test"] == []
    per_label = Counter(real_label(s) for s in samples if s.group in val_groups and s.id.endswith("_0"))
    assert per_label == {"benign": 20, "malignant": 20, "normal": 20}  # 20 % of the 100 groups of each
    assert group_splits(samples[::-1], options) == split  # the order of the samples does not matter
    other = group_splits(samples, ReadOptions(val_fraction=0.2, split_seed=1))
    assert other["val"] != split["val"]
    # one more group moves at most one group of its stratum
    more = group_splits(_synthetic(303), options)  # the same 300 groups and three new ones
    more_val = {"g" + i[1:].split("_")[0] for i in more["val"]}
    assert len((val_groups ^ more_val) - {"g300", "g301", "g302"}) <= 3


def test_split_files_that_split_a_group_are_refused(tmp_path):
    folder = _copy(tmp_path, HC18)
    (folder / "train.txt").write_text("hc18_686_HC\nhc18_801_HC\n")
    (folder / "val.txt").write_text("hc18_686_2HC\nhc18_701_HC\n")
    with pytest.raises(InputError, match="hc18-686"):
        open_dataset(folder)
    (folder / "val.txt").write_text("hc18_701_HC\n")
    (folder / "train.txt").write_text("hc18_686_HC\nhc18_686_2HC\nhc18_801_HC\n")
    data = open_dataset(folder)
    assert data.split_source == "files" and len(data.split("val")) == 1


def test_several_folders_read_as_one(real):
    merged = open_datasets([BUSI, HC18])
    assert merged.layout == "mixed" and len(merged) == 10 and len(merged.summary()["parts"]) == 2
    assert sorted(merged.splits["val"]) == sorted(
        f"{'busi' if i.startswith('busi') else 'hc18'}/{i}" for i in real.splits["val"])
    assert merged["busi/busi_benign_428"].structures[0].class_name == "breast mass"
    assert open_datasets(DATA).splits == real.splits


def test_report_prints_split_counts(capsys):
    assert report_main([str(DATA)]) == 0
    out = capsys.readouterr().out
    assert "benign" in out and "fetal head" in out and "groups in two splits: 0" in out


# -- prompts, captions, absent prompts ----------------------------------------------------------


def _by_label(real) -> dict[str, Sample]:
    return {real_label(s): s for s in real.samples}


def test_segmentation_prompts_of_real_structures(real):
    samples = _by_label(real)
    sampler = PromptSampler()
    mass = samples["benign"].structures[0]
    candidates = sampler.candidates(mass)
    class_texts = {p.text for p in candidates["class"]}
    assert {"breast mass", "breast lesion", "breast tumor"} <= class_texts
    finding_texts = {p.text for p in candidates["finding"]}
    assert {"benign breast mass", "benign breast lesion"} <= finding_texts
    malignant = sampler.candidates(samples["malignant"].structures[0])["finding"]
    assert "malignant breast mass" in {p.text for p in malignant}
    head = {p.text for p in sampler.candidates(samples["fetal head"].structures[0])["class"]}
    assert {"fetal head", "fetal skull", "head of the fetus"} <= head
    assert "finding" not in sampler.candidates(samples["fetal head"].structures[0])


def test_captions_for_stage_one(real):
    samples = _by_label(real)
    assert samples["benign"].captions[0] == "ultrasound of a benign breast mass"
    assert samples["malignant"].captions[0] == "ultrasound of a malignant breast mass"
    assert samples["normal"].captions[0] == "breast ultrasound without a lesion"
    assert "fetal head ultrasound" in samples["fetal head"].captions
    assert image_captions(None, ()) and all(not c.startswith(" ") for c in samples["benign"].captions)
    pairs = ImageTextDataset(real.samples, 64, train=False)
    assert [pairs[i]["text"] for i in range(len(pairs))] == [s.captions[0] for s in real.samples]
    train = ImageTextDataset(real.samples, 64, train=True, seed=1)
    for i, sample in enumerate(real.samples):
        assert train[i]["text"] in sample.captions


def _texts_of(sampler: PromptSampler, classes) -> set[str]:
    return {t for c in classes for t in sampler.class_prompts(c)}


def test_absent_prompts_for_normals_and_other_organs(real):
    sampler = PromptSampler()
    ds = MultiPromptDataset(real.samples, 64, prompts_per_image=3, seed=2, prompts=sampler)
    assert ds.prompts_per_image == 3  # the known absent classes count, not only the two present
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index, sample in enumerate(real.samples):
            item = ds[index]
            absent = item["absent"].tolist()
            assert len(absent) == 3
            for text, mask, empty in zip(item["prompt"], item["mask"], absent):
                assert bool(mask.any()) != empty
            if not sample.structures:  # a normal image: nothing there for any prompt
                assert all(absent) and item["label"] == -1
                assert set(item["prompt"]) <= _texts_of(sampler, sample.absent)
            else:
                assert absent == [False, True, True]
                # only classes known absent: never "cyst" on a breast mass image, nor a class
                # the annotation merely lacks
                assert set(item["prompt"][1:]) <= _texts_of(sampler, sample.absent)
                assert not set(item["prompt"][1:]) & _texts_of(sampler, [sample.structures[0].class_name])
    # the class list of other data (phantoms) does not make a real image's absent prompts
    mixed = MultiPromptDataset(real.samples, 64, prompts_per_image=3, seed=2, prompts=sampler,
                               class_names=["benign mass", "cyst", "breast mass", "fetal head"])
    benign = next(i for i, s in enumerate(real.samples) if real_label(s) == "benign")
    assert set(mixed[benign]["prompt"][1:]) <= _texts_of(sampler, real.samples[benign].absent)


def test_a_group_is_never_absent_where_its_classes_are(real):
    # a phantom-like (closed world) image of a "benign mass" in a data set that also has the real
    # "breast mass" class: "breast mass" names the benign mass, so it is never an absent prompt
    source = _by_label(real)["benign"]
    phantom = Sample("phantom", source.image_path,
                     (Structure("benign mass", mask=source.load_masks()[0], malignancy="benign"),),
                     shape=source.shape)
    sampler = PromptSampler()
    ds = MultiPromptDataset([phantom], 64, prompts_per_image=3, seed=0, prompts=sampler,
                            class_names=["benign mass", "breast mass", "thyroid nodule"])
    for epoch in range(20):
        ds.set_epoch(epoch)
        item = ds[0]
        assert not set(item["prompt"][1:]) & _texts_of(sampler, ["breast mass"])
        assert set(item["prompt"][1:]) <= _texts_of(sampler, ["thyroid nodule"])


def test_validation_items_of_normals_are_opt_in(real):
    plain = SegmentationDataset(real.samples, 64, train=False)
    assert len(plain) == 8 and not any(plain[i]["absent"] for i in range(len(plain)))
    ds = SegmentationDataset(real.samples, 64, train=False, negatives=True)
    assert len(ds) == 10
    negatives = [ds[i] for i in range(len(ds)) if ds[i]["absent"]]
    assert len(negatives) == 2
    for item in negatives:
        assert item["prompt"] == "breast mass" and not item["mask"].any() and item["label"] == -1
    train = SegmentationDataset(real.samples, 64, train=True, seed=0, negatives=True)
    for i in range(len(train)):
        item = train[i]
        assert bool(item["mask"].any()) != bool(item["absent"])


# -- augmentation for real images ---------------------------------------------------------------


def test_real_augmentation_is_off_by_default():
    default = AugmentConfig()
    assert default.rotate_p == 0.0 and default.crop_keep == 0.0
    assert augment_preset("default") == default and augment_preset("none") == AugmentConfig.none()
    real = augment_preset("real")
    assert real == AugmentConfig.real() and real.rotate_p > 0 and real.crop_keep > 0
    with pytest.raises(ValueError):
        augment_preset("strong")
    image = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    for seed in range(30):
        assert augment_image(image, seed=seed).params["angle"] == 0.0
    ds = SegmentationDataset([Sample("x", BUSI / "images" / "busi_benign_428.png", ())], 32, train=True)
    assert ds.augment_config == AugmentConfig()


def _geometry_only(config: AugmentConfig) -> AugmentConfig:
    return dataclasses.replace(config, intensity_p=0.0, depth_p=0.0, speckle_p=0.0, blur_p=0.0)


def test_real_augmentation_moves_image_and_mask_alike(real):
    sample = _by_label(real)["malignant"]
    image = sample.load_image().pixels.astype(np.float32).reshape(sample.shape) / 255.0
    mask = sample.load_masks()[0]
    config = _geometry_only(AugmentConfig.real())
    rotated = 0
    for seed in range(40):
        # the mask as a second image channel goes through the very same resampling
        out = augment_image(np.stack([image, mask.astype(np.float32)]), mask[None], seed=seed, config=config)
        rotated += out.params["rotate"]
        warped = out.image[1] >= 0.5
        assert (warped == out.masks[0]).mean() > 0.999, seed
        assert out.image.shape == (2, *sample.shape)
    assert rotated > 5
    # with intensity changes too, the same seed gives the same geometry
    full = augment_image(image, mask, seed=3, config=AugmentConfig.real())
    geometry = augment_image(image, mask, seed=3, config=config)
    assert np.array_equal(full.masks, geometry.masks) and full.params["crop"] == geometry.params["crop"]


def test_real_augmentation_keeps_the_structure_in_view():
    image = np.full((120, 160), 0.3, np.float32)
    mask = np.zeros((120, 160), bool)
    mask[10:30, 120:150] = True  # near a corner, where a random crop often cuts it off
    image[mask] = 0.9
    config = dataclasses.replace(_geometry_only(AugmentConfig.real()), rotate_p=0.0, zoom_out_p=0.0,
                                 crop_p=1.0, hflip_p=0.0)
    moved = 0
    for seed in range(60):
        out = augment_image(image, mask, seed=seed, config=config)
        top, left, height, width = out.params["crop"]
        rows, cols = np.nonzero(mask)
        inside = (rows >= top) & (rows + 1 <= top + height) & (cols >= left) & (cols + 1 <= left + width)
        assert inside.mean() >= 0.9, seed
        moved += out.params.get("crop_moved", False)
        bright = out.image > 0.6
        assert (bright & out.masks).sum() / (bright | out.masks).sum() > 0.85
    assert moved > 0
    plain = dataclasses.replace(config, crop_keep=0.0)
    cut = [augment_image(image, mask, seed=s, config=plain).masks.sum() / mask.sum() for s in range(60)]
    assert min(cut) < 0.5  # without it, crops do cut the structure off


def test_real_samples_through_the_dataset_with_real_augmentation(real):
    ds = MultiPromptDataset(real.split("train"), 64, prompts_per_image=2, seed=0,
                            augment_config=AugmentConfig.real())
    for index in range(len(ds)):
        item = ds[index]
        assert item["image"].shape == (1, 64, 64) and torch.isfinite(item["image"]).all()
        assert item["mask"].shape == (2, 64, 64)
