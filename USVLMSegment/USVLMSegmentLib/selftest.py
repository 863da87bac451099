"""The module's self-test; it runs inside Slicer (mixed into USVLMSegmentTest).

It drives the module logic against a real engine with the bundled default model: the local
engine of the module's settings, or the Python given in $USVLM_ENGINE_PYTHON (a developer's
environment that has the core: `USVLM_ENGINE_PYTHON=/path/to/.venv/bin/python Slicer ...`).
Each test builds its input the way a user does (DICOM through the DICOM database, a multi-frame
DICOM loaded as a Sequence, an RGB volume) and checks the scene against the engine's reply:
segment names, colours, the reference geometry, and every labelmap equal to the reply's mask.
Only Slicer's own packages are imported (pydicom 2.4 writes the test DICOM files).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

DICE_MIN = 0.99
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def write_us_cine(path: Path, frames: np.ndarray, spacing_mm: float) -> str:
    """A multi-frame MONOCHROME2 ultrasound DICOM with one calibrated region; returns its series UID."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "USVLM^Selftest", "usvlm-selftest", "US"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    t, rows, columns = frames.shape
    ds.NumberOfFrames, ds.Rows, ds.Columns = t, rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 33.3
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = columns - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = spacing_mm / 10.0
    ds.SequenceOfUltrasoundRegions = pydicom.Sequence([region])
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    pydicom.dcmwrite(str(path), ds, write_like_original=False)
    return str(ds.SeriesInstanceUID)


