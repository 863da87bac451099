"""`usvlm info` on every shipped ultrasound file: the JSON contract of the foundation issue."""

from __future__ import annotations

import json

import pytest
from conftest import US_FILES, us_file

from usvlm.cli import main

REQUIRED_KEYS = {"rows", "columns", "frames", "photometric", "spacing_mm", "spacing_source",
                 "field_of_view"}


def _info_json(path, capsys) -> dict:  # noqa: ANN001
    assert main(["info", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(n for n in US_FILES if n != "color3d_jpeg_baseline.dcm"))
def test_info_json_on_shipped_files(name, capsys):
    frames, rows, columns, _, spacing_source = US_FILES[name]
    d = _info_json(us_file(name), capsys)
    assert REQUIRED_KEYS <= set(d)
    assert (d["rows"], d["columns"], d["frames"]) == (rows, columns, frames)
    assert d["spacing_source"] == spacing_source
    assert set(d["spacing_mm"]) == {"x", "y"} and d["spacing_mm"]["x"] > 0
    x0, y0, x1, y1 = d["field_of_view"]
    assert 0 <= x0 < x1 <= columns - 1 and 0 <= y0 < y1 <= rows - 1
    assert d["field_of_view_source"] in ("ultrasound_region", "estimated", "full_image")
    if spacing_source == "ultrasound_region":
        assert d["field_of_view_source"] == "ultrasound_region"


def test_info_examples_ybr_color_region_clipped(capsys):
    d = _info_json(us_file("examples_ybr_color.dcm"), capsys)
    assert d["spacing_source"] == "ultrasound_region"
    assert d["field_of_view"] == [84, 31, 319, 239]
    assert d["frames"] == 30 and d["photometric"] == "YBR_FULL_422"
    assert any("clipped" in w for w in d["warnings"])


def test_info_us1_uncr_has_no_spacing_and_estimates_field_of_view(capsys):
    d = _info_json(us_file("US1_UNCR.dcm"), capsys)
    assert d["spacing_source"] == "none" and d["calibrated"] is False
    assert d["field_of_view_source"] == "estimated"
    x0, y0, x1, y1 = d["field_of_view"]
    # The scan area is smaller than the whole screen capture (text bars and margins excluded).
    assert (x1 - x0 + 1) * (y1 - y0 + 1) < 0.9 * 640 * 480


def test_info_multi_region_spacing(capsys):
    d = _info_json(us_file("gdcm-US-ALOKA-16.dcm"), capsys)
    assert d["spacing_mm"]["x"] == pytest.approx(0.38265306502)
    assert len(d["regions"]) == 3
    d = _info_json(us_file("examples_palette.dcm"), capsys)
    assert d["spacing_mm"]["y"] == pytest.approx(0.26228787662)


def test_info_human_output(capsys):
    assert main(["info", str(us_file("examples_ybr_color.dcm"))]) == 0
    out = capsys.readouterr().out
    assert "320 x 240 pixels, 30 frames" in out
    assert "ultrasound_region" in out and "warning:" in out
