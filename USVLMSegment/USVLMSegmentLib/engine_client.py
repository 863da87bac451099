"""Client of the USVLM engine (`usvlm serve`), for Slicer's Python.

Standard library and numpy only (what every Slicer bundles), Python 3.9 syntax (Slicer 5.6/5.8):
this module must never import torch, pydicom, fastapi or usvlm itself. The engine runs the model
in its own process, local (engine_process.LocalEngine) or remote (a URL and a token).

Every call has one overall deadline; any failure is an `EngineError` whose message is one line
for the user (no traceback): the engine is unreachable, the connection was lost, the engine
refused the request (`kind` says why), the user cancelled, or the deadline passed.

The wire format (a copy of usvlm/serve/wire.py; docs/engine.md): a frame is a 4-byte big-endian
header length, a UTF-8 JSON header listing its arrays, then the arrays' raw C-order bytes;
masks travel bit-packed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PROTOCOL_VERSION = 1
FRAME_TYPE = "application/vnd.usvlm.frame"
STREAM_TYPE = "application/vnd.usvlm.frame-stream"
_PREFIX = struct.Struct(">I")
MAX_REPLY_HEADER_BYTES = 16 * 1024**2  # a reply header lists summaries; far below this
MAX_ERROR_BYTES = 64 * 1024
_BOOL = "|b1"
_DTYPES = ("|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<f4", "<f8")
MAX_COHORT_SEGMENTS = 7  # the engine's frames carry at most 8 arrays: the image and a mask each


# -- errors ----------------------------------------------------------------------------------------

class EngineError(Exception):
    """Anything that went wrong talking to the engine; `str()` is one line for the user."""

    def __init__(self, message: str, kind: str = "engine", status: Optional[int] = None) -> None:
        super().__init__(" ".join(str(message).split())[:500])
        self.kind = kind
        self.status = status


class EngineUnavailable(EngineError):
    """No connection, or the connection was lost (the engine stopped or the network failed)."""


class EngineTimeout(EngineError):
    """The request's deadline passed (the engine was asked to cancel it)."""


class EngineCancelled(EngineError):
    """The job was cancelled; nothing was produced."""


class EngineRefused(EngineError):
    """The engine answered with an error (bad input, too large, wrong token, ...)."""


class EngineProtocolError(EngineError):
    """The reply is not what this client understands (another program on the port, an old engine)."""


# -- framing (keep in step with usvlm/serve/wire.py) ----------------------------------------------

def encode_frame(header: Mapping[str, Any], arrays: Iterable[Tuple[str, np.ndarray, str]] = ()) -> bytes:
    """One frame: `header` (JSON-able) and (name, array, encoding) triples; encoding "raw" keeps
    the array's bytes (little-endian), "bits" packs a boolean mask 8 pixels per byte."""
    specs, parts = [], []
    for name, array, encoding in arrays:
        a = np.asarray(array)
        if encoding == "bits":
            a, dtype = a.astype(bool, copy=False), _BOOL
            parts.append(np.packbits(a.ravel()).tobytes())
        else:
            a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
            dtype = a.dtype.str
            if dtype not in _DTYPES:
                raise EngineError(f"images of pixel type {a.dtype} cannot be sent to the engine")
            parts.append(memoryview(a).cast("B"))
        specs.append({"name": name, "dtype": dtype, "shape": list(a.shape), "encoding": encoding})
    text = json.dumps(dict(header, arrays=specs), separators=(",", ":")).encode("utf-8")
    return b"".join([_PREFIX.pack(len(text)), text, *parts])


@dataclass(frozen=True)
class _Spec:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    encoding: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        if self.encoding == "bits":
            return (self.size + 7) // 8
        return self.size * np.dtype(self.dtype).itemsize


