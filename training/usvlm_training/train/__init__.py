"""Fine-tuning: `pretrain` (CLIP-style contrastive) and `finetune` (segmentation + classification
heads with adapters on a frozen backbone). Both run alone or under torchrun (DDP)."""
