"""The Slicer-side engine client (USVLMSegmentLib.engine_client / engine_process) against a real
`usvlm serve` process that LocalEngine starts: segment, refine, a 30-frame cine, cancel, the
engine killed mid-request and restarted, tokens, size limits, and what the client imports."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_engine_server import us_like

MODULE = Path(__file__).resolve().parents[1] / "USVLMSegment"
sys.path.insert(0, str(MODULE))  # as Slicer puts qt-scripted-modules on the path

from USVLMSegmentLib.engine_client import (EngineCancelled, EngineClient, EngineError,  # noqa: E402
                                           EngineRefused, EngineTimeout, EngineUnavailable,
                                           ImageData, Point, PostOptions, Progress, decode_frame,
                                           encode_frame)
from USVLMSegmentLib.engine_process import EngineCrashed, EngineStartError, LocalEngine  # noqa: E402

PIXEL_LIMIT = 4 * 1024**2  # the test engine's USVLM_MAX_PIXEL_BYTES


@pytest.fixture(scope="module")
def engine(model_dir):
    events = []
    local = LocalEngine(sys.executable, model=str(model_dir), device="cpu",
                        extra_args=["--threads", "1", "--batch-size", "2"],
                        env={"USVLM_MAX_PIXEL_BYTES": str(PIXEL_LIMIT)}, start_timeout=120,
                        request_timeout=60, cancel_grace=5, on_event=events.append)
    local.start()
    local.test_events = events  # type: ignore[attr-defined]
    yield local
    local.stop()
    assert not local.running


def grey(shape, seed=0, **kw) -> ImageData:
    return ImageData(us_like(shape, seed), (0.1, 0.1), True, cine=len(shape) == 3, **kw)


def test_health_describes_the_engine(engine):
    info = engine.health()
    assert info.protocol == 1 and info.model.name == "tiny-mona" and info.device == "cpu"
    assert info.limits.max_pixel_bytes == PIXEL_LIMIT and not info.busy
    assert info.pid == engine.pid


def test_segment_refine_and_classify(engine):
    image = grey((240, 320), name="Volume 1")
    reply = engine.segment(image, ["mass", "cyst"], classify=True)
    assert [s.index for s in reply.segments] == [0, 1] and reply.frames == [0]
    first = reply.segments[0]
    assert first.mask.shape == (240, 320) and first.mask.dtype == bool
    assert first.name == "Mass" and first.measurements.unit == "mm" and first.measurements.calibrated
    assert first.terminology and len(first.color) == 3
    if not first.empty:
        assert set(first.classification) == {"benign", "malignant"}

    refined = engine.refine(reply.result_id, PostOptions(threshold=0.99), index=0)
    assert len(refined.segments) == 1 and not refined.segments[0].mask.any()
    assert refined.segments[0].options["threshold"] == 0.99
    back = engine.refine(reply.result_id, PostOptions(threshold=first.options["threshold"]), index=0)
    np.testing.assert_array_equal(back.segments[0].mask, first.mask)

    quick = engine.segment(image, ["mass"], measure=False, classify=True)  # a slider moving
    assert quick.segments[0].measurements is None
    np.testing.assert_array_equal(quick.segments[0].mask, first.mask)
    assert (quick.segments[0].classification is None) == first.empty
    slid = engine.refine(quick.result_id, PostOptions(threshold=0.3), measure=False)
    assert slid.segments[0].measurements is None and slid.segments[0].options["threshold"] == 0.3

    probs = engine.classify(image, mask=np.ones((240, 320), bool)).probabilities
    assert set(probs) == {"benign", "malignant"} and sum(probs.values()) == pytest.approx(1.0)


def test_second_prompt_sends_only_the_image_id(engine):
    image = grey((240, 320), seed=7)
    client = engine._ensure()
    engine.segment(image, ["mass"])
    sent = []
    original = client._frame_call

    def spy(path, body, *args, **kwargs):
        sent.append(len(body))
        return original(path, body, *args, **kwargs)

    client._frame_call = spy
    try:
        engine.segment(image, ["cyst"])
    finally:
        del client._frame_call
    assert sent and sent[0] < 2000  # the header only, not the 77 kB of pixels


def test_cine_of_30_frames_with_progress_and_a_click(engine):
    cine = grey((30, 240, 320), seed=2)
    progress: list[Progress] = []
    reply = engine.segment(cine, ["mass"], frames="all", progress=progress.append)
    assert reply.frames == list(range(30)) and reply.segments[0].mask.shape == (30, 240, 320)
    assert progress and progress[-1].done == progress[-1].total == 30
    assert len(reply.segments[0].area_per_frame) == 30
    clicked = engine.refine(reply.result_id, PostOptions(point=Point(160, 120, frame=4)))
    assert clicked.segments[0].mask.shape == (30, 240, 320)
    with pytest.raises(EngineRefused, match="frame 40"):
        engine.refine(reply.result_id, PostOptions(point=Point(160, 120, frame=40)))


def _cine_in_background(engine, seed: int) -> tuple[threading.Thread, list]:  # noqa: ANN001
    """Start contouring a 30-frame cine on another thread; return once its first progress event
    has arrived (the job is running in the engine). `outcome` gets the reply or the EngineError."""
    cine = grey((30, 240, 320), seed=seed)
    outcome: list = []
    started = threading.Event()

    def run() -> None:
        try:
            outcome.append(engine.segment(cine, ["mass"], progress=lambda p: started.set()))
        except EngineError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    return worker, outcome


def test_cancel_mid_cine(engine):
    worker, outcome = _cine_in_background(engine, seed=3)
    t0 = time.monotonic()
    assert engine.cancel() is True  # acknowledged and stopped: the engine is not killed
    worker.join(10)
    assert isinstance(outcome[0], EngineCancelled), outcome
    assert time.monotonic() - t0 < 3
    assert engine.health().busy is False
    assert engine.segment(grey((64, 64)), ["mass"]).segments[0].mask.shape == (64, 64)


def test_engine_killed_mid_request_is_restarted(engine):
    before = engine.pid
    engine.take_events()
    worker, outcome = _cine_in_background(engine, seed=4)
    os.kill(before, signal.SIGKILL)
    worker.join(120)
    assert isinstance(outcome[0], EngineCrashed), outcome
    assert "restarted" in str(outcome[0]) and "\n" not in str(outcome[0])
    assert engine.pid != before and engine.running
    kinds = [e.kind for e in engine.take_events()]
    assert kinds == ["crashed", "started", "restarted"]
    assert engine.segment(grey((64, 64)), ["mass"]).segments[0].mask.shape == (64, 64)


def test_wrong_token_and_oversized_image_are_refused(engine):
    url = engine._ensure().url
    with pytest.raises(EngineRefused, match="access token") as exc:
        EngineClient(url, "wrong-token-0123456789abcdef").health()
    assert exc.value.status == 401
    big = ImageData(np.zeros((1600, 3000), np.uint8), (0.1, 0.1), True)  # 4.6 MB > 4 MiB
    with pytest.raises(EngineRefused, match="over the engine's limit of 4.0 MiB") as exc:
        engine.segment(big, ["mass"])  # refused here: the client knows the engine's limits
    assert exc.value.status == 413 and exc.value.kind == "too_large"
    fresh = EngineClient(url, engine._ensure()._auth.split()[1])  # has not asked for the limits
    with pytest.raises(EngineRefused, match="request of 4.6 MiB is over the engine.s limit") as exc:
        fresh.segment(big, ["mass"])  # refused by the engine, before it read the pixels
    assert exc.value.status == 413 and exc.value.kind == "too_large"
    assert engine.health().busy is False


def test_deadline_cancels_the_job(engine):
    cine = grey((30, 240, 320), seed=5)
    client = engine._ensure()
    with pytest.raises(EngineTimeout, match="did not answer within"):
        client.segment(cine, ["mass"], timeout=0.3)
    deadline = time.monotonic() + 10
    while engine.health().busy and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not engine.health().busy  # the engine was told to stop the job


def test_unreachable_engine_is_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineUnavailable, match="not running") as exc:
        EngineClient(f"http://127.0.0.1:{port}", "x" * 20).health()
    assert "\n" not in str(exc.value)
    with pytest.raises(EngineError, match="not an http"):
        EngineClient("ftp://example.org", "x" * 20)


def test_engine_that_cannot_start_says_why(tmp_path):
    local = LocalEngine(sys.executable, model=str(tmp_path / "missing"), start_timeout=60)
    with pytest.raises(EngineStartError, match="exited with code 2 while starting: error: .*missing"):
        local.start()


def test_wire_formats_agree_with_the_engine():
    from usvlm.serve import wire

    mask = np.random.default_rng(0).random((2, 9, 13)) > 0.5
    image = np.arange(60, dtype=np.float32).reshape(6, 10)
    ours = encode_frame({"x": 1}, [("m", mask, "bits"), ("i", image, "raw")])
    assert ours == wire.encode_frame({"x": 1}, [("m", mask, "bits"), ("i", image, "raw")])
    header, arrays = decode_frame(ours)
    assert header == {"x": 1}
    np.testing.assert_array_equal(arrays["m"], mask)
    theirs = wire.decode_frame(ours)
    np.testing.assert_array_equal(theirs.arrays["i"], image)


def test_image_ids_agree_with_the_engine():
    from USVLMSegmentLib.engine_client import image_content_id

    from usvlm.serve.requests import image_id

    pixels = us_like((5, 20, 30))
    assert image_content_id(pixels, False, True) == image_id("|u1", pixels.shape, False, True,
                                                             pixels.tobytes())


def test_client_imports_nothing_slicer_lacks():
    code = ("import sys; sys.path.insert(0, %r); import USVLMSegmentLib.engine_client, "
            "USVLMSegmentLib.engine_process; import json; print(json.dumps(sorted(sys.modules)))"
            % str(MODULE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert not loaded & {"torch", "usvlm", "pydicom", "fastapi", "starlette", "uvicorn", "scipy",
                         "pydantic", "open_clip", "transformers"}


def test_client_is_python_39_syntax():
    for name in ("engine_client.py", "engine_process.py"):
        ast.parse((MODULE / "USVLMSegmentLib" / name).read_text(), feature_version=(3, 9))


def test_prompt_choices_preview_and_models_come_from_the_engine(engine):
    """What the prompt box and the model box show, without the core in Slicer's Python."""
    choices = engine.prompt_choices()
    assert choices.organs[0][0] == "generic" and ("breast", "Breast") in [tuple(o) for o in choices.organs]
    breast = engine.prompt_choices("breast")
    assert "breast mass" in [t.lower() for t in breast.completions] and breast.presets
    previews = engine.preview("breast mass; something new", "breast")
    assert [p.matched_by for p in previews] == ["exact", "none"]
    assert previews[0].name == "Breast mass" and "SCT" in previews[0].terminology
    assert previews[1].name == "something new" and "used as typed" in previews[1].description
    with pytest.raises(EngineError) as caught:
        engine.prompt_choices("spleen")
    assert "spleen" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(EngineError):
        engine.preview("mass\u2028cyst")  # a line separator: refused like on the command line
    names = [m.name for m in engine.models()]
    assert "usvlm-default" in names and all(m.summary for m in engine.models())


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "US1_UNCR.dcm", "gdcm-US-ALOKA-16.dcm"])
def test_calibration_from_the_dicom_header_follows_the_readers_rule(engine, name):
    """Slicer loads an uncalibrated US DICOM with 1 mm spacing; the engine tells from the header
    (no pixel data sent) what the core's reader says of the whole file."""
    from conftest import us_file
    from USVLMSegmentLib.dicom_header import header_bytes

    from usvlm.io import read_image

    path = us_file(name)
    header = header_bytes(str(path))
    assert len(header) < path.stat().st_size  # the pixel data stayed behind
    remote = engine.calibration(header, name)
    image = read_image(path)
    assert remote.calibrated == image.geometry.calibrated
    assert remote.source == image.info.spacing_source
    assert remote.spacing_mm == pytest.approx((image.geometry.spacing_x, image.geometry.spacing_y))
    assert remote.field_of_view == (tuple(image.info.field_of_view) if image.info.field_of_view else None)


def test_a_header_that_is_not_dicom_is_one_line(engine):
    with pytest.raises(EngineError) as caught:
        engine.calibration(b"not a dicom header at all", "junk.dcm")
    assert "junk.dcm" in str(caught.value) and "\n" not in str(caught.value)
