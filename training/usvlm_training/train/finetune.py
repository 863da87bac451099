"""Stage 2: fine-tune adapters and heads on a frozen backbone (segmentation + classification).

    python -m usvlm_training.train finetune --data DATA --out RUN [--model DIR | --backbone ID]
    torchrun --nproc_per_node 2 -m usvlm_training.train finetune ...      # DDP, same script

Writes RUN/model (the best epoch by validation Dice, as a model directory the Slicer module and
`usvlm segment --model` load), RUN/last.pt (resume with --resume), RUN/train.log,
RUN/history.json and RUN/curves.png.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from usvlm.errors import InputError
from usvlm.model.adapters import AdapterConfig, has_adapters, inject_adapters
from usvlm.model.heads import SegHeadConfig, TemperatureScaler, TextConditionedSegHead
from usvlm.model.vlm import USVLMModel, build_model, load_model, weights_sha256

from ..data import PromptSampler, few_shot, open_dataset
from ..data.bank_prompts import bank_prompts
from ..data.torch_dataset import MultiPromptDataset, SegmentationDataset, collate
from ..distributed import DistInfo, all_reduce_mean, gather_to_rank0
from ..metrics import classification_scores
from .common import (History, OptimConfig, TextEmbeddingCache, Throughput, autocast_dtype,
                     cosine_with_warmup, git_revision, log, make_optimizer, resume_if_asked,
                     save_training_state, trainable_state, training_run, write_history)
from .losses import classification_loss, segmentation_loss


@dataclass
class FinetuneConfig:
    data: str
    out: str
    model: str | None = None  # start from this model directory ...
    backbone: str | None = None  # ... or build a fresh model on this backbone
    pretrained: str | None = None
    adapter: str = "mona"
    bottleneck: int = 64
    lora_rank: int = 8
    seg_width: int | None = None
    seg_stride: int | None = None  # decoder output stride (None: the model's own, 4 when fresh)
    seg_detail: int | None = None  # detail-branch channels (None: the model's own, 32 when fresh)
    cls_loss: str = "ce"  # or "focal"
    cls_weight: float = 0.5
    # Prompts per training image: its classes, then absent classes with empty targets (negatives).
    # 1 is the plain one-(image, class)-per-item scheme.
    prompts_per_image: int = 3
    # Train on the prompt banks' texts too (a third held out for the paraphrase check).
    bank_prompts: bool = True
    few_shot_ratio: float | None = None
    few_shot_shots: int | None = None
    name: str = "usvlm-finetuned"
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)


class TrainStep(nn.Module):
    """One forward of the trainable path, as a module so DistributedDataParallel can wrap it."""

    def __init__(self, model: USVLMModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, text: Tensor, masks: Tensor) -> tuple[Tensor, Tensor | None]:
        """images (B, S, S), text (B, P, D), masks (B, P, S, S) -> logits (B, P, S, S), class
        logits of the first prompt's structure (B, K)."""
        feats = self.model.encode_image(self.model.normalize(images))
        seg = self.model.segment_logits(feats, text)
        cls = self.model.classify_logits(feats, masks[:, :1]) if self.model.cls_head is not None else None
        return seg, cls


def _adapter_config(cfg: FinetuneConfig) -> AdapterConfig:
    return AdapterConfig(kind=cfg.adapter, bottleneck=cfg.bottleneck, lora_rank=cfg.lora_rank,
                         lora_alpha=2.0 * cfg.lora_rank)


