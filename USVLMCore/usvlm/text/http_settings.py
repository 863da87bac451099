"""Settings of the refiner's HTTP backend, checked where they are given (command line, environment):
the timeout, the retries, and the endpoint URL, parsed so that its credentials are never shown.

Standard library only: the command line's argument types import it cheaply.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass

ENV_URL = "USVLM_LLM_URL"
ENV_MODEL = "USVLM_LLM_MODEL"
ENV_API_KEY = "USVLM_LLM_API_KEY"
ENV_TIMEOUT = "USVLM_LLM_TIMEOUT"

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_RETRIES = 2
MAX_RETRIES = 10
MASK = "***"


def check_timeout(value: float | str) -> float:
    """Seconds for one request: finite, > 0, at most an hour; ValueError otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("the timeout must be a number of seconds") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise ValueError(f"the timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds")
    return seconds


def check_retries(value: int | str) -> int:
    """Retries after a failed request: a whole number 0 to MAX_RETRIES; ValueError otherwise."""
    try:
        retries = int(value)
    except (TypeError, ValueError):
        raise ValueError("the retries must be a whole number") from None
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"the retries must be 0 to {MAX_RETRIES}")
    return retries


def mask_url(url: str) -> str:
    """`url` with the userinfo and every query value replaced by ***; safe to print."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK if "@" in url or "?" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = "&".join(f"{pair.partition('=')[0]}={MASK}" if "=" in pair else MASK
                     for pair in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Endpoint:
    """A parsed http(s) URL; `display` is safe to print, `origin` decides where credentials go."""

    scheme: str
    host: str
    port: int
    target: str            # path and query, as sent in the request line
    username: str = ""
    password: str = ""

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        """ValueError (with a masked message) for anything but http(s)://host[:port][/path]."""
        shown = mask_url(url)
        if any(ord(c) < 0x21 or c == "\x7f" for c in url):
            raise ValueError(f"the URL {shown!r} contains spaces or control characters")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"the URL {shown!r} has an invalid host or port") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the LLM URL must be http:// or https://host[:port][/path], got "
                             f"{shown!r}")
        scheme = parts.scheme.lower()
        if port == 0:
            raise ValueError(f"the URL {shown!r} has port 0")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80),
                   target, urllib.parse.unquote(parts.username or ""),
                   urllib.parse.unquote(parts.password or ""))

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def display(self) -> str:
        """The URL without credentials and with query values masked."""
        return mask_url(self.base + self.target)

    def with_target(self, target: str) -> "Endpoint":
        return Endpoint(self.scheme, self.host, self.port, target, self.username, self.password)
