"""The results table: one row per segment, copy to clipboard, save as CSV."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import qt

from .result_rows import COLUMNS, UNCALIBRATED_TIP, ResultRow, rows_csv


def fill_table(table: Any, rows: Sequence[ResultRow]) -> None:
    """Show one row per segment; uncalibrated sizes are labelled (px) and explained in the tip."""
    table.clear()
    table.setColumnCount(len(COLUMNS))
    table.setHorizontalHeaderLabels(COLUMNS)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row.cells()):
            item = qt.QTableWidgetItem(text)
            item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
            if not row.calibrated:
                item.setToolTip(UNCALIBRATED_TIP)
            if row.empty:
                item.setToolTip("Nothing found for this prompt at this threshold.")
            table.setItem(r, c, item)
    table.resizeColumnsToContents()


def copy_to_clipboard(rows: Sequence[ResultRow]) -> None:
    qt.QApplication.clipboard().setText(rows_csv(rows, delimiter="\t"))  # pastes into spreadsheets


def save_csv(rows: Sequence[ResultRow], parent: Any = None) -> Optional[Path]:
    """Ask where (the file dialog asks before replacing a file) and write it whole or not at all."""
    name = qt.QFileDialog.getSaveFileName(parent, "Save USVLM results", "usvlm-results.csv",
                                          "CSV files (*.csv)")
    if not name:
        return None
    path = Path(name)
    fd, tmp = tempfile.mkstemp(prefix=".usvlm-", suffix=".csv", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(rows_csv(rows))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
