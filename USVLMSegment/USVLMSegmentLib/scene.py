"""MRML nodes <-> arrays: the only place that reads or writes volumes and segments.

Geometry, naming and calibration rules are pure functions (volume_geometry.py, segment_naming.py,
volume_calibration.py), tested outside Slicer. Nothing here imports the core or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from .engine_client import Point
from .segment_naming import plan_segments
from .volume_geometry import check_ultrasound_volume, ras_to_pixel

REFERENCE_ROLE = "referenceImageGeometryRef"


def ijk_to_ras(volumeNode: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def instance_uids(node: Any) -> List[str]:
    return (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []


def modality(volumeNode: Any) -> Optional[str]:
    uids = instance_uids(volumeNode)
    if not uids or slicer.dicomDatabase is None:
        return None
    return slicer.dicomDatabase.instanceValue(uids[0], "0008,0060").strip() or None


def file_name(volumeNode: Any) -> Optional[str]:
    storage = volumeNode.GetStorageNode()
    return storage.GetFileName() if storage is not None and storage.GetFileName() else None


def is_vector(volumeNode: Any) -> bool:
    return bool(volumeNode.IsA("vtkMRMLVectorVolumeNode"))


def volume_pixels(volumeNode: Any) -> np.ndarray:
    """[K, J, I] or [K, J, I, 3] pixels of a scalar or RGB(A) volume, checked to be ultrasound."""
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("select an input ultrasound image")
    array = slicer.util.arrayFromVolume(volumeNode)
    vector = is_vector(volumeNode) or array.ndim == 4
    if vector and array.shape[-1] == 4:  # RGBA screenshots: alpha carries no image
        array = array[..., :3]
    if vector and array.shape[-1] != 3:
        raise ValueError(f"{volumeNode.GetName()}: a vector volume with {array.shape[-1]} components, "
                         "not an RGB image")
    check_ultrasound_volume(array.shape[0], modality(volumeNode),
                            None if vector else float(array.min()), volumeNode.GetName())
    return np.array(array)  # a copy: the request must not change if the volume does


def current_slice(volumeNode: Any, viewName: str = "Red") -> int:
    """The frame of a cine held as one volume (frames along K) that the slice view shows."""
    from .volume_geometry import frame_at_ras

    frames = volumeNode.GetImageData().GetDimensions()[2]
    layout = slicer.app.layoutManager()
    if frames <= 1 or layout is None or layout.sliceWidget(viewName) is None:
        return 0
    sliceNode = layout.sliceWidget(viewName).mrmlSliceNode()
    center = [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    return frame_at_ras(ijk_to_ras(volumeNode), center, frames)


def point_on_image(pointNode: Any, volumeNode: Any, shape: Tuple[int, int], frames: int = 1) -> Optional[Point]:
    """The first control point of a markup as a pixel on the volume, or None when there is none or
    it is not on this image (a leftover point is ignored, never an error)."""
    if pointNode is None or volumeNode is None or pointNode.GetNumberOfDefinedControlPoints() == 0:
        return None
    ras = [0.0, 0.0, 0.0]
    pointNode.GetNthControlPointPositionWorld(0, ras)
    transform = volumeNode.GetParentTransformNode()
    if transform is not None:  # world -> the volume's own (untransformed) RAS
        toLocal = vtk.vtkGeneralTransform()
        transform.GetTransformFromWorld(toLocal)
        ras = list(toLocal.TransformPoint(ras))
    return ras_to_pixel(ijk_to_ras(volumeNode), ras, shape, frames)


# -- segmentation output -----------------------------------------------------------------------

def references(segmentationNode: Any, volumeNode: Any) -> bool:
    """True when the node belongs to this volume (or to no volume and is empty)."""
    ref = segmentationNode.GetNodeReferenceID(REFERENCE_ROLE)
    if ref is None:
        return segmentationNode.GetSegmentation().GetNumberOfSegments() == 0
    return ref == volumeNode.GetID()


def output_node(segmentationNode: Any, volumeNode: Any) -> Any:
    """The node to write into: the selected one when it belongs to this volume, else a new one
    (never mix grids in one node: DICOM SEG export needs one reference image)."""
    if segmentationNode is None or not references(segmentationNode, volumeNode):
        name = slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} USVLM")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.CreateDefaultDisplayNodes()
    # Reference geometry = the input's grid, so masks line up and DICOM SEG export works.
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return segmentationNode


def segment_names(segmentationNode: Any) -> List[str]:
    seg = segmentationNode.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def segment_mask(segmentationNode: Any, segmentId: str, volumeNode: Any) -> Optional[np.ndarray]:
    """The segment as a uint8 [K, J, I] array on the volume's grid; None when it does not exist."""
    if not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
        return None
    return np.array(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode))


@dataclass(frozen=True)
class SegmentData:
    name: str
    color: Tuple[float, float, float]
    terminology: str  # Slicer TerminologyEntry string
    mask_kji: np.ndarray  # uint8 [K, J, I] on the input volume's grid


def add_or_replace(segmentationNode: Any, volumeNode: Any, items: Sequence[SegmentData],
                   overwrite: bool, protected: Sequence[str] = ()) -> List[Tuple[str, Optional[np.ndarray]]]:
    """Write the items as segments: new names unless `overwrite` (and never over a `protected`,
    hand-edited segment). Returns each segment's id and its mask before (None: it was new)."""
    segmentation = segmentationNode.GetSegmentation()
    plans = plan_segments([i.name for i in items], segment_names(segmentationNode), overwrite, protected)
    out = []
    with slicer.util.NodeModify(segmentationNode):
        for plan, item in zip(plans, items):
            segmentId = segmentation.GetSegmentIdBySegmentName(plan.name) if plan.replace else ""
            before = segment_mask(segmentationNode, segmentId, volumeNode) if segmentId else None
            if not segmentId:
                segmentId = segmentation.AddEmptySegment("", plan.name, list(item.color))
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*item.color)
            if item.terminology:
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), item.terminology)
            write_mask(segmentationNode, segmentId, item.mask_kji, volumeNode)
            out.append((segmentId, before))
    return out


def write_mask(segmentationNode: Any, segmentId: str, mask_kji: np.ndarray, volumeNode: Any) -> None:
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.ascontiguousarray(mask_kji, dtype=np.uint8),
                                                     segmentationNode, segmentId, volumeNode)


def remove_segment(segmentationNode: Any, segmentId: str) -> None:
    if segmentationNode.GetSegmentation().GetSegment(segmentId) is not None:
        segmentationNode.GetSegmentation().RemoveSegment(segmentId)


def segment_terminology(segmentationNode: Any, segmentId: str) -> str:
    tag = vtk.mutable("")
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    found = segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    return str(tag) if found else ""
