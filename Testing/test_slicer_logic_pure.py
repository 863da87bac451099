"""The Slicer module's own logic, which runs in Slicer's Python without the core (stdlib + numpy,
Python 3.9): parameter defaults, prompts and segment names, volume geometry and clicks, the results
table and its CSV, background calls, and the engine connection, local and remote, against a real
`usvlm serve` process."""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_server import TOKEN, start_engine, stop_engine, us_like

MODULE = Path(__file__).resolve().parents[1] / "USVLMSegment"
sys.path.insert(0, str(MODULE))  # as Slicer puts qt-scripted-modules on the path

from USVLMSegmentLib.background import GIVE_SECONDS, BackgroundCall, CallEvent  # noqa: E402
from USVLMSegmentLib.engine_client import (EngineCancelled, EngineClient, EngineError,  # noqa: E402
                                           EngineRefused, EngineUnavailable, ImageData, Measurements,
                                           Point, PostOptions, Progress, SegmentResult)
from USVLMSegmentLib.engine_connection import (EngineConnection, EngineSettings,  # noqa: E402
                                               SettingsError)
from USVLMSegmentLib.engine_env import EngineEnvironment  # noqa: E402
from USVLMSegmentLib.engine_process import EngineCrashed, LocalEngine  # noqa: E402
from USVLMSegmentLib.module_defaults import DEFAULTS, DEVICES, ENGINE_MODES, ModuleDefaults  # noqa: E402
from USVLMSegmentLib.result_rows import (COLUMNS, CSV_FIELDS, ResultRow, result_rows,  # noqa: E402
                                         rows_csv)
from USVLMSegmentLib.segment_naming import (PromptError, SegmentPlan, plan_segments,  # noqa: E402
                                            split_prompts, unique_name)
from USVLMSegmentLib.volume_geometry import (NotUltrasound, check_ultrasound_volume,  # noqa: E402
                                             frame_at_ras, frames_to_volume, pixel_spacing,
                                             ras_to_pixel)

# -- parameters ----------------------------------------------------------------------------------


def test_defaults_are_valid_choices_and_valid_engine_options():
    assert DEFAULTS == ModuleDefaults()
    assert DEFAULTS.device in DEVICES and DEVICES[0] == "auto"
    assert ENGINE_MODES == ("local", "remote")
    assert 0.0 <= DEFAULTS.threshold <= 1.0
    assert not DEFAULTS.overwrite  # existing segments are never replaced unless asked
    assert not DEFAULTS.all_frames and DEFAULTS.prompt == "" and DEFAULTS.organ == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.threshold = 0.9  # type: ignore[misc]
    # What the panel sends is accepted by the engine's post-processing as it is.
    from usvlm.postprocess import PostprocessOptions

    PostprocessOptions(threshold=DEFAULTS.threshold, keep_largest=DEFAULTS.keep_largest,
                       fill_holes=DEFAULTS.fill_holes, min_area_mm2=DEFAULTS.min_area_mm2,
                       smoothing_mm=DEFAULTS.smoothing_mm)
    from usvlm.model.registry import DEFAULT_MODEL_NAME

    assert DEFAULTS.model == DEFAULT_MODEL_NAME


# -- prompts and segment names -------------------------------------------------------------------

def test_split_prompts():
    assert split_prompts(" breast mass ; cyst\nthyroid nodule ;") == ["breast mass", "cyst", "thyroid nodule"]
    assert split_prompts("oval, circumscribed mass") == ["oval, circumscribed mass"]  # commas describe
    assert split_prompts("cyst\r\nmass") == ["cyst", "mass"]  # pasted Windows lines
    assert split_prompts(";;cyst;;") == ["cyst"]
    # The engine checks each prompt (bank lookup, length, characters): passed on as typed here.
    assert split_prompts("???") == ["???"]
    for bad in ("", "  ;  \n", None):
        with pytest.raises(PromptError, match="empty prompt"):
            split_prompts(bad)  # type: ignore[arg-type]
    assert issubclass(PromptError, ValueError)


