"""The module panel: engine set-up, prompt, run, live refine, undo, results, cohort.

One engine call at a time runs on a `BackgroundCall`; a 30 ms QTimer polls it (and gives its
thread the GIL, see background.py), the engine's install job and the local engine's events.
Slider moves while a refine is in flight are coalesced: the latest settings are sent next.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .background import BackgroundCall
from .engine_client import EngineError, PromptChoices
from .engine_connection import EngineSettings, SettingsError
from .engine_env import InstallPlan
from .logic import USVLMSegmentLogic
from .module_defaults import DEVICES
from .result_rows import UNCALIBRATED_TIP, result_rows

POLL_MS = 30
MEASURE_AFTER_MS = 400  # measure once the slider has rested this long (measuring costs ~0.3 s/mask)
PREVIEW_AFTER_MS = 250


class EngineReady:
    """What the panel needs once connected: the engine, its prompt choices and models."""

    def __init__(self, info: Any, choices: PromptChoices, models: List[Any]) -> None:
        self.info, self.choices, self.models = info, choices, models


class USVLMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode = None
        self._guiConnection = None
        self.call: Optional[BackgroundCall] = None
        self.callKind = ""
        self.then: Optional[Callable[[], None]] = None  # what to do once connected
        self.install = None  # engine_env.InstallJob while the environment is being installed
        self.pendingRefine: Optional[bool] = None  # measure flag of a refine asked during a call
        self.discard = False  # the scene closed: drop the running call's result

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/USVLMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = USVLMSegmentLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onPoll)
        self.measureTimer = self._singleShot(MEASURE_AFTER_MS, lambda: self.requestRefine(True))
        self.previewTimer = self._singleShot(PREVIEW_AFTER_MS, self.updatePreview)

        self.ui.engineModeSelector.addItem("Local engine (this computer)", "local")
        self.ui.engineModeSelector.addItem("Remote engine (GPU server)", "remote")
        for device in DEVICES:
            self.ui.deviceSelector.addItem(device, device)
        self.ui.cohortLabelSelector.addItems(["(no label)", "benign", "malignant"])
        self.ui.pointPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.loadEngineSettings()

        self.ui.engineModeSelector.currentIndexChanged.connect(self.onEngineSettingsChanged)
        self.ui.engineUrlLineEdit.editingFinished.connect(self.onEngineSettingsChanged)
        self.ui.engineTokenLineEdit.editingFinished.connect(self.onEngineSettingsChanged)
        self.ui.deviceSelector.currentIndexChanged.connect(self.onEngineSettingsChanged)
        self.ui.modelSelector.activated.connect(self.onEngineSettingsChanged)
        self.ui.engineConnectButton.clicked.connect(lambda: self.ensureEngine(None))
        self.ui.engineLogButton.clicked.connect(self.showEngineLog)
        self.ui.installCancelButton.clicked.connect(self.cancelInstall)
        self.ui.addModelFolderButton.clicked.connect(self.onAddModelFolder)
        self.ui.runButton.clicked.connect(self.onRun)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.organSelector.currentIndexChanged.connect(self.onOrganChanged)
        self.ui.copyButton.clicked.connect(lambda: self.exportResults("copy"))
        self.ui.saveCsvButton.clicked.connect(lambda: self.exportResults("save"))
        self.ui.addToCohortButton.clicked.connect(self.onAddToCohort)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        # After connectGui: the slots read the value the widget shows now (no one-keystroke lag).
        self.ui.promptLineEdit.textChanged.connect(lambda *a: self.previewTimer.start())
        for signal in (self.ui.thresholdSlider.valueChanged, self.ui.minAreaSpinBox.valueChanged,
                       self.ui.smoothingSpinBox.valueChanged, self.ui.keepLargestCheckBox.toggled,
                       self.ui.fillHolesCheckBox.toggled):
            signal.connect(self.onRefineControlChanged)
        self.updateEnginePanel()

    def _singleShot(self, ms: int, slot: Callable[[], None]) -> Any:
        timer = qt.QTimer()
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    def cleanup(self) -> None:
        self.timer.stop()
        self.removeObservers()
        self.setParameterNode(None)
        if self.install is not None:
            self.install.cancel()
        self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiConnection)
            self._guiConnection = None

    # -- parameter node ------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not p.clickPoint:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "USVLM click")
            node.SetSaveWithScene(False)
            p.clickPoint = node
        self.ui.pointPlaceWidget.setCurrentNode(p.clickPoint)
        for event in (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                      slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                      slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
            if not self.hasObserver(p.clickPoint, event, self.onClick):
                self.addObserver(p.clickPoint, event, self.onClick)

    def setParameterNode(self, node: Any) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiConnection)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = node
        if self._parameterNode:
            self._guiConnection = self._parameterNode.connectGui(self.ui)
            # connectGui sets the node types from the annotation; labelmaps are scalar volumes too.
            self.ui.inputSelector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def updateButtons(self, *args: Any) -> None:
        p = self._parameterNode
        busy = self.call is not None and self.callKind in ("connect", "run")
        self.ui.runButton.enabled = bool(p and p.inputVolume and p.prompt.strip()) and not busy and self.install is None
        self.ui.cancelButton.enabled = busy
        self.ui.undoButton.enabled = self.logic.history.can_undo
        self.ui.progressBar.visible = busy

    def onSceneStartClose(self, *args: Any) -> None:
        if self.call is not None:
            self.discard = True  # the nodes it was made for are going away
            threading.Thread(target=self.logic.cancel, daemon=True).start()
        self.logic.forgetScene()
        self.setParameterNode(None)
        self.ui.resultsTable.setRowCount(0)

    def onSceneEndClose(self, *args: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- engine set-up ---------------------------------------------------------------------------
    def loadEngineSettings(self) -> None:
        s = self.logic.engineSettings()
        self.ui.engineModeSelector.setCurrentIndex(max(0, self.ui.engineModeSelector.findData(s.mode)))
        self.ui.engineUrlLineEdit.text = s.url
        self.ui.engineTokenLineEdit.text = s.token
        self.ui.deviceSelector.setCurrentIndex(max(0, self.ui.deviceSelector.findData(s.device)))
        if self.ui.modelSelector.findData(s.model) < 0:
            self.ui.modelSelector.addItem(s.model, s.model)
        self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.findData(s.model))

    def panelSettings(self) -> EngineSettings:
        return EngineSettings(mode=self.ui.engineModeSelector.currentData or "local",
                              url=self.ui.engineUrlLineEdit.text, token=self.ui.engineTokenLineEdit.text,
                              model=self.ui.modelSelector.currentData or EngineSettings().model,
                              device=self.ui.deviceSelector.currentData or "auto")

    def onEngineSettingsChanged(self, *args: Any) -> None:
        settings = self.panelSettings()
        self.updateEnginePanel()
        try:
            settings = settings.checked()
        except SettingsError as exc:
            self.ui.engineStatusLabel.text = str(exc)
            return
        self.logic.saveEngineSettings(settings)
        if self.logic.connection is not None and self.call is None:
            if self.logic.connection.reconfigure(settings):
                self.ui.engineStatusLabel.text = "Settings changed: the engine starts again at the next run."

    def updateEnginePanel(self) -> None:
        remote = self.ui.engineModeSelector.currentData == "remote"
        for w in (self.ui.engineUrlLabel, self.ui.engineUrlLineEdit, self.ui.engineTokenLabel,
                  self.ui.engineTokenLineEdit):
            w.visible = remote
        # A remote engine runs the model and device its server chose.
        for w in (self.ui.modelSelector, self.ui.addModelFolderButton, self.ui.deviceSelector):
            w.enabled = not remote
        self.ui.engineConnectButton.text = "Connect" if remote else "Start engine"
        installing = self.install is not None
        self.ui.installProgressBar.visible = installing
        self.ui.installCancelButton.visible = installing
        self.ui.installLogText.visible = installing or bool(self.ui.installLogText.toPlainText())

    def ensureEngine(self, then: Optional[Callable[[], None]]) -> None:
        """Connect (installing the local engine's environment first if needed), then `then()`."""
        if self.call is not None or self.install is not None:
            return
        try:
            connection = self.logic.engine(self.panelSettings())
            if connection.connected:
                if then is not None:
                    then()
                return
            if connection.needs_install():
                self.startInstall(connection.environment_status(), then)
                return
        except (SettingsError, EngineError, OSError) as exc:
            slicer.util.errorDisplay(f"USVLM engine: {exc}")
            return
        self.ui.engineStatusLabel.text = ("Starting the engine (loading the model)..." if connection.local
                                          else f"Connecting to {connection.settings.url}...")

        def connect(report: Any) -> EngineReady:
            info = connection.connect()
            return EngineReady(info, connection.api.prompt_choices(), connection.api.models())

        self.then = then
        self.startCall("connect", BackgroundCall(connect, "USVLM connect").start())

    def startInstall(self, status: Any, then: Optional[Callable[[], None]]) -> None:
        environment = self.logic.environment()
        question = ("USVLM runs its model in an engine with its own Python environment, created from "
                    f"Slicer's Python in\n{environment.folder}\n\n({status.reason}.) Installing it downloads "
                    "PyTorch and the engine's packages (about 1-3 GB) and takes a few minutes. Nothing "
                    "in Slicer's own Python is installed or changed, and no restart is needed.\n\nInstall now?")
        if not slicer.util.confirmYesNoDisplay(question, windowTitle="USVLM engine"):
            return
        from .torch_choice import torch_spec

        spec, why = torch_spec()
        self.install = environment.install(InstallPlan(torch=spec))
        self.then = then
        self.ui.installLogText.clear()
        self.ui.installLogText.appendPlainText(f"PyTorch: {spec.describe()} ({why})")
        self.ui.engineStatusLabel.text = "Installing the engine environment..."
        self.updateEnginePanel()
        self.updateButtons()
        self.timer.start()

    def cancelInstall(self) -> None:
        if self.install is not None:
            self.install.cancel()

    def showEngineLog(self) -> None:
        connection = self.logic.connection
        lines = connection.log_tail(400) if connection is not None else []
        text = "\n".join(lines) or "The engine has written nothing yet (or runs on another computer)."
        slicer.util.infoDisplay("The engine's last output lines are below.", windowTitle="USVLM engine log",
                                detailedText=text)

    def showEngineReady(self, ready: EngineReady) -> None:
        info = ready.info
        self.ui.engineStatusLabel.text = (f"Engine {info.version} ready: model {info.model.name} on {info.device}"
                                          + ("" if self.logic.connection.local else f" at {self.logic.connection.settings.url}"))
        current = self.ui.modelSelector.currentData
        self.ui.modelSelector.clear()
        for m in ready.models:
            self.ui.modelSelector.addItem(m.name, m.name)
            self.ui.modelSelector.setItemData(self.ui.modelSelector.count - 1, m.summary, qt.Qt.ToolTipRole)
        for value in (current, info.model.name):
            if value and self.ui.modelSelector.findData(value) < 0:
                self.ui.modelSelector.addItem(value, value)
        self.ui.modelSelector.setCurrentIndex(max(0, self.ui.modelSelector.findData(
            current if self.logic.connection.local else info.model.name)))
        self.ui.modelInfoLabel.text = next((m.summary for m in ready.models if m.name == info.model.name),
                                           info.model.name)
        self.ui.organSelector.blockSignals(True)
        self.ui.organSelector.clear()
        self.ui.organSelector.addItem("Any organ", "")
        for organId, name in ready.choices.organs:
            self.ui.organSelector.addItem(name, organId)
        self.ui.organSelector.setCurrentIndex(max(0, self.ui.organSelector.findData(self._parameterNode.organ)))
        self.ui.organSelector.blockSignals(False)
        self.showChoices(ready.choices)

    def onAddModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "USVLM model folder (with manifest.json)")
        if folder:
            self.ui.modelSelector.addItem(folder, folder)
            self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.count - 1)
            self.onEngineSettingsChanged()

    # -- prompts ---------------------------------------------------------------------------------
    def onOrganChanged(self, *args: Any) -> None:
        organ = self.ui.organSelector.currentData or ""
        self._parameterNode.organ = organ
        connection = self.logic.connection
        if connection is None or not connection.connected:
            return
        try:
            self.showChoices(connection.api.prompt_choices(organ or None))
        except EngineError as exc:
            self.ui.previewLabel.text = f"Prompt choices unavailable: {exc}"

    def showChoices(self, choices: PromptChoices) -> None:
        completer = qt.QCompleter(choices.completions, self.ui.promptLineEdit)
        completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        completer.setFilterMode(qt.Qt.MatchContains)
        self.ui.promptLineEdit.setCompleter(completer)
        layout = self.ui.presetsFrame.layout()
        while layout.count():
            layout.takeAt(0).widget().deleteLater()
        for name in choices.presets[:6]:
            button = qt.QPushButton(name)
            button.clicked.connect(lambda checked=False, n=name: self.runPreset(n))
            layout.addWidget(button)
        self.updatePreview()

    def runPreset(self, name: str) -> None:
        self._parameterNode.prompt = name
        self.onRun()

    def updatePreview(self) -> None:
        text = self.ui.promptLineEdit.text  # the widget's text: the parameter node may lag
        connection = self.logic.connection
        if not text.strip() or connection is None or not connection.connected:
            self.ui.previewLabel.text = ""
            return
        try:
            previews = connection.api.preview(text, self.ui.organSelector.currentData or None)
            self.ui.previewLabel.text = "<br>".join(p.description for p in previews)
        except EngineError as exc:
            self.ui.previewLabel.text = str(exc)

    # -- running ---------------------------------------------------------------------------------
    def onRun(self) -> None:
        self.ensureEngine(self.startRun)

    def startRun(self) -> None:
        with slicer.util.tryWithErrorDisplay("USVLM could not start the run.", waitCursor=True):
            call = self.logic.startRun(self._parameterNode)
            self.startCall("run", call)
            self.ui.statusLabel.text = "Contouring..."

    def startCall(self, kind: str, call: BackgroundCall) -> None:
        """Watch a started call until it ends."""
        self.call, self.callKind, self.discard = call, kind, False
        self.ui.progressBar.value, self.ui.progressBar.maximum = 0, 0  # busy until progress comes
        self.timer.start()
        self.updateButtons()

    def onCancel(self) -> None:
        if self.call is None:
            return
        self.ui.statusLabel.text = "Cancelling..."
        # Cancel may wait up to a few seconds for the engine (and kill a local one that ignores it).
        threading.Thread(target=self.logic.cancel, name="USVLM cancel", daemon=True).start()

    def onPoll(self) -> None:
        if self.install is not None:
            self.pollInstall()
        connection = self.logic.connection
        if connection is not None:
            for event in connection.take_events():
                if event.kind in ("crashed", "restarted", "killed"):
                    self.ui.engineStatusLabel.text = event.message
                    slicer.util.showStatusMessage(f"USVLM: {event.message}", 5000)
        if self.call is None:
            if self.install is None:
                self.timer.stop()
            return
        self.call.give_time()
        for event in self.call.events():
            if event.kind == "progress":
                p = event.payload
                self.ui.progressBar.maximum, self.ui.progressBar.value = max(p.total, 1), p.done
                self.ui.progressBar.format = f"{p.stage} %p%"
                continue
            call, kind, discard = self.call, self.callKind, self.discard
            self.call, self.callKind = None, ""
            self.updateButtons()
            try:
                if not discard:
                    self.finishCall(kind, call, event)
            finally:  # tryWithErrorDisplay shows an error, then re-raises it
                self.afterCall()
            return

    def finishCall(self, kind: str, call: BackgroundCall, event: Any) -> None:
        if event.kind == "cancelled":
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        if event.kind == "error":
            exc = event.payload
            if kind == "refine":
                self.ui.statusLabel.text = f"Refine failed: {exc}"
            elif kind == "connect":
                self.ui.engineStatusLabel.text = f"No engine: {exc}"
                self.then = None
                slicer.util.errorDisplay(f"USVLM could not reach the engine: {exc}",
                                         detailedText="\n".join(self.logic.connection.log_tail(60)))
            else:
                self.ui.statusLabel.text = f"Failed: {exc}"
                slicer.util.errorDisplay(f"USVLM: {exc}")
            return
        with slicer.util.tryWithErrorDisplay("USVLM could not write the result.", waitCursor=True):
            if kind == "connect":
                self.showEngineReady(event.payload)
                then, self.then = self.then, None
                if then is not None:
                    then()
            elif kind == "run":
                result = self.logic.applyRun(self._parameterNode, call.context, event.payload)
                self.showResults()
                seconds = event.payload.timings_ms.get("total_ms", 1000 * call.elapsed()) / 1000
                self.ui.statusLabel.text = f"Done in {seconds:.1f} s ({len(result.names)} segment(s))."
            elif kind == "refine":
                skipped = self.logic.applyRefine(call.context, event.payload)
                self.showResults()
                self.ui.statusLabel.text = ("" if not skipped else
                                            "Kept your edits of " + ", ".join(skipped) +
                                            ": live refine leaves edited segments alone (Run writes a new one).")
            self.updateButtons()

    def afterCall(self) -> None:
        if self.pendingRefine is not None and self.call is None:
            measure, self.pendingRefine = self.pendingRefine, None
            self.requestRefine(measure)

    # -- install ---------------------------------------------------------------------------------
    def pollInstall(self) -> None:
        job = self.install
        for event in job.poll():
            if event.kind == "step":
                self.ui.installLogText.appendPlainText(f"[{event.step}/{event.steps}] {event.title}")
            elif event.text:
                self.ui.installLogText.appendPlainText(event.text)
            self.ui.installProgressBar.maximum = 1000
            self.ui.installProgressBar.value = int(1000 * event.fraction)
            self.ui.installProgressBar.format = f"{job.title} %p%"
        if not job.finished:
            return
        self.install = None
        self.updateEnginePanel()
        self.updateButtons()
        if job.state == "done":
            self.ui.engineStatusLabel.text = "Engine environment installed."
            then, self.then = self.then, None
            self.ensureEngine(then)
        elif job.state == "cancelled":
            self.ui.engineStatusLabel.text = "Install cancelled; nothing was changed in Slicer."
        else:
            self.ui.engineStatusLabel.text = f"Install failed: {job.error}"
            slicer.util.errorDisplay(f"USVLM could not install its engine: {job.error}",
                                     detailedText="\n".join(job.log_tail(80)))

    # -- live refine -----------------------------------------------------------------------------
    def onRefineControlChanged(self, *args: Any) -> None:
        # connectGui updates the parameter node from the same signal: read it after that.
        qt.QTimer.singleShot(0, lambda: self.requestRefine(False))
        self.measureTimer.start()

    def onClick(self, *args: Any) -> None:
        qt.QTimer.singleShot(0, lambda: self.requestRefine(True))

    def requestRefine(self, measure: bool) -> None:
        if self.logic.last is None or self._parameterNode is None:
            return
        if self.call is not None:
            self.pendingRefine = bool(measure or self.pendingRefine)
            return
        call = self.logic.startRefine(self._parameterNode, measure)
        if call is not None:
            self.startCall("refine", call)

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay("USVLM could not undo."):
            names = self.logic.undo()
            self.ui.statusLabel.text = ("Undid the last change to " + ", ".join(names) + "."
                                        if names else "Nothing to undo.")
            if self.logic.last is None:
                self.ui.resultsTable.setRowCount(0)
        self.updateButtons()

    # -- results ---------------------------------------------------------------------------------
    def showResults(self) -> None:
        from .results import fill_table

        last = self.logic.last
        if last is None:
            return
        calibration = last.target.calibration
        rows = result_rows(last.reply.segments, last.names, calibration.calibrated)
        fill_table(self.ui.resultsTable, rows)
        self.ui.calibrationLabel.text = "Sizes: " + calibration.describe()
        self.ui.calibrationLabel.toolTip = "" if calibration.calibrated else UNCALIBRATED_TIP

    def exportResults(self, action: str) -> None:
        from . import results

        last = self.logic.last
        if last is None:
            return
        with slicer.util.tryWithErrorDisplay("USVLM could not export the results."):
            rows = result_rows(last.reply.segments, last.names, last.target.calibration.calibrated)
            if action == "copy":
                results.copy_to_clipboard(rows)
            else:
                results.save_csv(rows)

    def onAddToCohort(self) -> None:
        label = self.ui.cohortLabelSelector.currentText
        with slicer.util.tryWithErrorDisplay("USVLM could not add the image to the cohort.", waitCursor=True):
            if self.logic.connection is None or not self.logic.connection.connected:
                raise EngineError("start the engine first (it de-identifies and writes the sample)")
            path = self.logic.addToCohort(self._parameterNode, self.ui.cohortPathLineEdit.currentPath,
                                          None if label.startswith("(") else label)
            self.ui.statusLabel.text = f"Added to the training cohort: {path.name}"
