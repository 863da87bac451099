"""Real-data evaluation (usvlm_training.evaluate_real) on a tiny fake real-layout folder: the
split rule, the head-circumference geometry, the summaries and targets against hand-computed
values, and whole runs with the tiny model (as it is, and with constructed probability maps so
that every Dice, AUC and circumference is known by hand)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio
from skimage.draw import ellipse as draw_ellipse

from usvlm.engine import Segmenter
from usvlm.io import read_image
from usvlm_training import evaluate_real as er
from usvlm_training.data import open_dataset
from usvlm_training.metrics import dice

COLUMNS = ("stem", "label", "organ", "source_repo", "source_commit", "source_path", "pixel_spacing_mm",
           "licence", "width", "height", "orig_width", "orig_height", "group")
BUSI_SHAPE, HC_SHAPE, HC_SPACING = (100, 120), (120, 160), 0.2


def rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def ellipse_mask(shape: tuple[int, int], a: float, b: float, rotation: float = 0.0,
                 center: tuple[float, float] | None = None) -> np.ndarray:
    """A filled ellipse with semi-axes a (along x before rotation) and b (along y), in pixels."""
    m = np.zeros(shape, bool)
    cy, cx = center or (shape[0] / 2, shape[1] / 2)
    rr, cc = draw_ellipse(cy, cx, b, a, shape=shape, rotation=rotation)
    m[rr, cc] = True
    return m


LESION_TRUTH = rect(BUSI_SHAPE, 20, 60, 20, 60)  # 1,600 pixels
HEAD_TRUTH = ellipse_mask(HC_SHAPE, 50, 30)
# stem -> (label, group, truth mask or None for a missing image file)
ROWS = {
    "busi_benign_001": ("benign", "busi-g1", LESION_TRUTH),
    "busi_benign_002": ("benign", "busi-g2", LESION_TRUTH),
    "busi_benign_003": ("benign", "busi-g3", None),  # listed, but its image is missing: a failure
    "busi_malignant_001": ("malignant", "busi-g4", LESION_TRUTH),
    "busi_malignant_002": ("malignant", "busi-g5", LESION_TRUTH),
    "busi_normal_001": ("normal", "busi-g6", np.zeros(BUSI_SHAPE, bool)),
    "busi_normal_002": ("normal", "busi-g6", np.zeros(BUSI_SHAPE, bool)),
    "hc18_000_HC": ("fetal head", "hc18-000", HEAD_TRUTH),
    "hc18_001_HC": ("fetal head", "hc18-001", HEAD_TRUTH),
    "hc18_002_HC": ("fetal head", "hc18-002", HEAD_TRUTH),
}

# Constructed predictions: stem -> {prompt: mask}; a prompt not listed gets an empty map.
SHIFTED = rect(BUSI_SHAPE, 20, 60, 40, 80)  # half inside the truth: Dice 0.5
HALF = rect(BUSI_SHAPE, 20, 60, 20, 40)  # 800 px inside the 1,600: Dice 2*800/2400 = 2/3
SMALL = rect(BUSI_SHAPE, 70, 80, 70, 80)
HEAD_SMALLER = ellipse_mask(HC_SHAPE, 45, 30)
PLAN = {
    "busi_benign_001": {"breast mass": SHIFTED, "breast lesion": SHIFTED, "breast tumor": SHIFTED,
                        "mass in the breast": LESION_TRUTH, "thyroid nodule": SMALL},
    "busi_benign_002": {p: LESION_TRUTH for p in ("breast mass", "breast lesion", "breast tumor",
                                                  "mass in the breast", "lump")},
    "busi_malignant_001": {p: HALF for p in ("breast mass", "breast lesion", "breast tumor",
                                             "mass in the breast", "lump")},
    "busi_malignant_002": {},  # every prompt empty: Dice 0, no classification from the product
    "busi_normal_001": {"fetal head": SMALL},
    "busi_normal_002": {"breast mass": SMALL},  # a false positive
    "hc18_000_HC": {"fetal head": HEAD_SMALLER, "thyroid nodule": HEAD_SMALLER},
    "hc18_001_HC": {},  # no head found: an infinite circumference error
    "hc18_002_HC": {"fetal head": HEAD_TRUTH, "breast mass": HEAD_SMALLER},
}
P_MALIGNANT = {"busi_benign_001": 0.3, "busi_benign_002": 0.6, "busi_malignant_001": 0.9,
               "busi_malignant_002": 0.95}


def write_real_folder(root: Path) -> Path:
    """A fake /work/shared/real: busi/ and hc18/, each with images/, masks/ and manifest.csv."""
    rng = np.random.default_rng(0)
    for dataset in ("busi", "hc18"):
        folder = root / dataset
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            for stem, (label, group, truth) in ROWS.items():
                if not stem.startswith(dataset):
                    continue
                shape = HC_SHAPE if dataset == "hc18" else BUSI_SHAPE
                writer.writerow({"stem": stem, "label": label, "organ": "breast" if dataset == "busi" else "fetal head",
                                 "source_repo": "test/fake", "source_commit": "0" * 40, "source_path": f"{stem}.png",
                                 "pixel_spacing_mm": HC_SPACING if dataset == "hc18" else "", "licence": "CC0",
                                 "width": shape[1], "height": shape[0], "orig_width": shape[1],
                                 "orig_height": shape[0], "group": group})
                if truth is None:
                    continue
                # bright speckle everywhere (the field of view is the whole image), darker inside
                pixels = rng.integers(90, 200, size=shape).astype(np.uint8)
                pixels[truth] //= 2
                skio.imsave(folder / "images" / f"{stem}.png", pixels, check_contrast=False)
                skio.imsave(folder / "masks" / f"{stem}_mask.png", (truth * 255).astype(np.uint8),
                            check_contrast=False)
    return root


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    return write_real_folder(tmp_path_factory.mktemp("real"))


# -- split ----------------------------------------------------------------------------------------

def test_split_is_the_real_layouts(real_dir):
    for name in ("busi", "hc18"):
        assignment, skipped = er.layout_splits(real_dir / name, er.SPLIT_SEED)
        with pytest.warns(UserWarning) if name == "busi" else contextlib.nullcontext():
            data = open_dataset(real_dir / name, on_error="skip")
        assert assignment == {i: split for split, ids in data.splits.items() for i in ids}
        assert set(assignment.values()) == {"train", "val"}
        items, _ = er.read_folder(real_dir / name)
        val, train = (er.choose(items, split, assignment, None) for split in ("val", "train"))
        assert not {i.group for i in val} & {i.group for i in train}  # whole groups
    # the image that cannot be read is in no split, with the layout's reason
    assignment, skipped = er.layout_splits(real_dir / "busi", er.SPLIT_SEED)
    assert "busi_benign_003" not in assignment and "busi_benign_003" in skipped
    assert er.choose(er.read_folder(real_dir / "busi")[0], "all", assignment, None)[0].id == "busi_benign_001"
    # a limit spreads over the sorted list (first and last kept), never more than asked
    items = [er.Item(f"x{k:03d}", "busi", "lesion", "benign", f"g{k}", Path("x"), Path("y"), None)
             for k in range(100)]
    limited = er.choose(items, "all", {}, 10)
    assert len(limited) == 10 and limited[0] == items[0] and limited[-1] == items[-1]
    assert er.choose(items, "val", {"x005": "val"}, None) == [items[5]]


# -- geometry -------------------------------------------------------------------------------------

def test_ramanujan_perimeter():
    assert er.ramanujan_perimeter(10, 10) == pytest.approx(2 * math.pi * 10)
    # a = 50, b = 30 by hand: pi * (3 * 80 - sqrt(180 * 140))
    assert er.ramanujan_perimeter(50, 30) == pytest.approx(math.pi * (240 - math.sqrt(25200)))
    # a flat ellipse is 4a long; Ramanujan I is off by at most 0.4 % there (pi * (3 - sqrt(3)))
    assert er.ramanujan_perimeter(1, 0) == pytest.approx(math.pi * (3 - math.sqrt(3)))
    assert er.ramanujan_perimeter(1, 0) == pytest.approx(4.0, rel=0.005)


@pytest.mark.parametrize("a,b,rotation", [(60, 35, 0.0), (60, 35, math.radians(30)), (40, 39, 1.0),
                                          (25, 12, -0.4)])
def test_head_circumference_of_a_drawn_ellipse(a, b, rotation):
    mask = ellipse_mask((200, 220), a, b, rotation)
    e = er.head_ellipse(mask, None)
    assert e["unit"] == "px"
    assert e["circumference"] == pytest.approx(er.ramanujan_perimeter(a, b), rel=0.01)
    assert (e["a"], e["b"]) == (pytest.approx(a, rel=0.02), pytest.approx(b, rel=0.03))
    # in mm with the spacing; isotropic spacing scales the circumference
    in_mm = er.head_ellipse(mask, 0.25)
    assert in_mm["unit"] == "mm"
    assert in_mm["circumference"] == pytest.approx(0.25 * e["circumference"], rel=1e-6)


def test_head_circumference_with_anisotropic_pixels_and_the_largest_component():
    # 80 px wide at 0.25 mm and 40 px high at 0.5 mm: a circle of radius 20 mm
    mask = ellipse_mask((120, 240), 80, 40)
    e = er.head_ellipse(mask, (0.5, 0.25))
    assert e["circumference"] == pytest.approx(2 * math.pi * 20, rel=0.01)
    # a hole is filled and a small second blob is ignored
    holed = ellipse_mask((200, 220), 60, 35) & ~ellipse_mask((200, 220), 10, 10)
    holed[5:10, 5:10] = True
    assert er.head_ellipse(holed, None)["circumference"] == pytest.approx(er.ramanujan_perimeter(60, 35), rel=0.01)
    assert er.head_ellipse(np.zeros((50, 50), bool), 0.2) is None


# -- summaries and targets on constructed records -------------------------------------------------

def _record(kind, label, dice_value=None, empty=False, p=None, hc_error=None, **prompts):
    rows = {text: {"name": text, "matched_by": "none", "pred_pixels": 0 if empty else 10, "empty": empty,
                   "score": 0.0} for text in (er.BUSI_PROMPTS if kind != "head" else er.HC18_PROMPTS)}
    if kind == "lesion":
        for text in (er.BREAST, *er.PARAPHRASES):
            rows[text]["dice"] = prompts.get(text, dice_value)
    for text, is_empty in prompts.get("empties", {}).items():
        rows[text]["empty"] = is_empty
    out = {"id": f"{kind}{id(rows)}", "dataset": "x", "kind": kind, "label": label, "prompts": rows,
           "hd95": 1.0, "dice": dice_value}
    if kind == "lesion":
        out.update({"p_malignant": p, "p_malignant_truth_mask": p if p is not None else 0.5})
    if kind == "head":
        out.update({"hc_abs_error_mm": hc_error, "hc_truth_mm": 100.0,
                    "hc_pred_mm": None if hc_error is None else 100.0 + hc_error})
    return out


def test_summaries_and_targets_by_hand():
    records = [
        _record("lesion", "malignant", 0.9, p=0.9, lump=0.8),
        _record("lesion", "malignant", 0.7, p=None, lump=0.6),  # empty contour: counts as 0.5
        _record("lesion", "benign", 0.8, p=0.3, lump=0.7),
        _record("lesion", "benign", 0.6, p=0.6, lump=0.5),
        *[_record("normal", "normal", empties={er.BREAST: True}) for _ in range(9)],
        _record("normal", "normal", empties={er.BREAST: False}),
        _record("head", "fetal head", 0.95, hc_error=1.0),
        _record("head", "fetal head", 0.93, hc_error=2.0),
        _record("head", "fetal head", 0.0, hc_error=None, empties={er.HEAD: True}),  # infinite error
        _record("head", "fetal head", 0.90, hc_error=5.0),
    ]
    s = er.summarize(records)
    assert s["busi_lesion"]["dice"]["mean"] == pytest.approx(0.75)  # (0.9 + 0.7 + 0.8 + 0.6) / 4
    assert s["paraphrases"]["lump"]["gap"] == pytest.approx(-0.1)  # 0.65 - 0.75
    assert s["paraphrases"]["breast lesion"]["gap"] == pytest.approx(0.0)
    # AUC: positives 0.9 and 0.5 (no answer) against negatives 0.3 and 0.6: 3 of 4 pairs ordered
    c = s["classification"]
    assert c["empty_contours"] == 1
    assert c["own_contour"]["auc"] == pytest.approx(0.75)
    assert c["own_contour_answered_only"]["auc"] == pytest.approx(1.0)  # 0.9 above 0.3 and 0.6
    assert s["busi_normal"] == {"n": 10, "empty": 9, "empty_share": pytest.approx(0.9),
                                "false_positive_rate": pytest.approx(0.1)}
    # median of 1, 2, 5 and inf: 3.5
    assert s["hc18"]["hc_median_abs_error_mm"] == pytest.approx(3.5)
    assert s["hc18"]["hc_unmeasured"] == 1 and s["hc18"]["within_3mm"] == 2
    assert s["hc18"]["dice"]["mean"] == pytest.approx((0.95 + 0.93 + 0.0 + 0.90) / 4)
    met = {t["key"]: t["met"] for t in s["targets"]}
    assert met["busi_lesion_dice"] is False  # 0.75 < 0.80
    assert met["paraphrase:breast lesion"] is True and met["paraphrase:lump"] is False
    assert met["busi_normal_empty"] is True  # 0.90 >= 0.90
    assert met["busi_auc"] is False and met["hc18_dice"] is False
    assert met["hc18_hc_median_abs_error_mm"] is False  # 3.5 mm > 3 mm
    assert met["cross_organ:thyroid nodule on BUSI"] is None  # reported, no target set
    # with no head answered at all, the median is infinite and the target not met
    none_found = er.summarize([_record("head", "fetal head", 0.0, hc_error=None)])
    assert math.isinf(none_found["hc18"]["hc_median_abs_error_mm"])
    assert {t["key"]: t["met"] for t in none_found["targets"]}["hc18_hc_median_abs_error_mm"] is False


# -- whole runs -----------------------------------------------------------------------------------

def _planned_segmenter(model_dir: Path) -> Segmenter:
    """The tiny model's engine with constructed probability maps (1 inside PLAN's mask, 0 outside)
    and a classifier answering P_MALIGNANT: everything else (reading, post-processing, the
    product's summary) runs as it is."""
    seg = Segmenter(model_dir, device="cpu", threads=1)
    state: dict = {}
    segment = seg.segment

    def planned_segment(image, prompts, **kwargs):  # noqa: ANN001, ANN003, ANN202
        state["stem"], state["prompts"] = Path(image.info.path).stem, list(prompts)
        return segment(image, prompts, **kwargs)

    def planned_maps(cached, text, cancel=None):  # noqa: ANN001, ANN202
        shape = cached.prepared.fov.mask.shape
        plan = PLAN[state["stem"]]
        return np.stack([plan.get(p, np.zeros(shape, bool)).astype(np.float32)[None]
                         for p in state["prompts"]])

    def planned_classify(image, mask=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        p = P_MALIGNANT[Path(image.info.path).stem]
        return {"benign": 1 - p, "malignant": p}

    def planned_maps_and_presence(cached, text, cancel=None):  # noqa: ANN001, ANN202
        return planned_maps(cached, text), None

    seg.segment, seg.probability_maps, seg.classify = planned_segment, planned_maps, planned_classify
    seg.maps_and_presence = planned_maps_and_presence  # engines with a presence output call this
    return seg


@pytest.fixture(scope="module")
def planned(real_dir, model_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("planned")
    report = er.evaluate_real(model_dir, real_dir, out, split="all", device="cpu", progress=False,
                              segmenter=_planned_segmenter(model_dir), log=lambda m: None)
    return report, out


def test_planned_run_matches_hand_computed_values(planned):
    report, out = planned
    on_disk = json.loads((out / "real_eval.json").read_text())
    assert on_disk == report
    by_id = {r["id"]: r for r in report["per_image"]}
    # the field of view is the whole synthetic image, so the masks are exactly the planned ones
    assert by_id["busi_benign_001"]["prompts"]["breast mass"]["pred_pixels"] == SHIFTED.sum()
    assert by_id["busi_benign_001"]["prompts"]["breast mass"]["dice"] == pytest.approx(0.5)
    assert by_id["busi_benign_001"]["prompts"]["mass in the breast"]["dice"] == pytest.approx(1.0)
    assert by_id["busi_benign_001"]["prompts"]["lump"]["dice"] == 0.0
    assert by_id["busi_malignant_001"]["dice"] == pytest.approx(2 / 3)
    assert by_id["busi_malignant_002"]["p_malignant"] is None
    assert by_id["busi_malignant_002"]["p_malignant_truth_mask"] == pytest.approx(0.95)
    s = report["summary"]
    assert s["counts"] == {"lesion": 4, "normal": 2, "head": 3, "benign": 2, "malignant": 2}
    assert s["busi_lesion"]["dice"]["mean"] == pytest.approx((0.5 + 1 + 2 / 3 + 0) / 4)
    assert s["paraphrases"]["mass in the breast"]["gap"] == pytest.approx((1 + 1 + 2 / 3) / 4 - (0.5 + 1 + 2 / 3) / 4)
    assert s["paraphrases"]["breast tumor"]["gap"] == pytest.approx(0.0)
    # own contour: malignant 0.9 and 0.5 (empty) vs benign 0.3 and 0.6 -> 3 of 4 pairs
    assert s["classification"]["own_contour"]["auc"] == pytest.approx(0.75)
    assert s["classification"]["truth_mask_diagnostic"]["auc"] == pytest.approx(1.0)
    assert s["busi_normal"]["empty_share"] == pytest.approx(0.5)
    # heads: truth a=50, b=30 px; prediction a=45, b=30 px; 0.2 mm pixels
    head = by_id["hc18_000_HC"]
    assert head["hc_truth_mm"] == pytest.approx(HC_SPACING * er.ramanujan_perimeter(50, 30), rel=0.01)
    assert head["hc_pred_mm"] == pytest.approx(HC_SPACING * er.ramanujan_perimeter(45, 30), rel=0.01)
    assert head["dice"] == pytest.approx(dice(HEAD_SMALLER, HEAD_TRUTH))
    assert head["dice"] == pytest.approx(2 * 45 * 30 / (45 * 30 + 50 * 30), abs=0.01)
    assert by_id["hc18_001_HC"]["hc_abs_error_mm"] is None
    assert by_id["hc18_002_HC"]["hc_abs_error_mm"] == pytest.approx(0.0, abs=1e-9)
    # median of (e, inf, 0) is e, the first head's error
    assert s["hc18"]["hc_median_abs_error_mm"] == pytest.approx(head["hc_abs_error_mm"])
    assert s["hc18"]["hc_unmeasured"] == 1
    cross = s["cross_organ"]
    assert (cross["thyroid nodule on BUSI"]["nonempty"], cross["thyroid nodule on BUSI"]["n"]) == (1, 6)
    assert (cross["fetal head on BUSI"]["nonempty"], cross["breast mass on HC18"]["nonempty"]) == (1, 1)
    assert cross["thyroid nodule on HC18"]["share"] == pytest.approx(1 / 3)
    # the missing image is recorded, the others evaluated
    assert report["images"] == {"selected": 10, "evaluated": 9, "failed": 1}
    assert [f["id"] for f in report["failures"]] == ["busi_benign_003"]


def test_planned_run_writes_report_and_gallery(planned):
    report, out = planned
    md = (out / "real_eval.md").read_text()
    for t in report["summary"]["targets"]:
        assert f"| {t['what']} |" in md
    assert "| BUSI lesions, 'breast mass': mean Dice | 0.5417 | >= 0.80 | no | 4 |" in md
    assert "busi_benign_003" in md  # the failure is named
    # best and worst 4 BUSI lesions (of 4) and 2 HC18 heads (of 3), each file present
    kinds = [(g["set"], g["kind"]) for g in report["gallery"]]
    assert kinds.count(("busi", "best")) == 4 and kinds.count(("hc18", "worst")) == 2
    best_head = next(g for g in report["gallery"] if g["set"] == "hc18" and g["kind"] == "best")
    assert best_head["id"] == "hc18_002_HC"
    for g in report["gallery"]:
        png = out / g["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert skio.imread(png).shape[:2] in (BUSI_SHAPE, HC_SHAPE)


def test_cli_with_the_tiny_model(real_dir, model_dir, tmp_path):
    out = tmp_path / "out"
    rc = er.main(["--model", str(model_dir), "--data", str(real_dir), "--split", "all", "-o", str(out),
                  "--device", "cpu", "--no-progress", "--gallery-busi", "1", "--gallery-hc18", "1"])
    assert rc == 1  # one image failed, the run went on
    report = json.loads((out / "real_eval.json").read_text())
    assert report["schema"] == er.SCHEMA
    assert report["model"]["name"] == "tiny-mona"
    assert report["model"]["manifest_sha256"] == hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()
    assert report["code_revision"] and report["date"] and report["machine"]["cpu_count"]
    assert report["data"]["split"] == "all" and "sha256" in report["data"]["split_rule"]
    assert [f["name"] for f in report["data"]["folders"]] == ["busi", "hc18"]
    assert report["data"]["folders"][0]["manifest_sha256"] == hashlib.sha256(
        (real_dir / "busi" / "manifest.csv").read_bytes()).hexdigest()
    assert report["command"].startswith("python -m usvlm_training.evaluate_real --model")
    assert report["timing"]["per_image_median_s"] > 0
    assert report["images"]["evaluated"] == 9
    assert {t["key"] for t in report["summary"]["targets"]} >= {
        "busi_lesion_dice", "busi_normal_empty", "busi_auc", "hc18_dice", "hc18_hc_median_abs_error_mm",
        *(f"paraphrase:{p}" for p in er.PARAPHRASES)}
    # a recorded Dice and malignant probability are what the engine gives for that image
    record = next(r for r in report["per_image"] if r["id"] == "busi_benign_001")
    folder = real_dir / "busi"
    seg = Segmenter(model_dir, device="cpu", threads=1)
    image = read_image(folder / "images" / "busi_benign_001.png")
    result = seg.segment(image, "breast mass").results[0]
    truth = skio.imread(folder / "masks" / "busi_benign_001_mask.png") > 127
    assert record["prompts"]["breast mass"]["dice"] == pytest.approx(dice(result.mask, truth))
    assert record["prompts"]["breast mass"]["pred_pixels"] == int(result.mask.sum())
    if result.mask.any():
        assert record["p_malignant"] == pytest.approx(seg.classify(image, result.mask)["malignant"], abs=1e-5)
    assert (out / "real_eval.md").read_text().startswith("# Real-data evaluation: tiny-mona")
    # the val split by default picks whole groups by the hash rule
    # the val split (the default) is the real layout's; the unreadable image is in no split
    val_report = er.evaluate_real(model_dir, real_dir, tmp_path / "val", device="cpu", progress=False,
                                  log=lambda m: None, gallery_busi=0, gallery_hc18=0)
    with pytest.warns(UserWarning):
        expected = sorted(open_dataset(real_dir, on_error="skip").splits["val"])
    assert sorted(r["id"] for r in val_report["per_image"]) == expected and not val_report["failures"]
    assert [r["id"] for r in val_report["data"]["unusable_rows"]] == ["busi_benign_003"]
    assert val_report["data"]["folders"][0]["in_no_split"] == 1


def test_bad_inputs(tmp_path, real_dir, model_dir):
    from usvlm.errors import InputError

    with pytest.raises(InputError):
        er.data_folders(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        er.data_folders(tmp_path / "empty")
    assert er.data_folders(real_dir / "hc18") == [real_dir / "hc18"]
    with pytest.raises(InputError):
        er.evaluate_real(model_dir, real_dir, tmp_path / "o", split="test", progress=False)
    # an unknown label is a named unusable row, not a crash
    folder = tmp_path / "odd"
    (folder / "images").mkdir(parents=True)
    (folder / "manifest.csv").write_text(",".join(COLUMNS) + "\nodd_1,cyst,breast,,,,,,1,1,1,1,g\n"
                                         "odd_2,benign,breast,,,,abc,,1,1,1,1,g\n")
    items, problems = er.read_folder(folder)
    assert items == [] and [p["id"] for p in problems] == ["odd_1", "odd_2"]