def test_unique_names_never_overwrite():
    assert unique_name("Cyst", []) == "Cyst"
    assert unique_name("Cyst", ["cyst"]) == "Cyst 2"  # case-insensitive, as Slicer's name lookup
    assert unique_name("Cyst", ["Cyst", "Cyst 2"]) == "Cyst 3"
    assert unique_name("Cyst", ["CYST", "cyst 2", "Cyst 4"]) == "Cyst 3"  # the first free number
    assert unique_name("Cyst", ["Cyst 2"]) == "Cyst"
    plans = plan_segments(["Cyst", "Cyst", "Mass"], ["Cyst"], overwrite=False)
    assert [(p.name, p.replace) for p in plans] == [("Cyst 2", False), ("Cyst 3", False), ("Mass", False)]
    plans = plan_segments(["Cyst", "Cyst"], ["Cyst"], overwrite=True)
    assert [(p.name, p.replace) for p in plans] == [("Cyst", True), ("Cyst 2", False)]
    assert plan_segments([], ["Cyst"], overwrite=True) == []
    assert plan_segments(["cyst"], ["Cyst"], overwrite=True) == [SegmentPlan("cyst", True)]


def test_protected_segments_are_never_replaced():
    """A segment edited by hand since the model wrote it keeps its contents, even with overwrite."""
    plans = plan_segments(["Cyst"], ["Cyst"], overwrite=True, protected=["Cyst"])
    assert plans == [SegmentPlan("Cyst 2", False)]
    plans = plan_segments(["Cyst", "Mass", "Mass"], ["Cyst", "Mass", "Mass 2"], overwrite=True,
                          protected=["MASS"])  # case-insensitive
    assert [(p.name, p.replace) for p in plans] == [("Cyst", True), ("Mass 3", False), ("Mass 4", False)]
    # Without overwrite nothing is replaced anyway; a protected name that does not exist changes nothing.
    plans = plan_segments(["Cyst"], ["Cyst"], overwrite=False, protected=["Cyst"])
    assert plans == [SegmentPlan("Cyst 2", False)]
    assert plan_segments(["Cyst"], [], overwrite=True, protected=["Cyst"]) == [SegmentPlan("Cyst", False)]
    # protected may be any iterable (a generator of the edited segments' names).
    plans = plan_segments(["Cyst"], ["Cyst"], overwrite=True, protected=(n for n in ["Cyst"]))
    assert plans == [SegmentPlan("Cyst 2", False)]


_NAMES = st.sampled_from(["Cyst", "cyst", "Mass", "MASS", "Mass 2", "Cyst 2", "Lesion"])


@settings(max_examples=300, deadline=None)
@given(names=st.lists(_NAMES, max_size=6), existing=st.lists(_NAMES, max_size=5, unique_by=str.casefold),
       protected=st.lists(_NAMES, max_size=3), overwrite=st.booleans())
def test_plan_segments_invariants(names, existing, protected, overwrite):
    plans = plan_segments(names, existing, overwrite, protected)
    assert len(plans) == len(names)
    fold = str.casefold
    kept = {fold(p) for p in protected}
    replaced = [fold(p.name) for p in plans if p.replace]
    assert len(replaced) == len(set(replaced))  # each existing segment is replaced at most once
    assert set(replaced) <= {fold(e) for e in existing} - kept  # never a protected one
    if not overwrite:
        assert not replaced
    new = [fold(p.name) for p in plans if not p.replace]
    assert len(new) == len(set(new)) and not set(new) & {fold(e) for e in existing}
    for plan, name in zip(plans, names):
        assert plan.name == name or (not plan.replace and plan.name.startswith(name + " "))


# -- volume geometry -----------------------------------------------------------------------------

def _matrix(direction, spacing, origin=(10.0, -5.0, 3.0)):
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)
    m[:3, 3] = origin
    return m


def _oblique() -> np.ndarray:
    """A rotation by 30 degrees about an axis that is neither of the image's."""
    axis = np.array([1.0, 2.0, 3.0]) / math.sqrt(14.0)
    a = math.radians(30)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


