"""Figures as PNG bytes, drawn with matplotlib and no display (a cluster node has none).

Shared by the training job's learning curve (cxr.train.history) and the evaluation
report's figures (cxr.evaluate.figures).
"""

from __future__ import annotations

import io

DPI = 110


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib  # a third of a second to import: only the drivers that draw pay it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def png(plt, figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(figure)  # pyplot keeps every open figure alive otherwise
    return buffer.getvalue()
