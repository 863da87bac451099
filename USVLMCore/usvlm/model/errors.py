"""Errors raised while locating, building and loading models."""

from __future__ import annotations

from collections.abc import Sequence

from usvlm.errors import InputError, USVLMError


class CheckpointError(InputError):
    """A model directory, manifest or weights file cannot be used; names the file and the problem."""


class ModelNotFoundError(USVLMError):
    """Weights (or another file a model needs) are not on this machine and may not be downloaded.

    The message is one line: what is missing, every place searched (in order), and how to provide it.
    """

    def __init__(self, model: str, searched: Sequence[str], hint: str, what: str = "weights") -> None:
        self.model = model
        self.searched = list(searched)
        self.hint = hint
        where = "; ".join(self.searched) if self.searched else "nowhere"
        super().__init__(f"{what} for model '{model}' not found. Searched: {where}. To provide them: {hint}")


class UnsupportedModelError(InputError):
    """A model exists but USVLM cannot use it (not a ViT image tower, unknown name)."""