FLIPPED = np.diag([-1.0, -1.0, 1.0])  # Slicer's usual LPS-to-RAS flip
ROTATED = [[0, -1, 0], [-1, 0, 0], [0, 0, 1]]  # axes swapped and flipped
DIRECTIONS = {"flipped": FLIPPED, "rotated": ROTATED, "oblique": _oblique()}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_pixel_spacing(direction):
    assert pixel_spacing(_matrix(direction, (0.2, 0.3, 1.5))) == (pytest.approx(0.2), pytest.approx(0.3))
    single = _matrix(direction, (0.25, 0.25, 1.0))
    single[:3, 2] = 0.0
    assert pixel_spacing(single) == (pytest.approx(0.25), pytest.approx(0.25))


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_click_maps_exactly_to_the_pixel_and_frame(direction):
    m = _matrix(direction, (0.2, 0.3, 1.5))
    shape = (40, 60)  # rows, columns
    for i, j, k in [(0, 0, 0), (59, 39, 4), (17, 23, 2), (12.25, 30.5, 1)]:
        ras = (m @ [i, j, k, 1])[:3]
        point = ras_to_pixel(m, ras, shape, 5)
        assert isinstance(point, Point) and isinstance(point.frame, int)
        assert (point.x, point.y, point.frame) == (pytest.approx(i, abs=1e-9), pytest.approx(j, abs=1e-9), k)
        assert frame_at_ras(m, ras, 5) == k
    # A point a little inside the half-pixel border is still on the image.
    assert ras_to_pixel(m, (m @ [-0.4, 39.4, 0, 1])[:3], shape, 5) == Point(pytest.approx(-0.4),
                                                                            pytest.approx(39.4), 0)
    # A markup list's point left from another image: not on this one, ignored (never an error).
    for i, j, k in [(80, 5, 0), (-0.6, 5, 0), (5, 39.6, 0), (5, -3, 2), (5, 5, 5), (5, 5, -1), (5, 5, 4.6)]:
        assert ras_to_pixel(m, (m @ [i, j, k, 1])[:3], shape, 5) is None, (i, j, k)
    # The same points on a 2D image (frames=1): only the plane K = 0 is on it.
    assert ras_to_pixel(m, (m @ [12.25, 30.5, 0, 1])[:3], shape) == Point(pytest.approx(12.25),
                                                                          pytest.approx(30.5), 0)
    assert ras_to_pixel(m, (m @ [12.25, 30.5, 3, 1])[:3], shape) is None
    # A tolerance of 0 refuses the border.
    assert ras_to_pixel(m, (m @ [-0.4, 5, 0, 1])[:3], shape, tolerance=0.0) is None


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_single_slice_with_a_zero_k_column(direction):
    """A 2D image whose IJK-to-RAS has no K axis (a singular matrix) still maps clicks."""
    m = _matrix(direction, (0.2, 0.3, 1.0))
    m[:3, 2] = 0.0
    assert abs(np.linalg.det(m[:3, :3])) < 1e-12
    normal = np.cross(m[:3, 0], m[:3, 1])
    normal /= np.linalg.norm(normal)
    for i, j in [(0, 0), (59, 39), (12.25, 30.5)]:
        ras = (m @ [i, j, 0, 1])[:3]
        point = ras_to_pixel(m, ras, (40, 60))
        assert point == Point(pytest.approx(i, abs=1e-9), pytest.approx(j, abs=1e-9), 0)
        assert frame_at_ras(m, ras, 1) == 0
        assert ras_to_pixel(m, ras + 1e-6 * normal, (40, 60)) is not None  # rounding off the plane
        assert ras_to_pixel(m, ras + 5.0 * normal, (40, 60)) is None  # 5 mm off the plane
        assert ras_to_pixel(m, ras - 5.0 * normal, (40, 60)) is None
    assert ras_to_pixel(m, (m @ [70, 5, 0, 1])[:3], (40, 60)) is None


def test_frame_at_ras_is_clamped_to_the_frames():
    m = _matrix(FLIPPED, (0.2, 0.3, 1.5))
    assert [frame_at_ras(m, (m @ [5, 5, k, 1])[:3], 5) for k in (-3, -0.4, 0, 1.4, 1.6, 4, 9)] == \
        [0, 0, 0, 1, 2, 4, 4]
    assert frame_at_ras(m, (m @ [500, -500, 2, 1])[:3], 5) == 2  # off the image in-plane: still frame 2


def test_volume_checks():
    check_ultrasound_volume(1, "US", 0.0)
    check_ultrasound_volume(1, "us", 0.0)
    check_ultrasound_volume(30, None, 0.0)  # a cine held as one volume
    check_ultrasound_volume(30, None, -50.0)
    check_ultrasound_volume(1, None, -1024.0)  # one slice: not taken for CT by its values alone
    check_ultrasound_volume(30, "", None)
    with pytest.raises(NotUltrasound, match="a CT image, not ultrasound"):
        check_ultrasound_volume(1, "CT")
    with pytest.raises(NotUltrasound, match="^Head: a MR image"):
        check_ultrasound_volume(1, "mr", name="Head")
    with pytest.raises(NotUltrasound, match="3D volume of 120 slices .* -1024"):
        check_ultrasound_volume(120, None, -1024.0)
    assert issubclass(NotUltrasound, ValueError)


