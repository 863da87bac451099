"""Evaluation and cohort inference of a tiny saved model on phantoms, alone and under torchrun."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import save_tiny_model
from skimage import io as skio

from usvlm.io import read_seg_nrrd
from usvlm_training.data import PromptSampler, open_dataset
from usvlm_training.data.prompts import target_indices
from usvlm_training.evaluate import evaluate
from usvlm_training.evaluate import main as evaluate_main
from usvlm_training.infer import infer, json_safe
from usvlm_training.metrics import SegmentationScores, aggregate, classification_scores, dice, score
from usvlm_training.prompt_checks import selectivity_rows, summarize_selectivity
from usvlm_training.phantom import write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMPTIED = ("000000", "benign mass")  # its only structure's mask is blanked: an empty ground truth


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    write_dataset(root / "data", 6, seed=3, size=256, splits=(0.0, 0.0, 1.0), progress=False)
    mask = root / "data" / "masks" / "000000_0.png"
    skio.imsave(mask, np.zeros_like(skio.imread(mask)), check_contrast=False)
    save_tiny_model(root / "model")
    return root


@pytest.fixture(scope="module")
def single(work) -> dict:
    return evaluate(work / "model", work / "data", out_dir=work / "single", device="cpu", progress=False)


def torchrun(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m module args` as 2 CPU processes (gloo) on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", module, *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return done


def ground_truth(data_dir: Path, sample_id: str, class_name: str) -> tuple[np.ndarray, tuple]:
    sample = open_dataset(data_dir)[sample_id]
    masks = sample.load_masks()
    prompt = PromptSampler.canonical(next(s for s in sample.structures if s.class_name == class_name))
    members = target_indices(prompt, sample.structures)
    return np.logical_or.reduce([masks[i] for i in members]), sample.spacing_mm


def test_outputs_exist_and_are_what_they_claim(work, single):
    out = work / "single"
    for name in ("metrics.json", "per_image.csv", "roc.png", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "roc.png").read_bytes()[:8] == PNG_MAGIC
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["per_image"] == json_safe(single["per_image"])  # inf (undefined) as null
    # one row per (image, class), for every image of the split
    data = open_dataset(work / "data")
    expected = sorted((s.id, c) for s in data.split("test") for c in s.classes)
    assert [(r["id"], r["class"]) for r in on_disk["per_image"]] == expected
    assert sorted(p.name for p in (out / "predictions").iterdir()) == \
        [f"{s.id}.seg.nrrd" for s in data.split("test")]
    # the gallery: best and worst cases, real PNGs, listed in the report
    shown = on_disk["gallery"]["best"] + on_disk["gallery"]["worst"]
    assert len(on_disk["gallery"]["best"]) == len(on_disk["gallery"]["worst"]) == 4
    assert [g["dice"] for g in on_disk["gallery"]["best"]] == \
        sorted((r["dice"] for r in on_disk["per_image"]), reverse=True)[:4]
    for g in shown:
        assert (out / g["file"]).read_bytes()[:8] == PNG_MAGIC
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], float(r["dice"])) for r in rows] == [(r["id"], r["dice"]) for r in on_disk["per_image"]]


def test_metrics_equal_a_recomputation_from_saved_predictions(work, single):
    rows = {(r["id"], r["class"]): r for r in single["per_image"]}
    case = ("000003", "benign mass")  # two structures of one class: the target is their union
    pred = next(s.mask for s in read_seg_nrrd(work / "single" / "predictions" / "000003.seg.nrrd").segments
                if s.name == case[1])
    gt, spacing = ground_truth(work / "data", *case)
    expected = score(pred, gt, spacing)
    row = rows[case]
    assert row["structures"] == 2
    for key in ("dice", "iou", "hd95", "asd", "empty_pred", "empty_gt"):
        assert row[key] == pytest.approx(getattr(expected, key), rel=1e-12), key
    fields = ("dice", "iou", "hd95", "asd", "empty_pred", "empty_gt")
    overall = aggregate(SegmentationScores(**{f: r[f] for f in fields}) for r in single["per_image"])
    assert single["segmentation"]["overall"]["dice"] == overall.to_dict()["dice"]
    assert single["segmentation"]["overall"]["hd95"] == overall.to_dict()["hd95"]
    cases = single["classification_cases"]["trained_head"]
    head = classification_scores([c["p_malignant"] for c in cases], [c["label"] for c in cases])
    assert single["classification"]["trained_head"]["auc"] == pytest.approx(head.auc, nan_ok=True)
    assert single["classification"]["trained_head"]["f1"] == head.f1
    assert single["classification"]["zero_shot"]["unit"] == "image"


def test_empty_ground_truth_and_empty_predictions_are_counted(work, single):
    emptied = next(r for r in single["per_image"] if (r["id"], r["class"]) == EMPTIED)
    assert emptied["empty_gt"] and emptied["dice"] == 0.0
    on_disk = json.loads((work / "single" / "metrics.json").read_text())
    assert next(r for r in on_disk["per_image"] if (r["id"], r["class"]) == EMPTIED)["hd95"] is None
    overall = single["segmentation"]["overall"]
    assert overall["empty_gt"] == 1 and overall["distance_excluded"] == 1
    assert overall["hd95"]["n"] == overall["n"] - 1
    # nothing reaches a threshold of 1: every prediction empty, all counted, none dropped
    none = evaluate(work / "model", work / "data", out_dir=work / "empty", threshold=1.0, device="cpu",
                    progress=False, gallery=1)
    summary = none["segmentation"]["overall"]
    assert summary["n"] == overall["n"] and summary["empty_pred"] == overall["n"]
    assert summary["both_empty"] == 1 and summary["dice"]["mean"] == pytest.approx(1 / overall["n"])
    assert summary["hd95"]["n"] == 0 and summary["distance_excluded"] == overall["n"]
    report = (work / "empty" / "report.md").read_text()
    assert "n/a (n=0)" in report and "1.0 (given)" in report


def test_report_states_the_settings(work, single):
    import torch

    report = (work / "single" / "report.md").read_text()
    settings = single["settings"]
    for text in ("tiny-mona", str(work / "model"), "adapter mona", str(work / "data"), "phantom",
                 "| split | test |", "threshold | 0.5 (model)", "| device | cpu |", "| world size | 1 |",
                 f"torch {torch.__version__}", settings["date"], "![ROC curve](roc.png)",
                 "## Classification", "trained head", "zero shot", "| **all** |"):
        assert text in report, text
    for g in single["gallery"]["best"] + single["gallery"]["worst"]:
        assert f"]({g['file']})" in report


def test_evaluate_main_reports_a_bad_data_folder(work, tmp_path, capsys):
    assert evaluate_main(["--model", str(work / "model"), "--data", str(tmp_path / "missing"),
                          "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_torchrun_two_ranks_give_the_single_process_results(work, single):
    done = torchrun("usvlm_training.evaluate", "--model", str(work / "model"), "--data", str(work / "data"),
                    "-o", str(work / "dist"), "--device", "cpu", "--no-progress", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    dist = json.loads((work / "dist" / "metrics.json").read_text())
    assert dist["settings"]["world_size"] == 2
    one = {(r["id"], r["class"]): r["dice"] for r in single["per_image"]}
    two = {(r["id"], r["class"]): r["dice"] for r in dist["per_image"]}
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert [g["file"] for g in dist["gallery"]["worst"]] == [g["file"] for g in single["gallery"]["worst"]]
    assert sorted(p.name for p in (work / "dist" / "predictions").iterdir()) == \
        sorted(p.name for p in (work / "single" / "predictions").iterdir())
    for a, b in zip(dist["prompt_check_cases"]["selectivity"], single["prompt_check_cases"]["selectivity"],
                    strict=True):
        assert (a["id"], a["class"]) == (b["id"], b["class"])
        assert a["other_covered"] == pytest.approx(b["other_covered"], abs=1e-6)


# -- prompt selectivity and paraphrases ----------------------------------------------------------

def test_selectivity_row_measures_the_share_of_other_classes_covered():
    target = np.zeros((20, 20), bool)
    target[2:8, 2:8] = True
    other = np.zeros((20, 20), bool)
    other[10:20, 10:20] = True
    pred = target.copy()
    pred[10:15, 10:20] = True  # half of the other structure
    rows = selectivity_rows("x", {"cyst": target, "benign mass": other}, {"cyst": pred, "benign mass": other})
    cyst = next(r for r in rows if r["class"] == "cyst")
    assert cyst["other_covered"] == pytest.approx(0.5) and cyst["dice"] == pytest.approx(72 / (72 + 50))
    mass = next(r for r in rows if r["class"] == "benign mass")
    assert mass["other_covered"] == 0.0 and mass["dice"] == 1.0
    assert selectivity_rows("y", {"cyst": target}, {"cyst": pred}) == []  # one class: nothing to tell apart
    summary = summarize_selectivity(rows)
    assert summary["overall"]["n"] == 2 and summary["overall"]["pairs_over_limit"] == 1
    assert summary["overall"]["other_covered"]["max"] == pytest.approx(0.5)


def test_selectivity_rows_agree_with_the_saved_predictions(work, single):
    data = open_dataset(work / "data")
    rows = single["prompt_check_cases"]["selectivity"]
    multi = [s for s in data.split("test") if len(s.classes) >= 2]
    assert multi and {r["id"] for r in rows} == {s.id for s in multi}
    dice_of = {(r["id"], r["class"]): r["dice"] for r in single["per_image"]}
    for row in rows:
        assert row["dice"] == pytest.approx(dice_of[row["id"], row["class"]], abs=1e-12)
        sample = data[row["id"]]
        segments = {s.name: s.mask for s in read_seg_nrrd(work / "single" / "predictions" /
                                                          f"{row['id']}.seg.nrrd").segments}
        target, _ = ground_truth(work / "data", row["id"], row["class"])
        others = np.zeros_like(target)
        for other in sample.classes:
            if other != row["class"]:
                others |= ground_truth(work / "data", row["id"], other)[0]
        others &= ~target
        expected = (segments[row["class"]] & others).sum() / others.sum() if others.any() else 0.0
        assert row["other_covered"] == pytest.approx(expected)
    assert "## Prompt selectivity" in (work / "single" / "report.md").read_text()


def test_paraphrases_from_a_file_are_scored_against_the_canonical_prompt(work, single, tmp_path):
    # the tiny model records no held-out prompts: the check says so and does not run
    assert single["paraphrase"]["overall"]["n"] == 0 and "none" in single["paraphrase"]["source"]
    path = tmp_path / "para.json"
    path.write_text(json.dumps({"benign mass": ["a benign mass", "an oval circumscribed mass"],
                                "not a class here": ["whatever"]}))
    out = evaluate(work / "model", work / "data", out_dir=tmp_path / "para", device="cpu", progress=False,
                   paraphrases=str(path), save_predictions=False)
    rows = out["prompt_check_cases"]["paraphrase"]
    pairs = [(r["id"], r["class"]) for r in out["per_image"] if r["class"] == "benign mass"]
    assert sorted((r["id"], r["paraphrase"]) for r in rows) == \
        sorted((i, t) for i, _ in pairs for t in ("a benign mass", "an oval circumscribed mass"))
    dice_of = {(r["id"], r["class"]): r["dice"] for r in out["per_image"]}
    assert all(r["canonical_dice"] == dice_of[r["id"], r["class"]] for r in rows)
    from usvlm.engine import Segmenter

    data = open_dataset(work / "data")
    seg = Segmenter(work / "model", device="cpu")
    row = rows[0]
    target, _ = ground_truth(work / "data", row["id"], "benign mass")
    image = data[row["id"]].load_image()
    from usvlm.postprocess import PostprocessOptions

    mask = seg.segment(image, row["paraphrase"], options=PostprocessOptions(keep_largest=False)).results[0].mask
    assert row["dice"] == pytest.approx(dice(mask, target), abs=1e-9)
    summary = out["paraphrase"]["overall"]
    assert summary["n"] == len(rows) and summary["gap"] == pytest.approx(
        summary["canonical_dice"] - summary["paraphrase_dice"])
    assert "## Paraphrase robustness" in (tmp_path / "para" / "report.md").read_text()
    path.write_text(json.dumps({"cyst": "not a list"}))
    assert evaluate_main(["--model", str(work / "model"), "--data", str(work / "data"), "-o",
                          str(tmp_path / "bad"), "--paraphrases", str(path), "--no-progress"]) == 2
    assert not (tmp_path / "bad" / "metrics.json").exists()


# -- cohort inference ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(work) -> Path:
    folder = work / "cohort"
    folder.mkdir()
    for i in range(5):
        (folder / f"scan{i}.png").write_bytes((work / "data" / "images" / f"00000{i}.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


def read_outputs(folder: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    return {p.name: [(s.name, s.mask) for s in read_seg_nrrd(p).segments]
            for p in sorted(folder.glob("*.seg.nrrd"))}


def test_infer_records_a_broken_file_and_writes_the_others(work, cohort):
    summary = infer(work / "model", [cohort], ["cyst", "thyroid nodule"], work / "infer1", device="cpu",
                    progress=False)
    assert (summary["inputs"], summary["ok"], summary["failed"]) == (6, 5, 1)
    on_disk = json.loads((work / "infer1" / "summary.json").read_text())
    bad = [f for f in on_disk["files"] if f["status"] != "ok"]
    assert len(bad) == 1 and "broken.png" in bad[0]["input"] and "broken.png" in bad[0]["error"]
    outputs = read_outputs(work / "infer1")
    assert sorted(outputs) == [f"scan{i}.seg.nrrd" for i in range(5)]
    names = {tuple(name for name, _ in segs) for segs in outputs.values()}
    assert len(names) == 1 and len(names.pop()) == 2  # both prompts, in order, in every file


def test_infer_under_torchrun_writes_the_same_outputs(work, cohort):
    done = torchrun("usvlm_training.infer", "--model", str(work / "model"), "--prompt", "cyst",
                    "--prompt", "thyroid nodule", "--device", "cpu", "--no-progress", str(cohort),
                    "-o", str(work / "infer2"), cwd=work)
    assert done.returncode == 1, done.stderr[-3000:]  # 1: the broken file, reported
    single = work / "infer1"
    if not (single / "summary.json").exists():
        infer(work / "model", [cohort], ["cyst", "thyroid nodule"], single, device="cpu", progress=False)
    one, two = read_outputs(single), read_outputs(work / "infer2")
    assert one.keys() == two.keys()
    for name in one:
        assert [n for n, _ in one[name]] == [n for n, _ in two[name]]
        for (_, a), (_, b) in zip(one[name], two[name]):
            assert np.array_equal(a, b), name
    s1 = json.loads((single / "summary.json").read_text())
    s2 = json.loads((work / "infer2" / "summary.json").read_text())
    assert s2["world_size"] == 2
    def status(summary: dict) -> list[tuple[str, str]]:
        return [(f["input"], f["status"]) for f in summary["files"]]

    assert status(s1) == status(s2)
