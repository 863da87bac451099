"""The results panel: a table of `usvlm.session.ResultRow`s, copy to clipboard, save as CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qt


def fill_table(table: Any, rows: Sequence[Any]) -> None:
    """Show one row per segment; uncalibrated sizes are labelled (px) and explained in the tip."""
    from usvlm.session import COLUMNS

    table.clear()
    table.setColumnCount(len(COLUMNS))
    table.setHorizontalHeaderLabels(COLUMNS)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row.cells()):
            item = qt.QTableWidgetItem(text)
            item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
            if not row.calibrated:
                item.setToolTip("The image has no pixel spacing: sizes are in pixels, not mm.")
            if row.empty:
                item.setToolTip("Nothing found for this prompt at this threshold.")
            table.setItem(r, c, item)
    table.resizeColumnsToContents()


def copy_to_clipboard(rows: Sequence[Any]) -> None:
    from usvlm.session import rows_csv

    qt.QApplication.clipboard().setText(rows_csv(rows, delimiter="\t"))  # pastes into spreadsheets


def save_csv(rows: Sequence[Any], parent: Any = None) -> Path | None:
    from usvlm.io.atomic import atomic_output
    from usvlm.session import rows_csv

    name = qt.QFileDialog.getSaveFileName(parent, "Save USVLM results", "usvlm-results.csv",
                                          "CSV files (*.csv)")
    if not name:
        return None
    path = Path(name)
    with atomic_output(path) as tmp:
        tmp.write_text(rows_csv(rows), encoding="utf-8")
    return path
