"""Ultrasound image I/O: readers (DICOM, NRRD/NIfTI/MHA, PNG/JPEG/...), geometry, and Slicer-native
writers (.seg.nrrd, labelmap NRRD, PNG overlay, DICOM SEG). All writers are atomic."""

from usvlm.io.dicom_seg import write_dicom_seg
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, UltrasoundRegion, USImage
from usvlm.io.labelmap import read_labelmap, write_labelmap
from usvlm.io.overlay import write_overlay_png
from usvlm.io.readers import read_image
from usvlm.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from usvlm.io.segmentation import Segment, SegmentationResult

__all__ = ["Geometry", "ImageInfo", "Segment", "SegmentationResult", "USImage", "UltrasoundRegion",
           "read_image", "read_labelmap", "read_seg_nrrd", "write_dicom_seg", "write_labelmap",
           "write_overlay_png", "write_seg_nrrd"]
