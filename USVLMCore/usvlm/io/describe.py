"""A plain summary of an image (what `usvlm info` prints and the Slicer module shows)."""

from __future__ import annotations

from typing import Any

from usvlm.io.image import USImage


def describe_image(image: USImage, *, estimate_field_of_view: bool = True) -> dict[str, Any]:
    """JSON-ready facts about an image; never patient attributes.

    When the file does not say where the scan area is, it is estimated from the pixels
    (`field_of_view_source` = "estimated").
    """
    info = image.info
    fov, fov_source = info.field_of_view, info.field_of_view_source
    if fov is None and estimate_field_of_view:
        from usvlm.preprocess import detect_field_of_view

        detected = detect_field_of_view(image)
        fov, fov_source = tuple(int(v) for v in detected.box), detected.source
    if fov is None:
        fov, fov_source = (0, 0, image.columns - 1, image.rows - 1), "full_image"
    return {
        "file": info.path,
        "format": info.format,
        "modality": info.modality,
        "transfer_syntax": _transfer_syntax_name(info.transfer_syntax),
        "rows": image.rows,
        "columns": image.columns,
        "frames": image.frames,
        "photometric": info.photometric,
        "color": image.is_rgb,
        "dtype": str(image.pixels.dtype),
        "spacing_mm": {"x": image.geometry.spacing_x, "y": image.geometry.spacing_y},
        "spacing_source": info.spacing_source,
        "calibrated": image.geometry.calibrated,
        "field_of_view": list(fov),
        "field_of_view_source": fov_source,
        "regions": [r.to_dict() for r in info.regions],
        "frame_time_ms": info.frame_time_ms,
        "ijk_to_ras": image.geometry.ijk_to_ras().round(6).tolist(),
        "warnings": list(info.warnings),
    }


def _transfer_syntax_name(uid: str | None) -> str | None:
    if not uid:
        return None
    from pydicom.uid import UID

    return UID(uid).name


def format_description(d: dict[str, Any]) -> str:
    """The human-readable table of `usvlm info`."""
    frames = f"{d['frames']} frame" + ("s" if d["frames"] != 1 else "")
    if d["frame_time_ms"]:
        frames += f" ({1000.0 / d['frame_time_ms']:.1f} frames/s)"
    spacing = d["spacing_mm"]
    unit = "mm" if d["calibrated"] else "mm (placeholder: not calibrated)"
    lines = [
        ("file", d["file"]),
        ("format", d["format"] + (f", {d['transfer_syntax']}" if d["transfer_syntax"] else "")),
        ("modality", d["modality"] or "-"),
        ("size", f"{d['columns']} x {d['rows']} pixels, {frames}"),
        ("photometric", f"{d['photometric']} ({'colour' if d['color'] else 'grey'}, {d['dtype']})"),
        ("spacing", f"{spacing['x']:.4g} x {spacing['y']:.4g} {unit} from {d['spacing_source']}"),
        ("field of view", f"{d['field_of_view']} ({d['field_of_view_source']})"),
    ]
    for i, r in enumerate(d["regions"]):
        lines.append((f"region {i}", f"[{r['x0']}, {r['y0']}, {r['x1']}, {r['y1']}] format "
                                     f"{r['spatial_format']} data {r['data_type']} units "
                                     f"{r['units_x']}/{r['units_y']}"))
    width = max(len(k) for k, _ in lines)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
    for w in d["warnings"]:
        text += f"\nwarning: {w}"
    return text
