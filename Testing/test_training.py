"""Training runs for real: fine-tuning and pretraining on phantoms, resume, DDP on 2 CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from usvlm.engine import Segmenter
from usvlm.io import read_image
from usvlm.model.backbones import build_backbone, save_local_dir, tiny_vit_config
from usvlm.model.vlm import load_model
from usvlm_training.phantom import write_dataset
from usvlm_training.train.cli import main as train_main
from usvlm_training.train.common import load_training_state

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "phantoms"
    write_dataset(out, 16, 5, size=256, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bb") / "tiny"
    save_local_dir(build_backbone(tiny_vit_config(width=64, layers=4, image_size=64, embed_dim=64)),
                   None, folder)
    return f"local-dir:{folder}"


def _finetune_args(data: Path, out: Path, backbone: str, *extra: str) -> list[str]:
    return ["finetune", "--data", str(data), "--out", str(out), "--backbone", backbone,
            "--batch-size", "4", "--bottleneck", "8", *extra]


def test_finetune_exports_a_model_the_engine_loads(phantoms, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    assert train_main(_finetune_args(phantoms, out, tiny_backbone, "--epochs", "2")) == 0
    for name in ("train.log", "history.json", "curves.png", "last.pt", "summary.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [0, 1]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["provenance"]["seed"] == 0 and manifest["provenance"]["split_sizes"]["train"] > 0
    assert "val_dice" in manifest["metrics"]
    assert manifest["backbone"]["bundled"] is False  # the local-dir backbone is resolvable
    image = read_image(next((phantoms / "images").iterdir()))
    result = Segmenter(out / "model", device="cpu").segment(image, "cyst")
    assert result.results[0].probability.shape == image.frame_shape


def test_training_state_loads_without_pickle_and_resume_continues(phantoms, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    assert train_main(_finetune_args(phantoms, out, tiny_backbone, "--epochs", "1")) == 0
    state = load_training_state(out / "last.pt")  # torch.load(weights_only=True) inside
    assert state["epoch"] == 0 and state["module"]
    assert train_main(_finetune_args(phantoms, out, tiny_backbone, "--epochs", "2", "--resume")) == 0
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [0, 1]
    # A non-empty run folder is not overwritten by accident.
    assert train_main(_finetune_args(phantoms, out, tiny_backbone, "--epochs", "1")) == 2


def test_pretrain_then_finetune_from_it(phantoms, tmp_path):
    pre = tmp_path / "pre"
    assert train_main(["pretrain", "--data", str(phantoms), "--out", str(pre), "--image-size", "64",
                       "--epochs", "1", "--batch-size", "8"]) == 0
    manifest = json.loads((pre / "model" / "manifest.json").read_text())
    assert manifest["backbone"]["bundled"] is True  # trained from scratch: stored in the model
    before = load_model(pre / "model")
    out = tmp_path / "ft"
    assert train_main(["finetune", "--data", str(phantoms), "--out", str(out), "--model",
                       str(pre / "model"), "--epochs", "1", "--batch-size", "4", "--bottleneck", "8"]) == 0
    after = load_model(out / "model")
    # The frozen backbone came through fine-tuning unchanged; adapters were added and trained.
    name = "visual.conv1.weight"
    torch.testing.assert_close(dict(before.backbone.model.named_parameters())[name],
                               dict(after.backbone.model.named_parameters())[name])
    assert after.backbone.adapter_config.kind == "mona"
    head = manifest["heads"]["segmentation"]
    assert (head["output_stride"], head["detail_channels"]) == (4, 32)  # a fresh head's defaults
    assert after.seg_head.config == before.seg_head.config


def test_finetune_replaces_a_head_of_another_configuration(phantoms, tiny_backbone, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert train_main(_finetune_args(phantoms, first, tiny_backbone, "--epochs", "1",
                                     "--max-steps", "1")) == 0
    assert train_main(["finetune", "--data", str(phantoms), "--out", str(second), "--model",
                       str(first / "model"), "--epochs", "1", "--max-steps", "1", "--batch-size", "4",
                       "--seg-detail", "0", "--seg-stride", "8"]) == 0
    head = load_model(second / "model").seg_head
    assert (head.config.output_stride, head.config.detail_channels, head.detail) == (8, 0, None)
    assert "detail_channels 32 -> 0" in (second / "train.log").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_ranks_end_identical(phantoms, tiny_backbone, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "usvlm_training.train",
           *_finetune_args(phantoms, out, tiny_backbone, "--epochs", "1", "--max-steps", "3")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks_in_sync"] is True
    assert len(summary["rank_checksums"]) == 2
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["provenance"]["training"]["world_size"] == 2


def test_segmentation_loss_scores_empty_targets_by_cross_entropy_only():
    from usvlm_training.train.losses import dice_loss, segmentation_loss

    target = torch.zeros(3, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1  # item 0 has a structure; items 1 and 2 name nothing present
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    assert float(dice_loss(logits, target, skip_empty=True)) == pytest.approx(float(dice_loss(logits[:1], target[:1])))
    loss = segmentation_loss(logits, target)
    loss.backward()
    assert logits.grad[1:].abs().sum() > 0  # the negatives still learn (cross-entropy)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(loss) == pytest.approx(float(dice_loss(logits[:1], target[:1]) + bce), rel=1e-6)
    empty = torch.zeros(2, 1, 8, 8)
    assert float(dice_loss(logits[1:], empty, skip_empty=True)) == 0.0


def test_each_run_logs_to_its_own_file(phantoms, tiny_backbone, tmp_path):
    """Two runs in one process (as the adaptation experiment does): the first run's log ends with it."""
    first, second = tmp_path / "one", tmp_path / "two"
    assert train_main(_finetune_args(phantoms, first, tiny_backbone, "--max-steps", "1", "--epochs", "1")) == 0
    size = (first / "train.log").stat().st_size
    assert train_main(_finetune_args(phantoms, second, tiny_backbone, "--max-steps", "1", "--epochs", "1")) == 0
    assert (first / "train.log").stat().st_size == size
    assert str(second) in (second / "train.log").read_text() and str(second) not in (first / "train.log").read_text()
