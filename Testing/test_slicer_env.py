"""The Slicer side of the extension in an environment pinned to what 3D Slicer bundles.

Slicer 5.8 and 5.10 are the releases USVLM supports. Their Python holds numpy, pydicom 2.4, scipy,
requests and a few more at fixed versions (Testing/slicer_env/, read from Slicer's SuperBuild);
installing or upgrading anything there breaks Slicer's own modules. So the client side (what runs in
Slicer's Python) must import and talk to a real engine with only those packages, and must never
import torch, pydicom 3, fastapi or the core library. The engine (`usvlm serve`) runs in its own
environment: here the project's .venv.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slicer_python import VERSIONS, slicer_python

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "USVLMSegment"
# What Slicer's Python does not have (or has in another major version) and the client must not load.
FORBIDDEN = ("torch", "usvlm", "open_clip", "transformers", "fastapi", "uvicorn", "starlette",
             "pydantic", "SimpleITK", "skimage", "highdicom", "slicerio")
# The modules that run inside Slicer's Python and talk to the engine.
CLIENT_MODULES = ("USVLMSegmentLib.engine_client", "USVLMSegmentLib.engine_process",
                  "USVLMSegmentLib.segment_history", "USVLMSegmentLib.dicom_header", "USVLMSegmentLib.engine_env",
                  "USVLMSegmentLib.cohort_files")
# The module's own logic, which needs no Slicer: names, volume geometry, results table, background
# calls, engine settings and connection (exercised below with a real engine).
PURE_MODULES = ("USVLMSegmentLib.module_defaults", "USVLMSegmentLib.segment_naming",
                "USVLMSegmentLib.volume_geometry", "USVLMSegmentLib.result_rows", "USVLMSegmentLib.background",
                "USVLMSegmentLib.engine_connection")

_IMPORT_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
import importlib, numpy, pydicom
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
loaded = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[3])))
print(json.dumps({"numpy": numpy.__version__, "pydicom": pydicom.__version__, "loaded": loaded}))
"""


@pytest.fixture(scope="module", params=VERSIONS)
def slicer_env(request) -> tuple[str, Path]:  # noqa: ANN001
    return request.param, slicer_python(request.param)


