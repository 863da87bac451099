"""Rows of the results table, and their CSV / clipboard text (stdlib only, Python 3.9).

Honest units: a result measured on an image without a calibration (no ultrasound region, no
pixel spacing) is in pixels, and says so in every cell, tooltip and CSV row.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .engine_client import SegmentResult

COLUMNS = ["Segment", "Score", "Benign", "Malignant", "Area", "Long axis", "Short axis",
           "Taller than wide", "Frame"]
CSV_FIELDS = ["segment", "prompt", "score", "benign", "malignant", "area", "long_axis",
              "short_axis", "unit", "calibrated", "taller_than_wide", "frame", "empty"]
UNCALIBRATED_TIP = ("The image has no calibration (no ultrasound region or pixel spacing): "
                    "sizes are in pixels, not mm.")


@dataclass(frozen=True)
class ResultRow:
    segment: str
    prompt: str
    score: float
    benign: Optional[float]
    malignant: Optional[float]
    area: Optional[float]  # None: not measured yet (while a slider moves)
    long_axis: Optional[float]
    short_axis: Optional[float]
    unit: str  # "mm" or "px"
    calibrated: bool
    taller_than_wide: Optional[bool]
    frame: int
    empty: bool

    def cells(self) -> List[str]:
        """Display text of each column (see `COLUMNS`)."""
        def pct(p: Optional[float]) -> str:
            return "" if p is None else f"{100 * p:.0f} %"

        def size(v: Optional[float], unit: str) -> str:
            return "…" if v is None else f"{v:.1f} {unit}"

        flag = "" if self.calibrated else " (uncalibrated)"
        ttw = "" if self.taller_than_wide is None else ("yes" if self.taller_than_wide else "no")
        return [self.segment, f"{self.score:.2f}", pct(self.benign), pct(self.malignant),
                size(self.area, self.unit + "²") + flag, size(self.long_axis, self.unit) + flag,
                size(self.short_axis, self.unit) + flag, ttw, str(self.frame)]


def result_rows(results: Sequence[SegmentResult], names: Sequence[str], calibrated: bool) -> List[ResultRow]:
    """One row per result, labelled with the segment name used in the scene ("Cyst 2")."""
    if len(results) != len(names):  # zip would drop rows silently
        raise ValueError(f"{len(results)} results but {len(names)} segment names")
    rows = []
    for result, name in zip(results, names):
        m = result.measurements
        cls = result.classification or {}
        rows.append(ResultRow(
            segment=name, prompt=result.prompt, score=result.score, benign=cls.get("benign"),
            malignant=cls.get("malignant"), area=None if m is None else m.area,
            long_axis=None if m is None else m.long_axis, short_axis=None if m is None else m.short_axis,
            unit=m.unit if m is not None else ("mm" if calibrated else "px"),
            calibrated=m.calibrated if m is not None else calibrated,
            taller_than_wide=None if m is None else m.taller_than_wide, frame=result.frame,
            empty=result.empty))
    return rows


def rows_csv(rows: Sequence[ResultRow], delimiter: str = ",") -> str:
    """CSV text of the rows (tab-separated for the clipboard: pastes into a spreadsheet)."""
    def num(v: Optional[float], digits: int) -> str:
        return "" if v is None else f"{v:.{digits}f}"

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([r.segment, r.prompt, f"{r.score:.4f}", num(r.benign, 4), num(r.malignant, 4),
                         num(r.area, 3), num(r.long_axis, 3), num(r.short_axis, 3), r.unit,
                         str(r.calibrated).lower(),
                         "" if r.taller_than_wide is None else str(r.taller_than_wide).lower(),
                         r.frame, str(r.empty).lower()])
    return buffer.getvalue()
