"""Which of the module's Python requirements are missing from Slicer's Python (no Slicer needed).

Checked with `importlib.metadata` (installed distributions and their versions), not by importing:
importing torch or transformers just to check would slow Slicer down. Installing is `install.py`'s
job; it never touches what Slicer bundles (`SLICER_BUNDLED`) and gets torch from PyTorchUtils.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"

# Slicer ships these in its own Python; reinstalling them through pip breaks Slicer.
SLICER_BUNDLED = frozenset({"numpy", "simpleitk", "scipy", "vtk", "pydicom", "requests",
                            "packaging", "pip", "setuptools", "wheel", "ctk", "qt"})
# Installed through the PyTorch extension (the build matching the GPU driver), never from PyPI.
TORCH_PACKAGES = frozenset({"torch", "torchvision"})

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirement:
    line: str  # as written, e.g. "open_clip_torch>=2.24"
    name: str  # canonical distribution name
    minimum: str | None  # the ">=" bound, if any


def parse_requirements(path: Path = REQUIREMENTS) -> list[Requirement]:
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        match = _NAME.match(line)
        if not line or not match:
            continue
        minimum = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", line)
        out.append(Requirement(line, canonical(match.group(1)), minimum.group(1) if minimum else None))
    return out


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_satisfied(req: Requirement) -> bool:
    version = installed_version(req.name)
    if version is None:
        return False
    return req.minimum is None or _version_tuple(version) >= _version_tuple(req.minimum)


def missing_requirements(path: Path = REQUIREMENTS) -> list[Requirement]:
    """Requirements to pip-install: not installed or too old; never Slicer's own or torch."""
    return [r for r in parse_requirements(path)
            if r.name not in SLICER_BUNDLED and r.name not in TORCH_PACKAGES and not is_satisfied(r)]


def torch_missing() -> bool:
    return installed_version("torch") is None


def install_summary(missing: list[Requirement], need_torch: bool) -> str:
    """The confirmation text: what will be installed and from where."""
    lines = ["USVLM needs these Python packages, which are not installed in Slicer yet:", ""]
    if need_torch:
        lines.append("- PyTorch (installed by the PyTorch extension, matching your GPU driver)")
    lines += [f"- {r.line}" for r in missing]
    lines += ["", "Packages that Slicer ships (numpy, SimpleITK, ...) are left as they are.",
              "This may take several minutes. Install now?"]
    return "\n".join(lines)
