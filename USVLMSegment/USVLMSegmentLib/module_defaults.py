"""Defaults and choices of the module's parameter node (one place; stdlib only, Python 3.9).

The engine applies its own model's threshold when a request leaves it out; these are what the
panel shows before the first run.
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")
ENGINE_MODES = ("local", "remote")


@dataclass(frozen=True)
class ModuleDefaults:
    prompt: str = ""
    organ: str = ""  # "" = no organ context: the generic bank first, then all banks
    model: str = "usvlm-default"
    device: str = "auto"
    all_frames: bool = False
    threshold: float = 0.5
    keep_largest: bool = True
    fill_holes: bool = True
    min_area_mm2: float = 0.0
    smoothing_mm: float = 0.0
    overwrite: bool = False  # replace same-named segments instead of adding new ones
    classify: bool = True


DEFAULTS = ModuleDefaults()
