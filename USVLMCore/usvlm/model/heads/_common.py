"""Shared by the heads: JSON round trip of their configs (stored in the checkpoint manifest) and
the check of the multi-level features they take."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from torch import Tensor

T = TypeVar("T", bound="JsonConfig")


@dataclasses.dataclass
class JsonConfig:
    """Base of config dataclasses whose fields are JSON values (numbers, strings, lists)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            # A typo in a manifest must not silently fall back to a default.
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


def check_levels(levels: list[Tensor], channels: list[int]) -> None:
    """Raise a clear ValueError unless `levels` are (B, C_i, h, w) with C_i = `channels`."""
    if len(levels) != len(channels) or any(
            x.dim() != 4 or x.shape[1] != c for x, c in zip(levels, channels)):
        raise ValueError(f"expected {len(channels)} levels (B, C, h, w) with C = {channels}, "
                         f"got shapes {[tuple(x.shape) for x in levels]}")
