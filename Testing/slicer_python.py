"""A Python environment that holds exactly what a 3D Slicer release bundles (Testing/slicer_env/).

3D Slicer cannot be installed on the machines that test USVLM, so the Slicer side of the extension
is checked in an environment pinned to Slicer's own package versions (numpy 2.0.2 and pydicom
2.4.4 for Slicer 5.10; numpy 1.26.4 for 5.8): what imports and runs there imports and runs in
Slicer's Python, whose interpreter version we cannot match (5.8 ships 3.9, 5.10 ships 3.12: the
3.9 syntax floor is checked separately, statically). Built once per pin file and reused (cached
under ~/.cache/usvlm-tests by the file's digest); pip fetches the wheels from the package index.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PINS = Path(__file__).resolve().parent / "slicer_env"
VERSIONS = ("5.8.1", "5.10.0")
CACHE = Path(os.environ.get("USVLM_TEST_CACHE", Path.home() / ".cache" / "usvlm-tests"))


def pin_file(version: str) -> Path:
    return PINS / f"slicer-{version}.txt"


def slicer_python(version: str) -> Path:
    """The interpreter of an environment with Slicer `version`'s bundled packages and nothing else."""
    pins = pin_file(version)
    digest = hashlib.sha256(pins.read_bytes() + sys.version.encode()).hexdigest()[:12]
    env = CACHE / f"slicer-{version}-{digest}"
    python = env / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".slicer-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (xdist, parallel CI jobs)
        if (env / ".complete").exists():
            return python
        shutil.rmtree(env, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-deps", "-r", str(pins)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"could not build the Slicer {version} environment: {proc.stderr[-2000:]}")
        (env / ".complete").write_text(pins.read_text())
    return python