def build_for_finetuning(cfg: FinetuneConfig) -> USVLMModel:
    """The model to train: an existing model directory (adapters added when it has none) or a
    fresh one on `cfg.backbone`."""
    # Head settings given on the command line; the others are the model's own (or build_model's).
    asked = {k: v for k, v in (("output_stride", cfg.seg_stride), ("detail_channels", cfg.seg_detail))
             if v is not None}
    if cfg.model:
        model = load_model(cfg.model)
        if not has_adapters(model.backbone) and cfg.adapter != "none":
            inject_adapters(model.backbone, _adapter_config(cfg))
        model.backbone.freeze()
        model.name = cfg.name
        head = model.seg_head.config
        changes = {k: v for k, v in asked.items() if v != getattr(head, k)}
        if changes:
            log.info("segmentation head: %s, head re-initialised", ", ".join(
                f"{k} {getattr(head, k)} -> {v}" for k, v in changes.items()))
            model.seg_head = TextConditionedSegHead.from_config(
                SegHeadConfig.from_dict({**head.to_dict(), **changes}))
        if model.backbone.text_weights_path is not None:  # record the text encoder trained with
            model.backbone_spec["text_weights_sha256"] = weights_sha256(model.backbone.text_weights_path)
        return model
    if not cfg.backbone:
        raise InputError(None, "give --model (a model directory to start from) or --backbone")
    return build_model(cfg.backbone, pretrained=cfg.pretrained, adapter=_adapter_config(cfg),
                       seg_width=cfg.seg_width, name=cfg.name, **asked)


def engine_text_encoder(model: USVLMModel) -> Callable[[Sequence[str]], Tensor]:
    """Text embeddings exactly as the engine makes them: the prompt resolved through the banks
    (a class name or synonym becomes its bank ensemble), then the ensemble's mean embedding. The
    heads thus train on what a user's prompt turns into."""
    from usvlm.text.banks import default_banks
    from usvlm.text.resolve import PromptResolver

    resolver = PromptResolver(default_banks())
    return lambda texts: model.encode_prompt_ensembles([resolver(t).ensemble for t in texts])


def _prompt_sampler(cfg: FinetuneConfig, samples: Sequence[Any]) -> tuple[PromptSampler, dict[str, list[str]]]:
    """Training prompts (with the banks' texts unless disabled) and the held-out paraphrases."""
    if not cfg.bank_prompts:
        return PromptSampler(), {}
    keys = sorted({k for s in samples for st in s.structures for k in (st.class_name, st.finding)})
    organs = [None, *sorted({s.organ for s in samples if s.organ})]
    classes = sorted({st.class_name for s in samples for st in s.structures})
    bank = bank_prompts(keys, organs, classes=classes)
    if bank.groups:
        log.info("prompt groups: %s", "; ".join(f"{g} = {', '.join(m)}" for g, m in bank.groups.items()))
    return PromptSampler(bank_prompts=bank.train, held_out=bank.held_out_texts(),
                         groups=bank.groups), bank.held_out


def _loaders(cfg: FinetuneConfig, size: int, info: DistInfo) -> tuple[Any, Any, dict[str, Any]]:
    dataset = open_dataset(cfg.data, seed=cfg.optim.seed)
    train = dataset.split("train")
    if cfg.few_shot_ratio or cfg.few_shot_shots:
        train = few_shot(train, ratio=cfg.few_shot_ratio, shots=cfg.few_shot_shots, seed=cfg.optim.seed)
    val = dataset.split("val")
    prompts, held_out = _prompt_sampler(cfg, train)
    train_ds = SegmentationDataset(train, size, train=True, seed=cfg.optim.seed, prompts=prompts) \
        if cfg.prompts_per_image <= 1 else \
        MultiPromptDataset(train, size, cfg.prompts_per_image, seed=cfg.optim.seed,
                           class_names=dataset.classes, prompts=prompts)
    val_ds = SegmentationDataset(val, size, train=False, seed=cfg.optim.seed)
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.optim.seed) if info.enabled else None
    generator = torch.Generator().manual_seed(cfg.optim.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.optim.batch_size, shuffle=sampler is None,
                              sampler=sampler, collate_fn=collate, num_workers=cfg.optim.num_workers,
                              generator=generator, drop_last=len(train_ds) > cfg.optim.batch_size)
    val_loader = DataLoader(val_ds, batch_size=cfg.optim.batch_size, shuffle=False, collate_fn=collate,
                            num_workers=cfg.optim.num_workers)
    summary = dataset.summary()
    summary["train_used"] = len(train)
    summary["held_out_prompts"] = held_out
    return train_loader, val_loader, summary


