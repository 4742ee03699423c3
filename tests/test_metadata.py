"""Sources from metadata: the archive's .xlsx sheets, a user's --metadata CSV, and their bad forms."""

from __future__ import annotations

import zipfile

import pytest

from cxr.config import PreprocessConfig
from cxr.errors import UserError
from cxr.ingest import metadata
from cxr.ingest.metadata import EXTRA_PREFIX, parse_metadata_csv, source_from_url
from cxr.ingest.sources import list_source, with_metadata_csv
from cxr.ingest.xlsx import SpreadsheetError, read_first_sheet
from tests.trees import class_tree, kaggle_sheet, write_tree, write_zip, xlsx_bytes

URLS = {"COVID": ["https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/#1590858128006-9e640421-6711",
                  "https://sirm.org/category/senza-categoria/covid-19/",
                  "https://github.com/ml-workgroup/covid-19-image-repository/tree/master/png"],
        "Normal": ["https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
                   "https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia"]}


@pytest.mark.parametrize("inline", [False, True])
def test_xlsx_reads_shared_inline_rich_and_numeric_cells(inline):
    rows = [["FILE NAME", "FORMAT", "SIZE", "URL"], ["COVID-1", "PNG", "256", "https://a.org/x?y=1&z=<2>"],
            ["COVID-2", "", "512", "https://b.org"]]
    assert read_first_sheet(xlsx_bytes(rows, inline=inline)) == rows


def test_xlsx_rows_keep_column_positions_and_skip_empty_rows():
    data = xlsx_bytes([["A", "B", "C"], ["", "", ""], ["x", "", "z"]])
    assert read_first_sheet(data) == [["A", "B", "C"], ["x", "", "z"]]


@pytest.mark.parametrize("data, message", [
    (b"PK\x03\x04 not really a spreadsheet", "not a zip"),
    (b"", "not a zip"),
])
def test_xlsx_that_is_no_workbook_is_one_line(data, message):
    with pytest.raises(SpreadsheetError, match=message) as info:
        read_first_sheet(data)
    assert "\n" not in str(info.value)


def test_xlsx_missing_parts_are_named(tmp_path):
    good = xlsx_bytes([["FILE NAME", "URL"]])
    for dropped, message in (("xl/workbook.xml", "no xl/workbook.xml"), ("xl/worksheets/data.xml", "missing")):
        broken = tmp_path / "broken.xlsx"
        with zipfile.ZipFile(broken, "w") as target, zipfile.ZipFile(__import__("io").BytesIO(good)) as source:
            for info in source.infolist():
                if info.filename != dropped:
                    target.writestr(info, source.read(info))
        with pytest.raises(SpreadsheetError, match=message):
            read_first_sheet(broken.read_bytes())


@pytest.mark.parametrize("url, name", [
    ("https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/#1590858128006", "bimcv"),
    ("https://github.com/ieee8023/covid-chestxray-dataset", "cohen"),
    ("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data", "rsna"),
    ("https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia", "pediatric-pneumonia"),
    ("https://github.com/someone/Their Set", "github-someone-their-set"),
    ("https://www.kaggle.com/datasets/owner/some-data", "kaggle-owner-some-data"),
    ("http://www.Hospital.example.org/cases/1", "hospital.example.org"),
    ("  ", None),
])
def test_urls_become_short_source_names(url, name):
    assert source_from_url(url) == name


def test_sheet_without_its_columns_fails_naming_them():
    with pytest.raises(SpreadsheetError, match="no 'URL' column"):
        metadata.sheet_sources(xlsx_bytes([["FILE NAME", "FORMAT"], ["COVID-1", "PNG"]]))


def kaggle_tree(tmp_path, per_class=3, sheets=None):
    files = {f"Dataset/{k}": v for k, v in class_tree(per_class=per_class).items()}
    for class_name, urls in URLS.items():
        files[f"Dataset/{class_name}.metadata.xlsx"] = kaggle_sheet(class_name, per_class + 1,
                                                                    lambda i, u=urls: u[i % len(u)])
    files.update(sheets or {})
    return write_tree(tmp_path / "src", files)


