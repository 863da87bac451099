"""Which segments the model wrote, whether someone edited them since, and how to undo a write.

Live refine (a slider, a checkbox, a click) re-thresholds the model's probability map and rewrites
the segment. That must never erase a correction made in the Segment Editor: before writing, the
module asks `owned_by_model(key, current_mask)`, which compares the segment as it is now with what
the model last wrote (a digest, so no copy of every mask is kept). An edited segment is left alone
(the module writes a new segment or asks). Every write first pushes the segment's previous state,
so one Undo restores it; all the segments and frames of one run or refine are one step.

Pure Python and numpy (it runs inside Slicer's Python, Python 3.9 and later); MRML stays in the
module, which passes masks in and applies what `undo` returns.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

# Undo depth: each step keeps one bit-packed mask (a 30-frame 640 x 480 cine: 1.2 MB).
MAX_UNDO = 20


@dataclass(frozen=True)
class SegmentKey:
    """One segment of one segmentation node, on one item of a sequence (None: not a sequence)."""

    segmentation_id: str
    segment_id: str
    item: Optional[int] = None


def mask_digest(mask: np.ndarray) -> str:
    """A digest of a binary mask's shape and set pixels (any dtype: non-zero is set)."""
    bits = np.packbits(np.asarray(mask) != 0)
    shape = ",".join(str(n) for n in np.shape(mask)).encode()
    return hashlib.sha256(shape + b"|" + bits.tobytes()).hexdigest()


@dataclass(frozen=True)
class _Saved:
    """A segment's state before a write: its mask bit-packed, or None when it did not exist."""

    shape: Tuple[int, ...]
    bits: Optional[bytes]

    @classmethod
    def of(cls, mask: Optional[np.ndarray]) -> "_Saved":
        if mask is None:
            return cls((), None)
        return cls(tuple(np.shape(mask)), np.packbits(np.asarray(mask) != 0).tobytes())

    def mask(self) -> Optional[np.ndarray]:
        if self.bits is None:
            return None
        count = int(np.prod(self.shape))
        flat = np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8), count=count)
        return flat.reshape(self.shape).astype(np.uint8)


@dataclass(frozen=True)
class UndoStep:
    """What `undo` hands back: put `mask` into the segment `key` (None: remove the segment)."""

    key: SegmentKey
    mask: Optional[np.ndarray]


_Entry = Tuple[SegmentKey, _Saved, Optional[str]]  # the key, its state before, its digest before


class SegmentHistory:
    """The model's writes and the undo steps of one scene.

    Writes made inside `with history.change():` are one undo step: a run writes every prompt's
    segment on every frame of a cine, and one Undo takes all of that back.
    """

    def __init__(self, max_undo: int = MAX_UNDO) -> None:
        self._written: Dict[SegmentKey, str] = OrderedDict()
        self._undo: Deque[List[_Entry]] = deque(maxlen=max_undo)
        self._open: Optional[List[_Entry]] = None

    def owned_by_model(self, key: SegmentKey, current: Optional[np.ndarray]) -> bool:
        """True when the model wrote `key` and nobody changed it since (live refine may rewrite it);
        False for a segment the model never wrote or one edited since (by hand, another tool)."""
        written = self._written.get(key)
        return written is not None and current is not None and mask_digest(current) == written

    def edited(self, key: SegmentKey, current: Optional[np.ndarray]) -> bool:
        """True when the model wrote `key` and it has been changed (or removed) since."""
        return key in self._written and not self.owned_by_model(key, current)

    @contextlib.contextmanager
    def change(self) -> Iterator[None]:
        """Group the writes made inside into one undo step (nested groups join the outer one)."""
        if self._open is not None:
            yield
            return
        self._open = []
        try:
            yield
        finally:
            if self._open:
                self._undo.append(self._open)
            self._open = None

    def record_write(self, key: SegmentKey, previous: Optional[np.ndarray], written: np.ndarray) -> None:
        """Call after the module wrote `written` into `key`, whose state before was `previous`
        (None: the segment did not exist). Outside `change()` the write is an undo step alone."""
        entry = (key, _Saved.of(previous), self._written.get(key))
        if self._open is not None:
            self._open.append(entry)
        else:
            self._undo.append([entry])
        self._written[key] = mask_digest(written)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo(self) -> List[UndoStep]:
        """The last change taken back: the previous state of every segment it wrote, the latest
        write first (empty when there is nothing to undo). A segment is the model's again only if
        it was the model's before."""
        if not self._undo:
            return []
        steps = []
        for key, saved, previous_digest in reversed(self._undo.pop()):
            if previous_digest is None:
                self._written.pop(key, None)
            else:
                self._written[key] = previous_digest
            steps.append(UndoStep(key, saved.mask()))
        return steps

    def forget(self, segmentation_id: str) -> None:
        """Drop everything about a segmentation node (removed from the scene, scene closed)."""
        self._written = OrderedDict((k, v) for k, v in self._written.items()
                                    if k.segmentation_id != segmentation_id)
        kept = ([e for e in group if e[0].segmentation_id != segmentation_id] for group in self._undo)
        self._undo = deque((g for g in kept if g), maxlen=self._undo.maxlen)
