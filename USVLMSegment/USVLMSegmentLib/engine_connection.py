"""The engine the module talks to: a local `usvlm serve` in its own environment (the default), or
a remote one on a GPU workstation or server (URL and access token). Stdlib only, Python 3.9.

`EngineConnection.api` is a `LocalEngine` (restarts a crashed engine, kills one that ignores a
cancel) or an `EngineClient` (a remote engine is the server's to restart); both answer the same
calls. Connecting blocks (a local engine loads its model): the module does it on a background
call.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Union

from .engine_client import EngineClient, EngineError, EngineInfo, EngineUnavailable
from .engine_env import READY, EngineEnvironment, EnvStatus
from .engine_process import EngineEvent, LocalEngine
from .module_defaults import DEFAULTS, DEVICES, ENGINE_MODES


class SettingsError(ValueError):
    """The engine settings cannot work (a remote engine without address or token, ...)."""


@dataclass(frozen=True)
class EngineSettings:
    """What the user chose in the panel's Engine section (stored in Slicer's settings)."""

    mode: str = "local"
    url: str = ""  # remote: http(s)://host:port
    token: str = ""  # remote: the engine's access token
    model: str = DEFAULTS.model  # local: installed model name or folder
    device: str = DEFAULTS.device  # local: auto / cpu / cuda

    def checked(self) -> "EngineSettings":
        if self.mode not in ENGINE_MODES:
            raise SettingsError(f"engine mode must be one of {', '.join(ENGINE_MODES)}, not {self.mode!r}")
        if self.device not in DEVICES:
            raise SettingsError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.mode == "remote":
            try:
                parts = urllib.parse.urlsplit(self.url.strip())
                parts.port  # noqa: B018 - "host:99999" and "host:abc" raise only here
            except ValueError:
                parts = None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError("give the remote engine's address as http://host:port or https://host:port")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise SettingsError("give the remote engine's address without user, password, query or "
                                    "fragment (the access token goes in its own box)")
            if not self.token.strip():
                raise SettingsError("a remote engine needs its access token (printed by `usvlm serve`)")
            return replace(self, url=self.url.strip(), token=self.token.strip())
        return self

    def restart_needed(self, other: "EngineSettings") -> bool:
        """Does switching from `other` to these settings need a new engine / connection?"""
        if self.mode != other.mode:
            return True
        if self.mode == "remote":
            return (self.url, self.token) != (other.url, other.token)
        return (self.model, self.device) != (other.model, other.device)


Api = Union[LocalEngine, EngineClient]


class EngineConnection:
    """One engine for the module's lifetime; `close()` stops a local engine."""

    def __init__(self, settings: EngineSettings, environment: Optional[EngineEnvironment] = None,
                 prompt_dir: Optional[Path] = None, start_timeout: float = 600.0,
                 python: Optional[str] = None) -> None:
        """`environment`: the engine's private environment (installed on first use); `python`
        instead: an interpreter that already has the core (a developer's checkout, tests)."""
        self.settings = settings.checked()
        self.environment = environment
        self.python = python
        self.prompt_dir = prompt_dir
        self.start_timeout = start_timeout
        self._api: Optional[Api] = None
        self._info: Optional[EngineInfo] = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return self.settings.mode == "local"

    @property
    def connected(self) -> bool:
        if self._api is None:
            return False
        return self._api.running if isinstance(self._api, LocalEngine) else True

    @property
    def info(self) -> Optional[EngineInfo]:
        return self._info

    def environment_status(self) -> Optional[EnvStatus]:
        """The local engine's environment (None for a remote engine)."""
        if not self.local or self.python is not None:
            return None
        if self.environment is None:
            raise EngineUnavailable("no place for the engine environment was given")
        return self.environment.status()

    def needs_install(self) -> bool:
        status = self.environment_status()
        return status is not None and status.state != READY

    @property
    def api(self) -> Api:
        if self._api is None:
            raise EngineUnavailable("not connected to an engine yet")
        return self._api

    # -- connecting ------------------------------------------------------------------------------
    def connect(self) -> EngineInfo:
        """Start the local engine or reach the remote one; blocks (run it off the GUI thread)."""
        if self._api is not None and self._info is not None and self.connected:
            return self._info
        if self.local:
            if self.needs_install():
                raise EngineUnavailable("the engine environment is not installed: "
                                        + self.environment_status().reason)  # type: ignore[union-attr]
            args = ["--prompt-dir", str(self.prompt_dir)] if self.prompt_dir else []
            python = self.python or self.environment.python  # type: ignore[union-attr]
            engine = LocalEngine(python, model=self.settings.model,
                                 device=self.settings.device, extra_args=args,
                                 start_timeout=self.start_timeout)
            self._info = engine.start()
            self._api = engine
        else:
            client = EngineClient(self.settings.url, self.settings.token)
            self._info = client.health()
            self._api = client
        return self._info

    def reconfigure(self, settings: EngineSettings) -> bool:
        """Take new settings; True when the engine was disconnected (connect again)."""
        settings = settings.checked()
        restart = settings.restart_needed(self.settings)
        self.settings = settings
        if restart:
            self.close()
        return restart

    def take_events(self) -> List[EngineEvent]:
        """What happened to a local engine since the last call (crash, restart, kill)."""
        return self._api.take_events() if isinstance(self._api, LocalEngine) else []

    def log_tail(self, lines: int = 50) -> List[str]:
        return self._api.log_tail(lines) if isinstance(self._api, LocalEngine) else []

    def cancel(self, job: Optional[str] = None) -> None:
        """Stop the running job: the engine checks its cancel flag between frames and stages; a
        local engine that does not stop in time is killed."""
        if self._api is None:
            return
        try:
            self._api.cancel(job)
        except EngineError:
            pass  # a remote engine that cannot be reached has nothing running for us either

    def close(self) -> None:
        api, self._api, self._info = self._api, None, None
        if isinstance(api, LocalEngine):
            api.stop()