@torch.no_grad()
def validate(model: USVLMModel, loader: DataLoader, texts: TextEmbeddingCache,
             device: torch.device) -> tuple[dict[str, float], Tensor, Tensor]:
    """Dice at threshold 0.5 in model space, classification AUC; returns the class logits and
    labels too (for temperature scaling)."""
    model.eval()
    dices, logits, labels = [], [], []
    for batch in loader:
        images, masks = batch["image"][:, 0].to(device), batch["mask"].to(device)
        feats = model.encode_image(model.normalize(images))
        seg = model.segment_logits(feats, texts(batch["prompt"])[:, None, :])
        pred = (seg > 0).float()
        inter = (pred * masks).flatten(1).sum(1)
        total = pred.flatten(1).sum(1) + masks.flatten(1).sum(1)
        dices.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
        if model.cls_head is not None:
            logits.append(model.classify_logits(feats, masks).float().cpu())
            labels.append(batch["label"])
    row = {"val_dice": float(torch.cat(dices).mean())}
    cls_logits = torch.cat(logits) if logits else torch.empty(0, 2)
    cls_labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    known = cls_labels >= 0
    if known.any() and len(set(cls_labels[known].tolist())) == 2:
        probs = torch.softmax(cls_logits[known], -1)[:, 1].numpy()
        scores = classification_scores(probs, cls_labels[known].numpy())
        row["val_auc"] = float(scores.auc)
        row["val_accuracy"] = float(scores.accuracy)
    return row, cls_logits, cls_labels


