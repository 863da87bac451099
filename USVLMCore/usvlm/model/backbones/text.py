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
        tokens = tokens.to(device)
        if self.is_hf:
            # Trailing all-padding columns change nothing (the encoder masks padding) but cost
            # most of the time: a prompt is a few tokens in a context of 77.
            features = self._model.encode_text(tokens[:, :used_length(tokens)])
        elif _can_trim_clip_text(self._model):
            features = _encode_trimmed_clip_text(self._model, tokens)
        else:
            features = self._model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        chunks = [self.encode_tokens(self.tokenize(texts[i:i + self.batch_size]))
                  for i in range(0, len(texts), self.batch_size)]
        return torch.cat(chunks)


PAD_ID = 0  # open_clip's SimpleTokenizer and BERT tokenizers both pad with id 0


def used_length(tokens: Tensor) -> int:
    """Columns up to the last non-padding token of any row (at least 1)."""
    used = (tokens != PAD_ID).any(dim=0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


def _can_trim_clip_text(model: nn.Module) -> bool:
    """open_clip's CLIP text path with a causal mask and EOT pooling: tokens after the EOT token
    cannot influence it, so the padding can be cut off exactly."""
    return (hasattr(model, "token_embedding") and hasattr(model, "positional_embedding")
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos"))


def _encode_trimmed_clip_text(model: nn.Module, tokens: Tensor) -> Tensor:
    """`CLIP.encode_text` on the used part of the context only (same result, far less work)."""
    from open_clip.transformer import text_global_pool

    length = used_length(tokens)
    text = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
