"""First-run installation of the module's Python dependencies inside Slicer (after the user confirms).

- torch comes from the PyTorch extension (`PyTorchUtils`), which picks the build matching the
  GPU driver; a plain `pip install torch` would often get the wrong CUDA build.
- Everything else goes through Slicer's package API: `slicer.pydeps.pip_ensure` (Slicer >= 5.11)
  or `slicer.packaging.pip_ensure`, with Slicer's bundled packages skipped so their transitive
  requirements never replace them; older Slicer falls back to `slicer.util.pip_install` of only
  the missing lines.
"""

from __future__ import annotations

import importlib

from USVLMSegmentLib.dependencies import (REQUIREMENTS, SLICER_BUNDLED, TORCH_PACKAGES,
                                          install_summary, installed_version, missing_requirements,
                                          torch_missing)

MINIMUM_TORCH = ">=2.1"


class InstallCancelled(Exception):
    """The user declined; nothing was installed."""


def _pip_ensure_api():  # noqa: ANN202
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module
    return None


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError("USVLM needs the PyTorch extension: install 'PyTorch' from the "
                           "Extensions Manager, restart Slicer, and run again.") from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=MINIMUM_TORCH)
    if torch is None:
        raise RuntimeError("PyTorch was not installed; USVLM cannot run without it.")


def _install_packages(lines: list[str]) -> None:
    import slicer

    api = _pip_ensure_api()
    skip = sorted(SLICER_BUNDLED | TORCH_PACKAGES)
    if api is not None:
        from packaging.requirements import Requirement

        api.pip_ensure([Requirement(line) for line in lines], skip_packages=skip, requester="USVLM")
    else:
        slicer.util.pip_install(" ".join(f'"{line}"' for line in lines))


def ensure_dependencies(ask: bool = True) -> bool:
    """Install what is missing (confirmation first when `ask`); True when a restart is advised.

    Raises `InstallCancelled` when the user declines.
    """
    import slicer

    missing, need_torch = missing_requirements(REQUIREMENTS), torch_missing()
    if not missing and not need_torch:
        return False
    if ask and not slicer.util.confirmOkCancelDisplay(install_summary(missing, need_torch),
                                                      windowTitle="USVLM: install Python packages"):
        raise InstallCancelled("Python packages were not installed; USVLM cannot run without them.")
    upgraded = [r for r in missing if installed_version(r.name) is not None]
    with _busy():
        if need_torch:
            _install_torch()
        if missing:
            _install_packages([r.line for r in missing])
    importlib.invalidate_caches()
    # An upgraded package may already be imported in its old version; only a restart unloads it.
    return bool(upgraded)


class _busy:
    """Wait cursor and a status message while pip runs."""

    def __enter__(self) -> None:
        import qt
        import slicer

        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        slicer.util.showStatusMessage("USVLM: installing Python packages...")

    def __exit__(self, *exc: object) -> None:
        import qt
        import slicer

        qt.QApplication.restoreOverrideCursor()
        slicer.util.showStatusMessage("")


RESTART_MESSAGE = ("Python packages were installed or updated. Restart Slicer before using USVLM "
                   "so the new versions are loaded.")