def test_folder_with_metadata_sheets_gives_every_image_its_source(tmp_path):
    listing = list_source(PreprocessConfig(source=str(kaggle_tree(tmp_path))))
    source_of = {item["source_uri"].rsplit("/", 1)[1]: item["source"] for item in listing.items}
    # Rows meet files case-insensitively and without extension (NORMAL-1 is Normal-1.png).
    assert source_of == {"COVID-1.png": "bimcv", "COVID-2.png": "sirm", "COVID-3.png": "hannover",
                         "Normal-1.png": "rsna", "Normal-2.png": "pediatric-pneumonia", "Normal-3.png": "rsna"}
    assert not listing.rejects  # the sheets are metadata now, not wrong_layout inputs
    sheets = listing.metadata["sheets"]
    assert sheets["COVID"]["rows"] == 4 and sheets["COVID"]["rows_without_image"] == 1
    assert sheets["Normal"]["images_without_row"] == 0
    assert sheets["Normal"]["images_per_source"] == {"pediatric-pneumonia": 1, "rsna": 2}


def test_zip_with_sheets_and_a_broken_sheet_is_a_recorded_reject(tmp_path):
    tree = kaggle_tree(tmp_path, sheets={"Dataset/Normal.metadata.xlsx": b"PK\x03\x04 not really"})
    archive = write_zip(tmp_path / "data.zip", {str(p.relative_to(tree)): p.read_bytes()
                                                for p in tree.rglob("*") if p.is_file()})
    listing = list_source(PreprocessConfig(source=str(archive)))
    assert {i["source"] for i in listing.items if i["class_name"] == "COVID"} == {"bimcv", "sirm", "hannover"}
    assert {i["source"] for i in listing.items if i["class_name"] == "Normal"} == {None}
    [reject] = listing.rejects
    assert reject["reason"] == "bad_metadata" and "not a zip" in reject["detail"]
    assert reject["source_uri"].endswith("Normal.metadata.xlsx")


def test_sheet_names_meet_class_folders_whatever_their_case(tmp_path):
    tree = kaggle_tree(tmp_path)
    (tree / "Dataset" / "Normal.metadata.xlsx").rename(tree / "Dataset" / "NORMAL.metadata.xlsx")
    listing = list_source(PreprocessConfig(source=str(tree)))
    assert {i["source"] for i in listing.items if i["class_name"] == "Normal"} == {"rsna", "pediatric-pneumonia"}
    assert set(listing.metadata["sheets"]) == {"COVID", "Normal"}


def test_sheet_of_an_unselected_class_is_ignored_and_of_no_class_rejected(tmp_path):
    tree = kaggle_tree(tmp_path, sheets={"Dataset/Lung_Opacity/images/x.png": b"",
                                         "Dataset/Lung_Opacity.metadata.xlsx": kaggle_sheet("Lung_Opacity", 1, str),
                                         "Dataset/Other.metadata.xlsx": kaggle_sheet("Other", 1, str)})
    listing = list_source(PreprocessConfig(source=str(tree), classes=("COVID", "Normal")))
    assert listing.ignored["unselected_class:Lung_Opacity"] == 2
    assert [(r["reason"], r["source_uri"].rsplit("/", 1)[1]) for r in listing.rejects] == [
        ("wrong_layout", "Other.metadata.xlsx")]


CSV = "path,source,patient_id,age\n" \
      "COVID/images/COVID-1.png,hospital-x,P001,61\n" \
      "./COVID/images/COVID-2.png,hospital-y,P002,\n" \
      "Normal/images/Normal-1.png,hospital-x,P003,34\n" \
      "Normal/images/missing.png,hospital-y,P004,50\n"


