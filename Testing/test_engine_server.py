"""`usvlm serve` as a real process on 127.0.0.1, spoken to over real HTTP with the documented
framing (usvlm.serve.wire): results equal the in-process Segmenter's, refine, a 30-frame cine,
cancel, authentication, size limits and the bind rule."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from usvlm.serve.wire import FRAME_TYPE, PREFIX, STREAM_TYPE, decode_frame, encode_frame

TOKEN = "test-token-0123456789abcdef"
START_TIMEOUT_S = 120


def start_engine(model: Path, *args: str, env: dict[str, str] | None = None,
                 token: str | None = TOKEN) -> tuple[subprocess.Popen, str]:
    """`python -m usvlm serve --port 0` and the URL from its LISTENING line."""
    environ = {**os.environ, **(env or {})}
    environ.pop("USVLM_ENGINE_TOKEN", None)
    if token:
        environ["USVLM_ENGINE_TOKEN"] = token
    proc = subprocess.Popen([sys.executable, "-m", "usvlm", "serve", "--port", "0", "--model", str(model),
                             "--device", "cpu", "--threads", "1", "--exit-with-stdin", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environ, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("USVLM-ENGINE LISTENING "):
            return proc, line.split()[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"engine did not start: {line!r} {proc.stderr.read()[-2000:]}")


def stop_engine(proc: subprocess.Popen) -> None:
    proc.stdin.close()  # --exit-with-stdin: the engine stops by itself
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def us_like(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Speckle with a dark round 'mass' in the middle of each frame."""
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 40.0, size=shape).clip(0, 255)
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    img[..., (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 5) ** 2] *= 0.2
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def engine(model_dir):
    proc, url = start_engine(model_dir, "--batch-size", "2")
    yield url
    stop_engine(proc)
    assert proc.returncode == 0  # it stopped by itself when its standard input closed


class Http:
    def __init__(self, url: str, token: str | None = TOKEN) -> None:
        self.host, self.port = url.split("//")[1].split(":")
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=timeout)
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            h.setdefault("Content-Type", FRAME_TYPE)
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, r.getheader("Content-Type", ""), data

    def post_frame(self, path: str, header: dict, arrays=()) -> tuple[int, str, bytes]:
        return self.request("POST", path, encode_frame(header, arrays))