def test_masks_written_back_line_up_with_the_volume():
    mask = np.zeros((40, 60), bool)
    mask[5:9, 10:20] = True
    out = frames_to_volume(mask, [2], 4)  # one frame of a 4-frame cine
    assert out.shape == (4, 40, 60) and out.dtype == np.uint8
    assert out[2].sum() == mask.sum() and out.sum() == mask.sum()
    np.testing.assert_array_equal(out[2].astype(bool), mask)
    both = frames_to_volume(np.stack([mask, ~mask]), [0, 1], 2)
    np.testing.assert_array_equal(both[1].astype(bool), ~mask)
    np.testing.assert_array_equal(both[0].astype(bool), mask)
    assert frames_to_volume(mask, [0], 1).shape == (1, 40, 60)
    some = frames_to_volume(np.stack([mask, mask]), [3, 1], 5)  # frames in any order
    assert [int(f.sum()) for f in some] == [0, mask.sum(), 0, mask.sum(), 0]
    with pytest.raises(ValueError, match="for 1 segmented frame"):
        frames_to_volume(np.stack([mask, mask]), [0], 2)
    with pytest.raises(ValueError):
        frames_to_volume(mask[0], [0], 1)  # a row is no mask


# -- the results table ---------------------------------------------------------------------------

def _result(name="Cyst", *, measurements=None, classification=None, frame=0, empty=False, score=0.87):
    return SegmentResult(index=0, prompt=name.lower(), name=name, color=(1.0, 0.0, 0.0), terminology="",
                         matched_by="exact", score=score, empty=empty, frame=frame,
                         measurements=measurements, mask=np.zeros((4, 4), bool),
                         classification=classification)


MM = Measurements(area=12.345, long_axis=5.04, short_axis=3.0, taller_than_wide=True, calibrated=True,
                  unit="mm")
PX = Measurements(area=420.0, long_axis=31.25, short_axis=17.5, taller_than_wide=False, calibrated=False,
                  unit="px")


def test_result_rows_calibrated():
    rows = result_rows([_result(measurements=MM, classification={"benign": 0.8, "malignant": 0.2},
                                frame=3)], ["Cyst 2"], calibrated=True)
    row = rows[0]
    assert isinstance(row, ResultRow) and len(rows) == 1
    assert (row.segment, row.prompt, row.unit, row.calibrated, row.frame) == ("Cyst 2", "cyst", "mm", True, 3)
    assert row.area == 12.345 and row.taller_than_wide is True
    cells = row.cells()
    assert len(cells) == len(COLUMNS)
    assert cells == ["Cyst 2", "0.87", "80 %", "20 %", "12.3 mm²", "5.0 mm", "3.0 mm", "yes", "3"]


def test_result_rows_uncalibrated_say_so_in_every_size_cell():
    row = result_rows([_result(measurements=PX)], ["Cyst"], calibrated=False)[0]
    assert row.unit == "px" and not row.calibrated and row.benign is None
    cells = row.cells()
    assert cells[2] == cells[3] == ""  # not classified
    assert cells[4:7] == ["420.0 px² (uncalibrated)", "31.2 px (uncalibrated)", "17.5 px (uncalibrated)"]
    assert cells[7] == "no"
    # The engine's measurement says what it is, whatever the panel believed.
    assert result_rows([_result(measurements=PX)], ["Cyst"], calibrated=True)[0].unit == "px"


def test_result_rows_not_measured_yet():
    """While a slider moves the engine does not measure: sizes show as '…', units still honest."""
    mm = result_rows([_result(measurements=None)], ["Cyst"], calibrated=True)[0]
    assert (mm.area, mm.long_axis, mm.short_axis, mm.taller_than_wide) == (None, None, None, None)
    assert mm.unit == "mm" and mm.calibrated
    assert mm.cells()[4:8] == ["…", "…", "…", ""]
    px = result_rows([_result(measurements=None)], ["Cyst"], calibrated=False)[0]
    assert px.unit == "px" and not px.calibrated
    assert px.cells()[4:7] == ["… (uncalibrated)"] * 3


