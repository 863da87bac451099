"""`usvlm-train` / `python -m usvlm_training.train`: pretrain and finetune from the command line.

Every sub-command runs alone or under torchrun, e.g.
    torchrun --nproc_per_node 2 -m usvlm_training.train finetune --data DATA --out RUN --model DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from usvlm.cli._common import count_arg, device_arg, non_negative_arg, positive_arg, probability_arg
from usvlm.errors import USVLMError

from .common import OptimConfig


# Every number is checked when parsed (finite, in range): a typo fails in a second with the usage,
# not after the data set is loaded or an hour into training.
def _optim_args(p: argparse.ArgumentParser, *, epochs: int, lr: float, batch: int) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=count_arg(1), default=epochs)
    g.add_argument("--batch-size", type=count_arg(1), default=batch)
    g.add_argument("--lr", type=positive_arg, default=lr)
    g.add_argument("--weight-decay", type=non_negative_arg, default=1e-4)
    g.add_argument("--warmup-epochs", type=non_negative_arg, default=1.0)
    g.add_argument("--grad-clip", type=non_negative_arg, default=1.0)
    g.add_argument("--patience", type=count_arg(1), default=5, help="early stopping patience (epochs)")
    g.add_argument("--seed", type=count_arg(0), default=0)
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    g.add_argument("--workers", type=count_arg(0), default=0, help="DataLoader worker processes")
    g.add_argument("--max-steps", type=count_arg(1), help="stop after this many steps (smoke tests)")


def _optim(args: argparse.Namespace) -> OptimConfig:
    return OptimConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                       grad_clip=args.grad_clip, patience=args.patience, seed=args.seed,
                       amp=not args.no_amp, num_workers=args.workers, max_steps=args.max_steps)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data set folder (paper, phantom or Slicer layout)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty OUT")
    p.add_argument("--name", help="name of the exported model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usvlm-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="adapters + heads on a frozen backbone")
    _common(ft)
    src = ft.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory to start from (e.g. a pretrain run's model)")
    src.add_argument("--backbone", help="open_clip name, hf-hub:ID or local-dir:PATH")
    ft.add_argument("--pretrained", help="open_clip pretrained tag or weights file (with --backbone)")
    ft.add_argument("--adapter", default="mona", choices=("none", "mona", "hybrid", "lora"))
    ft.add_argument("--bottleneck", type=count_arg(1), default=64)
    ft.add_argument("--lora-rank", type=count_arg(1), default=8)
    ft.add_argument("--cls-loss", default="ce", choices=("ce", "focal"))
    ft.add_argument("--cls-weight", type=non_negative_arg, default=0.5)
    ft.add_argument("--prompts-per-image", type=count_arg(1), default=3,
                    help="prompts per training image: its classes, then absent classes as "
                         "negatives with empty targets (1: one (image, class) per item)")
    ft.add_argument("--no-bank-prompts", action="store_true",
                    help="train on class names, synonyms and descriptions only (no prompt-bank texts)")
    ft.add_argument("--seg-stride", type=int, choices=(1, 2, 4, 8, 16),
                    help="decoder output stride; with --model, a head of another stride is "
                         "replaced by a fresh one")
    ft.add_argument("--seg-detail", type=count_arg(0), metavar="CHANNELS",
                    help="channels of the segmentation head's image detail branch (0: none; "
                         "default: the model's own, 32 for a fresh head); with --model, a head "
                         "with another value is replaced by a fresh one")
    ft.add_argument("--few-shot", type=probability_arg, metavar="RATIO", help="train on this fraction (0-1)")
    ft.add_argument("--shots", type=count_arg(1), help="train on this many images per class")
    _optim_args(ft, epochs=20, lr=1e-3, batch=8)

    pt = sub.add_parser("pretrain", help="CLIP-style contrastive training on image-description pairs")
    _common(pt)
    pt.add_argument("--backbone", default="default-small",
                    help="'default-small' (a small ViT from scratch + the frozen MiniLM text "
                         "encoder), an open_clip name, hf-hub:ID or local-dir:PATH")
    pt.add_argument("--pretrained", help="open_clip pretrained tag or weights file")
    pt.add_argument("--adapter", default="none", choices=("none", "mona", "hybrid", "lora"),
                    help="'none' trains the whole image tower; else only adapters")
    pt.add_argument("--image-size", type=count_arg(16), default=224, help="input size for 'default-small'")
    _optim_args(pt, epochs=30, lr=5e-4, batch=32)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "finetune":
            from .finetune import FinetuneConfig, finetune

            cfg = FinetuneConfig(data=args.data, out=args.out, model=args.model, backbone=args.backbone,
                                 pretrained=args.pretrained, adapter=args.adapter,
                                 bottleneck=args.bottleneck, lora_rank=args.lora_rank,
                                 cls_loss=args.cls_loss, cls_weight=args.cls_weight,
                                 prompts_per_image=args.prompts_per_image, seg_stride=args.seg_stride,
                                 seg_detail=args.seg_detail,
                                 bank_prompts=not args.no_bank_prompts,
                                 few_shot_ratio=args.few_shot, few_shot_shots=args.shots,
                                 name=args.name or "usvlm-finetuned", device=args.device,
                                 resume=args.resume, overwrite=args.overwrite, optim=_optim(args))
            result = finetune(cfg)
        else:
            from .pretrain import PretrainConfig, pretrain

            cfg = PretrainConfig(data=args.data, out=args.out, backbone=args.backbone,
                                 pretrained=args.pretrained, adapter=args.adapter,
                                 image_size=args.image_size, name=args.name or "usvlm-pretrained",
                                 device=args.device, resume=args.resume, overwrite=args.overwrite,
                                 optim=_optim(args))
            result = pretrain(cfg)
    except USVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k != "rank_checksums"}, indent=2))
    return 0
