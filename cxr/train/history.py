"""The per-epoch training history as CSV (its figure: cxr.evaluate.figures.learning_curve_png)."""

from __future__ import annotations

import csv
import io


def history_csv(rows: list[dict]) -> bytes:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