def test_result_rows_need_a_name_per_result():
    results = [_result("Cyst", measurements=MM), _result("Mass", measurements=MM, empty=True)]
    rows = result_rows(results, ["Cyst", "Mass 2"], calibrated=True)
    assert [(r.segment, r.empty) for r in rows] == [("Cyst", False), ("Mass 2", True)]
    with pytest.raises(ValueError, match="2 results but 1 segment names"):
        result_rows(results, ["Cyst"], calibrated=True)  # a row silently left out is a lie


def test_rows_csv():
    rows = result_rows([_result("Mass, oval", measurements=MM, classification={"benign": 0.8, "malignant": 0.2}),
                        _result('Cyst "A"', measurements=PX, frame=2, empty=True),
                        _result("Nodule", measurements=None)],
                       ["Mass, oval", 'Cyst "A"', "Nodule"], calibrated=True)
    text = rows_csv(rows)
    assert text.splitlines()[0] == ",".join(CSV_FIELDS)
    parsed = list(csv.DictReader(text.splitlines()))
    assert [p["segment"] for p in parsed] == ["Mass, oval", 'Cyst "A"', "Nodule"]  # quoted correctly
    mm, px, none = parsed
    assert mm["score"] == "0.8700" and float(mm["malignant"]) == pytest.approx(0.2)
    assert (mm["area"], mm["long_axis"], mm["unit"], mm["calibrated"]) == ("12.345", "5.040", "mm", "true")
    assert (mm["taller_than_wide"], mm["frame"], mm["empty"]) == ("true", "0", "false")
    assert (px["area"], px["unit"], px["calibrated"], px["benign"]) == ("420.000", "px", "false", "")
    assert (px["taller_than_wide"], px["frame"], px["empty"]) == ("false", "2", "true")
    assert (none["area"], none["long_axis"], none["short_axis"], none["taller_than_wide"]) == ("", "", "", "")
    assert (none["unit"], none["calibrated"]) == ("mm", "true")
    tabbed = rows_csv(rows, delimiter="\t")  # for the clipboard: pastes into a spreadsheet
    assert list(csv.DictReader(tabbed.splitlines(), delimiter="\t")) == parsed
    assert rows_csv([]) == ",".join(CSV_FIELDS) + "\n"


# -- background calls ----------------------------------------------------------------------------

def _drain(call: BackgroundCall, timeout: float = 10.0) -> list:
    assert call.wait(timeout), "the background call did not finish"
    return call.events()


def test_background_call_reports_progress_then_done():
    gate = threading.Event()
    seen_thread = []

    def work(report):
        seen_thread.append(threading.current_thread())
        for done in range(3):
            report(Progress(done + 1, 3, "segment"))
            if done == 0:
                assert gate.wait(10)
        return {"answer": 42}

    call = BackgroundCall(work, name="USVLM test", context=("seg", "node")).start()
    deadline = time.monotonic() + 10
    first = []
    while not first and time.monotonic() < deadline:  # polled as the GUI's timer does
        first = call.events()
        assert not call.give_time()  # the GUI's timer tick: the call is still waiting on the gate
    assert first == [CallEvent("progress", Progress(1, 3, "segment"))]
    assert not call.finished  # the call waits on the gate: still running
    gate.set()
    rest = _drain(call)
    assert [e.kind for e in rest] == ["progress", "progress", "done"]
    assert [e.payload.done for e in rest[:2]] == [2, 3] and rest[2].payload == {"answer": 42}
    assert call.finished and call.events() == []  # every event is given once
    assert call.context == ("seg", "node") and call.elapsed() > 0
    assert seen_thread[0] is not threading.current_thread() and seen_thread[0].daemon
    assert seen_thread[0].name == "USVLM test"


def test_background_call_error_and_cancel():
    def fails(report):
        report(Progress(1, 2, "segment"))
        raise EngineCrashed("the engine stopped (exit code -9) during the request")

    events = _drain(BackgroundCall(fails).start())
    assert [e.kind for e in events] == ["progress", "error"]
    assert isinstance(events[1].payload, EngineCrashed) and "exit code -9" in str(events[1].payload)

    def bug(report):
        return 1 / 0

    events = _drain(BackgroundCall(bug).start())
    assert [e.kind for e in events] == ["error"] and isinstance(events[0].payload, ZeroDivisionError)

    def cancelled(report):
        report(Progress(1, 30, "segment"))
        raise EngineCancelled("cancelled", "cancelled")

    events = _drain(BackgroundCall(cancelled).start())
    assert [e.kind for e in events] == ["progress", "cancelled"] and events[1].payload is None