def test_client_imports_with_only_what_slicer_bundles(slicer_env):
    version, python = slicer_env
    modules = CLIENT_MODULES + PURE_MODULES
    proc = subprocess.run([str(python), "-c", _IMPORT_CHECK, str(MODULE_DIR), json.dumps(modules),
                           json.dumps(FORBIDDEN)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    pins = dict(line.split("==") for line in (ROOT / "Testing" / "slicer_env" / f"slicer-{version}.txt")
                .read_text().splitlines() if "==" in line)
    assert (report["numpy"], report["pydicom"]) == (pins["numpy"], pins["pydicom"])
    assert report["loaded"] == [], f"the client loaded {report['loaded']} in Slicer {version}'s Python"


def test_slicer_side_code_parses_for_python_3_9():
    """Slicer 5.8 runs Python 3.9: no syntax or library call of a later Python in what runs there."""
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent))
    if vermin is None:
        pytest.fail("vermin is missing from the test environment (pip install -e '.[test]')")
    proc = subprocess.run([vermin, "--no-tips", "--no-parse-comments", "-t=3.9-", "--violations",
                           str(MODULE_DIR)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


_CLIENT_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from USVLMSegmentLib.background import BackgroundCall
from USVLMSegmentLib.dicom_header import header_bytes
from USVLMSegmentLib.engine_client import ImageData, PostOptions
from USVLMSegmentLib.engine_connection import EngineConnection, EngineSettings
from USVLMSegmentLib.module_defaults import DEFAULTS
from USVLMSegmentLib.result_rows import result_rows, rows_csv
from USVLMSegmentLib.segment_naming import plan_segments, split_prompts
from USVLMSegmentLib.volume_geometry import (check_ultrasound_volume, frames_to_volume, pixel_spacing,
                                             ras_to_pixel)

pixels = np.load(sys.argv[4])
ijk_to_ras = np.diag([-0.2, -0.2, 0.0, 1.0])  # a 2D image as Slicer holds it: one slice, no K axis
check_ultrasound_volume(1, "US", float(pixels.min()))
connection = EngineConnection(EngineSettings(model=sys.argv[3], device="cpu"), python=sys.argv[2],
                              start_timeout=240)
try:
    call = BackgroundCall(lambda report: connection.connect()).start()  # as the panel connects
    while not call.give_time():
        pass
    (event,) = call.events()
    assert event.kind == "done", (event.kind, str(event.payload))
    info, engine = event.payload, connection.api
    image = ImageData(pixels, pixel_spacing(ijk_to_ras), calibrated=True)
    reply = engine.segment(image, split_prompts("cyst; mass"))
    refined = engine.refine(reply.result_id, PostOptions(threshold=0.9))
    click = ras_to_pixel(ijk_to_ras, [-6.4, -4.8, 0.0], pixels.shape)  # pixel (32, 24)
    clicked = engine.refine(reply.result_id, PostOptions(point=click), index=0)
    names = [p.name for p in plan_segments([s.name for s in reply.segments], ["Cyst"], DEFAULTS.overwrite)]
    rows = result_rows(reply.segments, names, calibrated=True)
    calibration = engine.calibration(header_bytes(sys.argv[6]), "ultrasound.dcm")  # Slicer's pydicom
    out = {"model": info.model.name, "spacing": list(calibration.spacing_mm),
           "calibrated": calibration.calibrated, "source": calibration.source,
           "masks": [s.mask.astype(int).tolist() for s in reply.segments],
           "units": [s.measurements.unit for s in reply.segments],
           "refined_sums": [int(s.mask.sum()) for s in refined.segments],
           "click": [click.x, click.y, click.frame], "clicked": list(clicked.segments[0].options["point"]),
           "names": names, "cells": [r.cells() for r in rows], "csv": rows_csv(rows),
           "areas": [s.measurements.area for s in reply.segments],
           "volume": list(frames_to_volume(reply.segments[0].mask, reply.frames, 1).shape)}
finally:
    connection.close()
out["stopped"] = not engine.running
loaded = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[5])))
out["loaded"] = loaded
print(json.dumps(out))
"""


def test_slicers_python_drives_a_real_engine(slicer_env, tmp_path):
    """The module's client path, run by Slicer's (pinned) Python: connect to the engine in its own
    environment (the project's) on a background call, contour two prompts, refine, click, name the
    segments and tabulate them; the masks equal the in-process engine's, and nothing outside
    Slicer's bundle was imported on the Slicer side."""
    import numpy as np
    from conftest import us_file
    from models import save_tiny_model

    from usvlm.engine import Segmenter
    from usvlm.io.volume_arrays import image_from_volume_array

    version, python = slicer_env
    model = save_tiny_model(tmp_path / "tiny")
    rng = np.random.default_rng(3)
    pixels = (rng.random((48, 64)) * 255).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    dicom = us_file("gdcm-US-ALOKA-16.dcm")
    proc = subprocess.run([str(python), "-c", _CLIENT_RUN, str(MODULE_DIR), sys.executable, str(model),
                           str(tmp_path / "pixels.npy"), json.dumps(FORBIDDEN), str(dicom)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], result["loaded"]
    assert result["model"] == "tiny-mona" and result["units"] == ["mm", "mm"] and result["stopped"]
    assert result["click"] == [pytest.approx(32), pytest.approx(24), 0]
    assert result["clicked"] == pytest.approx([32, 24])
    assert result["names"] == ["Cyst 2", "Mass"] and result["volume"] == [1, 48, 64]
    assert [c[0] for c in result["cells"]] == ["Cyst 2", "Mass"]
    assert all(c.endswith(" mm²") for c in (cells[4] for cells in result["cells"]))
    table = list(csv.DictReader(result["csv"].splitlines()))
    assert [(r["segment"], r["unit"], r["calibrated"]) for r in table] == [("Cyst 2", "mm", "true"),
                                                                         ("Mass", "mm", "true")]
    assert [float(r["area"]) for r in table] == pytest.approx(result["areas"], abs=1e-3)
    ijk_to_ras = np.diag([-0.2, -0.2, 1.0, 1.0])
    local = Segmenter(model, device="cpu").segment(
        image_from_volume_array(pixels[None], ijk_to_ras, is_vector=False, calibrated=True), ["cyst", "mass"])
    for remote, here in zip(result["masks"], local.results):
        assert np.array_equal(np.asarray(remote, dtype=bool), here.mask)
    assert all(r <= int(np.asarray(m).sum()) for r, m in zip(result["refined_sums"], result["masks"]))
    # The header read by Slicer's pydicom 2.4, calibrated by the engine as the core reads the file.
    from usvlm.io import read_image

    image = read_image(dicom)
    assert result["calibrated"] and result["source"] == image.info.spacing_source == "ultrasound_region"
    assert result["spacing"] == pytest.approx([image.geometry.spacing_x, image.geometry.spacing_y])
