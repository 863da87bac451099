"""Edits are never lost: the Slicer side knows which segments the model wrote, notices a manual
edit, and undoes a write in one step (USVLMSegmentLib/segment_history.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "USVLMSegment"))

from USVLMSegmentLib.segment_history import SegmentHistory, SegmentKey, mask_digest  # noqa: E402

KEY = SegmentKey("vtkMRMLSegmentationNode1", "Segment_1")


def _disk(radius: int, shape=(64, 80)) -> np.ndarray:  # noqa: ANN001
    y, x = np.mgrid[: shape[0], : shape[1]]
    return ((y - 32) ** 2 + (x - 40) ** 2 <= radius**2).astype(np.uint8)


def test_a_segment_the_model_wrote_may_be_refined_until_someone_edits_it():
    history = SegmentHistory()
    written = _disk(10)
    assert not history.owned_by_model(KEY, written)  # never written by the model
    history.record_write(KEY, None, written)
    assert history.owned_by_model(KEY, written.copy())
    assert history.owned_by_model(KEY, written.astype(bool))  # the same pixels in another dtype
    edited = written.copy()
    edited[0, 0] = 1  # one pixel painted in the Segment Editor
    assert not history.owned_by_model(KEY, edited) and history.edited(KEY, edited)
    assert history.edited(KEY, None)  # removed by hand


def test_one_undo_restores_the_state_before_each_write():
    history = SegmentHistory()
    first, second = _disk(8), _disk(14)
    history.record_write(KEY, None, first)
    history.record_write(KEY, first, second)
    [step] = history.undo()
    assert step.key == KEY and np.array_equal(step.mask, first)
    assert history.owned_by_model(KEY, first)  # the model's again
    [step] = history.undo()
    assert step.mask is None and not history.owned_by_model(KEY, first)  # the segment goes away
    assert history.undo() == [] and not history.can_undo


def test_cine_items_are_separate_segments_and_undo_depth_is_bounded():
    history = SegmentHistory(max_undo=3)
    cine = np.stack([_disk(r) for r in (5, 6, 7)])
    for item in range(5):
        history.record_write(SegmentKey(KEY.segmentation_id, KEY.segment_id, item), None, cine)
    assert history.owned_by_model(SegmentKey(KEY.segmentation_id, KEY.segment_id, 4), cine)
    assert not history.owned_by_model(KEY, cine)  # the non-sequence key was never written
    assert sum(1 for _ in iter(history.undo, [])) == 3


def test_forgetting_a_node_drops_its_writes_and_undo_steps():
    history = SegmentHistory()
    other = SegmentKey("vtkMRMLSegmentationNode2", "Segment_1")
    history.record_write(KEY, None, _disk(5))
    history.record_write(other, None, _disk(6))
    history.forget(KEY.segmentation_id)
    assert not history.owned_by_model(KEY, _disk(5)) and history.owned_by_model(other, _disk(6))
    assert [s.key for s in history.undo()] == [other] and history.undo() == []


def test_digest_depends_on_shape_and_pixels():
    a = np.zeros((4, 6), np.uint8)
    assert mask_digest(a) != mask_digest(a.reshape(6, 4))
    b = a.copy()
    b[1, 2] = 255
    assert mask_digest(b) != mask_digest(a) and mask_digest(b) == mask_digest(b.astype(bool))


def test_one_run_over_a_cine_and_two_prompts_is_one_undo_step():
    """Undo takes back everything one run (or refine) wrote: each prompt's segment on each item."""
    history = SegmentHistory(max_undo=2)
    keys = [SegmentKey(KEY.segmentation_id, seg, item) for seg in ("Segment_1", "Segment_2") for item in range(30)]
    with history.change():
        for key in keys:
            history.record_write(key, None, _disk(6))
    with history.change():  # a refine rewrites them
        with history.change():  # nested groups join the outer one
            for key in keys:
                history.record_write(key, _disk(6), _disk(9))
    with history.change():
        pass  # nothing written: no undo step
    steps = history.undo()
    assert [s.key for s in steps] == keys[::-1]  # the latest write first
    assert all(np.array_equal(s.mask, _disk(6)) for s in steps)
    assert all(history.owned_by_model(k, _disk(6)) for k in keys)
    steps = history.undo()
    assert len(steps) == 60 and all(s.mask is None for s in steps)
    assert history.undo() == [] and not history.can_undo
