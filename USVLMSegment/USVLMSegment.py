"""USVLM Segment: text-prompted contouring of 2D ultrasound in 3D Slicer.

Thin by design: the panel is USVLMSegmentLib/widget.py, the scene logic USVLMSegmentLib/logic.py,
and the model runs in an engine process (`usvlm serve`), never in Slicer's Python. Importing this
file imports nothing but Slicer's own packages.
"""

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from USVLMSegmentLib.logic import USVLMSegmentLogic  # noqa: F401 - Slicer finds it by name
from USVLMSegmentLib.parameters import USVLMSegmentParameterNode  # noqa: F401
from USVLMSegmentLib.selftest import SelfTests
from USVLMSegmentLib.widget import USVLMSegmentWidget  # noqa: F401


class USVLMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "USVLM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["USVLM contributors"]
        self.parent.helpText = (
            "Type what to contour on a 2D ultrasound image or cine (e.g. 'breast mass; cyst') and get "
            "one editable segment per prompt, named, coloured and coded from the prompt banks, with "
            "benign/malignant probabilities and sizes in mm (in pixels, flagged, when the image has "
            "no calibration). A cine loaded as a Sequence gets one contour per frame. Threshold, "
            "click, minimum size, hole filling and smoothing refine the result live without "
            "touching segments you edited; Undo restores the previous state.<br>The model runs in "
            "an engine process: on this computer (installed on first use into its own environment, "
            "never into Slicer's Python) or on a GPU server. The bundled model is for research, not "
            "for clinical use. See docs/slicer.md.")
        self.parent.acknowledgementText = (
            "Method after Qu et al., 'Adapting Vision-Language Foundation Model for Next Generation "
            "Medical Ultrasound Image Analysis', arXiv 2506.08849.")


class USVLMSegmentTest(ScriptedLoadableModuleTest, SelfTests):
    """Runs inside Slicer (ctest, or Reload and Test); the tests are in USVLMSegmentLib/selftest.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in SelfTests.TESTS:
            self.setUp()
            getattr(self, name)()
        self.delayDisplay("USVLMSegment self-test passed")
