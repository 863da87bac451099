"""The module's logic: reads the scene, asks the engine, writes results into the scene.

Usable without the GUI (`process`, `refineNow`, `undo` run synchronously for scripts and the
self-test); the widget drives the same steps asynchronously (`startRun` / `applyRun`). Every
engine call runs on a `BackgroundCall`; this class only touches MRML on the GUI thread.

Rules it keeps:
- results go to the nodes captured when the run was submitted (`RunTarget`), whatever is
  selected by the time the engine answers;
- a segment the user edited since the model wrote it is never rewritten by live refine, and a new
  run writes a new segment beside it (`SegmentHistory`); every write can be undone;
- sizes are in mm only for a calibrated image, otherwise in pixels, flagged (`VolumeCalibration`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import resources, scene, sequences
from .background import BackgroundCall
from .engine_client import (CohortSegment, EngineCancelled, EngineError, ImageData, PostOptions,
                            SegmentReply)
from .engine_connection import EngineConnection, EngineSettings
from .engine_env import EngineEnvironment
from .parameters import USVLMSegmentParameterNode
from .segment_history import SegmentHistory, SegmentKey
from .segment_naming import split_prompts
from .volume_calibration import VolumeCalibration, volume_calibration
from .volume_geometry import frames_to_volume, pixel_spacing

SETTINGS_GROUP = "USVLM/Engine/"


@dataclass(frozen=True)
class RunTarget:
    """What a run was asked for, captured from the scene when it was submitted."""

    volume_id: str  # the input volume (a sequence's proxy node when `browser_id` is set)
    segmentation_id: Optional[str]  # the output selected then (None: a new node is made)
    browser_id: Optional[str]  # the sequence browser of a cine held as a Sequence
    frames: Tuple[int, ...]  # the frames (volume slices or sequence items) contoured
    total: int  # frames of the input
    calibration: VolumeCalibration
    overwrite: bool


@dataclass(frozen=True)
class PreparedRun:
    """A run read from the scene on the GUI thread, ready to send."""

    target: RunTarget
    image: ImageData
    prompts: List[str]
    engine_frames: List[int]  # `target.frames` as frames of `image` (a sequence sends only those)


@dataclass
class RunResult:
    """The last run: what refine, undo and the results table work on."""

    target: RunTarget
    reply: SegmentReply
    segmentation_id: str
    segment_ids: List[str]  # per result; on a sequence, the ids in each item's segmentation
    names: List[str]
    skipped: List[str] = field(default_factory=list)  # edited segments live refine left alone


class USVLMSegmentLogic(ScriptedLoadableModuleLogic):
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.history = SegmentHistory()
        self.connection: Optional[EngineConnection] = None
        self.last: Optional[RunResult] = None

    def getParameterNode(self) -> USVLMSegmentParameterNode:
        return USVLMSegmentParameterNode(super().getParameterNode())

    # -- the engine ------------------------------------------------------------------------------
    @staticmethod
    def engineSettings() -> EngineSettings:
        s = qt.QSettings()
        default = EngineSettings()
        return EngineSettings(mode=str(s.value(SETTINGS_GROUP + "mode", default.mode)),
                              url=str(s.value(SETTINGS_GROUP + "url", default.url)),
                              token=str(s.value(SETTINGS_GROUP + "token", default.token)),
                              model=str(s.value(SETTINGS_GROUP + "model", default.model)),
                              device=str(s.value(SETTINGS_GROUP + "device", default.device)))

    @staticmethod
    def saveEngineSettings(settings: EngineSettings) -> None:
        s = qt.QSettings()
        for key in ("mode", "url", "token", "model", "device"):
            s.setValue(SETTINGS_GROUP + key, getattr(settings, key))

    @staticmethod
    def environment() -> EngineEnvironment:
        """The local engine's private environment, in the user's Slicer settings folder, created
        from Slicer's own Python (nothing is installed into Slicer's site-packages), or from the
        Python in $USVLM_ENGINE_BASE_PYTHON (Slicer 5.8's Python 3.9 is too old for the core)."""
        folder = Path(slicer.app.slicerUserSettingsFilePath).parent / "USVLM" / "engine-env"
        base = os.environ.get("USVLM_ENGINE_BASE_PYTHON") or resources.slicer_python()
        return EngineEnvironment(folder, base)

    def engine(self, settings: Optional[EngineSettings] = None) -> EngineConnection:
        """The connection for `settings` (default: the saved ones); not connected yet."""
        settings = (settings or self.engineSettings()).checked()
        if self.connection is None:
            # $USVLM_ENGINE_PYTHON: a Python that already has the core (a developer's environment,
            # the self-test) instead of the module's own engine environment.
            python = os.environ.get("USVLM_ENGINE_PYTHON") or None
            self.connection = EngineConnection(settings, self.environment(), resources.prompt_folder(),
                                               python=python)
        else:
            self.connection.reconfigure(settings)
        return self.connection

    def connected(self) -> EngineConnection:
        connection = self.engine() if self.connection is None else self.connection
        if not connection.connected:
            connection.connect()
        return connection

    def shutdown(self) -> None:
        if self.connection is not None:
            self.connection.cancel()
            self.connection.close()
            self.connection = None

    # -- reading the input ---------------------------------------------------------------------
    def calibrationOf(self, volumeNode: Any, cine: Optional["sequences.CineSequence"] = None) -> VolumeCalibration:
        """Where the volume's spacing came from: the engine reads the DICOM header when the volume
        (or its sequence) came from the DICOM database."""
        from .dicom_header import header_bytes, volume_dicom_file

        spacing = pixel_spacing(scene.ijk_to_ras(volumeNode))
        source = volumeNode if scene.instance_uids(volumeNode) or cine is None else cine.sequence
        path = volume_dicom_file(source, slicer.dicomDatabase)
        dicom = None
        if path:
            dicom = self.connected().api.calibration(header_bytes(path), volumeNode.GetName())
        storage_name = scene.file_name(volumeNode) if cine is None else None
        return volume_calibration(spacing, storage_name, dicom)

    def prepareRun(self, p: USVLMSegmentParameterNode) -> PreparedRun:
        """Read the scene for a run (on the GUI thread): the target, the image and the prompts."""
        prompts = split_prompts(p.prompt)
        volume = p.inputVolume
        if volume is None:
            raise ValueError("select an input ultrasound image")
        cine = sequences.CineSequence.of(volume)
        calibration = self.calibrationOf(volume, cine)
        if cine is not None:
            frames = tuple(range(cine.count)) if p.allFrames else (cine.selected,)
            pixels = cine.stack(frames)
            total, send = cine.count, frames
        else:
            pixels = scene.volume_pixels(volume)
            total = pixels.shape[0]
            frames = tuple(range(total)) if p.allFrames or total == 1 else (scene.current_slice(volume),)
            send = tuple(range(total))  # the engine holds the whole cine; frames pick from it
        image = ImageData.from_volume_array(pixels, calibration.spacing, calibrated=calibration.calibrated,
                                            is_vector=pixels.ndim == 4, name=volume.GetName())
        target = RunTarget(volume.GetID(), p.outputSegmentation.GetID() if p.outputSegmentation else None,
                           cine.browser.GetID() if cine is not None else None, frames, total,
                           calibration, bool(p.overwrite))
        return PreparedRun(target, image, prompts, [send.index(f) for f in frames])

    def startRun(self, p: USVLMSegmentParameterNode, progress: Any = None) -> BackgroundCall:
        """Submit a run; the scene is not touched until `applyRun` gets the reply."""
        run = self.prepareRun(p)
        image, prompts, engineFrames = run.image, run.prompts, run.engine_frames
        api = self.connected().api
        options = self._options(p, None)
        organ, classify = p.organ or None, bool(p.classify)

        def segment(report: Any) -> SegmentReply:
            return api.segment(image, prompts, frames=engineFrames if image.cine else "all",
                               options=options, organ=organ, classify=classify, measure=True,
                               progress=report)

        return BackgroundCall(segment, "USVLM segment", context=run.target).start()

    # -- writing results -----------------------------------------------------------------------
    def applyRun(self, p: USVLMSegmentParameterNode, target: RunTarget, reply: SegmentReply) -> RunResult:
        """Write the run's masks as segments of the node chosen at submit (or a new one)."""
        volume = slicer.mrmlScene.GetNodeByID(target.volume_id)
        if volume is None:
            raise ValueError("the image this run was made for was removed from the scene")
        selected = slicer.mrmlScene.GetNodeByID(target.segmentation_id) if target.segmentation_id else None
        with self.history.change():  # one Undo takes the whole run back
            if target.browser_id is not None:
                cine = sequences.CineSequence.of(volume)
                if cine is None or cine.browser.GetID() != target.browser_id:
                    raise ValueError("the sequence this run was made for is no longer in the scene")
                result = self._writeSequence(cine, selected, target, reply)
            else:
                result = self._writeVolume(volume, selected, target, reply)
        self.last = result
        if p is not None:
            p.outputSegmentation = slicer.mrmlScene.GetNodeByID(result.segmentation_id)
        return result

    def _protected(self, node: Any, volume: Any, item: Optional[int]) -> List[str]:
        """Names of segments the model wrote and someone edited since: never replaced."""
        names = []
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            key = SegmentKey(node.GetID(), segmentId, item)
            if self.history.edited(key, scene.segment_mask(node, segmentId, volume)):
                names.append(segmentation.GetSegment(segmentId).GetName())
        return names

    def _items(self, reply: SegmentReply, masks: List[np.ndarray]) -> List[scene.SegmentData]:
        return [scene.SegmentData(s.name, s.color, s.terminology, m) for s, m in zip(reply.segments, masks)]

    def _writeVolume(self, volume: Any, selected: Any, target: RunTarget, reply: SegmentReply) -> RunResult:
        node = scene.output_node(selected, volume)
        masks = [frames_to_volume(s.mask, target.frames, target.total) for s in reply.segments]
        protected = self._protected(node, volume, None)
        written = scene.add_or_replace(node, volume, self._items(reply, masks), target.overwrite, protected)
        for (segmentId, before), mask in zip(written, masks):
            self.history.record_write(SegmentKey(node.GetID(), segmentId, None), before, mask)
        ids = [segmentId for segmentId, _ in written]
        names = [node.GetSegmentation().GetSegment(i).GetName() for i in ids]
        return RunResult(target, reply, node.GetID(), ids, names)

    def _writeSequence(self, cine: "sequences.CineSequence", selected: Any, target: RunTarget,
                       reply: SegmentReply) -> RunResult:
        proxy = sequences.segmentation_proxy(cine, selected)
        ids: List[str] = []
        names: List[str] = []
        with cine.stepping() as step:
            for t, item in enumerate(target.frames):
                step(item)
                volume = cine.proxy
                masks = [np.asarray(s.mask[t] if s.mask.ndim == 3 else s.mask, dtype=np.uint8)[np.newaxis]
                         for s in reply.segments]
                protected = self._protected(proxy, volume, item)
                written = scene.add_or_replace(proxy, volume, self._items(reply, masks), target.overwrite, protected)
                for (segmentId, before), mask in zip(written, masks):
                    self.history.record_write(SegmentKey(proxy.GetID(), segmentId, item), before, mask)
                if not ids:
                    ids = [segmentId for segmentId, _ in written]
                    names = [proxy.GetSegmentation().GetSegment(i).GetName() for i in ids]
        return RunResult(target, reply, proxy.GetID(), ids, names)

    # -- live refine -----------------------------------------------------------------------------
    def _options(self, p: USVLMSegmentParameterNode, last: Optional[RunResult]) -> PostOptions:
        point = None
        if last is not None and p.clickPoint is not None:
            point = self._click(p, last)
        return PostOptions(threshold=p.threshold, keep_largest=p.keepLargest, fill_holes=p.fillHoles,
                           min_area_mm2=p.minAreaMm2, smoothing_mm=p.smoothingMm, point=point)

    def _click(self, p: USVLMSegmentParameterNode, last: RunResult) -> Any:
        """The click as a pixel of the engine's image, or None when it is not on this image."""
        volume = slicer.mrmlScene.GetNodeByID(last.target.volume_id)
        if volume is None:
            return None
        shape = tuple(int(n) for n in volume.GetImageData().GetDimensions()[1::-1])
        if last.target.browser_id is None:
            point = scene.point_on_image(p.clickPoint, volume, shape, last.target.total)
            if point is None or point.frame not in last.target.frames:
                return None
            return point
        # A sequence item is a 2D volume: the click is on the item on screen.
        point = scene.point_on_image(p.clickPoint, volume, shape, 1)
        cine = sequences.CineSequence.of(volume)
        if point is None or cine is None or cine.selected not in last.target.frames:
            return None
        return type(point)(point.x, point.y, last.target.frames.index(cine.selected))

    def startRefine(self, p: USVLMSegmentParameterNode, measure: bool) -> Optional[BackgroundCall]:
        """Re-threshold the last run from the engine's cached probability maps (no model run);
        while a slider moves, `measure` False skips the measurements."""
        last = self.last
        if last is None or self.connection is None or not self.connection.connected:
            return None
        options = self._options(p, last)
        api = self.connection.api
        return BackgroundCall(lambda report: api.refine(last.reply.result_id, options, measure=measure),
                              "USVLM refine", context=last).start()

    def applyRefine(self, last: RunResult, reply: SegmentReply) -> List[str]:
        """Write refined masks into the segments the model still owns; returns the names of those
        left alone because someone edited them (or removed them) since."""
        if last is not self.last:
            return []  # a newer run replaced it meanwhile
        node = slicer.mrmlScene.GetNodeByID(last.segmentation_id)
        volume = slicer.mrmlScene.GetNodeByID(last.target.volume_id)
        if node is None or volume is None:
            self.last = None
            return []
        skipped: List[str] = []
        with self.history.change():
            self._refineSegments(last, reply, node, volume, skipped)
        last.reply = SegmentReply(reply.job, reply.result_id, reply.image_id, reply.frames,
                                  reply.segments, reply.timings_ms)
        last.skipped = skipped
        return skipped

    def _refineSegments(self, last: RunResult, reply: SegmentReply, node: Any, volume: Any,
                        skipped: List[str]) -> None:
        if last.target.browser_id is None:
            for s, segmentId, name in zip(reply.segments, last.segment_ids, last.names):
                mask = frames_to_volume(s.mask, last.target.frames, last.target.total)
                if not self._rewrite(node, volume, segmentId, None, mask):
                    skipped.append(name)
            return
        cine = sequences.CineSequence.of(volume)
        if cine is None:
            skipped.extend(last.names)
            return
        with cine.stepping() as step:
            for t, item in enumerate(last.target.frames):
                step(item)
                for s, segmentId, name in zip(reply.segments, last.segment_ids, last.names):
                    m = s.mask[t] if s.mask.ndim == 3 else s.mask
                    if not self._rewrite(node, cine.proxy, segmentId, item, np.asarray(m, np.uint8)[np.newaxis]):
                        if name not in skipped:
                            skipped.append(name)

    def _rewrite(self, node: Any, volume: Any, segmentId: str, item: Optional[int], mask: np.ndarray) -> bool:
        key = SegmentKey(node.GetID(), segmentId, item)
        current = scene.segment_mask(node, segmentId, volume)
        if not self.history.owned_by_model(key, current):
            return False
        if current is not None and np.array_equal(current != 0, mask != 0):
            return True  # unchanged: no write, no undo step
        scene.write_mask(node, segmentId, mask, volume)
        self.history.record_write(key, current, mask)
        return True

    # -- undo ------------------------------------------------------------------------------------
    def undo(self) -> List[str]:
        """Take back the module's last change (a run or a refine: every segment and frame it
        wrote); returns the names of the segments restored (empty: nothing to undo)."""
        steps = self.history.undo()
        names: List[str] = []
        for step in steps:  # the latest write first
            node = slicer.mrmlScene.GetNodeByID(step.key.segmentation_id)
            volume = self._referenceVolume(node) if node is not None else None
            if node is None or volume is None:
                continue  # removed from the scene since: nothing to restore
            cine = sequences.CineSequence.of(volume) if step.key.item is not None else None
            with (cine.stepping() if cine is not None else sequences.no_stepping()) as go:
                if cine is not None:
                    go(step.key.item)
                segment = node.GetSegmentation().GetSegment(step.key.segment_id)
                if segment is not None and segment.GetName() not in names:
                    names.append(segment.GetName())
                if step.mask is None:
                    scene.remove_segment(node, step.key.segment_id)
                elif segment is not None:
                    scene.write_mask(node, step.key.segment_id, step.mask, volume)
        if self.last is not None and not any(s.mask is not None for s in steps):
            self.last = None  # the run itself was undone: nothing left to refine
        return names

    @staticmethod
    def _referenceVolume(node: Any) -> Any:
        ref = node.GetNodeReferenceID(scene.REFERENCE_ROLE)
        return slicer.mrmlScene.GetNodeByID(ref) if ref else None

    # -- scene lifecycle -------------------------------------------------------------------------
    def forgetScene(self) -> None:
        """The scene is closing: nothing of it may be written or undone later."""
        if self.connection is not None:
            self.connection.cancel()
        self.history = SegmentHistory()
        self.last = None

    def cancel(self) -> None:
        if self.connection is not None:
            self.connection.cancel()

    # -- synchronous use (scripts, the self-test) ------------------------------------------------
    @staticmethod
    def wait(call: BackgroundCall, timeout: float = 600.0) -> Any:
        """The call's result, keeping Slicer responsive; raises its error (EngineCancelled)."""
        deadline = time.monotonic() + timeout
        while not call.wait(0.03):  # releases the GIL: the call's thread runs meanwhile
            if time.monotonic() > deadline:
                raise TimeoutError(f"{call.name} did not finish in {timeout:.0f} s")
            slicer.app.processEvents()
        for event in call.events():
            if event.kind == "done":
                return event.payload
            if event.kind == "cancelled":
                raise EngineCancelled("cancelled")
            if event.kind == "error":
                raise event.payload
        raise EngineError(f"{call.name} ended without a result")

    def process(self, p: USVLMSegmentParameterNode, timeout: float = 600.0) -> RunResult:
        call = self.startRun(p)
        return self.applyRun(p, call.context, self.wait(call, timeout))

    def refineNow(self, p: USVLMSegmentParameterNode, measure: bool = True) -> List[str]:
        call = self.startRefine(p, measure)
        if call is None:
            return []
        return self.applyRefine(call.context, self.wait(call))

    # -- cohort ----------------------------------------------------------------------------------
    def addToCohort(self, p: USVLMSegmentParameterNode, folder: str, label: Optional[str]) -> Path:
        """The image on screen (the sequence item, or the cine slice shown) and its segments as
        edited, de-identified by the engine, written into the local cohort folder."""
        from .cohort_files import CohortError, write_sample

        if not str(folder or "").strip():
            raise CohortError("no cohort folder chosen: pick the folder of the training cohort")
        node, volume = p.outputSegmentation, p.inputVolume
        if node is None or volume is None:
            raise CohortError("no segmentation to add: contour (and edit) first")
        cine = sequences.CineSequence.of(volume)
        calibration = self.calibrationOf(volume, cine)
        pixels = scene.volume_pixels(volume)  # a sequence's proxy: the item on screen
        frame = 0 if cine is not None or pixels.shape[0] == 1 else scene.current_slice(volume)
        image = ImageData.from_volume_array(pixels, calibration.spacing, calibrated=calibration.calibrated,
                                            is_vector=pixels.ndim == 4, name=None)
        segmentation = node.GetSegmentation()
        segments = []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            mask = scene.segment_mask(node, segmentId, volume)
            segment = segmentation.GetSegment(segmentId)
            segments.append(CohortSegment(segment.GetName(), tuple(segment.GetColor()),
                                          scene.segment_terminology(node, segmentId),
                                          mask[frame] if mask.shape[0] > 1 else mask[0]))
        sample = self.connected().api.cohort_sample(image, segments, frame=frame)
        return write_sample(folder, sample, label)
