"""USVLMSegment: text-prompted contouring of 2D ultrasound in 3D Slicer.

Thin by design: the scene <-> array glue is USVLMSegmentLib/scene.py, the model runs on the worker
thread of USVLMSegmentLib/worker.py, and every decision that needs no Slicer is in the `usvlm`
core (`usvlm.session`), tested with pytest. Importing this file loads no torch.
"""

import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, Default, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from usvlm.session import DEFAULTS, DEVICES
from USVLMSegmentLib import resources
from USVLMSegmentLib.selftest import SelfTests


class USVLMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "USVLM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["USVLM contributors"]
        self.parent.helpText = (
            "Type what to contour on a 2D ultrasound image or cine loop (e.g. 'breast mass; cyst') and "
            "get one editable segment per prompt, named, coloured and coded from the prompt banks, "
            "with benign/malignant probabilities and sizes in mm (in pixels when the image has no "
            "pixel spacing). Threshold, click-to-select, minimum size, hole filling and smoothing "
            "refine the result without re-running the model.<br>Method: a CLIP-style vision-language "
            "model with ultrasound adapters and text-conditioned heads. Limits: 2D images only (a 3D "
            "volume is refused); the bundled model is trained on synthetic phantoms and is for "
            "research, not for clinical use. See docs/slicer.md.")
        self.parent.acknowledgementText = (
            "Method after Qu et al., 'Adapting Vision-Language Foundation Model for Next Generation "
            "Medical Ultrasound Image Analysis', arXiv 2506.08849.")


@parameterNodeWrapper
class USVLMSegmentParameterNode:
    inputVolume: slicer.vtkMRMLVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    clickPoint: slicer.vtkMRMLMarkupsFiducialNode
    prompt: Annotated[str, Default(DEFAULTS.prompt)]
    organ: Annotated[str, Default(DEFAULTS.organ)]
    model: Annotated[str, Default(DEFAULTS.model)]
    device: Annotated[str, Choice(list(DEVICES)), Default(DEFAULTS.device)]
    allFrames: Annotated[bool, Default(DEFAULTS.frames == "all")]
    classify: Annotated[bool, Default(DEFAULTS.classify)]
    overwrite: Annotated[bool, Default(DEFAULTS.overwrite)]
    threshold: Annotated[float, WithinRange(0.0, 1.0), Default(DEFAULTS.threshold)]
    keepLargest: Annotated[bool, Default(DEFAULTS.keep_largest)]
    fillHoles: Annotated[bool, Default(DEFAULTS.fill_holes)]
    minAreaMm2: Annotated[float, Minimum(0.0), Default(DEFAULTS.min_area_mm2)]
    smoothingMm: Annotated[float, Minimum(0.0), Default(DEFAULTS.smoothing_mm)]


class USVLMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode = None
        self._guiConnection = None
        self._job = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/USVLMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = USVLMSegmentLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.onPoll)
        self.ui.cohortLabelSelector.addItems(["(no label)", "benign", "malignant"])
        self.ui.pointPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.runButton.clicked.connect(self.onRun)
        self.ui.cancelButton.clicked.connect(self.logic.cancel)
        self.ui.promptLineEdit.textChanged.connect(self.updatePreview)
        self.ui.organSelector.currentIndexChanged.connect(self.onOrganChanged)
        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.addModelFolderButton.clicked.connect(self.onAddModelFolder)
        self.ui.copyButton.clicked.connect(lambda: self._results("copy"))
        self.ui.saveCsvButton.clicked.connect(lambda: self._results("save"))
        self.ui.addToCohortButton.clicked.connect(self.onAddToCohort)
        for signal in (self.ui.thresholdSlider.valueChanged, self.ui.minAreaSpinBox.valueChanged,
                       self.ui.smoothingSpinBox.valueChanged, self.ui.keepLargestCheckBox.toggled,
                       self.ui.fillHolesCheckBox.toggled):
            signal.connect(lambda *a: qt.QTimer.singleShot(0, self.onRefine))  # after connectGui wrote the value
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, lambda *a: self.setParameterNode(None))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.initializeParameterNode())
        self.initializeParameterNode()
        self.populateChoices()

    def cleanup(self):
        self.timer.stop()
        self.removeObservers()
        self.setParameterNode(None)
        self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.clickPoint:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "USVLM click")
            node.SetSaveWithScene(False)
            self._parameterNode.clickPoint = node
        point = self._parameterNode.clickPoint
        self.ui.pointPlaceWidget.setCurrentNode(point)
        for event in (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                      slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
            if not self.hasObserver(point, event, self.onRefine):
                self.addObserver(point, event, self.onRefine)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiConnection)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._guiConnection = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        self.ui.runButton.enabled = bool(p and p.inputVolume and p.prompt.strip()) and self._job is None

    def populateChoices(self):
        """Models, organs, presets and completion from the bundled resources (if installed)."""
        try:
            models = self.logic.installedModels()
            organs = self.logic.organs()
        except Exception as exc:  # packages not installed yet: offered at the first run
            self.ui.statusLabel.text = f"Python packages are installed at the first run ({exc})."
            return
        self.ui.modelSelector.clear()
        for name, path in models:
            self.ui.modelSelector.addItem(name, str(path))
        self.ui.organSelector.clear()
        self.ui.organSelector.addItem("Any organ", "")
        for organId, name in organs:
            self.ui.organSelector.addItem(name, organId)
        self.ui.organSelector.setCurrentIndex(max(0, self.ui.organSelector.findData(self._parameterNode.organ)))
        self.onModelChanged()
        self.onOrganChanged()

    def onModelChanged(self, *args):
        data = self.ui.modelSelector.currentData
        if data:
            self._parameterNode.model = data
            self.ui.modelInfoLabel.text = self.logic.modelSummary(data)

    def onAddModelFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(None, "USVLM model folder (with manifest.json)")
        if folder:
            self.ui.modelSelector.addItem(folder, folder)
            self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.count - 1)

    def onOrganChanged(self, *args):
        organ = self.ui.organSelector.currentData or ""
        self._parameterNode.organ = organ
        completer = qt.QCompleter(self.logic.completions(organ), self.ui.promptLineEdit)
        completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        completer.setFilterMode(qt.Qt.MatchContains)
        self.ui.promptLineEdit.setCompleter(completer)
        layout = self.ui.presetsFrame.layout()
        while layout.count():
            layout.takeAt(0).widget().deleteLater()
        for name in self.logic.presets(organ)[:6]:
            button = qt.QPushButton(name)
            button.clicked.connect(lambda checked=False, n=name: self.runPreset(n))
            layout.addWidget(button)
        self.updatePreview()

    def runPreset(self, name):
        self._parameterNode.prompt = name
        self.onRun()

    def updatePreview(self, *args):
        try:
            previews = self.logic.preview(self._parameterNode.prompt, self._parameterNode.organ)
            self.ui.previewLabel.text = "<br>".join(p.describe() for p in previews)
        except Exception as exc:
            self.ui.previewLabel.text = "" if not self._parameterNode.prompt.strip() else str(exc)

    def onRun(self):
        with slicer.util.tryWithErrorDisplay("USVLM could not start the run.", waitCursor=True):
            if self.logic.ensureDependencies():
                slicer.util.infoDisplay(self.logic.restartMessage())
                return
            if self.ui.modelSelector.count == 0:  # packages were just installed
                self.populateChoices()
            self._job = self.logic.submit(self._parameterNode, currentFrame=self.logic.currentFrame(self._parameterNode))
            self._setBusy(True)
            self.ui.statusLabel.text = "Contouring..."

    def onPoll(self):
        for event in self.logic.worker.poll():
            if event.job != self._job:
                continue
            if event.kind == "progress":
                done, total, stage = event.payload
                self.ui.progressBar.maximum, self.ui.progressBar.value = max(total, 1), done
                self.ui.progressBar.format = f"{stage} %p%"
                continue
            self._setBusy(False)
            if event.kind == "done":
                with slicer.util.tryWithErrorDisplay("USVLM could not write the result.", waitCursor=True):
                    self.logic.applyResponse(self._parameterNode, event.payload)
                    self.showResults()
                    self.ui.statusLabel.text = f"Done in {event.payload.output.timings_ms.get('total_ms', 0) / 1000:.1f} s."
            elif event.kind == "cancelled":
                self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            else:
                exc, details = event.payload
                slicer.util.errorDisplay(f"USVLM: {exc}", detailedText=details)
                self.ui.statusLabel.text = f"Failed: {exc}"

    def _setBusy(self, busy):
        if not busy:
            self._job = None
            self.timer.stop()
        else:
            self.timer.start()
        self.ui.progressBar.visible = busy
        self.ui.cancelButton.enabled = busy
        self.onParameterNodeModified()

    def onRefine(self, *args):
        if self._job is None and self.logic.session.has_result:
            with slicer.util.tryWithErrorDisplay("USVLM could not refine the result."):
                self.logic.refine(self._parameterNode)
                self.showResults()

    def showResults(self):
        from USVLMSegmentLib.results import fill_table
        fill_table(self.ui.resultsTable, self.logic.session.rows())

    def _results(self, action):
        from USVLMSegmentLib import results
        with slicer.util.tryWithErrorDisplay("USVLM could not export the results."):
            rows = self.logic.session.rows()
            results.copy_to_clipboard(rows) if action == "copy" else results.save_csv(rows)

    def onAddToCohort(self):
        with slicer.util.tryWithErrorDisplay("USVLM could not add the image to the cohort.", waitCursor=True):
            label = self.ui.cohortLabelSelector.currentText
            path = self.logic.addToCohort(self._parameterNode, self.ui.cohortPathLineEdit.currentPath,
                                          None if label.startswith("(") else label)
            self.ui.statusLabel.text = f"Added to the training cohort: {path.name}"


