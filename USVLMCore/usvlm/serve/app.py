"""The engine's HTTP routes (FastAPI). See docs/engine.md for the protocol.

    GET  /v1/info                 engine, model, device, protocol and limits (JSON)
    POST /v1/segment              frame: image (or the id of one sent before) + prompts
    POST /v1/refine               frame: result id + post-processing options (no model run)
    POST /v1/classify             frame: image (+ optional bit-packed mask)
    POST /v1/cohort               frame: image + segments' masks -> a training sample's files
    POST /v1/jobs/{job}/cancel    stop a queued or running job (JSON acknowledgement)

A job's reply is one result frame when it finishes before its first progress event, else a
stream of progress frames ending in a result or an error frame. Errors found before a job runs
are JSON with their HTTP status.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from usvlm import __version__
from usvlm.serve import PROTOCOL_VERSION
from usvlm.serve.auth import RequestGuard, body_limit
from usvlm.serve.engine_state import EngineState
from usvlm.serve.errors import RequestError, error_reply
from usvlm.serve.jobs import Failed, Finished, Job, JobRunner, Progress
from usvlm.serve.requests import (COHORT_ARRAYS, MAX_PROMPTS, ClassifyCall, CohortCall, RefineCall,
                                  SegmentCall, check_specs)
from usvlm.serve.wire import (DTYPES, FRAME_TYPE, MAX_HEADER_BYTES, STREAM_TYPE, ArraySpec, bad,
                              decode_arrays, encode_frame, header_bytes, parse_header)

DISCONNECT_POLL_S = 0.5


def error_response(exc: BaseException) -> JSONResponse:
    reply = error_reply(exc)
    return JSONResponse(reply.body(), status_code=reply.status)


@dataclass
class ReadFrame:
    header: dict[str, Any]
    specs: list[ArraySpec]
    arrays: dict[str, np.ndarray]
    payload: memoryview  # all array bytes, for the image's content id


async def read_frame(request: Request, allowed: tuple[str, ...]) -> ReadFrame:
    """Read a request frame: its header first, checked (sizes, shapes, pixel limit) before the
    array bytes are read; then exactly the announced number of bytes."""
    if request.headers.get("content-type", "").split(";")[0].strip() != FRAME_TYPE:
        raise RequestError(415, "bad_request", f"send the request body as {FRAME_TYPE}")
    length = int(request.headers["content-length"])  # present and bounded: RequestGuard
    head = bytearray()
    body: bytearray | None = None
    start = filled = 0
    parsed: tuple[dict[str, Any], list[ArraySpec]] | None = None
    try:
        async for chunk in request.stream():
            if body is None:
                head += chunk
                need = header_bytes(head)
                if need is not None and need > MAX_HEADER_BYTES + 4:
                    parse_header(head)  # raises the 413 for an oversized header
                if need is None or len(head) < need:
                    continue
                header, specs, start = parse_header(head)
                check_specs(header, specs, allowed)
                parsed = (header, specs)
                if start + sum(s.nbytes for s in specs) != length:
                    raise bad(f"Content-Length {length} does not match the frame's "
                              f"{start + sum(s.nbytes for s in specs)} bytes")
                body = bytearray(length)
                body[:len(head)] = head
                filled = len(head)
            else:
                if filled + len(chunk) > length:
                    raise bad("request body is longer than its Content-Length")
                body[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
    except ClientDisconnect:
        raise bad("the client went away while sending the request") from None
    if parsed is None or body is None:
        raise bad("request body ends before the frame header does")
    if filled != length:
        raise bad(f"request body ended after {filled} of {length} bytes")
    payload = memoryview(body)[start:]
    return ReadFrame(parsed[0], parsed[1], decode_arrays(parsed[1], payload), payload)


def create_app(state: EngineState, runner: JobRunner, token: str) -> RequestGuard:
    app = FastAPI(title="usvlm engine", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        message = {404: f"no such endpoint: {request.url.path[:100]}",
                   405: f"{request.method} is not allowed on {request.url.path[:100]}"}
        return JSONResponse({"error": message.get(exc.status_code, str(exc.detail)), "kind": kind},
                            status_code=exc.status_code)

    def replying(route: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await route(request)
            except Exception as exc:  # noqa: BLE001 - one JSON line per error (error_reply)
                return error_response(exc)
        wrapped.__name__ = route.__name__
        return wrapped

    @app.get("/v1/info")
    async def info() -> JSONResponse:
        return JSONResponse(engine_info(state, runner))

    async def image_of(frame: ReadFrame, meta: Any) -> tuple[str, Any]:
        """The request's image: its pixels (stored under their content id) or a stored one."""
        from usvlm.serve.engine_state import StoredImage

        if "image" not in frame.arrays:
            return state.stored_image(meta)
        if frame.specs[0].name != "image":
            raise bad("the image must be the first array of the frame")
        pixels = frame.arrays["image"]
        key = state.store_image(meta, pixels, frame.payload[:frame.specs[0].nbytes])
        return key, StoredImage(pixels, meta.rgb, meta.cine).with_geometry(meta)

    @app.post("/v1/segment")
    @replying
    async def segment(request: Request) -> Response:
        frame = await read_frame(request, ("image",))
        call = SegmentCall.parse(frame.header)
        key, image = await image_of(frame, call.image)
        job = runner.submit(call.job, lambda ctx: state.segment(call, key, image, ctx))
        return await job_response(job, request, runner)

    @app.post("/v1/refine")
    @replying
    async def refine(request: Request) -> Response:
        frame = await read_frame(request, ())
        reply = await run_in_threadpool(state.refine, RefineCall.parse(frame.header))
        return Response(encode_frame({"event": "result", **reply.header()}, reply.arrays()),
                        media_type=FRAME_TYPE)

    @app.post("/v1/classify")
    @replying
    async def classify(request: Request) -> Response:
        frame = await read_frame(request, ("image", "mask"))
        call = ClassifyCall.parse(frame.header)
        key, image = await image_of(frame, call.image)
        mask = frame.arrays.get("mask")
        job = runner.submit(call.job, lambda ctx: state.classify(call, key, image, mask, ctx))
        return await job_response(job, request, runner)

    @app.post("/v1/cohort")
    @replying
    async def cohort(request: Request) -> Response:
        """A training sample's files (`<id>.nrrd`, `<id>.seg.nrrd`) as bytes, for the client to
        write where its user chose: the engine keeps nothing of it on its own disk (a remote
        engine's disk is not the user's); the files are made in a private temporary folder that is
        removed before the reply."""
        from usvlm.cohort import cohort_sample

        frame = await read_frame(request, COHORT_ARRAYS)
        call = CohortCall.parse(frame.header)
        key, image = await image_of(frame, call.image)
        segments = call.core_segments(frame.arrays)
        sample = await run_in_threadpool(cohort_sample, image, segments, frame=call.frame)
        header = {"event": "result", "image": key, "id": sample.id,
                  "files": [{"name": name, "bytes": len(data)} for name, data in sample.files]}
        arrays = [(f"file{i}", np.frombuffer(data, np.uint8), "raw") for i, (_, data) in enumerate(sample.files)]
        return Response(encode_frame(header, arrays), media_type=FRAME_TYPE)

    # What the module's prompt box and model box show, so Slicer's Python needs nothing of the core:
    # the organs, completion words and one-click presets of the engine's prompt banks, a preview
    # of what a typed prompt becomes (segment name, colour, terminology), the installed models.
    @app.get("/v1/prompts")
    @replying
    async def prompts(request: Request) -> Response:
        return JSONResponse(prompt_choices(state, request.query_params.get("organ") or None))

    @app.get("/v1/preview")
    @replying
    async def preview(request: Request) -> Response:
        from usvlm.session import preview_prompts

        text = request.query_params.get("text", "")
        organ = request.query_params.get("organ") or None
        previews = preview_prompts(text, state.resolver.banks, organ)
        return JSONResponse({"previews": [{"text": v.text, "name": v.name, "color": list(v.color),
                                           "terminology": v.terminology, "matched_by": v.matched_by,
                                           "description": v.describe()} for v in previews]})

    @app.post("/v1/calibration")
    @replying
    async def calibration(request: Request) -> Response:
        """Pixel spacing, calibration and field of view from a DICOM header (no pixel data needed):
        the one rule of the core's reader, for images Slicer loaded with a placeholder spacing."""
        from usvlm.io.dicom_calibration import calibration_from_header

        frame = await read_frame(request, ("header",))
        data = frame.arrays.get("header")
        if data is None or data.ndim != 1:
            raise bad("send the DICOM header as one uint8 array named 'header'")
        name = str(frame.header.get("name") or "DICOM header")[:200]
        result = await run_in_threadpool(calibration_from_header, data.tobytes(), name)
        return JSONResponse(result.to_dict())

    @app.get("/v1/models")
    @replying
    async def models(request: Request) -> Response:
        return JSONResponse({"models": await run_in_threadpool(installed_model_list)})

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> JSONResponse:
        return JSONResponse({"job": job_id[:64], "state": runner.cancel(job_id)})

    return RequestGuard(app, token)


