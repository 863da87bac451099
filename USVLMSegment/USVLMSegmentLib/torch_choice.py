"""Which PyTorch build the engine's environment gets (see engine_env.py for the background).

SlicerPyTorch (the PyTorch extension USVLM depends on) knows the NVIDIA driver and the matching
CUDA build through light-the-torch. Its logic is asked only when light-the-torch is already in
Slicer's Python: asking otherwise would pip-install it into Slicer's Python, which this module
never does. Without it the CPU build is used (the panel says so).
"""

from __future__ import annotations

import importlib.util
from typing import Tuple

from .engine_env import TorchSpec


def torch_spec() -> Tuple[TorchSpec, str]:
    """The build to install, and one line saying why."""
    import slicer

    if importlib.util.find_spec("light_the_torch") is None:
        return TorchSpec.default(), "light-the-torch is not in Slicer's Python: CPU build"
    try:
        module = slicer.util.getModule("PyTorchUtils")
        if module is None:
            return TorchSpec.default(), "the PyTorch extension is not installed: CPU build"
        from PyTorchUtils import PyTorchUtilsLogic

        backends = list(PyTorchUtilsLogic.getCompatibleComputationBackends())
    except Exception as exc:  # noqa: BLE001 - any failure there falls back to the CPU build
        return TorchSpec.default(), f"the PyTorch extension could not tell the GPU ({exc}): CPU build"
    cuda = sorted((b for b in backends if b.startswith("cu")), key=lambda b: int(b[2:] or 0))
    if cuda:
        return TorchSpec.for_backend(cuda[-1]), f"the PyTorch extension found CUDA backend {cuda[-1]}"
    return TorchSpec.default(), "no CUDA backend for this computer's driver: CPU build"
