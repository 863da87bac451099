"""Few-shot training subsets: a ratio of the samples or a number of shots per class, stratified
and seeded.

Each stratum is shuffled once per seed and the subset takes a prefix of it, so with one seed the
subsets are nested (the 5 % subset lies inside the 20 % one): the adaptation curves then compare
more data with the same data plus more, not different draws.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from usvlm.errors import InputError

from .samples import Sample

FEW_SHOT_RATIOS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)


def default_stratum(sample: Sample) -> Hashable:
    """The image's benign / malignant / unknown label."""
    return sample.label


def few_shot(samples: Sequence[Sample], *, ratio: float | None = None, shots: int | None = None,
             seed: int = 0, stratum: Callable[[Sample], Hashable] = default_stratum) -> list[Sample]:
    """A stratified subset, in the input order.

    ratio (0 < ratio <= 1): round(ratio * n) of each stratum, at least one, so every class stays
    represented even at 1 %; shots: that many of each stratum (all of a smaller one).
    stratum: the class of a sample (default: its benign / malignant label; e.g. use
    `lambda s: (s.classes[0], s.label)` for structure class and label).
    """
    if (ratio is None) == (shots is None):
        raise InputError(None, "give either a ratio or a number of shots per class")
    if ratio is not None and not 0 < ratio <= 1:
        raise InputError(None, f"ratio must be in (0, 1], got {ratio} (5 % is 0.05)")
    if shots is not None and (int(shots) != shots or shots < 1):
        raise InputError(None, f"shots must be a positive integer, got {shots}")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[stratum(s)].append(i)
    chosen: list[int] = []
    for key, members in groups.items():
        members = sorted(members, key=lambda i: samples[i].id)  # independent of the input order
        # one stream per (seed, stratum): adding a stratum does not reshuffle the others
        rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode())])
        order = [members[j] for j in rng.permutation(len(members))]
        n = int(shots) if shots is not None else max(1, round(float(ratio) * len(members)))
        chosen += order[:n]
    return [samples[i] for i in sorted(chosen)]
