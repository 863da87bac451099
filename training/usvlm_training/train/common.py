"""What both training stages share: seeding, optimiser and schedule, the resumable training
state, the run log, curves, and frozen-text-embedding caching."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from usvlm.errors import OutputError
from usvlm.io.atomic import atomic_output

from ..distributed import DistInfo, barrier, distributed_context

log = logging.getLogger("usvlm_training")


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    patience: int = 5  # early stopping: epochs without validation improvement
    seed: int = 0
    amp: bool = True  # mixed precision on GPU (bf16 where supported); CPU trains in fp32
    num_workers: int = 0
    max_steps: int | None = None  # stop after this many optimiser steps (smoke tests)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # norms, biases, gains: no weight decay
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class History:
    """Per-epoch metrics; written as history.json and drawn as curves.png."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf

    def add(self, row: dict[str, float]) -> None:
        self.epochs.append(row)

    def improved(self, score: float, epoch: int) -> bool:
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            return True
        return False

    def epochs_since_best(self, epoch: int) -> int:
        return epoch - self.best_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        return cls(**data)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters training changes (frozen weights are rebuilt from the backbone)."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def save_training_state(path: Path, *, module: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, epoch: int, step: int, history: History,
                        best_state: dict[str, torch.Tensor] | None, config: dict[str, Any]) -> None:
    """Everything `--resume` needs, loadable with torch.load(weights_only=True)."""
    # Only what training changes: frozen weights (a text encoder of 90 MB) are rebuilt anyway.
    state = {"module": {k: v.cpu() for k, v in trainable_state(module).items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "step": step, "history": json.dumps(history.to_dict()),
             "best_state": best_state or {}, "config": json.dumps(config),
             "rng_torch": torch.get_rng_state()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


RESUME_KEYS = ("module", "optimizer", "scheduler", "epoch", "step", "history", "best_state", "config")


def load_training_state(path: Path) -> dict[str, Any]:
    """A `--resume` file, read with torch's weights-only loader (it never runs a pickle's code);
    anything else (a foreign pickle, a FIFO, a damaged or foreign file) is a one-line InputError."""
    import pickle
    import stat
    import zipfile

    from usvlm.errors import InputError

    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputError(path, "not a regular file, so not a training state (--resume)")
    except OSError as exc:
        raise InputError(path, f"cannot read the training state: {exc.strerror or exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile,
            AttributeError, ImportError, TypeError) as exc:
        kind = "a pickle with objects other than tensors (refused unread)" \
            if isinstance(exc, pickle.UnpicklingError) else f"unreadable ({type(exc).__name__})"
        raise InputError(path, f"not a USVLM training state: {kind}") from None
    if not isinstance(state, dict) or any(k not in state for k in RESUME_KEYS):
        raise InputError(path, "not a USVLM training state (expected keys missing)")
    try:
        state["history"] = History.from_dict(json.loads(state["history"]))
        state["config"] = json.loads(state["config"])
    except (TypeError, ValueError, RecursionError) as exc:
        raise InputError(path, f"damaged training state ({type(exc).__name__})") from None
    return state


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def setup_run_log(out_dir: Path, info: DistInfo) -> logging.Handler | None:
    """Rank 0 logs to OUT/train.log (and the console); other ranks only warn."""
    log.setLevel(logging.INFO if info.is_main else logging.WARNING)
    log.propagate = False  # our own console handler; no second copy through the root logger
    if not info.is_main:
        return None
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
    return handler


def write_history(out_dir: Path, history: History, keys: Sequence[str]) -> None:
    with atomic_output(out_dir / "history.json") as tmp:
        tmp.write_text(json.dumps(history.to_dict(), indent=2) + "\n")
    try:
        plot_curves(out_dir / "curves.png", history, keys)
    except ImportError:
        log.warning("matplotlib is not installed: curves.png not drawn (history.json has the numbers)")


def plot_curves(path: Path, history: History, keys: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history.epochs]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name in sorted({k for row in history.epochs for k in row if k.endswith(key)}):
            ax.plot(epochs, [row.get(name, math.nan) for row in history.epochs], marker="o",
                    label=name)
        if history.best_epoch >= 0:
            ax.axvline(history.best_epoch, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


class TextEmbeddingCache:
    """Frozen text tower: each distinct prompt is embedded once per run (prompts repeat a lot)."""

    def __init__(self, encode: Any, device: torch.device) -> None:
        self._encode = encode
        self._device = device
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, emb in zip(missing, self._encode(missing)):
                self._cache[text] = emb.detach().float()
        return torch.stack([self._cache[t] for t in texts]).to(self._device)


class Throughput:
    def __init__(self) -> None:
        self.start, self.items = time.perf_counter(), 0

    def add(self, n: int) -> float:
        self.items += n
        return self.items / max(1e-9, time.perf_counter() - self.start)


def env_threads() -> None:
    """Two ranks on one CPU must not each start a thread per core."""
    if "OMP_NUM_THREADS" not in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))


@contextlib.contextmanager
def training_run(out: Path, *, device: str, seed: int, resume: bool, overwrite: bool) -> Iterator[DistInfo]:
    """Set-up shared by both stages: process group, a checked run folder, the run log, seeds."""
    env_threads()
    with distributed_context(device) as info:
        if info.is_main:
            prepare_out(out, resume=resume, overwrite=overwrite)
        barrier(info)
        handler = setup_run_log(out, info)
        try:
            seed_everything(seed)
            yield info
            barrier(info)
        finally:  # the next run in this process (pretrain, then finetune) logs to its own file
            if handler is not None:
                log.removeHandler(handler)
                handler.close()


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise OutputError(out, "output folder is not empty (use --resume to continue a run or "
                               "--overwrite to start over)")
    out.mkdir(parents=True, exist_ok=True)


def resume_if_asked(out: Path, resume: bool, module: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> tuple[History, dict[str, torch.Tensor] | None, int, int]:
    """(history, best state, first epoch, step): restored from OUT/last.pt with --resume."""
    if not (resume and (out / "last.pt").is_file()):
        return History(), None, 0, 0
    state = load_training_state(out / "last.pt")
    module.load_state_dict(state["module"], strict=False)  # only the trainable part is stored
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resumed from %s at epoch %d", out / "last.pt", state["epoch"] + 1)
    return state["history"], state["best_state"] or None, state["epoch"] + 1, state["step"]
