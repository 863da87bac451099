"""The module's parameter node (saved with the scene; the .ui binds widgets to it by name)."""

from typing import Annotated, Union

import slicer
from slicer.parameterNodeWrapper import Default, Minimum, WithinRange, parameterNodeWrapper

from .module_defaults import DEFAULTS


@parameterNodeWrapper
class USVLMSegmentParameterNode:
    # Scalar or RGB volumes: connectGui sets the combo box's node types from this union (a bare
    # vtkMRMLVolumeNode would offer every volume); the .ui and the widget hide labelmaps, which
    # are scalar volumes too.
    inputVolume: Union[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLVectorVolumeNode, None]
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    clickPoint: slicer.vtkMRMLMarkupsFiducialNode
    prompt: Annotated[str, Default(DEFAULTS.prompt)]
    organ: Annotated[str, Default(DEFAULTS.organ)]
    allFrames: Annotated[bool, Default(DEFAULTS.all_frames)]
    classify: Annotated[bool, Default(DEFAULTS.classify)]
    overwrite: Annotated[bool, Default(DEFAULTS.overwrite)]
    threshold: Annotated[float, WithinRange(0.0, 1.0), Default(DEFAULTS.threshold)]
    keepLargest: Annotated[bool, Default(DEFAULTS.keep_largest)]
    fillHoles: Annotated[bool, Default(DEFAULTS.fill_holes)]
    minAreaMm2: Annotated[float, Minimum(0.0), Default(DEFAULTS.min_area_mm2)]
    smoothingMm: Annotated[float, Minimum(0.0), Default(DEFAULTS.smoothing_mm)]
