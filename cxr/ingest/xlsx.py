"""The first worksheet of an .xlsx file as rows of text, with the standard library only.

The Kaggle archive's `<class>.metadata.xlsx` sheets are small tables of text (file name,
format, size, URL). An .xlsx is a zip of XML parts (ECMA-376, SpreadsheetML): the
workbook names its sheets, its relationships part says which file each sheet is, and a
sheet's cells hold numbers and booleans inline and text either inline or as an index into
the shared-strings part. That is all read here; styles, dates and formulas' logic are not
needed, so openpyxl (and its dependencies) is not either. Namespaces are matched by local
name, so both the transitional and the strict dialects read alike.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from xml.etree import ElementTree

# A metadata sheet is kilobytes to a few megabytes; a part larger than this unpacked is
# not one (or is a zip bomb).
MAX_PART_BYTES = 64 * 1024 * 1024
_RELATIONSHIP_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_STRICT_RELATIONSHIP_ID = "{http://purl.oclc.org/ooxml/officeDocument/relationships}id"


class SpreadsheetError(ValueError):
    """The bytes are not a readable .xlsx workbook; the message is one line."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element, name: str):
    return [child for child in element if _local(child.tag) == name]


def _text(element) -> str:
    """The text of a string item or inline string: its `t` runs, without phonetic guides (`rPh`)."""
    parts = []
    for child in element:
        name = _local(child.tag)
        if name == "t":
            parts.append(child.text or "")
        elif name == "r":
            parts += [t.text or "" for t in _children(child, "t")]
    return "".join(parts)


def _column_index(reference: str) -> int | None:
    """0 for column A of a cell reference such as "A1", 27 for "AB7"; None if unreadable."""
    match = re.match(r"([A-Za-z]+)", reference or "")
    if not match:
        return None
    index = 0
    for letter in match.group(1).upper():
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def _part(archive: zipfile.ZipFile, name: str) -> bytes | None:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_PART_BYTES:
        raise SpreadsheetError(f"{name} unpacks to {info.file_size} bytes, more than a metadata sheet holds")
    return archive.read(info)


def _xml(data: bytes, name: str):
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise SpreadsheetError(f"{name} is not valid XML ({exc})") from None


def _first_sheet_path(archive: zipfile.ZipFile) -> str:
    workbook = _part(archive, "xl/workbook.xml")
    if workbook is None:
        raise SpreadsheetError("no xl/workbook.xml: not an .xlsx workbook")
    sheets = [s for e in _xml(workbook, "xl/workbook.xml") if _local(e.tag) == "sheets" for s in e]
    if not sheets:
        raise SpreadsheetError("the workbook has no worksheet")
    relation = sheets[0].get(_RELATIONSHIP_ID) or sheets[0].get(_STRICT_RELATIONSHIP_ID)
    relationships = _part(archive, "xl/_rels/workbook.xml.rels")
    if relation and relationships is not None:
        for entry in _xml(relationships, "xl/_rels/workbook.xml.rels"):
            if entry.get("Id") == relation:
                target = entry.get("Target", "")
                # Targets are relative to xl/, or absolute within the package.
                return target.lstrip("/") if target.startswith("/") else posixpath.normpath(f"xl/{target}")
    return "xl/worksheets/sheet1.xml"


def read_first_sheet(data: bytes) -> list[list[str]]:
    """Rows of the workbook's first worksheet, each a list of cell texts ("" for an empty cell).

    Numbers come back as written in the file ("256", "0.5"); empty rows are left out.
    Raises SpreadsheetError when `data` is not a readable workbook.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SpreadsheetError("not an .xlsx workbook (not a zip archive)") from None
    with archive:
        try:
            sheet_path = _first_sheet_path(archive)
            shared_data = _part(archive, "xl/sharedStrings.xml")
            sheet = _part(archive, sheet_path)
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # a corrupt member, an encrypted one
            raise SpreadsheetError(f"unreadable workbook part ({exc})") from None
    if sheet is None:
        raise SpreadsheetError(f"the first worksheet's part {sheet_path} is missing")
    shared = ([_text(item) for item in _xml(shared_data, "xl/sharedStrings.xml") if _local(item.tag) == "si"]
              if shared_data is not None else [])
    rows = []
    for row in (e for e in _xml(sheet, sheet_path).iter() if _local(e.tag) == "row"):
        cells: dict[int, str] = {}
        for position, cell in enumerate(_children(row, "c")):
            column = _column_index(cell.get("r", ""))
            cells[position if column is None else column] = _cell_text(cell, shared)
        if any(value.strip() for value in cells.values()):
            rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
    return rows


def _cell_text(cell, shared: list[str]) -> str:
    kind = cell.get("t", "n")
    if kind == "inlineStr":
        inline = _children(cell, "is")
        return _text(inline[0]) if inline else ""
    values = _children(cell, "v")
    value = (values[0].text or "") if values else ""
    if kind == "s":
        try:
            return shared[int(value)]
        except (ValueError, IndexError):
            raise SpreadsheetError(f"cell {cell.get('r', '?')} points to shared string {value!r}, "
                                   f"of {len(shared)}") from None
    return value
