"""MRML nodes <-> the core's arrays. The only place that reads or writes the scene.

Layout and geometry rules (array order, IJK-to-RAS, frames along K, click -> pixel) are pure
functions of the core (`usvlm.io.volume_arrays`, `usvlm.session`), tested outside Slicer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk

REFERENCE_ROLE = "referenceImageGeometryRef"


def ijk_to_ras(volumeNode: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _modality(volumeNode: Any) -> str | None:
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids or slicer.dicomDatabase is None:
        return None
    value = slicer.dicomDatabase.instanceValue(uids[0], "0008,0060")
    return value.strip() or None


def image_from_volume(volumeNode: Any) -> Any:
    """The volume (2D, RGB, cine, or a Sequence browser's current item) as a `usvlm` image."""
    from usvlm.errors import InputError
    from usvlm.io.volume_arrays import image_from_volume_array
    from usvlm.session import check_ultrasound_volume

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise InputError(None, "select an input ultrasound image")
    name = volumeNode.GetName()
    array = slicer.util.arrayFromVolume(volumeNode)
    is_vector = volumeNode.IsA("vtkMRMLVectorVolumeNode") or array.ndim == 4
    if is_vector and array.shape[-1] == 4:  # RGBA screenshots: alpha carries no image
        array = array[..., :3]
    check_ultrasound_volume(array.shape[0], _modality(volumeNode),
                            None if is_vector else float(array.min()), name)
    # Transforms of the volume are not applied: the image grid is what the model sees.
    return image_from_volume_array(np.array(array), ijk_to_ras(volumeNode), is_vector=is_vector,
                                   name=name)


def current_frame(volumeNode: Any, viewName: str = "Red") -> int:
    """The frame of a cine the slice view shows (0 for a 2D image)."""
    from usvlm.io.geometry import Geometry
    from usvlm.session import frame_at_ras

    frames = volumeNode.GetImageData().GetDimensions()[2]
    if frames <= 1:
        return 0
    sliceNode = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceNode()
    center = [sliceNode.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    return frame_at_ras(Geometry.from_ijk_to_ras(ijk_to_ras(volumeNode)), center, frames)


def point_on_image(pointNode: Any, volumeNode: Any, image: Any) -> Any:
    """The first control point of a markup as a `PixelPoint` on the image (None if unplaced)."""
    from usvlm.session import point_from_ras

    if pointNode is None or pointNode.GetNumberOfDefinedControlPoints() == 0:
        return None
    ras = [0.0, 0.0, 0.0]
    pointNode.GetNthControlPointPositionWorld(0, ras)
    transform = volumeNode.GetParentTransformNode()
    if transform is not None:  # world -> the volume's own (untransformed) RAS
        toLocal = vtk.vtkGeneralTransform()
        transform.GetTransformFromWorld(toLocal)
        ras = list(toLocal.TransformPoint(ras))
    return point_from_ras(image.geometry, ras, image.frame_shape, image.frames)


# -- segmentation output -----------------------------------------------------------------------

def references(segmentationNode: Any, volumeNode: Any) -> bool:
    """True when the node belongs to this volume (or to no volume and is empty)."""
    ref = segmentationNode.GetNodeReferenceID(REFERENCE_ROLE)
    if ref is None:
        return segmentationNode.GetSegmentation().GetNumberOfSegments() == 0
    return ref == volumeNode.GetID()


def output_node(segmentationNode: Any, volumeNode: Any) -> Any:
    """The node to write into: the selected one, or a new one (see `usvlm.session.needs_new_node`)."""
    from usvlm.session import needs_new_node

    has = segmentationNode is not None
    if not needs_new_node(has, has and references(segmentationNode, volumeNode)):
        node = segmentationNode
    else:
        name = slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} USVLM")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
    # Reference geometry = the input's grid, so masks line up and DICOM SEG export works.
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return node


def segment_names(segmentationNode: Any) -> list[str]:
    seg = segmentationNode.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


@dataclass(frozen=True)
class SegmentData:
    name: str
    color: tuple[float, float, float]
    terminology: str  # Slicer TerminologyEntry string
    mask_kji: np.ndarray  # uint8 [K, J, I] on the input volume's grid


def write_segments(segmentationNode: Any, volumeNode: Any, items: Sequence[SegmentData],
                   overwrite: bool = False) -> list[str]:
    """Add (or, with `overwrite`, replace same-named) segments; returns their segment ids."""
    from usvlm.session import plan_segments

    segmentation = segmentationNode.GetSegmentation()
    plans = plan_segments([i.name for i in items], segment_names(segmentationNode), overwrite)
    ids = []
    with slicer.util.NodeModify(segmentationNode):
        for plan, item in zip(plans, items):
            segmentId = segmentation.GetSegmentIdBySegmentName(plan.name) if plan.replace else ""
            if not segmentId:
                segmentId = segmentation.AddEmptySegment("", plan.name, list(item.color))
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*item.color)
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), item.terminology)
            update_mask(segmentationNode, segmentId, item.mask_kji, volumeNode)
            ids.append(segmentId)
    return ids


def update_mask(segmentationNode: Any, segmentId: str, mask_kji: np.ndarray, volumeNode: Any) -> None:
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask_kji, segmentationNode, segmentId, volumeNode)


def segments_for_cohort(segmentationNode: Any, volumeNode: Any) -> list[Any]:
    """The node's segments (as edited by the user) as core `Segment`s on the volume's grid."""
    from usvlm.io.segmentation import Segment
    from usvlm.text.terminology import DEFAULT_TERMINOLOGY, Terminology

    segmentation = segmentationNode.GetSegmentation()
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segmentId)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        tag = vtk.mutable("")
        has_tag = segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        terminology = Terminology.from_slicer(str(tag)) if has_tag and str(tag) else DEFAULT_TERMINOLOGY
        out.append(Segment(segment.GetName(), mask[0] if mask.shape[0] == 1 else mask,
                           tuple(segment.GetColor()), terminology))
    return out
