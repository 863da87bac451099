"""A cine as Slicer holds it: a Sequence of 2D frames, shown through a proxy volume by a browser.

Slicer's DICOMImageSequencePlugin loads a multi-frame ultrasound DICOM this way (one 2D volume
per frame, a scalar proxy for MONOCHROME, a vector proxy for RGB/YBR). The run's contours are
recorded as a segmentation Sequence in the same browser (one segmentation per frame, SaveChanges
on), so scrubbing shows each frame's contour and Segment Editor edits stay with their frame.

APIs as in Slicer 5.8 and 5.10: vtkSlicerSequencesLogic.GetFirstBrowserNodeForProxyNode,
vtkMRMLSequenceBrowserNode.{GetSequenceNode, GetMasterSequenceNode, GetSelectedItemNumber,
SetSelectedItemByIndexValue, AddSynchronizedSequenceNodeID, AddProxyNode, SetSaveChanges},
vtkMRMLSequenceNode.{GetNthDataNode, GetNthIndexValue, GetItemNumberFromIndexValue,
SetDataNodeAtValue (a deep copy)}.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import slicer

from . import scene
from .volume_geometry import check_ultrasound_volume


class CineSequence:
    """The volume sequence behind a proxy volume, and the browser that shows it."""

    def __init__(self, browser: Any, sequence: Any, proxy: Any) -> None:
        self.browser, self.sequence, self.proxy = browser, sequence, proxy

    @classmethod
    def of(cls, volumeNode: Any) -> Optional["CineSequence"]:
        """The sequence a volume is the proxy of, or None for a plain volume."""
        if volumeNode is None or not hasattr(slicer.modules, "sequences"):
            return None
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volumeNode)
        if browser is None:
            return None
        sequence = browser.GetSequenceNode(volumeNode)
        if sequence is None or sequence.GetNumberOfDataNodes() < 1:
            return None
        return cls(browser, sequence, volumeNode)

    @property
    def count(self) -> int:
        return int(self.sequence.GetNumberOfDataNodes())

    @property
    def selected(self) -> int:
        """The item of this sequence on screen (the browser counts items of its master sequence)."""
        master = self.browser.GetMasterSequenceNode()
        number = self.browser.GetSelectedItemNumber()
        if master is None or master is self.sequence or number < 0:
            return max(number, 0)
        found = self.sequence.GetItemNumberFromIndexValue(master.GetNthIndexValue(number), False)
        return max(found, 0)

    def select(self, item: int) -> None:
        self.browser.SetSelectedItemByIndexValue(self.sequence.GetNthIndexValue(item))

    def stack(self, items: Sequence[int]) -> np.ndarray:
        """Pixels of the items as one (T, H, W) or (T, H, W, 3) array (every item must have the
        same size and kind)."""
        frames = []
        for i in items:
            node = self.sequence.GetNthDataNode(i)
            if node is None or not node.IsA("vtkMRMLVolumeNode") or node.GetImageData() is None:
                raise ValueError(f"item {i + 1} of {self.sequence.GetName()} is not an image")
            a = slicer.util.arrayFromVolume(node)
            if a.shape[0] != 1:
                raise ValueError(f"item {i + 1} of {self.sequence.GetName()} is a 3D volume of "
                                 f"{a.shape[0]} slices, not a 2D frame")
            if a.ndim == 4 and a.shape[-1] == 4:
                a = a[..., :3]
            if frames and a.shape != frames[0].shape:
                raise ValueError(f"the items of {self.sequence.GetName()} differ in size "
                                 f"({frames[0].shape[1:]} and {a.shape[1:]}): contour them one at a time")
            frames.append(np.array(a[0]))
        pixels = np.stack(frames)
        check_ultrasound_volume(1, scene.modality(self.proxy), None, self.proxy.GetName())
        return pixels

    @contextlib.contextmanager
    def stepping(self) -> Iterator[Callable[[int], None]]:
        """Step the browser through items (to write each frame's segmentation through the
        proxies); the item on screen before is shown again afterwards."""
        before = self.selected
        try:
            yield self.select
        finally:
            self.select(before)


@contextlib.contextmanager
def no_stepping() -> Iterator[Callable[[int], None]]:
    yield lambda item: None


def segmentation_sequence(cine: CineSequence, segmentationNode: Any) -> Optional[Any]:
    """The segmentation sequence `segmentationNode` is the proxy of in the cine's browser."""
    if segmentationNode is None or not cine.browser.IsProxyNodeID(segmentationNode.GetID()):
        return None
    return cine.browser.GetSequenceNode(segmentationNode)


def segmentation_proxy(cine: CineSequence, selected: Any) -> Any:
    """The segmentation node that shows this cine's contours frame by frame: the selected one when
    it already is such a proxy in the cine's browser, else a new one with its own sequence (one
    empty segmentation per frame, so no frame inherits another's contour)."""
    if segmentation_sequence(cine, selected) is not None:
        return selected
    name = slicer.mrmlScene.GenerateUniqueName(f"{cine.proxy.GetName()} USVLM")
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(cine.proxy)
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", name + " sequence")
    sequence.SetIndexName(cine.sequence.GetIndexName())
    sequence.SetIndexUnit(cine.sequence.GetIndexUnit())
    sequence.SetIndexType(cine.sequence.GetIndexType())
    with slicer.util.NodeModify(sequence):
        for i in range(cine.count):
            sequence.SetDataNodeAtValue(node, cine.sequence.GetNthIndexValue(i))
    cine.browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    cine.browser.AddProxyNode(node, sequence, False)
    cine.browser.SetSaveChanges(sequence, True)
    return node
