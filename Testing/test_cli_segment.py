"""`usvlm segment`, `classify` and `models` end to end with a tiny model directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import slicerio
from conftest import us_file
from models import save_tiny_model

from usvlm.cli import main
from usvlm.io import read_seg_nrrd


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def test_segment_one_dicom_all_outputs(tmp_path, model_dir, capsys):
    out = tmp_path / "us1.seg.nrrd"
    code = main(["segment", str(us_file("US1_UNCR.dcm")), "--prompt", "lymph node", "--prompt", "cyst",
                 "--model", str(model_dir), "--threshold", "0.4", "-o", str(out), "--dicom-seg",
                 "--overlay", "--json"])
    assert code == 0, capsys.readouterr().err
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["Lymph node", "Cyst"]
    # SNOMED CT Lymph node (59441001) from the bank's terminology entry.
    assert seg["segments"][0]["terminology"]["type"][:2] == ["SCT", "59441001"]
    result = read_seg_nrrd(out)
    assert result.segments[0].mask.shape == (480, 640)
    assert (tmp_path / "us1.seg.dcm").is_file() and (tmp_path / "us1.overlay.png").is_file()
    report = json.loads((tmp_path / "us1.seg.json").read_text())
    assert [s["name"] for s in report["segments"]] == ["Lymph node", "Cyst"]
    first = report["segments"][0]
    assert first["options"]["threshold"] == 0.4
    assert first["measurements"]["unit"] == "px"  # US1_UNCR has no calibration
    if not first["empty"]:
        assert set(first["classification"]) == {"benign", "malignant"}


def test_segment_folder_with_one_bad_input(tmp_path, model_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(us_file("US1_UNCR.dcm"), inputs / "a.dcm")
    shutil.copy(us_file("examples_palette.dcm"), inputs / "b.dcm")
    (inputs / "c.dcm").write_bytes(b"broken")
    out = tmp_path / "out"
    code = main(["segment", str(inputs), "--prompt", "mass", "--model", str(model_dir), "-o", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "c.dcm" in err and "1 of 3 input(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.seg.nrrd", "b.seg.nrrd"]


def test_segment_cine_single_frame_keeps_cine_geometry(tmp_path, model_dir):
    out = tmp_path / "cine.seg.nrrd"
    assert main(["segment", str(us_file("examples_ybr_color.dcm")), "--prompt", "mass", "--frames", "2",
                 "--model", str(model_dir), "-o", str(out)]) == 0
    mask = read_seg_nrrd(out).segments[0].mask
    assert mask.shape == (30, 240, 320)
    assert not mask[[0, 1, 3]].any()


def test_segment_errors_leave_no_output(tmp_path, model_dir, capsys):
    out = tmp_path / "x.seg.nrrd"
    assert main(["segment", str(us_file("US1_UNCR.dcm")), "--prompt", " ", "--model", str(model_dir),
                 "-o", str(out)]) == 2
    assert "empty prompt" in capsys.readouterr().err
    # DICOM SEG asked for a PNG input: nothing is written, not even the .seg.nrrd.
    import skimage.io

    png = tmp_path / "img.png"
    skimage.io.imsave(png, np.full((64, 64), 100, np.uint8), check_contrast=False)
    assert main(["segment", str(png), "--prompt", "mass", "--model", str(model_dir), "-o", str(out),
                 "--dicom-seg"]) == 2
    assert list(tmp_path.iterdir()) == [png]
    assert main(["segment", str(png), "--prompt", "mass", "--model", str(tmp_path / "nope"),
                 "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_classify_json(tmp_path, model_dir):
    out = tmp_path / "cls.json"
    path = us_file("US1_UNCR.dcm")
    assert main(["classify", str(path), "--model", str(model_dir), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result[str(path)]) == {"benign", "malignant"}
    assert sum(result[str(path)].values()) == pytest.approx(1.0, abs=1e-5)
    assert main(["classify", str(path), "--zero-shot", "--model", str(model_dir)]) == 0


def test_models_lists_installed(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setenv("USVLM_MODEL_DIR", str(model_dir.parent))
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert any(m["name"] == "tiny-mona" for m in listing)
    # An installed model is found by name.
    assert main(["classify", str(us_file("US1_UNCR.dcm")), "--model", "tiny-mona"]) == 0


def test_overlay_is_a_real_png(tmp_path, model_dir):
    out = tmp_path / "o.seg.nrrd"
    assert main(["segment", str(us_file("US1_UNCR.dcm")), "--prompt", "mass", "--model", str(model_dir),
                 "-o", str(out), "--overlay"]) == 0
    assert (tmp_path / "o.overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
