"""Text tower: tokenizer + the text path of an open_clip model, strings in, unit vectors out.

Works for open_clip's own text transformer (CLIP, MetaCLIP) and Hugging Face encoders wrapped by
open_clip's `HFTextEncoder` (BiomedCLIP's PubMedBERT, the default MiniLM-L6). Each row of the
output depends only on its own string (fixed-length padding, padding masked out of the pooling),
so callers may cache embeddings per prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Tokenizer = Callable[..., Tensor]


class TextTower:
    """`encode_text(list[str]) -> (N, D)` L2-normalised, in the model's joint embedding space.

    Holds a reference to the model (not a submodule: the parameters belong to the Backbone).
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, embed_dim: int,
                 batch_size: int = 64) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.embed_dim = embed_dim
        self.batch_size = batch_size

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def is_hf(self) -> bool:
        """True when the text tower is a Hugging Face encoder (open_clip `HFTextEncoder`)."""
        from open_clip.hf_model import HFTextEncoder

        return isinstance(getattr(self._model, "text", None), HFTextEncoder)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        return self.tokenizer(texts)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        device = next(self._model.parameters()).device
        return F.normalize(self._model.encode_text(tokens.to(device)).float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        chunks = [self.encode_tokens(self.tokenize(texts[i:i + self.batch_size]))
                  for i in range(0, len(texts), self.batch_size)]
        return torch.cat(chunks)