def _specs(header: Dict[str, Any]) -> List[_Spec]:
    out = []
    for a in header.pop("arrays", []) or []:
        try:
            spec = _Spec(str(a["name"]), str(a["dtype"]), tuple(int(s) for s in a["shape"]),
                         str(a.get("encoding", "raw")))
        except (KeyError, TypeError, ValueError):
            raise EngineProtocolError("the engine's reply lists an array this client cannot read") from None
        if spec.encoding not in ("raw", "bits") or (spec.dtype not in _DTYPES and spec.dtype != _BOOL) \
                or any(s < 0 for s in spec.shape):
            raise EngineProtocolError(f"the engine's reply has an array of unknown type {spec.dtype!r}")
        out.append(spec)
    return out


def _array(spec: _Spec, data: bytes) -> np.ndarray:
    if spec.encoding == "bits":
        return np.unpackbits(np.frombuffer(data, np.uint8), count=spec.size).view(bool).reshape(spec.shape)
    return np.frombuffer(data, np.dtype(spec.dtype)).reshape(spec.shape)


def decode_frame(data: bytes) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(header, arrays) of one whole frame."""
    reader = _BytesReader(data)
    frame = _read_frame(reader.read, len(data))
    if reader.left:
        raise EngineProtocolError("the engine's reply has bytes after its frame")
    return frame


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._at:self._at + n]
        self._at += len(chunk)
        return chunk

    @property
    def left(self) -> int:
        return len(self._data) - self._at


def _read_frame(read_exact: Callable[[int], bytes], limit: int) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    prefix = read_exact(_PREFIX.size)
    if len(prefix) != _PREFIX.size:
        raise EngineUnavailable("the engine's reply ended early")
    (length,) = _PREFIX.unpack(prefix)
    if length > min(limit, MAX_REPLY_HEADER_BYTES):
        raise EngineProtocolError("the engine's reply header is implausibly large")
    raw = read_exact(length)
    if len(raw) != length:
        raise EngineUnavailable("the engine's reply ended early")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EngineProtocolError("the engine's reply header is not JSON") from None
    if not isinstance(header, dict):
        raise EngineProtocolError("the engine's reply header is not a JSON object")
    specs = _specs(header)
    if sum(s.nbytes for s in specs) > limit:
        raise EngineProtocolError("the engine's reply is larger than this client accepts")
    arrays = {}
    for spec in specs:
        data = read_exact(spec.nbytes)
        if len(data) != spec.nbytes:
            raise EngineUnavailable("the engine's reply ended early")
        arrays[spec.name] = _array(spec, data)
    return header, arrays


def image_content_id(pixels: np.ndarray, rgb: bool, cine: bool) -> str:
    """The id the engine gives these pixels (blake2b-128 of their layout and bytes): once the
    engine holds an image, later requests send the id instead of the pixels."""
    a = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False))
    meta = {"cine": bool(cine), "dtype": a.dtype.str, "rgb": bool(rgb), "shape": list(a.shape)}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# -- what goes in ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageData:
    """An image to contour: (H, W), (H, W, 3), (T, H, W) or (T, H, W, 3) pixels and their size.

    `spacing` is (x, y) in mm per pixel; `calibrated` False means the spacing is a placeholder and
    sizes come back in pixels. Keep the object while the volume is unchanged: its content id is
    computed once.
    """

    pixels: np.ndarray
    spacing: Tuple[float, float] = (1.0, 1.0)
    calibrated: bool = False
    rgb: bool = False
    cine: bool = False
    name: Optional[str] = None
    _id: List[str] = field(default_factory=list, init=False, repr=False, compare=False)

    @classmethod
    def from_volume_array(cls, array: np.ndarray, spacing: Sequence[float], *, calibrated: bool,
                          is_vector: bool = False, name: Optional[str] = None) -> "ImageData":
        """From `slicer.util.arrayFromVolume` ([K, J, I] or [K, J, I, 3]); K > 1 is a cine."""
        a = np.asarray(array)
        if a.ndim != (4 if is_vector else 3):
            raise EngineError(f"volume array of shape {a.shape} is not a 2D image or cine")
        cine = a.shape[0] > 1
        return cls(a if cine else a[0], (float(spacing[0]), float(spacing[1])), calibrated,
                   is_vector, cine, name)

    def content_id(self) -> str:
        if not self._id:
            self._id.append(image_content_id(self.pixels, self.rgb, self.cine))
        return self._id[0]

    def header(self, with_id: bool) -> Dict[str, Any]:
        h = {"rgb": self.rgb, "cine": self.cine, "spacing": [float(s) for s in self.spacing],
             "calibrated": bool(self.calibrated)}
        if self.name:
            h["name"] = str(self.name)[:200]
        if with_id:
            h["id"] = self.content_id()
        return h


@dataclass(frozen=True)
class Point:
    """A click on the image: pixel column x, row y, 0-based frame."""

    x: float
    y: float
    frame: int = 0


@dataclass(frozen=True)
class PostOptions:
    """Post-processing; None keeps the model's choice (segment) or the result's current one (refine)."""

    threshold: Optional[float] = None
    keep_largest: Optional[bool] = None
    fill_holes: Optional[bool] = None
    min_area_mm2: Optional[float] = None
    smoothing_mm: Optional[float] = None
    point: Optional[Point] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key in ("threshold", "keep_largest", "fill_holes", "min_area_mm2", "smoothing_mm"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.point is not None:
            out["point"] = {"x": float(self.point.x), "y": float(self.point.y), "frame": int(self.point.frame)}
        return out


@dataclass(frozen=True)
class CohortSegment:
    """One segment of a training sample: `mask` is bool or uint8, (H, W) on the sample's frame or
    (T, H, W) over a cine; `terminology` a Slicer TerminologyEntry string ("" for the default)."""

    name: str
    color: Tuple[float, float, float]  # RGB 0-1
    terminology: str
    mask: np.ndarray


# -- what comes back -------------------------------------------------------------------------------

def _pick(cls: Any, data: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields of dataclass `cls` present in `data` (newer engines may send more)."""
    names = cls.__dataclass_fields__
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class EngineLimits:
    max_body_bytes: int
    max_pixel_bytes: int
    max_header_bytes: int
    min_side_px: int
    max_side_px: int
    max_prompts: int
    dtypes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    threshold: float
    classes: Tuple[str, ...]
    classifies: bool
    input_size: int
    color: str


