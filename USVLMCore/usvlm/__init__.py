"""USVLM core: text-prompted contouring of 2D ultrasound with an adapted vision-language model.

This package never imports slicer, qt, ctk or vtk: the Slicer module (USVLMSegment) converts
MRML nodes to the arrays and `Geometry` used here and back.
"""

from usvlm.errors import InputError, USVLMError

__version__ = "0.1.0"

__all__ = ["InputError", "USVLMError", "__version__"]
