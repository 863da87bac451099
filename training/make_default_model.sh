#!/usr/bin/env bash
# Recipe of the bundled default model (Resources/Models/usvlm-default): phantoms -> CLIP-style
# pretraining of a small ViT with the frozen MiniLM text encoder -> fine-tuning of Mona adapters
# and heads (3 prompts per image: its classes or their group, then absent ones) -> evaluation on the test
# split (Dice, selectivity, held-out paraphrases) -> copy into Resources/Models, renew the golden
# masks of the bundled sample.
#   bash training/make_default_model.sh [WORK_DIR]      (34.5 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-work/default-model}"
PY="${USVLM_VENV:-.venv}/bin/python"
COUNT="${PHANTOM_COUNT:-1500}"
PRE_EPOCHS="${PRE_EPOCHS:-15}"
FT_EPOCHS="${FT_EPOCHS:-16}"
mkdir -p "$WORK"

[ -f "$WORK/phantoms/dataset.json" ] || \
  "$PY" -m usvlm phantom --out "$WORK/phantoms" --count "$COUNT" --seed 2026 --size 256 --no-progress

"$PY" -m usvlm_training.train pretrain --data "$WORK/phantoms" --out "$WORK/pretrain" \
  --backbone default-small --image-size 224 --epochs "$PRE_EPOCHS" --batch-size 32 --lr 5e-4 \
  --patience 4 --seed 2026 --name usvlm-default-pretrain $( [ -f "$WORK/pretrain/last.pt" ] && echo --resume )

"$PY" -m usvlm_training.train finetune --data "$WORK/phantoms" --out "$WORK/finetune" \
  --model "$WORK/pretrain/model" --adapter mona --bottleneck 32 --epochs "$FT_EPOCHS" --batch-size 16 \
  --lr 1e-3 --patience 4 --seed 2026 --prompts-per-image 3 --name usvlm-default $( [ -f "$WORK/finetune/last.pt" ] && echo --resume )

"$PY" -m usvlm_training.evaluate --model "$WORK/finetune/model" --data "$WORK/phantoms" --split test \
  -o "$WORK/evaluation" --no-progress

rm -rf Resources/Models/usvlm-default
mkdir -p Resources/Models
cp -r "$WORK/finetune/model" Resources/Models/usvlm-default
"$PY" training/make_samples.py --golden Resources/Models/usvlm-default
echo "default model written to Resources/Models/usvlm-default; evaluation in $WORK/evaluation/report.md"
echo "recipe wall time: $((SECONDS / 60)) min $((SECONDS % 60)) s"