@dataclass(frozen=True)
class EngineInfo:
    version: str
    protocol: int
    pid: int
    model: ModelInfo
    device: str
    busy: bool
    job: Optional[str]
    limits: EngineLimits
    cached_images: int = 0
    stored_results: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EngineInfo":
        try:
            if data.get("engine") != "usvlm":
                raise EngineProtocolError("the server at this address is not a USVLM engine")
            model = dict(_pick(ModelInfo, data["model"]))
            model["classes"] = tuple(model.get("classes", ()))
            limits = dict(_pick(EngineLimits, data["limits"]))
            limits["dtypes"] = tuple(limits.get("dtypes", ()))
            fields = _pick(cls, data)
            fields.update(model=ModelInfo(**model), limits=EngineLimits(**limits))
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise EngineProtocolError(f"the engine's info is incomplete ({exc})") from None


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    stage: str


@dataclass(frozen=True)
class Measurements:
    """Sizes on the frame where the finding is largest: mm when calibrated, else pixels (`unit`)."""

    area: float
    long_axis: float
    short_axis: float
    width: float = 0.0
    height: float = 0.0
    taller_than_wide: bool = False
    circularity: float = 0.0
    echogenicity_ratio: Optional[float] = None
    echogenicity_db: Optional[float] = None
    components: int = 0
    calibrated: bool = False
    unit: str = "px"


@dataclass
class SegmentResult:
    """One prompt's contour: `mask` is bool (H, W), or (T, H, W) over the reply's `frames`."""

    index: int
    prompt: str
    name: str
    color: Tuple[float, float, float]
    terminology: str  # Slicer TerminologyEntry string
    matched_by: str
    score: float
    empty: bool
    frame: int  # the frame where the finding is largest (measured there)
    measurements: Optional[Measurements]  # None when the request said measure=False
    mask: np.ndarray
    options: Dict[str, Any] = field(default_factory=dict)
    area_per_frame: Optional[List[float]] = None
    classification: Optional[Dict[str, float]] = None