def frames_of(stream: bytes) -> list:
    out, at = [], 0
    while at < len(stream):
        (n,) = PREFIX.unpack_from(stream, at)
        header = json.loads(stream[at + 4:at + 4 + n])
        size = sum(-(-np.prod(a["shape"]) // 8) if a["encoding"] == "bits"
                   else np.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize for a in header["arrays"])
        end = at + 4 + n + int(size)
        out.append(decode_frame(stream[at:end]))
        at = end
    return out


def image_header(pixels: np.ndarray, cine: bool = False, **extra) -> dict:
    return {"image": {"rgb": False, "cine": cine, "spacing": [0.1, 0.1], "calibrated": True, **extra}}


def result_of(status: int, ctype: str, body: bytes):
    assert status == 200, body[:300]
    frames = [decode_frame(body)] if ctype == FRAME_TYPE else frames_of(body)
    assert frames[-1].header["event"] == "result", frames[-1].header
    return frames


@pytest.fixture(scope="module")
def in_process(model_dir):
    import torch

    from usvlm.engine import Segmenter

    threads = torch.get_num_threads()
    yield Segmenter(model_dir, device="cpu", threads=1)
    torch.set_num_threads(threads)


def test_segment_one_frame_equals_in_process(engine, in_process):
    from usvlm.io.geometry import Geometry
    from usvlm.io.image import USImage

    pixels = us_like((480, 640))
    status, ctype, body = Http(engine).post_frame(
        "/v1/segment", {"prompts": ["mass", "cyst"], **image_header(pixels)}, [("image", pixels, "raw")])
    reply = result_of(status, ctype, body)[-1]
    expected = in_process.segment(USImage(pixels, Geometry.for_pixels(0.1, 0.1)), ["mass", "cyst"])
    segments = reply.header["segments"]
    assert [s["name"] for s in segments] == [r.prompt.name for r in expected.results]
    for i, r in enumerate(expected.results):
        assert reply.arrays[f"mask{i}"].shape == (480, 640)
        np.testing.assert_array_equal(reply.arrays[f"mask{i}"], r.mask)
        assert segments[i]["score"] == pytest.approx(r.score, abs=1e-4)
    assert segments[0]["measurements"]["unit"] == "mm"
    assert segments[0]["terminology"].startswith("Segmentation category and type")
    assert reply.header["frames"] == [0]

    # The same pixels again, by id only: no pixels travel, the engine's caches answer.
    status, ctype, body = Http(engine).post_frame(
        "/v1/segment", {"prompts": ["mass"], **image_header(pixels, id=reply.header["image"])})
    again = result_of(status, ctype, body)[-1]
    np.testing.assert_array_equal(again.arrays["mask0"], expected.results[0].mask)


def test_refine_from_cached_maps(engine, in_process):
    from usvlm.io.geometry import Geometry
    from usvlm.io.image import USImage
    from usvlm.session import InteractiveSession, PixelPoint, RefineSettings

    pixels = us_like((240, 320), seed=1)
    http_ = Http(engine)
    first = result_of(*http_.post_frame("/v1/segment", {"prompts": ["mass"], **image_header(pixels)},
                                        [("image", pixels, "raw")]))[-1]
    options = {"threshold": 0.52, "keep_largest": True, "fill_holes": False,
               "point": {"x": 160.0, "y": 120.0, "frame": 0}}
    status, ctype, body = http_.post_frame("/v1/refine", {"result": first.header["result"],
                                                          "options": options})
    refined = result_of(status, ctype, body)[-1]
    session = InteractiveSession()
    session.set_output(in_process.segment(USImage(pixels, Geometry.for_pixels(0.1, 0.1)), "mass"))
    session.refine(0, RefineSettings(threshold=0.52, keep_largest=True, fill_holes=False,
                                     point=PixelPoint(160.0, 120.0, 0)))
    np.testing.assert_array_equal(refined.arrays["mask0"], session.output.results[0].mask)
    assert refined.header["segments"][0]["options"]["threshold"] == 0.52

    status, _, body = http_.post_frame("/v1/refine", {"result": "nope", "options": {}})
    assert status == 404 and json.loads(body)["kind"] == "unknown_result"


def test_cine_of_30_frames_streams_progress(engine):
    pixels = us_like((30, 240, 320), seed=2)
    status, ctype, body = Http(engine).post_frame(
        "/v1/segment", {"prompts": ["mass"], "frames": "all", **image_header(pixels, cine=True)},
        [("image", pixels, "raw")])
    frames = result_of(status, ctype, body)
    assert ctype == STREAM_TYPE
    progress = [f.header for f in frames if f.header["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 30
    result = frames[-1]
    assert result.arrays["mask0"].shape == (30, 240, 320)
    assert result.header["frames"] == list(range(30))
    assert len(result.header["segments"][0]["area_per_frame"]) == 30


def _stream_frames(url: str, body: bytes, on_frame) -> None:
    """POST a segment and hand each reply frame to `on_frame` as it arrives."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/segment", body=body,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": FRAME_TYPE})
    r = conn.getresponse()
    if r.getheader("Content-Type") != STREAM_TYPE:
        on_frame(("single", r.status, r.read()))
        return
    while True:
        prefix = r.read(4)
        if not prefix:
            return
        (n,) = PREFIX.unpack(prefix)
        header = json.loads(r.read(n))
        size = sum(-(-int(np.prod(a["shape"])) // 8) for a in header["arrays"])
        r.read(size)
        on_frame(header)


def test_cancel_mid_cine_stops_work_and_engine_stays_healthy(engine):
    pixels = us_like((30, 240, 320), seed=3)
    body = encode_frame({"job": "cine-to-cancel", "prompts": ["mass"], **image_header(pixels, cine=True)},
                        [("image", pixels, "raw")])
    seen: list = []
    cancelled_at: list[float] = []

    def on_frame(frame) -> None:
        seen.append(frame)
        if isinstance(frame, dict) and frame["event"] == "progress" and not cancelled_at:
            status, _, ack = Http(engine).request("POST", "/v1/jobs/cine-to-cancel/cancel", b"",
                                                  {"Content-Type": "application/json"})
            assert status == 200 and json.loads(ack) == {"job": "cine-to-cancel", "state": "cancelling"}
            cancelled_at.append(time.monotonic())

    _stream_frames(engine, body, on_frame)
    finished = time.monotonic()
    last = seen[-1]
    assert last["event"] == "error" and last["kind"] == "cancelled", last
    assert [f["done"] for f in seen if f["event"] == "progress"][-1] < 30  # it stopped mid-way
    assert finished - cancelled_at[0] < 2.0
    status, _, info = Http(engine).request("GET", "/v1/info")
    assert status == 200 and json.loads(info)["busy"] is False
    small = us_like((64, 64), seed=4)
    result_of(*Http(engine).post_frame("/v1/segment", {"prompts": ["mass"], **image_header(small)},
                                       [("image", small, "raw")]))
    # Cancelling a job that is over is acknowledged as unknown.
    status, _, ack = Http(engine).request("POST", "/v1/jobs/cine-to-cancel/cancel", b"",
                                          {"Content-Type": "application/json"})
    assert json.loads(ack)["state"] == "unknown"


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef", TOKEN + "x"])
def test_missing_or_wrong_token_is_refused(engine, token):
    status, _, body = Http(engine, token).request("GET", "/v1/info")
    assert status == 401 and json.loads(body) == {"error": "missing or wrong access token",
                                                  "kind": "unauthorized"}
    pixels = us_like((64, 64))
    status, _, body = Http(engine, token).post_frame(
        "/v1/segment", {"prompts": ["mass"], **image_header(pixels)}, [("image", pixels, "raw")])
    assert status == 401


def _raw_request(url: str, head: bytes, body: bytes = b"", wait: float = 10.0) -> bytes:
    """Send request headers (and some of a body) without finishing it; return what the engine
    answers meanwhile."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head + body)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return reply


def test_oversized_request_is_refused_before_the_body_is_read(engine):
    from usvlm.serve.auth import body_limit

    head = (f"POST /v1/segment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {FRAME_TYPE}\r\nContent-Length: {body_limit() + 1}\r\n\r\n").encode()
    t0 = time.monotonic()
    reply = _raw_request(engine, head)  # no body byte is sent: the answer cannot wait for it
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"kind": "too_large"' in reply and time.monotonic() - t0 < 5

    # A frame whose header claims a 20000 x 20000 image: refused from the header alone.
    claim = encode_frame({"prompts": ["mass"], **image_header(None)})
    spec = {"name": "image", "dtype": "|u1", "shape": [20000, 20000], "encoding": "raw"}
    header = json.loads(claim[4:])
    header["arrays"] = [spec]
    text = json.dumps(header).encode()
    frame_head = PREFIX.pack(len(text)) + text
    length = len(frame_head) + 20000 * 20000
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {FRAME_TYPE}\r\nContent-Length: {length}\r\n\r\n").encode()
    reply = _raw_request(engine, head, frame_head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert b"too large" in reply


def test_bad_requests_get_one_line_json_errors(engine):
    http_ = Http(engine)
    pixels = us_like((64, 64))
    cases = [
        (http_.request("GET", "/v1/nothing"), 404, "not_found"),
        (http_.request("POST", "/v1/segment", b"\x00\x00\x00\x05{oops"), 400, "bad_request"),
        (http_.post_frame("/v1/segment", {"prompts": [" "], **image_header(pixels)},
                          [("image", pixels, "raw")]), 422, "input"),
        (http_.post_frame("/v1/segment", {"prompts": ["mass"], **image_header(pixels, cine=True)},
                          [("image", pixels, "raw")]), 422, "input"),
        (http_.post_frame("/v1/segment", {"prompts": ["mass"], **image_header(pixels, id="0" * 32)}),
         409, "unknown_image"),
        (http_.post_frame("/v1/segment", {"prompts": ["mass"], "frames": [5], **image_header(pixels)},
                          [("image", pixels, "raw")]), 422, "input"),
        (http_.post_frame("/v1/segment", {"prompts": ["mass"], **image_header(np.zeros((8, 8)))},
                          [("image", np.zeros((8, 8), np.uint8), "raw")]), 422, "input"),
        (http_.request("POST", "/v1/segment", b"{}", {"Content-Type": "application/json"}), 415,
         "bad_request"),
    ]
    for (status, ctype, body), want_status, want_kind in cases:
        data = json.loads(body)
        assert (status, data["kind"]) == (want_status, want_kind), data
        assert "\n" not in data["error"] and set(data) == {"error", "kind"}


def test_classify_inside_a_mask(engine, in_process):
    from usvlm.io.geometry import Geometry
    from usvlm.io.image import USImage

    pixels = us_like((128, 160), seed=5)
    mask = np.zeros(pixels.shape, bool)
    mask[40:90, 50:110] = True
    status, _, body = Http(engine).post_frame("/v1/classify", {**image_header(pixels)},
                                              [("image", pixels, "raw"), ("mask", mask, "bits")])
    assert status == 200, body
    probs = decode_frame(body).header["probabilities"]
    expected = in_process.classify(USImage(pixels, Geometry.for_pixels(0.1, 0.1)), mask)
    assert probs == pytest.approx(expected, abs=1e-5)


def test_non_loopback_bind_without_token_refuses_to_start(model_dir):
    env = {k: v for k, v in os.environ.items() if k != "USVLM_ENGINE_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "usvlm", "serve", "--host", "0.0.0.0", "--port", "0",
                          "--model", str(model_dir)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "LISTENING" not in out.stdout
    assert out.stderr.count("\n") == 1 and "without an access token" in out.stderr
    out = subprocess.run([sys.executable, "-m", "usvlm", "serve", "--host", "0.0.0.0", "--port", "0",
                          "--token", "short"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "at least 16 characters" in out.stderr


def test_wire_round_trip():
    mask = np.random.default_rng(0).random((3, 17, 9)) > 0.5
    image = np.arange(24, dtype=">u2").reshape(4, 6)
    frame = decode_frame(encode_frame({"a": 1}, [("m", mask, "bits"), ("i", image, "raw")]))
    assert frame.header == {"a": 1}
    np.testing.assert_array_equal(frame.arrays["m"], mask)
    np.testing.assert_array_equal(frame.arrays["i"], image)
    assert frame.arrays["i"].dtype == np.dtype("<u2")