def test_give_time_waits_for_the_call_at_most_so_long():
    gate = threading.Event()
    call = BackgroundCall(lambda report: gate.wait(10)).start()
    t0 = time.monotonic()
    assert call.give_time(0.05) is False  # still running: the tick gave it 50 ms
    assert 0.04 < time.monotonic() - t0 < 2.0
    assert 0 < GIVE_SECONDS < 0.05  # a tick's share stays short: the panel must stay responsive
    gate.set()
    deadline = time.monotonic() + 10
    while not call.give_time() and time.monotonic() < deadline:
        pass
    assert call.finished and [e.kind for e in call.events()] == ["done"]
    assert call.give_time() is True  # finished: returns at once


# -- engine settings -----------------------------------------------------------------------------

def test_engine_settings_checked():
    assert EngineSettings().checked() == EngineSettings()
    assert (EngineSettings().model, EngineSettings().device) == (DEFAULTS.model, DEFAULTS.device)
    with pytest.raises(SettingsError, match="mode must be one of local, remote, not 'cloud'"):
        EngineSettings(mode="cloud").checked()
    with pytest.raises(SettingsError, match="device must be one of auto, cpu, cuda, not 'gpu'"):
        EngineSettings(device="gpu").checked()
    for url in ("", "   ", "localhost:8000", "ftp://example.org", "http://", "http://:8000",
                "http://[::1", "http://host:99999", "http://host:port", "http://user:pw@host:8000",
                "http://host:8000/?x=1", "http://host:8000/#top"):
        with pytest.raises(SettingsError, match="address"):
            EngineSettings(mode="remote", url=url, token="t" * 20).checked()
    for token in ("", "   "):
        with pytest.raises(SettingsError, match="access token"):
            EngineSettings(mode="remote", url="http://127.0.0.1:8000", token=token).checked()
    remote = EngineSettings(mode="remote", url=" https://gpu.example.org:8443/usvlm ", token=" abc \n").checked()
    assert (remote.url, remote.token) == ("https://gpu.example.org:8443/usvlm", "abc")
    assert issubclass(SettingsError, ValueError)


def test_engine_settings_restart_needed():
    local = EngineSettings(model="usvlm-default", device="cpu")
    assert not local.restart_needed(local)
    assert dataclasses.replace(local, device="cuda").restart_needed(local)
    assert dataclasses.replace(local, model="other").restart_needed(local)
    assert not dataclasses.replace(local, url="http://x:1", token="t").restart_needed(local)  # unused locally
    remote = EngineSettings(mode="remote", url="http://127.0.0.1:8000", token="abc")
    assert remote.restart_needed(local) and local.restart_needed(remote)
    assert dataclasses.replace(remote, url="http://127.0.0.1:8001").restart_needed(remote)
    assert dataclasses.replace(remote, token="abd").restart_needed(remote)
    assert not dataclasses.replace(remote, model="other", device="cuda").restart_needed(remote)


def test_connection_before_connecting(tmp_path):
    with pytest.raises(SettingsError):
        EngineConnection(EngineSettings(mode="remote"))
    nowhere = EngineConnection(EngineSettings())  # neither an environment nor a python
    assert not nowhere.connected and nowhere.info is None
    with pytest.raises(EngineUnavailable, match="not connected"):
        nowhere.api  # noqa: B018
    nowhere.cancel()  # nothing to cancel, no error
    nowhere.close()
    assert nowhere.take_events() == [] and nowhere.log_tail() == []
    with pytest.raises(EngineUnavailable, match="no place for the engine environment"):
        nowhere.connect()
    fresh = EngineConnection(EngineSettings(), environment=EngineEnvironment(tmp_path / "env", sys.executable))
    assert fresh.needs_install() and fresh.environment_status().state == "missing"
    with pytest.raises(EngineUnavailable, match="not installed: the engine environment has not been created"):
        fresh.connect()
    assert not fresh.connected
    dev = EngineConnection(EngineSettings(), python=sys.executable)  # a checkout: nothing to install
    assert dev.environment_status() is None and not dev.needs_install()
    remote = EngineConnection(EngineSettings(mode="remote", url="http://127.0.0.1:9", token="t" * 20))
    assert remote.environment_status() is None and not remote.needs_install()
    # Bad new settings are refused and the old ones kept.
    with pytest.raises(SettingsError):
        dev.reconfigure(EngineSettings(device="tpu"))
    assert dev.settings == EngineSettings()