@dataclass
class SegmentReply:
    job: Optional[str]
    result_id: str  # for refine
    image_id: str
    frames: List[int]
    segments: List[SegmentResult]
    timings_ms: Dict[str, float]

    @classmethod
    def from_frame(cls, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> "SegmentReply":
        try:
            segments = []
            for s in header["segments"]:
                i = int(s["index"])
                segments.append(SegmentResult(
                    index=i, prompt=str(s["prompt"]), name=str(s["name"]),
                    color=tuple(float(c) for c in s["color"]),  # type: ignore[arg-type]
                    terminology=str(s.get("terminology", "")), matched_by=str(s.get("matched_by", "")),
                    score=float(s["score"]), empty=bool(s["empty"]), frame=int(s["frame"]),
                    measurements=(Measurements(**_pick(Measurements, s["measurements"]))
                                  if s.get("measurements") else None),
                    mask=arrays["mask%d" % len(segments)], options=dict(s.get("options") or {}),
                    area_per_frame=s.get("area_per_frame"), classification=s.get("classification")))
            return cls(header.get("job"), str(header["result"]), str(header.get("image", "")),
                       [int(f) for f in header["frames"]], segments, dict(header.get("timings_ms") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"the engine's result is incomplete ({exc})") from None


@dataclass(frozen=True)
class PromptChoices:
    organs: List[Tuple[str, str]]  # (bank id, display name), the generic bank first
    completions: List[str]
    presets: List[str]


@dataclass(frozen=True)
class PromptPreview:
    text: str
    name: str
    color: Tuple[float, float, float]
    terminology: str  # Slicer TerminologyEntry string
    matched_by: str
    description: str  # one line for the panel ("breast mass -> Breast mass (bank entry)")


@dataclass(frozen=True)
class Calibration:
    """What the engine read from a DICOM header: sizes are in mm only when `calibrated`."""

    spacing_mm: Tuple[float, float]  # (x, y)
    calibrated: bool
    source: str  # ultrasound_region | pixel_spacing | imager_pixel_spacing | none
    field_of_view: Optional[Tuple[int, int, int, int]]  # [x0, y0, x1, y1] inclusive, or None
    warnings: List[str]


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: str
    summary: str


@dataclass(frozen=True)
class ClassifyReply:
    job: Optional[str]
    image_id: str
    probabilities: Dict[str, float]


@dataclass(frozen=True)
class CohortSample:
    """A training sample's files as the engine made them: ((`<id>.nrrd`, bytes), (`<id>.seg.nrrd`,
    bytes)). Write them with cohort_files.write_sample, which checks the names."""

    id: str
    files: Tuple[Tuple[str, bytes], ...]

    @classmethod
    def from_frame(cls, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> "CohortSample":
        try:
            files = []
            for i, entry in enumerate(header["files"]):
                data = arrays["file%d" % i]
                if data.dtype != np.uint8 or data.ndim != 1 or data.size != int(entry["bytes"]):
                    raise ValueError("file%d is not the announced bytes" % i)
                files.append((str(entry["name"]), data.tobytes()))
            return cls(str(header["id"]), tuple(files))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"the engine's cohort sample is incomplete ({exc})") from None


@dataclass(frozen=True)
class CancelAck:
    job: str
    state: str  # "cancelling" (it was queued or running) or "unknown" (already finished)


ProgressCallback = Callable[[Progress], None]


# -- the client ------------------------------------------------------------------------------------

class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        return left


@dataclass
class _Reply:
    conn: http.client.HTTPConnection
    sock: socket.socket
    response: http.client.HTTPResponse

    def close(self) -> None:
        self.response.close()
        self.conn.close()


class EngineClient:
    """Talks to one engine. Thread-safe: each call opens its own connection, so `cancel` works
    from another thread while a `segment` is waiting."""

    def __init__(self, url: str, token: str, timeout: float = 600.0, *, connect_timeout: float = 10.0,
                 cafile: Optional[str] = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"engine address {url[:100]!r} is not an http:// or https:// URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise EngineError("give the engine address without user, password, query or fragment")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._https = parts.scheme == "https"
        self._ssl = ssl.create_default_context(cafile=cafile) if self._https else None
        self._auth = "Bearer " + token
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.limits: Optional[EngineLimits] = None  # known after health()
        self._in_flight: Dict[str, float] = {}
        self._known_images: set = set()
        self._lock = threading.Lock()

    # -- public calls --------------------------------------------------------------------------
    def health(self, timeout: float = 10.0) -> EngineInfo:
        """The engine's version, model, device, limits; checks it speaks this protocol."""
        status, _, body = self._call("GET", "/v1/info", None, timeout)
        info = EngineInfo.from_json(self._json(body))
        if info.protocol != PROTOCOL_VERSION:
            raise EngineProtocolError(f"the engine speaks protocol {info.protocol}, this module "
                                      f"{PROTOCOL_VERSION}: update the older of the two")
        self.limits = info.limits
        return info

    def segment(self, image: ImageData, prompts: Sequence[str], *, frames: Union[str, Sequence[int]] = "all",
                options: Optional[PostOptions] = None, organ: Optional[str] = None, classify: bool = False,
                measure: bool = True, progress: Optional[ProgressCallback] = None,
                job: Optional[str] = None, timeout: Optional[float] = None) -> SegmentReply:
        """Contour each prompt on the chosen frames ("all" or 0-based numbers), batched in the
        engine. `measure` False skips the measurements (about 0.3 s per 640x480 mask)."""
        header: Dict[str, Any] = {"prompts": list(prompts),
                                  "frames": frames if isinstance(frames, str) else [int(f) for f in frames],
                                  "classify": bool(classify), "measure": bool(measure),
                                  "options": (options or PostOptions()).to_json()}
        if organ:
            header["organ"] = organ
        h, arrays = self._image_job("/v1/segment", header, image, progress, job, timeout)
        return SegmentReply.from_frame(h, arrays)

    def refine(self, result_id: str, options: PostOptions, *, index: Optional[int] = None,
               measure: bool = True, timeout: Optional[float] = None) -> SegmentReply:
        """New post-processing of a result from its cached probability maps (no model run);
        `index` None refines every prompt of the result. While a slider moves, pass
        measure=False and measure once it stops."""
        header: Dict[str, Any] = {"result": result_id, "options": options.to_json(),
                                  "measure": bool(measure)}
        if index is not None:
            header["index"] = int(index)
        h, arrays = self._frame_call("/v1/refine", encode_frame(header), None, self._deadline(timeout))
        return SegmentReply.from_frame(h, arrays)

    def classify(self, image: ImageData, *, mask: Optional[np.ndarray] = None, frame: int = 0,
                 zero_shot: bool = False, job: Optional[str] = None,
                 timeout: Optional[float] = None) -> ClassifyReply:
        """Class probabilities (e.g. benign / malignant) of one frame, inside `mask` when given."""
        header = {"frame": int(frame), "zero_shot": bool(zero_shot)}
        extra = [] if mask is None else [("mask", np.asarray(mask, dtype=bool), "bits")]
        h, _ = self._image_job("/v1/classify", header, image, None, job, timeout, extra)
        try:
            return ClassifyReply(h.get("job"), str(h["image"]),
                                 {str(k): float(v) for k, v in h["probabilities"].items()})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise EngineProtocolError("the engine's classification is incomplete") from None

    def cohort_sample(self, image: ImageData, segments: Sequence[CohortSegment], *, frame: int = 0,
                      timeout: Optional[float] = None) -> CohortSample:
        """A de-identified training sample of frame `frame` (of a cine) with `segments`, as the
        files' bytes (the engine keeps nothing); write them with cohort_files.write_sample."""
        if len(segments) > MAX_COHORT_SEGMENTS:
            raise EngineRefused(f"a training sample takes at most {MAX_COHORT_SEGMENTS} segments, this "
                                f"segmentation has {len(segments)}: remove some", "input", 422)
        header = {"frame": int(frame),
                  "segments": [{"name": str(s.name), "color": [float(c) for c in s.color],
                                "terminology": str(s.terminology or "")} for s in segments]}
        extra = [("mask%d" % i, np.asarray(s.mask, dtype=bool), "bits") for i, s in enumerate(segments)]
        h, arrays = self._image_job("/v1/cohort", header, image, None, None, timeout, extra)
        return CohortSample.from_frame(h, arrays)

    def prompt_choices(self, organ: Optional[str] = None, timeout: float = 10.0) -> PromptChoices:
        """The organs, completion words and one-click presets of the engine's prompt banks."""
        query = "?" + urllib.parse.urlencode({"organ": organ}) if organ else ""
        _, _, body = self._call("GET", "/v1/prompts" + query, None, timeout)
        data = self._json(body)
        try:
            return PromptChoices([(str(i), str(n)) for i, n in data["organs"]],
                                 [str(t) for t in data["completions"]], [str(t) for t in data["presets"]])
        except (KeyError, TypeError, ValueError):
            raise EngineProtocolError("the engine's prompt choices are incomplete") from None

    def preview(self, text: str, organ: Optional[str] = None, timeout: float = 10.0) -> List[PromptPreview]:
        """What each prompt of `text` (split at ';') becomes: segment name, colour, terminology."""
        query = {"text": text[:2000], **({"organ": organ} if organ else {})}
        _, _, body = self._call("GET", "/v1/preview?" + urllib.parse.urlencode(query), None, timeout)
        try:
            return [PromptPreview(str(v["text"]), str(v["name"]),
                                  tuple(float(c) for c in v["color"]),  # type: ignore[arg-type]
                                  str(v["terminology"]), str(v["matched_by"]), str(v["description"]))
                    for v in self._json(body)["previews"]]
        except (KeyError, TypeError, ValueError):
            raise EngineProtocolError("the engine's prompt preview is incomplete") from None

    def calibration(self, dicom_header: bytes, name: Optional[str] = None,
                    timeout: float = 30.0) -> Calibration:
        """Spacing, calibration and field of view of an image from its DICOM header (the bytes of
        the file without its pixel data; see dicom_header.py): Slicer's DICOM plugins give an
        uncalibrated ultrasound image 1 mm spacing without saying so."""
        header = {"name": name} if name else {}
        arrays = [("header", np.frombuffer(dicom_header, dtype=np.uint8), "raw")]
        _, _, body = self._call("POST", "/v1/calibration", encode_frame(header, arrays), timeout)
        data = self._json(body)
        try:
            fov = data.get("field_of_view")
            return Calibration((float(data["spacing_mm"][0]), float(data["spacing_mm"][1])),
                               bool(data["calibrated"]), str(data["source"]),
                               tuple(int(v) for v in fov) if fov else None,  # type: ignore[arg-type]
                               [str(w) for w in data.get("warnings") or []])
        except (KeyError, TypeError, ValueError, IndexError):
            raise EngineProtocolError("the engine's calibration reply is incomplete") from None

    def models(self, timeout: float = 30.0) -> List[InstalledModel]:
        """The models installed where the engine runs, each with a one-line summary."""
        _, _, body = self._call("GET", "/v1/models", None, timeout)
        try:
            return [InstalledModel(str(m["name"]), str(m["path"]), str(m["summary"]))
                    for m in self._json(body)["models"]]
        except (KeyError, TypeError, ValueError):
            raise EngineProtocolError("the engine's model list is incomplete") from None

    def cancel(self, job: Optional[str] = None, timeout: float = 5.0) -> List[CancelAck]:
        """Ask the engine to stop `job` (default: every job this client is waiting for). Returns
        the acknowledgements; raises EngineError when the engine does not answer."""
        with self._lock:
            jobs = [job] if job else list(self._in_flight)
        acks = []
        for j in jobs:
            _, _, body = self._call("POST", f"/v1/jobs/{urllib.parse.quote(j, safe='')}/cancel", b"",
                                    timeout, content_type="application/json")
            data = self._json(body)
            acks.append(CancelAck(str(data.get("job", j)), str(data.get("state", "unknown"))))
        return acks

    @property
    def jobs_in_flight(self) -> List[str]:
        with self._lock:
            return list(self._in_flight)

    @staticmethod
    def new_job_id() -> str:
        return f"c{os.getpid()}-{secrets.token_hex(6)}"

    # -- requests ------------------------------------------------------------------------------
    def _deadline(self, timeout: Optional[float]) -> _Deadline:
        return _Deadline(self.timeout if timeout is None else float(timeout))

    def _image_job(self, path: str, header: Dict[str, Any], image: ImageData,
                   progress: Optional[ProgressCallback], job: Optional[str], timeout: Optional[float],
                   extra: Sequence[Tuple[str, np.ndarray, str]] = ()) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        """A job on an image: by content id when the engine holds it, else with the pixels (also
        after the engine answers that it no longer holds them)."""
        job = job or self.new_job_id()
        deadline = self._deadline(timeout)
        self._check_size(image, extra)
        known = image.content_id() in self._known_images
        with self._lock:
            self._in_flight[job] = time.monotonic()
        try:
            for send_pixels in ((False, True) if known else (True,)):
                body = encode_frame(dict(header, job=job, image=image.header(with_id=not send_pixels)),
                                    [*([("image", image.pixels, "raw")] if send_pixels else []), *extra])
                try:
                    h, arrays = self._frame_call(path, body, progress, deadline, job)
                except EngineRefused as exc:
                    if exc.kind == "unknown_image" and not send_pixels:
                        self._known_images.discard(image.content_id())
                        continue
                    raise
                if h.get("image"):
                    self._known_images.add(str(h["image"]))
                return h, arrays
            raise EngineProtocolError("the engine refused the image both by id and by pixels")
        finally:
            with self._lock:
                self._in_flight.pop(job, None)

    def _check_size(self, image: ImageData, extra: Sequence[Tuple[str, np.ndarray, str]]) -> None:
        """The engine's limits, checked here when known: a refused upload costs nothing."""
        limits = self.limits
        if limits is None:
            return
        frame = image.pixels.shape[int(image.cine):int(image.cine) + 2]
        if len(frame) == 2 and max(frame) > limits.max_side_px:
            raise EngineRefused(f"image of {frame[1]} x {frame[0]} pixels is too large (at most "
                                f"{limits.max_side_px} per side)", "too_large", 413)
        nbytes = image.pixels.nbytes + sum(int(np.asarray(a).size) for _, a, _ in extra)
        if nbytes > limits.max_pixel_bytes:
            raise EngineRefused(f"image of {nbytes / 1024**2:.1f} MiB is over the engine's limit of "
                                f"{limits.max_pixel_bytes / 1024**2:.1f} MiB (USVLM_MAX_PIXEL_BYTES "
                                f"on the engine)", "too_large", 413)

    def _frame_call(self, path: str, body: bytes, progress: Optional[ProgressCallback],
                    deadline: _Deadline, job: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        reply = None
        try:
            reply = self._send("POST", path, body, deadline, FRAME_TYPE)
            response = reply.response
            kind = (response.getheader("Content-Type") or "").split(";")[0].strip()
            if response.status != 200:
                raise self._refusal(response.status, self._read_all(reply, deadline, MAX_ERROR_BYTES))
            limit = 2**31
            read = lambda n: self._read_exact(reply, n, deadline)  # noqa: E731
            if kind == FRAME_TYPE:
                return _read_frame(read, limit)
            if kind != STREAM_TYPE:
                raise EngineProtocolError(f"the engine replied with {kind or 'no content type'}")
            while True:  # progress frames, then a result or an error frame
                header, arrays = _read_frame(read, limit)
                event = header.get("event")
                if event == "progress":
                    if progress is not None:
                        progress(Progress(int(header.get("done", 0)), int(header.get("total", 0)),
                                          str(header.get("stage", ""))))
                    continue
                if event == "error":
                    raise self._refusal(int(header.get("status", 500)), json.dumps(header).encode())
                return header, arrays
        except socket.timeout:
            if job is not None:
                self._cancel_quietly(job)
            raise EngineTimeout(f"the engine did not answer within {deadline.seconds:.0f} s "
                                f"(the request was cancelled)", "timeout") from None
        except (ConnectionError, http.client.HTTPException, ssl.SSLError, OSError) as exc:
            raise EngineUnavailable(self._lost(exc), "unavailable") from None
        finally:
            if reply is not None:
                reply.close()

    def _call(self, method: str, path: str, body: Optional[bytes], timeout: float,
              content_type: str = FRAME_TYPE) -> Tuple[int, str, bytes]:
        deadline = _Deadline(timeout)
        reply = None
        try:
            reply = self._send(method, path, body, deadline, content_type)
            data = self._read_all(reply, deadline, MAX_REPLY_HEADER_BYTES)
            status = reply.response.status
            if status != 200:
                raise self._refusal(status, data)
            return status, reply.response.getheader("Content-Type") or "", data
        except socket.timeout:
            raise EngineTimeout(f"the engine did not answer within {timeout:.0f} s", "timeout") from None
        except (ConnectionError, http.client.HTTPException, ssl.SSLError, OSError) as exc:
            raise EngineUnavailable(self._lost(exc), "unavailable") from None
        finally:
            if reply is not None:
                reply.close()

    def _send(self, method: str, path: str, body: Optional[bytes], deadline: _Deadline,
              content_type: str) -> "_Reply":
        timeout = min(self.connect_timeout, deadline.left())
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.connect()
            sock = conn.sock  # kept: http.client drops conn.sock when a reply closes the connection
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(deadline.left())
            headers = {"Authorization": self._auth,
                       "Accept": f"{FRAME_TYPE}, {STREAM_TYPE}, application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            try:
                conn.request(method, self._base + path, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # The engine answered before taking the whole body (413: too large) and closed
                # the connection: its answer may still be there to read.
                pass
            sock.settimeout(deadline.left())
            return _Reply(conn, sock, conn.getresponse())
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _read_exact(reply: "_Reply", n: int, deadline: _Deadline) -> bytes:
        """Up to `n` bytes (fewer only at the end of the reply), within the deadline."""
        parts, got = [], 0
        while got < n:
            left = deadline.left()
            if reply.sock.fileno() != -1:  # else http.client handed the socket to the reply's file
                reply.sock.settimeout(left)
            chunk = reply.response.read(min(n - got, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _read_all(self, reply: "_Reply", deadline: _Deadline, limit: int) -> bytes:
        data = self._read_exact(reply, limit + 1, deadline)
        if len(data) > limit:
            raise EngineProtocolError("the engine's reply is larger than expected")
        return data

    def _refusal(self, status: int, body: bytes) -> EngineError:
        try:
            data = json.loads(body.decode("utf-8"))
            message, kind = str(data["error"]), str(data.get("kind", "engine"))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return EngineProtocolError(f"the engine answered HTTP {status} without a USVLM error "
                                       f"(is another program on {self.url}?)", "protocol", status)
        if kind == "cancelled":
            return EngineCancelled(message, kind, status)
        if status == 401:
            message = "the engine refused the access token (check the token in the module settings)"
        return EngineRefused(message, kind, status)

    def _cancel_quietly(self, job: str) -> None:
        try:
            self.cancel(job, timeout=2.0)
        except EngineError:
            pass

    def _lost(self, exc: BaseException) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return f"the engine at {self.url} is not running (connection refused)"
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                            http.client.IncompleteRead)):
            return f"the connection to the engine at {self.url} was lost (did it stop?)"
        if isinstance(exc, ssl.SSLError):
            return f"secure connection to {self.url} failed: {exc.reason or exc}"
        if isinstance(exc, socket.gaierror):
            return f"the engine's host {self._host!r} is unknown"
        return f"cannot talk to the engine at {self.url}: {getattr(exc, 'strerror', None) or exc}"

    @staticmethod
    def _json(body: bytes) -> Dict[str, Any]:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise EngineProtocolError("the engine's reply is not JSON") from None
        if not isinstance(data, dict):
            raise EngineProtocolError("the engine's reply is not a JSON object")
        return data