def test_csv_gives_sources_and_columns_and_counts_what_did_not_match(tmp_path):
    write_tree(tmp_path / "src", class_tree(per_class=2))
    listing = list_source(PreprocessConfig(source=str(tmp_path / "src")))
    tagged = with_metadata_csv(listing, parse_metadata_csv(CSV, "meta.csv"))
    by_name = {i["source_uri"].rsplit("/", 1)[1]: i for i in tagged.items}
    assert by_name["COVID-1.png"]["source"] == "hospital-x" and by_name["COVID-1.png"][EXTRA_PREFIX + "age"] == "61"
    assert by_name["COVID-2.png"][EXTRA_PREFIX + "age"] is None  # an empty cell is unknown, not ""
    assert by_name["Normal-2.png"]["source"] is None and by_name["Normal-2.png"][EXTRA_PREFIX + "patient_id"] is None
    assert tagged.extra_columns == ("patient_id", "age")
    assert tagged.metadata["csv"] == {"uri": "meta.csv", "key": "path", "columns": ["patient_id", "age"], "rows": 4,
                                      "rows_without_image": 1, "images_without_row": 1}
    assert all(i["source"] is None for i in listing.items), "the original listing is left as it was"


def test_csv_by_file_name_and_a_wrapper_folder_path(tmp_path):
    write_tree(tmp_path / "src" / "Wrapper", class_tree(per_class=1, kaggle_layout=False))
    listing = list_source(PreprocessConfig(source=str(tmp_path / "src")))
    by_name = with_metadata_csv(listing, parse_metadata_csv("File_Name,Source\nCOVID-1.png,a\n", "m.csv"))
    assert {i["source_uri"].rsplit("/", 1)[1]: i["source"] for i in by_name.items} == {"COVID-1.png": "a",
                                                                                       "Normal-1.png": None}
    by_path = with_metadata_csv(listing, parse_metadata_csv("path,source\nWrapper/Normal/Normal-1.png,b\n", "m.csv"))
    assert [i["source"] for i in by_path.items if i["class_name"] == "Normal"] == ["b"]


def test_a_file_name_that_names_two_images_is_an_error(tmp_path):
    files = {"COVID/x.png": b"1", "Normal/x.png": b"2"}
    write_tree(tmp_path / "src", files)
    listing = list_source(PreprocessConfig(source=str(tmp_path / "src")))
    with pytest.raises(UserError, match="names 2 images"):
        with_metadata_csv(listing, parse_metadata_csv("file_name,source\nx.png,a\n", "m.csv"))


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("source,age\na,1\n", "names no column of image paths"),
    ("COVID/a.png,north,PX-0001\n", "names no column of image paths"),  # no header: nothing of it is shown
    ("path\nCOVID/a.png\n", "nothing to add"),
    ("path,source,source\na,b,c\n", "distinct"),
    ("COVID/a.png,,PX-0001\n", "distinct, non-empty"),
    ("path,source\nCOVID/a.png,x\nCOVID/b.png\n", "row 3 has 1 fields"),
    ("path,source\nCOVID/a.png,x\n./COVID/a.png,y\n", "rows 2 and 3 name the same image"),
    ("path,source\n,x\n", "row 2 has an empty path"),
    ("path,source,label\nCOVID/a.png,x,1\n", "label would replace"),
    ('path,source\nCOVID/a.png,"x,y"\n', "may not hold a comma"),
    ('path,source\n"COVID/a.png,x\n', "not a readable CSV"),
])
def test_bad_csv_is_one_line_without_values(text, message):
    with pytest.raises(UserError, match=message) as info:
        parse_metadata_csv(text, "meta.csv")
    assert "\n" not in str(info.value) and "PX-" not in str(info.value)


def test_csv_file_checks_are_user_errors(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("path,source\nCOVID/\xe9.png,x\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        metadata.read_metadata_csv(str(tmp_path / "latin1.csv"))
    with pytest.raises(UserError, match="no such file"):
        metadata.read_metadata_csv(str(tmp_path / "absent.csv"))
    with pytest.raises(UserError, match="applies to folder"):
        PreprocessConfig(source="synthetic", metadata=str(tmp_path / "latin1.csv"))
