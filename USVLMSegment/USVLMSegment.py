"""USVLMSegment: text-prompted contouring of 2D ultrasound in 3D Slicer.

Thin by design: this file converts between MRML nodes and arrays and calls the `usvlm` core;
everything else lives in USVLMSegmentLib/ and in the core, where it is tested outside Slicer.
"""

import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import qt
import numpy as np


class USVLMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "USVLM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["USVLM contributors"]
        self.parent.helpText = (
            "Text-prompted contouring of 2D ultrasound images and cine loops with an adapted "
            "vision-language model. This version describes the selected image (size, frames, pixel "
            "spacing and where it came from, field of view); contouring arrives with the model. "
            "The bundled model is trained on synthetic phantoms and is not for clinical use.")
        self.parent.acknowledgementText = (
            "Method after Qu et al., 'Adapting Vision-Language Foundation Model for Next Generation "
            "Medical Ultrasound Image Analysis', arXiv 2506.08849.")


@parameterNodeWrapper
class USVLMSegmentParameterNode:
    inputVolume: slicer.vtkMRMLVolumeNode


class USVLMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = USVLMSegmentLogic()
        form = qt.QFormLayout()
        self.layout.addLayout(form)
        self.inputSelector = slicer.qMRMLNodeComboBox()
        self.inputSelector.nodeTypes = ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
        self.inputSelector.setMRMLScene(slicer.mrmlScene)
        self.inputSelector.setProperty("SlicerParameterName", "inputVolume")
        form.addRow("Ultrasound image:", self.inputSelector)
        self.describeButton = qt.QPushButton("Describe image")
        form.addRow(self.describeButton)
        self.resultLabel = qt.QLabel()
        self.resultLabel.wordWrap = True
        form.addRow(self.resultLabel)
        self.layout.addStretch(1)
        self.describeButton.connect("clicked(bool)", self.onDescribe)
        self._parameterNode = self.logic.getParameterNode()
        self._guiConnection = self._parameterNode.connectGui(self)

    def cleanup(self):
        if getattr(self, "_guiConnection", None):
            self._parameterNode.disconnectGui(self._guiConnection)

    def onDescribe(self):
        with slicer.util.tryWithErrorDisplay("Failed to describe the image.", waitCursor=True):
            from usvlm.io.describe import format_description
            self.resultLabel.text = format_description(self.logic.describe(self._parameterNode.inputVolume))


class USVLMSegmentLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return USVLMSegmentParameterNode(super().getParameterNode())

    def imageFromVolume(self, volumeNode):
        """The selected volume as a `usvlm` image (2D, RGB or cine frames along K)."""
        import vtk
        from usvlm.io.volume_arrays import image_from_volume_array

        if volumeNode is None:
            raise ValueError("Select an input volume.")
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        return image_from_volume_array(slicer.util.arrayFromVolume(volumeNode), ijkToRas,
                                       is_vector=volumeNode.IsA("vtkMRMLVectorVolumeNode"),
                                       name=volumeNode.GetName())

    def describe(self, volumeNode):
        from usvlm.io.describe import describe_image
        return describe_image(self.imageFromVolume(volumeNode))


class USVLMSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_describe_2d_volume()

    def test_describe_2d_volume(self):
        """A 2D image with 0.2 mm spacing keeps its size, spacing and IJK-to-RAS in the core."""
        pixels = np.random.default_rng(0).integers(0, 255, size=(1, 240, 320), dtype=np.uint8)
        node = slicer.util.addVolumeFromArray(pixels, ijkToRAS=np.diag([-0.2, -0.2, 1.0, 1.0]),
                                              name="usvlm-selftest")
        d = USVLMSegmentLogic().describe(node)
        self.assertEqual((d["rows"], d["columns"], d["frames"]), (240, 320, 1))
        self.assertAlmostEqual(d["spacing_mm"]["x"], 0.2)
        self.assertAlmostEqual(d["ijk_to_ras"][0][0], -0.2)
        self.delayDisplay("USVLMSegment self-test passed")
