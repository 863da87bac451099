"""Who may talk to the engine, and how much they may send.

Every request carries `Authorization: Bearer TOKEN` (compared in constant time). The engine binds
127.0.0.1 by default; any other address refuses to start without a token, because anyone who
reaches the port could otherwise run the model and read back results. The request guard runs
before any route: it refuses a missing or wrong token (401) and a request body that is not
announced by Content-Length (411) or is larger than the pixel limit allows (413), before one byte
of the body is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from usvlm.errors import USVLMError
from usvlm.serve.errors import error_reply
from usvlm.serve.wire import MAX_HEADER_BYTES, PREFIX

MIN_TOKEN_CHARS = 16
TOKEN_ENV = "USVLM_ENGINE_TOKEN"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BindError(USVLMError):
    """The engine cannot listen as asked."""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise BindError(f"the access token must have at least {MIN_TOKEN_CHARS} characters")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise BindError("the access token must be printable ASCII without spaces")
    return token


def token_for_bind(host: str, token: str | None) -> tuple[str, bool]:
    """The token to require and whether it was generated here: a loopback engine without one
    gets a random token (printed for its user); any other address refuses to start."""
    if token:
        return check_token(token), False
    if not is_loopback(host):
        raise BindError(f"refusing to listen on {host} without an access token: anyone who "
                        f"reaches the port could use the engine; give --token-file or "
                        f"${TOKEN_ENV} (at least {MIN_TOKEN_CHARS} characters)")
    return new_token(), True


def body_limit() -> int:
    """Largest request body: the decoded-pixel limit plus the frame header."""
    from usvlm.io.limits import max_pixel_bytes

    return max_pixel_bytes() + MAX_HEADER_BYTES + PREFIX.size


def bearer_matches(header: bytes | None, token: bytes) -> bool:
    if not header or not header[:7].lower() == b"bearer ":
        return False
    return hmac.compare_digest(header[7:].strip(), token)


class RequestGuard:
    """ASGI middleware: authentication and the body bound, before the application sees a request."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # lower-case names; a repeated header keeps its last value
        if not bearer_matches(headers.get(b"authorization"), self.token):
            await _refuse(send, 401, "unauthorized", "missing or wrong access token",
                          [(b"www-authenticate", b"Bearer")])
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            problem = _body_problem(headers)
            if problem is not None:
                await _refuse(send, *problem)
                return
        await self.app(scope, receive, send)


def _body_problem(headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
    if b"transfer-encoding" in headers or b"content-length" not in headers:
        return 411, "length_required", "a request body must be sent with a Content-Length"
    try:
        length = int(headers[b"content-length"])
    except ValueError:
        return 400, "bad_request", "Content-Length is not a number"
    try:
        limit = body_limit()
    except USVLMError as exc:
        reply = error_reply(exc)
        return 500, "config", reply.message
    if length > limit:
        return (413, "too_large", f"request of {length / 1024**2:.1f} MiB is over the engine's limit "
                                  f"of {limit / 1024**2:.1f} MiB (USVLM_MAX_PIXEL_BYTES on the engine)")
    return None


async def _refuse(send: Send, status: int, kind: str, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message, "kind": kind}).encode()
    # Connection: close, as the body (if any) was not read.
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
