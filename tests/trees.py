"""Builders of small input trees for tests: class folders, zips, broken files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.ingest.synthetic import render_synthetic


def png_bytes(pixels: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def synthetic_png(class_name: str, index: int, size: int = 96) -> bytes:
    """A clean (unmarked) synthetic chest X-ray as PNG bytes."""
    return png_bytes(render_synthetic(class_name, index, seed=11, size=size, marking_fraction=0.0).pixels)


def class_tree(per_class: int = 6, size: int = 96, kaggle_layout: bool = True) -> dict[str, bytes]:
    """Relative path -> bytes of a small two-class tree, optionally with masks/ beside images/."""
    files = {}
    for class_name in ("COVID", "Normal"):
        for i in range(per_class):
            name = f"{class_name}-{i + 1}.png"
            if kaggle_layout:
                files[f"{class_name}/images/{name}"] = synthetic_png(class_name, i, size)
                files[f"{class_name}/masks/{name}"] = png_bytes(np.zeros((size, size), np.uint8))
            else:
                files[f"{class_name}/{name}"] = synthetic_png(class_name, i, size)
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for relative, data in files.items():
            archive.writestr(prefix + relative, data)
    return path


def broken_files(size: int = 96) -> dict[str, bytes]:
    """Inputs every real dataset has somewhere, each of which must become a recorded reject."""
    good = synthetic_png("COVID", 99, size)
    return {
        "truncated.png": good[: len(good) // 3],
        "empty.png": b"",
        "notes.png": b"patient list, not an image\n",
    }
