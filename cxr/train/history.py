"""The per-epoch training history, as history.csv and as the learning-curve figure."""

from __future__ import annotations

import csv
import io

from cxr.plotting import png, pyplot


def history_csv(rows: list[dict]) -> bytes:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def learning_curve_png(rows: list[dict], title: str) -> bytes:
    """Training and validation loss, accuracy and AUC per epoch (history.csv's rows), side by side."""
    plotted = (("loss", "loss"), ("accuracy", "accuracy"), ("auc", "AUC"))
    plt = pyplot()
    epochs = [row["epoch"] + 1 for row in rows]
    figure, axes = plt.subplots(1, len(plotted), figsize=(4.2 * len(plotted), 3.4))
    for axis, (key, label) in zip(axes, plotted):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [row.get(prefix + key) for row in rows]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, markersize=3, label="validation" if prefix else "training")
        axis.set_xlabel("epoch")
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return png(plt, figure)
