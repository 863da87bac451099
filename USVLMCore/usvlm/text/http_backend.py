"""The refiner's HTTP backend: an OpenAI-compatible chat-completions endpoint, spoken to warily.

The server is not trusted with more than the text it is asked about:
- credentials (the API key as a Bearer token, or `user:password@` in the URL as Basic auth) go
  only to the origin (scheme, host, port) the user named. A redirect is followed only when it stays
  on that origin and keeps the POST (307/308); any other redirect is refused with a message naming
  where it pointed, so a compromised or misconfigured server cannot collect the key elsewhere;
- every request has one overall deadline (connect, send, wait, read): a server trickling a byte
  a second is cut off when the deadline passes, not after each slow read;
- the response body is bounded (`MAX_RESPONSE_BYTES`), refused from its Content-Length before it
  is read, and cut off while streaming when there is none;
- retries back off exponentially, at most `MAX_BACKOFF_S` between attempts;
- passwords, API keys and query values never appear in a message (`mask_url`, `redact`).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from usvlm.errors import InputError
from usvlm.text.http_settings import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, ENV_API_KEY, ENV_MODEL, \
    ENV_TIMEOUT, ENV_URL, MASK, Endpoint, check_retries, check_timeout, mask_url
from usvlm.text.llm_reply import RefinerError, loads, snippet

__all__ = ["HTTPBackend", "Endpoint", "check_retries", "check_timeout", "mask_url",
           "MAX_BACKOFF_S", "MAX_RESPONSE_BYTES", "MAX_REDIRECTS"]

MAX_BACKOFF_S = 4.0
MAX_REDIRECTS = 3
# A chat completion of a few descriptions is a few KB; this leaves room for verbose servers.
MAX_RESPONSE_BYTES = 4 * 2**20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_SAME_METHOD_REDIRECTS = {307, 308}  # 301/302/303 turn a POST into a GET: never right here


def _chat_endpoint(url: str) -> Endpoint:
    endpoint = Endpoint.parse(url)
    path, sep, query = endpoint.target.partition("?")
    path = path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return endpoint.with_target(path + sep + query)


# -- The backend ---------------------------------------------------------------------------------

class _Refused(Exception):
    """A failure that a retry cannot mend (a refused redirect, an oversized body)."""


class HTTPBackend:
    """An OpenAI-compatible chat-completions endpoint (POST {url}/chat/completions)."""

    name = "http"

    def __init__(self, url: str, model: str = "default", api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff: float = 0.5, max_tokens: int = 600) -> None:
        try:
            self._url = _chat_endpoint(url)
            self.timeout, self.retries = check_timeout(timeout), check_retries(retries)
        except ValueError as exc:
            raise InputError(None, str(exc)) from None
        if api_key is not None and not all(0x21 <= ord(c) <= 0x7e for c in api_key):
            raise InputError(None, f"the API key (${ENV_API_KEY}) holds characters an HTTP header "
                                   "cannot carry (spaces, line breaks or non-ASCII)")
        self.endpoint = self._url.display
        self.model = model
        self._api_key = api_key or None
        self.backoff = max(0.0, backoff) if math.isfinite(backoff) else 0.0
        self.max_tokens = max_tokens
        self._secrets = tuple(s for s in {api_key or "", self._url.password,
                                          urllib.parse.quote(self._url.password, safe="")}
                              if len(s) >= 3)

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, retries: int | None = None) -> "HTTPBackend":
        """Settings given here win over $USVLM_LLM_URL, _MODEL, _API_KEY and _TIMEOUT."""
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise InputError(None, "the http refiner needs the endpoint URL (--url or "
                                   f"${ENV_URL}), e.g. http://127.0.0.1:8080/v1")
        if timeout is None and os.environ.get(ENV_TIMEOUT):
            try:
                timeout = check_timeout(os.environ[ENV_TIMEOUT])
            except ValueError as exc:
                raise InputError(None, f"${ENV_TIMEOUT}: {exc}") from None
        options: dict[str, Any] = {"timeout": timeout, "retries": retries}
        return cls(url, model or os.environ.get(ENV_MODEL) or "default",
                   api_key or os.environ.get(ENV_API_KEY) or None,
                   **{k: v for k, v in options.items() if v is not None})

    def redact(self, text: str) -> str:
        """`text` with the API key and the URL password replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def _error(self, problem: str) -> RefinerError:
        return RefinerError(self.redact(f"{self.endpoint}: {problem}"))

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "Content-Length": str(len(body))}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        elif self._url.username or self._url.password:
            pair = f"{self._url.username}:{self._url.password}".encode("utf-8")
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens, "stream": False}).encode("utf-8")
        attempts = self.retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                status, raw = self._post(body)
            except _Refused as exc:
                raise self._error(str(exc)) from None
            except _DeadlinePassed:
                reason = f"timed out after {self.timeout:g} s"
            except (OSError, http.client.HTTPException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    return self._content(raw)
                reason = f"HTTP {status} {http.client.responses.get(status, '')}".rstrip()
                if status not in RETRY_STATUS:
                    raise self._error(reason)
            if attempt + 1 < attempts:
                time.sleep(min(self.backoff * 2 ** attempt, MAX_BACKOFF_S))
        raise self._error(f"no answer after {attempts} attempt{'s' if attempts > 1 else ''} "
                          f"({reason})")

    # -- One request, with its deadline --------------------------------------------------------

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of a POST, following same-origin 307/308 redirects, all within one
        deadline of `self.timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        url = self._url
        for _ in range(MAX_REDIRECTS + 1):
            status, location, raw = _within(deadline, self._exchange, url, body, deadline)
            if location is None:
                return status, raw
            url = self._redirect_target(url, status, location)
        raise _Refused(f"more than {MAX_REDIRECTS} redirects")

    def _redirect_target(self, url: Endpoint, status: int, location: str) -> Endpoint:
        absolute = urllib.parse.urljoin(url.base + url.target, location)
        try:
            target = Endpoint.parse(absolute)
        except ValueError:
            raise _Refused(f"HTTP {status} redirect to an unusable URL; not followed") from None
        if target.origin != self._url.origin:
            raise _Refused(f"HTTP {status} redirect to another host ({target.base}); not followed, "
                           "so no credentials are sent there; give that address as --url if you "
                           "trust it")
        if status not in _SAME_METHOD_REDIRECTS:
            raise _Refused(f"HTTP {status} redirect to {target.display}; not followed (it would "
                           "turn the POST into a GET); give that address as --url")
        return url.with_target(target.target)

    def _exchange(self, url: Endpoint, body: bytes, deadline: float,
                  opened: list[http.client.HTTPConnection]) -> tuple[int, str | None, bytes]:
        """One POST: (status, redirect location or None, body). Runs in a worker thread; the
        caller closes `opened` connections when the deadline passes."""
        connection, target, proxy_headers = _open(url, _remaining(deadline))
        opened.append(connection)
        try:
            connection.request("POST", target, body=body,
                               headers={**self._headers(body), **proxy_headers})
            connection.sock.settimeout(_remaining(deadline))
            response = connection.getresponse()
            if 300 <= response.status < 400 and response.status != 304:
                location = response.getheader("Location")
                if not location:
                    raise _Refused(f"HTTP {response.status} without a Location")
                return response.status, location, b""
            if not 200 <= response.status < 300:
                return response.status, None, b""  # the body of an error is not needed
            return response.status, None, _read_bounded(response, connection, deadline)
        finally:
            connection.close()

    def _content(self, raw: bytes) -> str:
        try:
            data = loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            problem = str(exc) if "nested" in str(exc) else \
                snippet(raw[:200].decode("utf-8", "replace"))
            raise self._error(f"the response is not JSON: {problem}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._error("the response has no choices[0].message.content: "
                              f"{snippet(raw[:200].decode('utf-8', 'replace'))}") from None
        if not isinstance(content, str) or not content.strip():
            raise self._error("the reply is empty")
        return content


# -- Transport helpers ---------------------------------------------------------------------------

class _DeadlinePassed(Exception):
    pass


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed()
    return left


def _proxy(url: Endpoint) -> Endpoint | None:
    """The proxy from $http_proxy/$https_proxy for `url`, unless $no_proxy exempts its host."""
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    try:
        return Endpoint.parse(proxy if "://" in proxy else f"http://{proxy}")
    except ValueError:
        return None


def _open(url: Endpoint, timeout: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """A connection for `url`, the request target to send on it and any proxy headers."""
    proxy = _proxy(url)
    if proxy is None:
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        return cls(url.host, url.port, timeout=timeout), url.target, {}
    proxy_headers = {}
    if proxy.username or proxy.password:
        pair = f"{proxy.username}:{proxy.password}".encode("utf-8")
        proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    if url.scheme == "https":  # a CONNECT tunnel: the proxy never sees the request
        connection = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout)
        connection.set_tunnel(url.host, url.port, headers=proxy_headers)
        return connection, url.target, {}
    # A plain-HTTP proxy takes the absolute URL (as urllib sends it).
    return http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout), \
        url.base + url.target, proxy_headers


def _read_bounded(response: http.client.HTTPResponse, connection: http.client.HTTPConnection,
                  deadline: float) -> bytes:
    if response.length is not None and response.length > MAX_RESPONSE_BYTES:
        raise _Refused(f"the response announces {response.length} bytes (Content-Length); "
                       f"refused, the limit is {MAX_RESPONSE_BYTES} bytes")
    chunks, size = [], 0
    while True:
        if connection.sock is not None:
            connection.sock.settimeout(_remaining(deadline))
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _Refused(f"the response is larger than {MAX_RESPONSE_BYTES} bytes; refused")
        chunks.append(chunk)


def _within(deadline: float, exchange: Any, *args: Any) -> Any:
    """exchange(*args, opened) in a worker thread; at the deadline its connections are shut
    down (which ends any blocked read, DNS aside) and _DeadlinePassed is raised here."""
    opened: list[http.client.HTTPConnection] = []
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = exchange(*args, opened)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="usvlm-http", daemon=True)
    worker.start()
    try:
        worker.join(max(0.0, deadline - time.monotonic()))
    finally:
        if worker.is_alive():  # the deadline passed, or Ctrl-C: end the request now
            for connection in opened:
                _shut(connection)
    if worker.is_alive():
        raise _DeadlinePassed()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, (OSError, http.client.HTTPException)) and \
                time.monotonic() >= deadline:
            raise _DeadlinePassed()  # a socket timeout at the deadline
        raise error
    return outcome["value"]


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:  # the plain socket's shutdown, also under TLS: wakes a thread blocked in recv
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