def test_unreachable_remote_engine_is_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = EngineConnection(EngineSettings(mode="remote", url=f"http://127.0.0.1:{port}", token="t" * 20))
    with pytest.raises(EngineUnavailable) as caught:
        conn.connect()
    assert "\n" not in str(caught.value) and not conn.connected


# -- against a real engine -----------------------------------------------------------------------

def _ijk_to_ras() -> np.ndarray:
    m = _matrix(FLIPPED, (0.2, 0.2, 1.0))
    m[:3, 2] = 0.0  # a single slice, as Slicer loads a 2D DICOM image
    return m


def _segment_and_tabulate(conn: EngineConnection) -> None:
    """What the module does after a run: name the segments, click, tabulate."""
    pixels = us_like((96, 128), seed=11)
    m = _ijk_to_ras()
    image = ImageData(pixels, pixel_spacing(m), calibrated=True, name="Volume 1")
    reply = conn.api.segment(image, ["mass", "cyst"], classify=True)
    assert [s.name for s in reply.segments] == ["Mass", "Cyst"]
    plans = plan_segments([s.name for s in reply.segments], ["Mass"], overwrite=False)
    names = [p.name for p in plans]
    assert names == ["Mass 2", "Cyst"]
    rows = result_rows(reply.segments, names, calibrated=True)
    for row, segment in zip(rows, reply.segments):
        assert row.unit == "mm" and row.calibrated and row.frame == segment.frame == 0
        assert row.area == segment.measurements.area and row.empty == segment.empty
        assert all("uncalibrated" not in c for c in row.cells())
    parsed = list(csv.DictReader(rows_csv(rows).splitlines()))
    assert [p["segment"] for p in parsed] == names
    # A click in the middle of the image, as a RAS markup point, reaches the engine as its pixel.
    click = ras_to_pixel(m, (m @ [64, 48, 0, 1])[:3], (96, 128))
    assert click == Point(pytest.approx(64), pytest.approx(48), 0)
    refined = conn.api.refine(reply.result_id, PostOptions(point=click), index=0)
    assert refined.segments[0].mask.shape == (96, 128)
    assert refined.segments[0].options["point"] == pytest.approx([64, 48])  # the pixel the click was on
    # Uncalibrated: sizes come back in pixels and every size cell says so.
    uncalibrated = conn.api.segment(ImageData(pixels, (1.0, 1.0), calibrated=False), ["mass"])
    row = result_rows(uncalibrated.segments, ["Mass 3"], calibrated=False)[0]
    assert row.unit == "px" and not row.calibrated
    assert all(c.endswith("(uncalibrated)") for c in row.cells()[4:7])
    # While a slider moves: not measured, the size cells wait.
    quick = conn.api.refine(reply.result_id, PostOptions(threshold=0.3), index=0, measure=False)
    row = result_rows(quick.segments, ["Mass 2"], calibrated=True)[0]
    assert row.area is None and row.cells()[4] == "…"


def _cancel_a_cine(conn: EngineConnection) -> None:
    """A 30-frame cine on a background call, cancelled from the 'GUI' thread."""
    cine = ImageData(us_like((30, 240, 320), seed=3), (0.1, 0.1), True, cine=True)
    call = BackgroundCall(lambda report: conn.api.segment(cine, ["mass"], progress=report)).start()
    deadline = time.monotonic() + 60
    events: list = []
    while not any(e.kind == "progress" for e in events) and time.monotonic() < deadline:
        events += call.events()
        call.give_time()
    assert any(e.kind == "progress" for e in events), events
    conn.cancel()
    assert call.wait(30)
    events += call.events()
    kinds = [e.kind for e in events]
    assert kinds[-1] == "cancelled" and set(kinds[:-1]) == {"progress"}, kinds
    assert conn.api.health().busy is False


