"""Listing sources: layouts, zips, selection of classes, and every way a tree can be wrong."""

from __future__ import annotations

import pytest

from cxr.config import PreprocessConfig, SyntheticConfig
from cxr.errors import UserError
from cxr.ingest.sources import BatchReader, list_source, list_synthetic
from tests.trees import class_tree, write_tree, write_zip


def listing_of(source, **kwargs):
    return list_source(PreprocessConfig(source=str(source), **kwargs))


def test_kaggle_layout_lists_images_and_ignores_masks(tmp_path):
    write_tree(tmp_path, class_tree(per_class=3))
    listing = listing_of(tmp_path)
    assert listing.class_names == ("COVID", "Normal")
    assert len(listing.items) == 6 and not listing.rejects
    assert listing.ignored == {"masks": 6}
    assert {i["label"] for i in listing.items if i["class_name"] == "Normal"} == {1}
    assert all("/images/" in i["source_uri"] for i in listing.items)


def test_plain_class_folders_and_wrapper_folder(tmp_path):
    write_tree(tmp_path / "COVID-19_Radiography_Dataset", class_tree(per_class=2, kaggle_layout=False))
    (tmp_path / "COVID-19_Radiography_Dataset" / "README.md.txt").write_text("about")
    listing = listing_of(tmp_path)
    assert listing.root.endswith("COVID-19_Radiography_Dataset")
    assert len(listing.items) == 4
    assert [(r["reason"], r["source_uri"].rsplit("/", 1)[1]) for r in listing.rejects] == [
        ("wrong_layout", "README.md.txt")]


def test_unsupported_and_misplaced_files_are_recorded(tmp_path):
    files = class_tree(per_class=2)
    files["COVID/images/notes.txt"] = b"text"
    files["COVID/extra/deep/x.png"] = files["COVID/images/COVID-1.png"]
    files["Normal/.DS_Store"] = b"\0"
    write_tree(tmp_path, files)
    listing = listing_of(tmp_path)
    reasons = sorted((r["reason"], r["source_uri"].rsplit("/", 1)[1]) for r in listing.rejects)
    assert reasons == [("unsupported_file", ".DS_Store"), ("unsupported_file", "notes.txt"),
                       ("wrong_layout", "x.png")]
    assert listing.found == 4 + 3


def test_class_selection_sets_label_order_and_counts_the_rest(tmp_path):
    files = class_tree(per_class=2)
    files["Lung_Opacity/images/L-1.png"] = files["COVID/images/COVID-1.png"]
    write_tree(tmp_path, files)
    listing = listing_of(tmp_path, classes=("Normal", "COVID"))
    assert listing.class_names == ("Normal", "COVID")
    assert {i["class_name"]: i["label"] for i in listing.items} == {"Normal": 0, "COVID": 1}
    assert listing.ignored["unselected_class:Lung_Opacity"] == 1
    with pytest.raises(UserError, match="no folder for class"):
        listing_of(tmp_path, classes=("COVID", "Viral Pneumonia"))


def test_zip_source_lists_members(tmp_path):
    archive = write_zip(tmp_path / "data.zip", class_tree(per_class=2), prefix="Dataset/")
    listing = listing_of(archive)
    assert listing.kind == "zip" and len(listing.items) == 4
    item = listing.items[0]
    assert item["source_uri"].startswith(str(archive) + "!/Dataset/")
    with BatchReader(SyntheticConfig()) as reader:
        data, truth = reader.read(item)
    assert data.startswith(b"\x89PNG") and truth is None


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "empty"),
    (lambda p: write_tree(p, {"a.png": b"x", "b.png": b"y"}), "no class subfolders"),
    (lambda p: write_tree(p, {"COVID/a.png": b"x"}), "at least two"),
    (lambda p: write_tree(p, {"a.txt": b"x"}) / "a.txt", "must be a .zip"),
    (lambda p: write_tree(p, {"x.zip": b"not a zip"}) / "x.zip", "not a valid zip"),
])
def test_bad_sources_fail_in_one_line(tmp_path, make, message):
    with pytest.raises(UserError, match=message) as info:
        listing_of(make(tmp_path))
    assert "\n" not in str(info.value)


def test_synthetic_listing_is_deterministic_with_copies():
    spec = SyntheticConfig(images=200, seed=3, duplicate_fraction=0.05)
    first, second = list_synthetic(spec), list_synthetic(spec)
    assert first.items == second.items and first.found == 200
    covid = sum(i["class_name"] == "COVID" for i in first.items)
    assert covid == round(200 * spec.covid_fraction)
    copies = [i for n, i in enumerate(first.items) if i["synthetic_index"] != n]
    assert len(copies) == 10
    with BatchReader(spec) as reader:
        original = first.items[copies[0]["synthetic_index"]]
        assert reader.read(copies[0]) == reader.read(original)