def _checksum(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run stage 2; returns the summary (best epoch, validation metrics, output paths)."""
    out = Path(cfg.out)
    with training_run(out, device=cfg.device, seed=cfg.optim.seed, resume=cfg.resume,
                      overwrite=cfg.overwrite) as info:
        model = build_for_finetuning(cfg).to(info.device)
        size = model.input_size
        train_loader, val_loader, data_summary = _loaders(cfg, size, info)
        texts = TextEmbeddingCache(engine_text_encoder(model), info.device)
        step_module = TrainStep(model)
        runner = DistributedDataParallel(step_module) if info.enabled else step_module
        optimizer = make_optimizer(model.parameters(), cfg.optim)
        steps_per_epoch = max(1, len(train_loader))
        total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
        scheduler = cosine_with_warmup(optimizer, int(cfg.optim.warmup_epochs * steps_per_epoch), total_steps)
        history, best_state, start_epoch, step = resume_if_asked(out, cfg.resume, model, optimizer, scheduler)
        log.info("fine-tuning %s on %s: %s", model.name, cfg.data, model.parameter_report())
        amp = autocast_dtype(info.device, cfg.optim.amp)
        for epoch in range(start_epoch, cfg.optim.epochs):
            if cfg.optim.max_steps and step >= cfg.optim.max_steps:
                break
            train_loader.dataset.set_epoch(epoch)
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            model.train()
            losses = _train_epoch(cfg, runner, train_loader, texts, optimizer, scheduler, info, amp,
                                  epoch, step)
            step += losses.pop("steps")
            row, _, _ = validate(model, val_loader, texts, info.device)
            row = {"epoch": epoch, **{k: all_reduce_mean(v, info) for k, v in losses.items()}, **row,
                   "lr": scheduler.get_last_lr()[0]}
            history.add(row)
            if history.improved(row["val_dice"], epoch):
                best_state = trainable_state(model)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
            if info.is_main:
                save_training_state(out / "last.pt", module=model, optimizer=optimizer, scheduler=scheduler,
                                    epoch=epoch, step=step, history=history, best_state=best_state,
                                    config=_config_dict(cfg))
                write_history(out, history, ["loss", "dice", "auc"])
            if history.epochs_since_best(epoch) >= cfg.optim.patience:
                log.info("early stop: no validation Dice gain for %d epochs", cfg.optim.patience)
                break
        checksums = gather_to_rank0(_checksum(model), info)
        return _finish(cfg, model, best_state, history, val_loader, texts, info, data_summary, checksums)


def _train_epoch(cfg: FinetuneConfig, runner: nn.Module, loader: DataLoader, texts: TextEmbeddingCache,
                 optimizer: torch.optim.Optimizer, scheduler: Any, info: DistInfo,
                 amp: torch.dtype | None, epoch: int, step: int) -> dict[str, float]:
    from tqdm import tqdm

    totals = {"train_loss": 0.0, "train_seg_loss": 0.0, "train_cls_loss": 0.0}
    steps, speed = 0, Throughput()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not info.is_main, leave=False, unit="batch")
    for batch in bar:
        if cfg.optim.max_steps and step + steps >= cfg.optim.max_steps:
            break
        images, masks = batch["image"][:, 0].to(info.device), batch["mask"].to(info.device)
        labels = batch["label"].to(info.device)
        prompts = batch["prompt"]
        if isinstance(prompts[0], str):  # one prompt per image
            prompts = [[p] for p in prompts]
        text = texts([p for row in prompts for p in row]).view(len(prompts), len(prompts[0]), -1)
        with torch.autocast(info.device.type, dtype=amp, enabled=amp is not None):
            seg, cls = runner(images, text, masks)
            # Dice per (image, prompt): a negative prompt's empty target is its own item
            seg_loss = segmentation_loss(seg.float().flatten(0, 1)[:, None], masks.flatten(0, 1)[:, None])
            cls_loss = classification_loss(cls.float(), labels, cfg.cls_loss) if cls is not None \
                else seg_loss * 0.0
            loss = seg_loss + cfg.cls_weight * cls_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in runner.parameters() if p.requires_grad],
                                       cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        for key, value in (("train_loss", loss), ("train_seg_loss", seg_loss), ("train_cls_loss", cls_loss)):
            totals[key] += float(value.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{speed.add(len(images)):.1f}")
    return {**{k: v / max(1, steps) for k, v in totals.items()}, "steps": steps}


def _finish(cfg: FinetuneConfig, model: USVLMModel, best_state: dict[str, Tensor] | None,
            history: History, val_loader: DataLoader, texts: TextEmbeddingCache, info: DistInfo,
            data_summary: dict[str, Any], checksums: list[str] | None) -> dict[str, Any]:
    """Restore the best epoch, calibrate, export the model directory (rank 0)."""
    if best_state:
        model.load_state_dict(best_state, strict=False)
    metrics, logits, labels = validate(model, val_loader, texts, info.device)
    known = labels >= 0
    if known.any() and len(set(labels[known].tolist())) == 2:
        model.temperature = TemperatureScaler().fit(logits[known], labels[known])
    result = {"best_epoch": history.best_epoch, "epochs_run": len(history.epochs), **metrics,
              "temperature": model.temperature, "parameters": model.parameter_report(),
              "out": str(cfg.out)}
    if checksums is not None and len(checksums) > 1:
        result["ranks_in_sync"] = len(set(checksums)) == 1
        result["rank_checksums"] = checksums
    if info.is_main:
        out = Path(cfg.out)
        provenance = {"dataset": str(cfg.data), "split_sizes": data_summary.get("splits", {}),
                      "seed": cfg.optim.seed, "git_revision": git_revision(),
                      "training": {"stage": "finetune", "config": _config_dict(cfg),
                                   "best_epoch": history.best_epoch, "world_size": info.world_size,
                                   "data": data_summary}}
        model.save(out / "model", overwrite=True, provenance=provenance,
                   metrics={k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)},
                   description=f"fine-tuned on {Path(cfg.data).name}")
        (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        log.info("best epoch %d (validation Dice %.4f); model written to %s", history.best_epoch,
                 metrics["val_dice"], out / "model")
    return result


def _config_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))
