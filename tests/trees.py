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


def xlsx_bytes(rows: list[list[str]], inline: bool = False, sheet_path: str = "worksheets/data.xml") -> bytes:
    """A minimal .xlsx workbook, as Excel writes one: text as shared strings (or inline
    strings), numbers as values, the first worksheet at `sheet_path` under xl/."""
    from xml.sax.saxutils import escape

    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    shared: list[str] = []
    cells_xml = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(ord('A') + c)}{r}"
            if value == "":
                continue
            if value.replace(".", "", 1).isdigit():
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
            elif inline:
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>')
            else:
                shared.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{len(shared) - 1}</v></c>')
        cells_xml.append(f'<row r="{r}">{"".join(cells)}</row>')
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/workbook.xml", f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
                                            f'<sheet name="Sheet1" sheetId="1" r:id="rId7"/></sheets></workbook>')
        archive.writestr("xl/_rels/workbook.xml.rels",
                         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                         f'<Relationship Id="rId7" Type="{rel}/worksheet" Target="{sheet_path}"/></Relationships>')
        archive.writestr(f"xl/{sheet_path}", f'<worksheet xmlns="{main}"><sheetData>{"".join(cells_xml)}'
                                              '</sheetData></worksheet>')
        if shared:
            # A rich-text item too: runs of formatted text are one string.
            items = "".join(f"<si><t>{escape(s)}</t></si>" if i else
                            f"<si><r><t>{escape(s[:2])}</t></r><r><t>{escape(s[2:])}</t></r></si>"
                            for i, s in enumerate(shared))
            archive.writestr("xl/sharedStrings.xml", f'<sst xmlns="{main}">{items}</sst>')
    return buffer.getvalue()


def kaggle_sheet(class_name: str, count: int, url_of) -> bytes:
    """`<class>.metadata.xlsx` as the Kaggle archive has it: FILE NAME (upper case, no extension,
    as its Normal sheet writes it), FORMAT, SIZE, URL."""
    rows = [["FILE NAME", "FORMAT", "SIZE", "URL"]]
    rows += [[f"{class_name.upper()}-{i + 1}", "PNG", "256*256", url_of(i)] for i in range(count)]
    return xlsx_bytes(rows)


def write_links(root: Path, links: dict[str, str]) -> Path:
    """Symbolic links, relative path -> target, as `ln -s target path` makes them (dangling or looping ones too)."""
    for relative, target in links.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    return root