class SelfTests:
    TESTS = ("test_dicom_single_frame", "test_dicom_cine_sequence_all_frames", "test_rgb_volume",
             "test_refine_undo_and_manual_edit_kept", "test_bad_input_leaves_scene_unchanged")
    _logic = None

    # -- helpers --------------------------------------------------------------------------------
    def logic(self):
        """One logic (and engine) for all tests: the engine keeps its model loaded."""
        if SelfTests._logic is None:
            from USVLMSegmentLib.logic import USVLMSegmentLogic

            SelfTests._logic = USVLMSegmentLogic()
        logic = SelfTests._logic
        logic.forgetScene()
        return logic

    def parameters(self, logic, node, prompt, **kwargs):
        p = logic.getParameterNode()
        p.inputVolume, p.prompt, p.outputSegmentation, p.classify = node, prompt, None, False
        p.allFrames, p.overwrite, p.threshold = False, False, 0.5
        for key, value in kwargs.items():
            setattr(p, key, value)
        return p

    def loadDicom(self, folder):
        from DICOMLib import DICOMUtils

        DICOMUtils.importDicom(str(folder))
        series = [s for s in DICOMUtils.allSeriesUIDsInDatabase()]
        loaded = DICOMUtils.loadSeriesByUID(series)
        import slicer

        volumes = [slicer.mrmlScene.GetNodeByID(i) for i in loaded]
        return [v for v in volumes if v is not None and v.IsA("vtkMRMLVolumeNode")]

    def checkSegments(self, result, volume, cine=None):
        """Every written segment (every item of a sequence) equals the engine's mask."""
        import slicer

        node = slicer.mrmlScene.GetNodeByID(result.segmentation_id)
        self.assertEqual(node.GetNodeReferenceID("referenceImageGeometryRef"), volume.GetID())
        frames = result.target.frames
        for segment, segmentId, name in zip(result.reply.segments, result.segment_ids, result.names):
            if cine is None:
                got = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume)
                want = segment.mask if segment.mask.ndim == 3 else segment.mask[np.newaxis]
                got = got[list(frames)] if got.shape[0] > 1 else got
                self.assertGreaterEqual(dice(got, want), DICE_MIN, name)
                continue
            for t, item in enumerate(frames):
                cine.select(item)
                slicer.app.processEvents()
                got = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, cine.proxy)
                want = segment.mask[t] if segment.mask.ndim == 3 else segment.mask
                self.assertGreaterEqual(dice(got[0], want), DICE_MIN, f"{name}, frame {item}")
            np.testing.assert_allclose(node.GetSegmentation().GetSegment(segmentId).GetColor(),
                                       segment.color, atol=1e-6)

    # -- tests ----------------------------------------------------------------------------------
    def test_dicom_single_frame(self):
        """The bundled phantom DICOM through the DICOM database: calibrated from its US region."""
        from DICOMLib import DICOMUtils
        from USVLMSegmentLib import resources, sequences

        sample = resources.sample_image()
        self.assertIsNotNone(sample, "the bundled sample is missing")
        folder = Path(tempfile.mkdtemp(prefix="usvlm-selftest-"))
        (folder / sample.name).write_bytes(sample.read_bytes())
        with DICOMUtils.TemporaryDICOMDatabase():
            volume = self.loadDicom(folder)[0]
            logic = self.logic()
            p = self.parameters(logic, volume, "breast mass", classify=True)
            result = logic.process(p)
        self.assertTrue(result.target.calibration.calibrated, result.target.calibration.describe())
        self.checkSegments(result, volume, sequences.CineSequence.of(volume))
        self.assertGreater(int(result.reply.segments[0].mask.sum()), 0)
        m = result.reply.segments[0].measurements
        self.assertEqual(m.unit, "mm")
        self.assertIsNotNone(result.reply.segments[0].classification)

    def test_dicom_cine_sequence_all_frames(self):
        """A 6-frame US DICOM loads as a Sequence; "All frames" contours every item and records a
        segmentation Sequence in the same browser."""
        import slicer
        from DICOMLib import DICOMUtils
        from USVLMSegmentLib import sequences

        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:96, :128]
        frames = []
        for t in range(6):  # a dark round "lesion" drifting across a speckled background
            blob = (xx - 40 - 8 * t) ** 2 + (yy - 48) ** 2 < 18 ** 2
            frames.append(np.where(blob, 30, 140) + rng.integers(0, 40, (96, 128)))
        folder = Path(tempfile.mkdtemp(prefix="usvlm-selftest-cine-"))
        write_us_cine(folder / "cine.dcm", np.asarray(frames, np.uint8), 0.2)
        with DICOMUtils.TemporaryDICOMDatabase():
            volume = self.loadDicom(folder)[0]
            cine = sequences.CineSequence.of(volume)
            self.assertIsNotNone(cine, "the multi-frame DICOM did not load as a Sequence")
            self.assertEqual(cine.count, 6)
            logic = self.logic()
            p = self.parameters(logic, volume, "breast mass", allFrames=True)
            result = logic.process(p)
        self.assertEqual(result.target.frames, tuple(range(6)))
        segNode = slicer.mrmlScene.GetNodeByID(result.segmentation_id)
        segSequence = sequences.segmentation_sequence(cine, segNode)
        self.assertIsNotNone(segSequence, "no segmentation sequence in the cine's browser")
        self.assertEqual(segSequence.GetNumberOfDataNodes(), 6)
        self.assertTrue(cine.browser.GetSaveChanges(segSequence))
        self.checkSegments(result, volume, cine)
        self.assertTrue(result.target.calibration.calibrated)
        # One Undo takes the whole run back: the segment goes from every item.
        self.assertEqual(logic.undo(), result.names)
        for item in range(6):
            cine.select(item)
            slicer.app.processEvents()
            self.assertIsNone(segNode.GetSegmentation().GetSegment(result.segment_ids[0]), f"item {item}")

    def test_rgb_volume(self):
        """An RGB (vector) 2D volume made in the scene: uncalibrated spacing is reported in px."""
        import slicer

        pixels = np.random.default_rng(3).integers(0, 255, size=(1, 64, 96, 3), dtype=np.uint8)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "usvlm-selftest-rgb")
        slicer.util.updateVolumeFromArray(node, pixels)  # spacing 1 x 1: a placeholder
        logic = self.logic()
        result = logic.process(self.parameters(logic, node, "thyroid nodule"))
        self.checkSegments(result, node)
        self.assertFalse(result.target.calibration.calibrated)
        m = result.reply.segments[0].measurements
        self.assertEqual((m.unit, m.calibrated), ("px", False))

    def test_refine_undo_and_manual_edit_kept(self):
        """A slider move rewrites the model's segment, Undo restores it; after a manual edit a
        slider move leaves the segment as edited."""
        import slicer
        from USVLMSegmentLib import scene

        pixels = np.random.default_rng(1).integers(0, 255, size=(1, 80, 96), dtype=np.uint8)
        pixels[0, 20:60, 30:70] //= 4
        node = slicer.util.addVolumeFromArray(pixels, ijkToRAS=np.diag([-0.3, -0.3, 1.0, 1.0]),
                                              name="usvlm-selftest-edit")
        logic = self.logic()
        p = self.parameters(logic, node, "cyst", threshold=0.5)
        result = logic.process(p)
        segNode = slicer.mrmlScene.GetNodeByID(result.segmentation_id)
        segmentId = result.segment_ids[0]
        first = scene.segment_mask(segNode, segmentId, node)
        p.threshold = 0.2
        self.assertEqual(logic.refineNow(p), [])
        refined = scene.segment_mask(segNode, segmentId, node)
        self.assertFalse(np.array_equal(first, refined), "the threshold change did not change the mask")
        self.assertEqual(logic.undo(), [segNode.GetSegmentation().GetSegment(segmentId).GetName()])
        np.testing.assert_array_equal(scene.segment_mask(segNode, segmentId, node), first)
        # A manual edit, as the Segment Editor would make it, then a slider move: the edit stays.
        edited = first.copy()
        edited[0, :10, :10] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segNode, segmentId, node)
        p.threshold = 0.7
        skipped = logic.refineNow(p)
        self.assertEqual(skipped, result.names[:1])
        np.testing.assert_array_equal(scene.segment_mask(segNode, segmentId, node), edited)
        # A new run never overwrites the edited segment, even with overwrite on: it adds one.
        p.overwrite = True
        again = logic.process(p)
        self.assertNotEqual(again.segment_ids[0], segmentId)
        np.testing.assert_array_equal(scene.segment_mask(segNode, segmentId, node), edited)

    def test_bad_input_leaves_scene_unchanged(self):
        """Empty prompt, a CT-like volume: clear errors, no new nodes."""
        import slicer
        from USVLMSegmentLib.segment_naming import PromptError
        from USVLMSegmentLib.volume_geometry import NotUltrasound

        node = slicer.util.addVolumeFromArray(np.zeros((1, 64, 64), np.uint8), name="usvlm-selftest-blank")
        ct = slicer.util.addVolumeFromArray(np.full((20, 64, 64), -1000, np.int16), name="usvlm-selftest-ct")
        logic = self.logic()
        p = self.parameters(logic, node, "   ")
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(PromptError):
            logic.process(p)
        p.inputVolume, p.prompt = ct, "cyst"
        with self.assertRaises(NotUltrasound):
            logic.process(p)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)