def prompt_choices(state: EngineState, organ: str | None) -> dict[str, Any]:
    from usvlm.session import completions, organ_choices, presets

    banks = state.resolver.banks
    if organ is not None:
        banks.bank_id(organ)  # an unknown organ is a one-line InputError (400)
    return {"organ": organ, "organs": [list(o) for o in organ_choices(banks)],
            "completions": completions(banks, organ), "presets": presets(banks, organ)}


def installed_model_list() -> list[dict[str, Any]]:
    """The installed models with a one-line summary each (manifests read bounded and validated
    by the registry; one that fails is listed with its problem, not dropped silently)."""
    from usvlm.model.registry import installed_models
    from usvlm.session import model_summary

    return [{"name": str(m.get("name") or path.name), "path": str(path), "summary": model_summary(m)}
            for path, m in installed_models()]


def engine_info(state: EngineState, runner: JobRunner) -> dict[str, Any]:
    from usvlm.io.limits import MAX_SIDE_PX, MIN_SIDE_PX, max_pixel_bytes

    model = state.segmenter.model
    return {
        "engine": "usvlm", "version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
        "model": {"name": model.name, "threshold": model.threshold, "classes": list(model.class_names),
                  "classifies": model.cls_head is not None, "input_size": model.input_size,
                  "color": model.color},
        "device": str(state.segmenter.device), "busy": runner.busy, "job": runner.current,
        "cached_images": len(state.images), "stored_results": len(state.results),
        "limits": {"max_body_bytes": body_limit(), "max_pixel_bytes": max_pixel_bytes(),
                   "max_header_bytes": MAX_HEADER_BYTES, "min_side_px": MIN_SIDE_PX,
                   "max_side_px": MAX_SIDE_PX, "max_prompts": MAX_PROMPTS, "dtypes": list(DTYPES)},
    }


