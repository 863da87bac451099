"""Stage 1: CLIP-style contrastive training on image-description pairs.

- The bundled default model: a small ViT trained from scratch (`--backbone default-small`) with
  the frozen MiniLM-L6 sentence encoder; only its text projection (and the logit scale) learn on
  the text side.
- Users: adapter tuning (`--adapter mona|hybrid|lora`) of a pretrained backbone such as
  BiomedCLIP on their captioned images, the paper's fine-tuning step.

Writes RUN/model: a model directory (backbone + untrained heads) that `finetune --model` starts
from; and RUN/last.pt, train.log, history.json, curves.png as finetune does.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from usvlm.model.adapters import AdapterConfig, inject_adapters
from usvlm.model.backbones import Backbone, build_backbone, small_vit_minilm_config
from usvlm.model.backbones.core import is_adapter_parameter
from usvlm.model.backbones.text import used_length
from usvlm.model.vlm import build_model

from ..data import open_dataset
from ..data.torch_dataset import ImageTextDataset, collate
from ..distributed import DistInfo, all_reduce_mean
from .common import (History, OptimConfig, Throughput, autocast_dtype, cosine_with_warmup,
                     git_revision, log, make_optimizer, resume_if_asked, save_training_state,
                     trainable_state, training_run, write_history)
from .losses import contrastive_loss

DEFAULT_SMALL = "default-small"


@dataclass
class PretrainConfig:
    data: str
    out: str
    backbone: str = DEFAULT_SMALL
    pretrained: str | None = None
    adapter: str = "none"  # "none": train the whole image tower; else only adapters
    image_size: int = 224
    name: str = "usvlm-pretrained"
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, batch_size=32, lr=5e-4))


def build_backbone_for_pretraining(cfg: PretrainConfig) -> Backbone:
    if cfg.backbone == DEFAULT_SMALL:
        backbone = build_backbone(small_vit_minilm_config(image_size=cfg.image_size))
    else:
        backbone = build_backbone(cfg.backbone, cfg.pretrained)
    if cfg.adapter != "none":
        inject_adapters(backbone, AdapterConfig(kind=cfg.adapter))  # freezes the rest
    _set_trainable(backbone, cfg.adapter)
    return backbone


def _set_trainable(backbone: Backbone, adapter: str) -> None:
    """What learns: the image tower (or its adapters), the text projection, the logit scale."""
    for name, p in backbone.model.named_parameters():
        if adapter == "none":
            train = name.startswith("visual.")
        else:
            train = is_adapter_parameter(name)
        train |= name == "logit_scale" or name.startswith(("text.proj", "text_projection"))
        p.requires_grad_(train)


class TextFeatures(nn.Module):
    """Caption embeddings with the frozen part of the text tower cached per caption.

    A Hugging Face encoder (MiniLM, PubMedBERT) stays frozen: its pooled output is cached and
    only the projection runs with gradients. An open_clip text transformer is frozen entirely.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self._cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def _frozen(self, texts: list[str]) -> Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            tower = self.backbone.text
            if tower.is_hf:
                text = self.backbone.model.text
                tokens = tower.tokenize(missing).to(next(text.parameters()).device)
                tokens = tokens[:, :used_length(tokens)]  # padding is masked anyway: skip it
                mask = (tokens != text.config.pad_token_id).long()
                pooled = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
            else:
                pooled = tower.encode_text(missing)
            for t, v in zip(missing, pooled):
                self._cache[t] = v.float()
        return torch.stack([self._cache[t] for t in texts])

    def forward(self, texts: list[str]) -> Tensor:
        feats = self._frozen(texts)
        if self.backbone.text.is_hf:
            feats = self.backbone.model.text.proj(feats.to(self.backbone.model.text.proj.weight.device))
        return F.normalize(feats.float(), dim=-1)