class USVLMSegmentLogic(ScriptedLoadableModuleLogic):
    """Usable without the GUI: `process(parameterNode)` runs synchronously (scripts, tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        resources.configure_environment()
        from usvlm.session import InteractiveSession
        self.session = InteractiveSession()
        self._worker = None
        self._image = None

    def getParameterNode(self):
        return USVLMSegmentParameterNode(super().getParameterNode())

    @property
    def worker(self):
        if self._worker is None:
            from USVLMSegmentLib.worker import Worker
            self._worker = Worker()
        return self._worker

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None

    def cancel(self):
        if self._worker is not None:
            self._worker.cancel()

    # -- choices -------------------------------------------------------------------------------
    def _banks(self):
        from usvlm.text.banks import load_banks
        return load_banks(resources.prompt_folder())

    def organs(self):
        from usvlm.session import organ_choices
        return organ_choices(self._banks())

    def completions(self, organ):
        from usvlm.session import completions
        return completions(self._banks(), organ)

    def presets(self, organ):
        from usvlm.session import presets
        return presets(self._banks(), organ)

    def preview(self, text, organ):
        from usvlm.session import preview_prompts
        return preview_prompts(text, self._banks(), organ)

    def installedModels(self):
        from usvlm.model.registry import installed_models
        return [(manifest.get("name", path.name), path) for path, manifest in installed_models()]

    def modelSummary(self, modelDir):
        from usvlm.model.manifest import read_manifest
        from usvlm.model.registry import resolve_model
        from usvlm.session import model_summary
        try:  # bounded, regular file only, validated (never json.loads on whatever is there)
            manifest = read_manifest(resolve_model(modelDir) / "manifest.json")
        except Exception as exc:
            return f"Cannot read the model manifest: {exc}"
        return model_summary(manifest)

    # -- running -------------------------------------------------------------------------------
    def ensureDependencies(self, ask=True):
        from USVLMSegmentLib.install import ensure_dependencies
        return ensure_dependencies(ask)

    def restartMessage(self):
        from USVLMSegmentLib.install import RESTART_MESSAGE
        return RESTART_MESSAGE

    def currentFrame(self, p):
        from USVLMSegmentLib.scene import current_frame
        return current_frame(p.inputVolume) if p.inputVolume and slicer.app.layoutManager() else 0

    def _settings(self, p, point=None):
        from usvlm.session import RefineSettings
        return RefineSettings(p.threshold, p.keepLargest, p.fillHoles, p.minAreaMm2, p.smoothingMm, point)

    def submit(self, p, currentFrame=0):
        """Check the input and queue a run on the worker; the scene is not touched until it is done."""
        from usvlm.session import frames_to_run, split_prompts
        from USVLMSegmentLib.scene import image_from_volume
        from USVLMSegmentLib.worker import SegmentRequest, segment_job
        prompts = split_prompts(p.prompt)
        image = image_from_volume(p.inputVolume)
        frames = frames_to_run("all" if p.allFrames else "current", image.frames, currentFrame)
        self._image = image
        request = SegmentRequest(image, prompts, p.model, p.device, p.organ or None, frames,
                                 self._settings(p).options(), p.classify, resources.prompt_folder())
        return self.worker.submit(segment_job(request))

    def applyResponse(self, p, response):
        """Write the run's masks as segments (new names unless overwrite) and keep it for refining."""
        from usvlm.io.volume_arrays import frames_to_volume_array
        from usvlm.session import with_segment_names
        from USVLMSegmentLib import scene
        output = response.output
        node = scene.output_node(p.outputSegmentation, p.inputVolume)
        items = [scene.SegmentData(r.prompt.name, tuple(r.prompt.color), r.prompt.terminology.to_slicer_string(),
                                   frames_to_volume_array(r.mask, output.frames, output.image.frames))
                 for r in output.results]
        ids = scene.write_segments(node, p.inputVolume, items, p.overwrite)
        names = [node.GetSegmentation().GetSegment(i).GetName() for i in ids]
        self.session.set_output(output, with_segment_names(response.summaries, names), ids)
        p.outputSegmentation = node
        if scene.point_on_image(p.clickPoint, p.inputVolume, output.image) is not None:
            self.refine(p)
        return ids

    def refine(self, p):
        """Threshold / click / size changes from the cached probability maps; no model run."""
        from usvlm.io.volume_arrays import frames_to_volume_array
        from usvlm.session import with_segment_names
        from USVLMSegmentLib import scene
        output, node = self.session.output, p.outputSegmentation
        if output is None or node is None:
            return
        point = scene.point_on_image(p.clickPoint, p.inputVolume, output.image)
        results = self.session.refine_all(self._settings(p, point))
        names = [s.get("segment") for s in self.session.summaries]
        for segmentId, result in zip(self.session.segment_ids, results):
            if node.GetSegmentation().GetSegment(segmentId) is not None:  # the user may delete it
                scene.update_mask(node, segmentId, frames_to_volume_array(result.mask, output.frames, output.image.frames), p.inputVolume)
        self.session.summaries = with_segment_names(self.session.summaries, names)

    def process(self, p, currentFrame=0, timeoutSeconds=600):
        """Run synchronously (no GUI needed); raises the worker's error, or Cancelled."""
        job = self.submit(p, currentFrame)
        deadline = time.monotonic() + timeoutSeconds
        while time.monotonic() < deadline:
            for event in self.worker.poll():
                if event.job != job or event.kind == "progress":
                    continue
                if event.kind == "done":
                    return self.applyResponse(p, event.payload)
                if event.kind == "cancelled":
                    from usvlm.engine import Cancelled
                    raise Cancelled()
                raise event.payload[0]
            slicer.app.processEvents()
            time.sleep(0.02)
        self.cancel()
        raise TimeoutError(f"USVLM run did not finish in {timeoutSeconds} s")

    def addToCohort(self, p, folder, label=None):
        from usvlm.cohort import add_to_cohort
        from USVLMSegmentLib import scene
        if not p.outputSegmentation:
            raise ValueError("No segmentation to add: contour (and edit) first.")
        image = scene.image_from_volume(p.inputVolume)
        segments = scene.segments_for_cohort(p.outputSegmentation, p.inputVolume)
        frame = self.currentFrame(p) if image.is_cine else 0
        return add_to_cohort(folder, image, segments, frame=frame, label=label)


class USVLMSegmentTest(ScriptedLoadableModuleTest, SelfTests):
    """Runs inside Slicer (ctest, or Reload and Test); the test methods are in USVLMSegmentLib/selftest.py."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in SelfTests.TESTS:
            self.setUp()
            getattr(self, name)()
        self.delayDisplay("USVLMSegment self-test passed")