# -- job replies -----------------------------------------------------------------------------------

def _result_frame(job: Job, value: Any) -> bytes:
    return encode_frame({"event": "result", "job": job.id, **value.header()}, value.arrays())


def _progress_frame(job: Job, p: Progress) -> bytes:
    return encode_frame({"event": "progress", "job": job.id, "done": p.done, "total": p.total,
                         "stage": p.stage})


def _error_frame(job: Job, exc: BaseException) -> bytes:
    reply = error_reply(exc)
    return encode_frame({"event": "error", "job": job.id, "status": reply.status, **reply.body()})


async def job_response(job: Job, request: Request, runner: JobRunner) -> Response:
    """One result frame (or a JSON error) when the job ends before it reports progress, else a
    stream. A client that goes away cancels its job."""
    while True:
        try:
            first = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            break
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                runner.cancel(job.id)
                return Response(status_code=499)
    if isinstance(first, Failed):
        return error_response(first.error)
    if isinstance(first, Finished):
        return Response(_result_frame(job, first.value), media_type=FRAME_TYPE,
                        headers={"x-usvlm-job": job.id})
    return StreamingResponse(_stream(job, first, runner), media_type=STREAM_TYPE,
                             headers={"x-usvlm-job": job.id})


async def _stream(job: Job, first: Progress, runner: JobRunner) -> AsyncIterator[bytes]:
    done = False
    try:
        yield _progress_frame(job, first)
        while not done:
            event = await job.events.get()
            if isinstance(event, Progress):
                yield _progress_frame(job, event)
            elif isinstance(event, Finished):
                done = True
                yield _result_frame(job, event.value)
            else:
                done = True
                yield _error_frame(job, event.error)
    finally:
        if not done:  # the client left mid-stream
            runner.cancel(job.id)