class ContrastiveStep(nn.Module):
    def __init__(self, backbone: Backbone, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.text = TextFeatures(backbone)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        x = (images.expand(-1, 3, -1, -1) - self.mean) / self.std
        image = F.normalize(self.backbone.model.encode_image(x).float(), dim=-1)
        return image, self.text(texts), self.backbone.model.logit_scale.exp().clamp(max=100)


def _same_text(texts: list[str], device: torch.device) -> Tensor:
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    k = torch.tensor([ids[t] for t in texts], device=device)
    return k[:, None] == k[None, :]


@torch.no_grad()
def _validate(step: ContrastiveStep, loader: DataLoader, device: torch.device) -> dict[str, float]:
    step.eval()
    images, texts = [], []
    for batch in loader:
        img, txt, scale = step(batch["image"].to(device), batch["text"])
        images.append(img)
        texts += batch["text"]
    image = torch.cat(images)
    text = step.text(texts)
    same = _same_text(texts, device)
    loss = float(contrastive_loss(image, text, scale, same))
    # Image -> caption retrieval: is the top-scoring caption one identical to the true one?
    top = (image @ text.t()).argmax(1)
    accuracy = float(same[torch.arange(len(texts), device=device), top].float().mean())
    return {"val_loss": loss, "val_retrieval_top1": accuracy}


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    with training_run(out, device=cfg.device, seed=cfg.optim.seed, resume=cfg.resume,
                      overwrite=cfg.overwrite) as info:
        backbone = build_backbone_for_pretraining(cfg).to(info.device)
        size = backbone.image_size[0]
        dataset = open_dataset(cfg.data, seed=cfg.optim.seed)
        train_ds = ImageTextDataset(dataset.split("train"), size, train=True, seed=cfg.optim.seed)
        val_ds = ImageTextDataset(dataset.split("val"), size, train=False, seed=cfg.optim.seed)
        sampler = DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True,
                                     seed=cfg.optim.seed) if info.enabled else None
        loader = DataLoader(train_ds, batch_size=cfg.optim.batch_size, shuffle=sampler is None,
                            sampler=sampler, collate_fn=collate, num_workers=cfg.optim.num_workers,
                            drop_last=len(train_ds) > cfg.optim.batch_size,
                            generator=torch.Generator().manual_seed(cfg.optim.seed))
        val_loader = DataLoader(val_ds, batch_size=cfg.optim.batch_size, collate_fn=collate)
        step = ContrastiveStep(backbone, torch.tensor(backbone.mean), torch.tensor(backbone.std)).to(info.device)
        runner = DistributedDataParallel(step) if info.enabled else step
        optimizer = make_optimizer(backbone.parameters(), cfg.optim)
        per_epoch = max(1, len(loader))
        total = cfg.optim.max_steps or cfg.optim.epochs * per_epoch
        scheduler = cosine_with_warmup(optimizer, int(cfg.optim.warmup_epochs * per_epoch), total)
        history, best, start, steps = resume_if_asked(out, cfg.resume, backbone, optimizer, scheduler)
        log.info("pretraining %s on %s (%d train / %d val pairs), %d trainable parameters", cfg.backbone,
                 cfg.data, len(train_ds), len(val_ds),
                 sum(p.numel() for p in backbone.parameters() if p.requires_grad))
        amp = autocast_dtype(info.device, cfg.optim.amp)
        for epoch in range(start, cfg.optim.epochs):
            if cfg.optim.max_steps and steps >= cfg.optim.max_steps:
                break
            train_ds.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            step.train()
            if cfg.adapter == "none":
                backbone.model.text.eval()  # frozen encoder: no dropout
            loss_sum, n, speed = 0.0, 0, Throughput()
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch}", disable=not info.is_main, leave=False, unit="batch")
            for batch in bar:
                if cfg.optim.max_steps and steps >= cfg.optim.max_steps:
                    break
                with torch.autocast(info.device.type, dtype=amp, enabled=amp is not None):
                    image, text, scale = runner(batch["image"].to(info.device), batch["text"])
                    loss = contrastive_loss(image.float(), text.float(), scale,
                                            _same_text(batch["text"], info.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in backbone.parameters() if p.requires_grad],
                                               cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                steps, n, loss_sum = steps + 1, n + 1, loss_sum + float(loss.detach())
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{speed.add(len(text)):.1f}")
            row = {"epoch": epoch, "train_loss": all_reduce_mean(loss_sum / max(1, n), info),
                   **_validate(step, val_loader, info.device), "lr": scheduler.get_last_lr()[0]}
            history.add(row)
            if history.improved(-row["val_loss"], epoch):
                best = trainable_state(backbone)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
            if info.is_main:
                save_training_state(out / "last.pt", module=backbone, optimizer=optimizer,
                                    scheduler=scheduler, epoch=epoch, step=steps, history=history,
                                    best_state=best, config=_config(cfg))
                write_history(out, history, ["loss", "top1"])
            if history.epochs_since_best(epoch) >= cfg.optim.patience:
                log.info("early stop: validation loss has not improved for %d epochs", cfg.optim.patience)
                break
        if best:
            backbone.load_state_dict(best, strict=False)
        final = _validate(step, val_loader, info.device)
        result = {"best_epoch": history.best_epoch, "epochs_run": len(history.epochs), **final,
                  "out": str(out)}
        if info.is_main:
            _export(cfg, backbone, dataset.summary(), history, final, info)
        return result


def _export(cfg: PretrainConfig, backbone: Backbone, data: dict[str, Any], history: History,
            metrics: dict[str, float], info: DistInfo) -> None:
    """The pretrained backbone as a model directory (heads untrained) for `finetune --model`.
    A tower trained as a whole (or built from scratch) is bundled: nothing else holds it."""
    model = build_model(backbone, pretrained=cfg.pretrained, name=cfg.name,
                        bundle_backbone=cfg.adapter == "none" or backbone.weights_path is None)
    provenance = {"dataset": str(cfg.data), "split_sizes": data.get("splits", {}),
                  "seed": cfg.optim.seed, "git_revision": git_revision(),
                  "training": {"stage": "pretrain", "config": _config(cfg),
                               "best_epoch": history.best_epoch, "world_size": info.world_size,
                               "data": data}}
    model.save(Path(cfg.out) / "model", overwrite=True, provenance=provenance,
               metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
               description=f"CLIP-style pretraining on {Path(cfg.data).name}")
    log.info("pretrained model written to %s", Path(cfg.out) / "model")


def _config(cfg: PretrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))