@pytest.fixture(scope="module")
def local(model_dir):
    from usvlm.text.banks import prompt_dir

    conn = EngineConnection(EngineSettings(model=str(model_dir), device="cpu"), python=sys.executable,
                            prompt_dir=prompt_dir(), start_timeout=120)
    yield conn
    conn.close()


def test_local_engine_connects_and_segments(local):
    call = BackgroundCall(lambda report: local.connect()).start()  # as the module does: off the GUI thread
    events = _drain(call, 150)
    assert [e.kind for e in events] == ["done"], events
    info = events[0].payload
    assert info.model.name == "tiny-mona" and info.device == "cpu" and info is local.info
    assert local.connected and isinstance(local.api, LocalEngine)
    assert local.connect() is info  # already connected: the same engine
    assert [e.kind for e in local.take_events()] == ["started"] and local.take_events() == []
    assert any("LISTENING" in line for line in local.log_tail(400))
    assert local.api.prompt_choices().organs[0][0] == "generic"  # the --prompt-dir banks
    _segment_and_tabulate(local)


def test_local_engine_cancel(local):
    local.connect()
    pid = local.api.pid
    _cancel_a_cine(local)
    assert local.api.pid == pid  # acknowledged and stopped: the engine was not killed


def test_local_engine_reconfigure_and_close(local):
    local.connect()
    engine = local.api
    proc = engine._proc
    assert not local.reconfigure(EngineSettings(model=local.settings.model, device="cpu"))
    assert local.connected and local.api is engine  # nothing changed: the same engine
    assert local.reconfigure(EngineSettings(model=local.settings.model, device="auto"))
    assert not local.connected and proc.poll() is not None  # the old engine was stopped
    with pytest.raises(EngineUnavailable, match="not connected"):
        local.api  # noqa: B018
    info = local.connect()
    assert local.connected and local.api is not engine and local.api.pid != proc.pid
    assert local.settings.device == "auto" and info.device in ("cpu", "cuda")
    assert local.api.segment(ImageData(us_like((64, 64)), (0.2, 0.2), True), ["mass"]).segments[0].mask.shape \
        == (64, 64)
    proc = local.api._proc
    local.close()
    assert proc.poll() is not None and proc.returncode == 0  # stopped by closing its standard input
    assert not local.connected and local.info is None
    local.close()  # twice: nothing left to stop


@pytest.fixture(scope="module")
def served(model_dir):
    proc, url = start_engine(model_dir)
    yield url
    stop_engine(proc)


def test_remote_engine_with_the_right_token(served):
    conn = EngineConnection(EngineSettings(mode="remote", url=served + "/", token=f" {TOKEN} "))
    assert conn.settings.token == TOKEN
    info = conn.connect()
    assert info.model.name == "tiny-mona" and conn.connected and isinstance(conn.api, EngineClient)
    assert conn.take_events() == [] and conn.log_tail() == []  # a remote engine's log is the server's
    _segment_and_tabulate(conn)
    _cancel_a_cine(conn)
    # Switching engines: another token needs a new connection.
    assert conn.reconfigure(dataclasses.replace(conn.settings, token="another-token-0123456789"))
    assert not conn.connected
    conn.close()  # a remote engine is not ours to stop
    assert EngineClient(served, TOKEN).health().model.name == "tiny-mona"


def test_remote_engine_with_a_wrong_token(served):
    conn = EngineConnection(EngineSettings(mode="remote", url=served, token="wrong-token-0123456789abcdef"))
    with pytest.raises(EngineRefused, match="access token") as caught:
        conn.connect()
    assert caught.value.status == 401 and "\n" not in str(caught.value)
    assert not conn.connected and conn.info is None
    with pytest.raises(EngineError):
        conn.api  # noqa: B018


def test_modules_import_nothing_slicer_lacks():
    names = ["module_defaults", "segment_naming", "volume_geometry", "result_rows", "background",
             "engine_connection"]
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import importlib\n"
            "for n in json.loads(sys.argv[2]): importlib.import_module('USVLMSegmentLib.' + n)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    import json

    out = subprocess.run([sys.executable, "-c", code, str(MODULE), json.dumps(names)], capture_output=True,
                         text=True, timeout=60, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"torch", "usvlm", "pydicom", "fastapi", "starlette", "uvicorn", "scipy",
                         "pydantic", "open_clip", "transformers", "slicer", "qt", "vtk"}
