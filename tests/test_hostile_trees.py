"""Trees a user can make that once hung a listing, inflated its counts or invented classes (issue 28):
folder and file links that loop or dangle, zip names that climb out of their root, class
folders without an image, inputs too large to read, control characters in printed names."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr.config import PreprocessConfig
from cxr.errors import UserError
from cxr.ingest.sources import list_images, list_source, max_input_bytes
from cxr.preprocess.manifest import format_summary
from tests.cli import run_job
from tests.conftest import REPO
from tests.manifests import as_manifest
from tests.test_preprocess_job import check_consistent, read_output
from tests.trees import class_tree, synthetic_png, write_links, write_tree, write_zip

# `ln -s .. COVID/images/l1; ln -s .. COVID/images/l2`: a pyarrow listing of this never ended (8.6 GB).
TWO_LOOPS = {"COVID/images/l1": "..", "COVID/images/l2": ".."}


def listing_of(source, **kwargs):
    return list_source(PreprocessConfig(source=str(source), **kwargs))


def reasons(listing) -> list[tuple[str, str]]:
    """(reason, path below the listing's root, or in its zip) of each reject, sorted."""
    def below(uri: str) -> str:
        return uri.split("!/", 1)[1] if "!/" in uri else uri.removeprefix(listing.root + "/")
    return sorted((r["reason"], below(r["source_uri"])) for r in listing.rejects)


def entries_on_disk(root: Path) -> int:
    """Every entry below `root` that is not a folder, and every link, without following one."""
    count = 0
    for folder, folders, files in os.walk(root):
        count += len(files) + sum(os.path.islink(os.path.join(folder, name)) for name in folders)
    return count


def accounted(listing) -> int:
    """What the listing says of its entries: items, rejects and ignored ones."""
    return len(listing.items) + len(listing.rejects) + sum(listing.ignored.values())


def loop_tree(root: Path, links: dict[str, str]) -> Path:
    write_tree(root, class_tree(per_class=3, size=48))
    return write_links(root, links)


# ---------------------------------------------------------------- folder links


def test_two_links_to_the_parent_folder_end_at_once_and_count_each_link_once(tmp_path):
    # In a process of its own: the listing this replaced never ended, and never returned to Python.
    source = loop_tree(tmp_path / "src", TWO_LOOPS)
    code = ("import json, sys; from cxr.config import PreprocessConfig; from cxr.ingest.sources import list_source;"
            "l = list_source(PreprocessConfig(source=sys.argv[1]));"
            "print(json.dumps({'found': l.found, 'items': len(l.items), 'classes': l.class_names,"
            "'rejects': sorted((r['reason'], r['class_name'], r['source_uri']) for r in l.rejects),"
            "'ignored': l.ignored}))")
    result = subprocess.run([sys.executable, "-c", code, str(source)], capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = json.loads(result.stdout)
    assert listed["classes"] == ["COVID", "Normal"]
    assert (listed["found"], listed["items"], listed["ignored"]) == (8, 6, {"masks": 6})
    assert listed["rejects"] == [["symlink_loop", "COVID", f"{source}/COVID/images/{name}"] for name in ("l1", "l2")]


def test_one_loop_is_one_reject_not_forty_levels_of_copies(tmp_path):
    source = loop_tree(tmp_path / "src", {"COVID/images/l1": ".."})
    listing = listing_of(source)
    assert listing.found == len(listing.items) + len(listing.rejects) == 7  # was 500: 481 of them wrong_layout
    assert reasons(listing) == [("symlink_loop", "COVID/images/l1")]
    assert accounted(listing) == entries_on_disk(source)
    assert listing.class_names == ("COVID", "Normal")


def test_links_to_the_root_itself_or_above_it_are_loops(tmp_path):
    source = loop_tree(tmp_path / "src", {"COVID/images/root": "../..", "COVID/images/above": "../../..",
                                          "Normal/images/slash": "/", "Normal/here": "."})
    listing = listing_of(source)
    assert reasons(listing) == [("symlink_loop", "COVID/images/above"), ("symlink_loop", "COVID/images/root"),
                                ("symlink_loop", "Normal/here"), ("symlink_loop", "Normal/images/slash")]
    assert len(listing.items) == 6 and accounted(listing) == entries_on_disk(source)


def test_file_links_that_loop_or_dangle_are_rejects_of_their_class(tmp_path):
    source = loop_tree(tmp_path / "src", {"COVID/images/self.png": "self.png", "COVID/images/a.png": "b.png",
                                          "COVID/images/b.png": "a.png", "Normal/images/gone.png": "../missing.png",
                                          "Normal/images/alias.png": "Normal-1.png"})
    listing = listing_of(source)
    assert reasons(listing) == [("broken_link", "Normal/images/gone.png"), ("symlink_loop", "COVID/images/a.png"),
                                ("symlink_loop", "COVID/images/b.png"), ("symlink_loop", "COVID/images/self.png")]
    assert {r["class_name"] for r in listing.rejects} == {"COVID", "Normal"}
    # A link to a file is that file, listed at the link's path.
    assert len(listing.items) == 7 and any(i["source_uri"].endswith("/alias.png") for i in listing.items)
    assert accounted(listing) == entries_on_disk(source)


def test_a_linked_class_folder_is_walked_once(tmp_path):
    elsewhere = write_tree(tmp_path / "elsewhere", {f"normal-{i}.png": synthetic_png("Normal", i, 48)
                                                    for i in range(4)})
    source = write_tree(tmp_path / "src", class_tree(per_class=3, size=48, kaggle_layout=False))
    (source / "Normal").rename(tmp_path / "old-normal")
    write_links(source, {"Normal": str(elsewhere), "Normal-again": str(elsewhere),
                         "COVID/same-images": "../COVID", "COVID/outside.png": str(elsewhere / "normal-0.png")})
    listing = listing_of(source)
    assert listing.class_names == ("COVID", "Normal")
    normal = sorted(i["source_uri"].removeprefix(f"{source}/") for i in listing.items if i["class_name"] == "Normal")
    assert normal == [f"Normal/normal-{i}.png" for i in range(4)]
    assert sum(i["class_name"] == "COVID" for i in listing.items) == 4  # three, and the link to a file outside
    assert reasons(listing) == [("symlink_duplicate", "Normal-again"), ("symlink_loop", "COVID/same-images")]


def test_a_link_to_a_folder_inside_the_tree_does_not_list_it_twice(tmp_path):
    source = loop_tree(tmp_path / "src", {"Normal/images/covid": "../../COVID/images"})
    listing = listing_of(source)
    assert reasons(listing) == [("symlink_duplicate", "Normal/images/covid")]
    assert len(listing.items) == 6


def test_scoring_lists_a_looping_tree_once(tmp_path):
    source = loop_tree(tmp_path / "src", {**TWO_LOOPS, "Normal/images/gone.png": "nothing.png"})
    listing = list_images(str(source))
    assert len(listing.items) == 6 and listing.ignored == {"masks": 6}
    assert reasons(listing) == [("broken_link", "Normal/images/gone.png"), ("symlink_loop", "COVID/images/l1"),
                                ("symlink_loop", "COVID/images/l2")]


def test_a_fifo_named_like_an_image_is_a_reject_never_read(tmp_path):
    source = loop_tree(tmp_path / "src", {})
    os.mkfifo(source / "COVID" / "images" / "pipe.png")  # reading it would wait for a writer for ever
    assert reasons(listing_of(source)) == [("special_file", "COVID/images/pipe.png")]


# ---------------------------------------------------------------- names that climb out

HOSTILE_NAMES = ("../../evil.png", "COVID/images/../../../../tmp/x.png", "/tmp/x.png", "COVID//x.png",
                 "./COVID/x.png", "Normal/./images/x.png", "Normal/images/..")


@pytest.mark.parametrize("wrapper", ["", "Dataset/"])
def test_zip_names_that_leave_the_root_are_unsafe_path_rejects_never_classes(tmp_path, wrapper):
    files = class_tree(per_class=2, size=48)
    hostile = {name if name.startswith(("/", "..")) else wrapper + name: files["COVID/images/COVID-1.png"]
               for name in HOSTILE_NAMES}
    archive = write_zip(tmp_path / "data.zip", {**{wrapper + k: v for k, v in files.items()}, **hostile})
    listing = listing_of(archive)
    assert listing.class_names == ("COVID", "Normal")  # not "", "..", "." or "tmp"
    assert {i["class_name"]: i["label"] for i in listing.items} == {"COVID": 0, "Normal": 1}
    assert listing.root == f"{archive}/{wrapper.rstrip('/')}".rstrip("/")
    assert reasons(listing) == sorted(("unsafe_path", name) for name in hostile)
    assert len(listing.items) == 4 and listing.ignored == {"masks": 4}


def test_scoring_a_zip_rejects_names_that_leave_it(tmp_path):
    good = synthetic_png("COVID", 0, 48)
    archive = write_zip(tmp_path / "data.zip", {"a/x.png": good, **{name: good for name in HOSTILE_NAMES}})
    listing = list_images(str(archive))
    assert [i["member"] for i in listing.items] == ["a/x.png"]
    assert reasons(listing) == sorted(("unsafe_path", name) for name in HOSTILE_NAMES)


def test_a_zip_name_given_twice_is_one_input_and_the_earlier_member_is_counted_as_ignored(tmp_path):
    files = class_tree(per_class=2, size=48, kaggle_layout=False)
    archive = write_zip(tmp_path / "data.zip", files)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("COVID/COVID-1.png", files["Normal/Normal-1.png"])
    for listing in (listing_of(archive), list_images(str(archive))):
        assert len(listing.items) == 4 and len({i["source_uri"] for i in listing.items}) == 4
        assert listing.ignored == {"repeated_zip_name": 1} and not listing.rejects


# ---------------------------------------------------------------- class folders without an image


def tree_with_empty_class(root: Path) -> Path:
    write_tree(root, class_tree(per_class=2, size=48))
    (root / "Empty" / "images").mkdir(parents=True)
    write_tree(root, {"Docs/readme.txt": b"not an image", "Docs/images/notes.md": b"nor this"})
    return root


def test_a_named_class_folder_without_an_image_is_a_one_line_error_of_its_own(tmp_path):
    source = tree_with_empty_class(tmp_path / "src")
    for named in ("Empty", "Docs"):
        with pytest.raises(UserError) as info:
            listing_of(source, classes=("COVID", "Normal", named))
        assert str(info.value) == f"{source}: class folder {named} holds no PNG/JPEG/DICOM image"
    with pytest.raises(UserError, match=r"no folder for class\(es\) Missing \(found: COVID, Docs, Empty, Normal\)"):
        listing_of(source, classes=("COVID", "Normal", "Missing"))


def test_a_found_class_folder_without_an_image_is_left_out_with_a_warning(tmp_path, caplog):
    source = tree_with_empty_class(tmp_path / "src")
    with caplog.at_level(logging.WARNING, logger="cxr.ingest.sources"):
        listing = listing_of(source)
    assert listing.class_names == ("COVID", "Normal")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{source}: class folder {name} holds no PNG/JPEG/DICOM image; it is left out of the classes"
                      for name in ("Docs", "Empty")]
    # What the left-out folder holds is still accounted for, in no class.
    assert reasons(listing) == [("unsupported_file", "Docs/images/notes.md"), ("unsupported_file", "Docs/readme.txt")]
    assert {r["class_name"] for r in listing.rejects} == {None}


def test_fewer_than_two_class_folders_with_images_is_an_error_naming_the_empty_ones(tmp_path):
    source = write_tree(tmp_path / "src", {"COVID/a.png": synthetic_png("COVID", 0, 48)})
    (source / "Normal").mkdir()
    with pytest.raises(UserError) as info:
        listing_of(source)
    assert str(info.value) == (f"{source}: found 1 class folder(s) with images (COVID) "
                               "(Normal: no PNG/JPEG/DICOM image); at least two are needed")


def test_an_empty_class_folder_in_a_zip_is_seen_from_its_folder_member(tmp_path):
    archive = write_zip(tmp_path / "data.zip", class_tree(per_class=2, size=48), prefix="Dataset/")
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("Dataset/Empty/", b"")
    with pytest.raises(UserError, match="class folder Empty holds no PNG/JPEG/DICOM image"):
        listing_of(archive, classes=("COVID", "Normal", "Empty"))
    assert listing_of(archive).class_names == ("COVID", "Normal")


def test_an_s3_class_prefix_without_an_image_is_named(s3_env, s3_bucket, s3_client):
    files = {**class_tree(per_class=2, size=48, kaggle_layout=False), "Empty/notes.txt": b"no image"}
    for relative, data in files.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"tree/{relative}", Body=data)
    s3_client.put_object(Bucket=s3_bucket, Key="tree/Hollow/", Body=b"")  # a folder made in a console
    source = f"s3://{s3_bucket}/tree"
    for named in ("Empty", "Hollow"):
        with pytest.raises(UserError, match=f"class folder {named} holds no PNG/JPEG/DICOM image"):
            listing_of(source, classes=("COVID", "Normal", named))
    listing = listing_of(source)
    assert listing.class_names == ("COVID", "Normal") and len(listing.items) == 4
    assert reasons(listing) == [("unsupported_file", "Empty/notes.txt")]


# ---------------------------------------------------------------- inputs too large to read


def test_the_size_bound_holds_any_gray_or_8_bit_colour_image_within_max_pixels():
    # 16-bit gray and 8-bit RGBA PNGs stored without compression, a filter byte a row.
    side = 7071  # 50 MP
    assert side * side * 4 + side * 1 + 4096 < max_input_bytes(PreprocessConfig().max_pixels)


def zip_with_a_huge_member(path: Path, size: int) -> Path:
    """A class tree and a member of `size` zero bytes: its header says `size`, its data is a few hundred KB."""
    write_zip(path, class_tree(per_class=2, size=48, kaggle_layout=False))
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("COVID/huge.png", "w") as member:
        chunk = bytes(2**20)
        for _ in range(size // len(chunk)):
            member.write(chunk)
    return path


def test_a_zip_member_larger_than_max_pixels_allows_is_rejected_from_its_header(tmp_path):
    small = dict(image_size=64, max_pixels=64 * 64)  # bound: 16 KiB of pixels + 16 MiB of headroom
    size = max_input_bytes(small["max_pixels"]) + 2**20
    archive = zip_with_a_huge_member(tmp_path / "data.zip", size - size % 2**20 + 2**20)
    assert archive.stat().st_size < 2**20
    listing = listing_of(archive, **small)
    assert reasons(listing) == [("too_large", "COVID/huge.png")]
    assert "not read" in listing.rejects[0]["detail"] and len(listing.items) == 4
    # Within the default --max-pixels it is an input, for the decoder to judge.
    assert len(listing_of(archive).items) == 5
    assert [r["reason"] for r in list_images(str(archive), max_pixels=small["max_pixels"]).rejects] == ["too_large"]


def test_the_issues_300_mb_zip_member_is_rejected_at_the_default_max_pixels_without_being_read(tmp_path):
    archive = zip_with_a_huge_member(tmp_path / "data.zip", 300 * 2**20)
    listing = listing_of(archive)
    assert reasons(listing) == [("too_large", "COVID/huge.png")]


def test_a_local_file_larger_than_max_pixels_allows_is_rejected_from_its_size(tmp_path):
    source = write_tree(tmp_path / "src", class_tree(per_class=2, size=48, kaggle_layout=False))
    with open(source / "Normal" / "huge.png", "wb") as handle:  # sparse: nothing is written to disk
        handle.truncate(max_input_bytes(4096) + 1)
    listing = listing_of(source, image_size=64, max_pixels=4096)
    assert reasons(listing) == [("too_large", "Normal/huge.png")]
    assert listing.rejects[0]["class_name"] == "Normal"


# ---------------------------------------------------------------- printed names


def test_control_characters_in_sources_and_names_stay_on_their_line():
    per_class = {"COVID": 1, "Normal": 1, "total": 2}
    sources = {split: {"north\nwing": per_class, "south\twing": per_class} for split in ("train", "val", "test")}
    manifest = as_manifest({"counts": {"sources": sources, "ignored": {"unselected_class:odd\rname": 1}}})
    summary = format_summary(manifest, "out")
    table = summary.split("images per source\n", 1)[1].splitlines()
    assert table[1].startswith("north\\nwing ") and table[2].startswith("south\\twing ")
    assert len(table[1]) == len(table[2]) == len(table[0])  # the columns still line up
    assert "  ignored unselected_class:odd\\rname: 1" in summary.splitlines()
    assert not any(c in summary.replace("\n", "") for c in "\r\t")


# ---------------------------------------------------------------- the job


@pytest.mark.slow
def test_preprocess_of_a_looping_tree_with_metadata_ends_and_counts(ray_session, tmp_path):
    source = loop_tree(tmp_path / "src", {**TWO_LOOPS, "Normal/images/self.png": "self.png"})
    images = sorted(p.relative_to(source).as_posix() for p in source.glob("*/images/*-*.png"))
    rows = [f'{path},"north\nwing",SECRET-{i}' if i % 2 else f"{path},south,SECRET-{i}" for i, path in
            enumerate(images)]
    (tmp_path / "meta.csv").write_text("path,source,patient\n" + "\n".join(rows) + "\n")
    output = tmp_path / "shards"
    result = run_job("preprocess", "--source", str(source), "--output", str(output), "--image-size", "64",
                     "--metadata", str(tmp_path / "meta.csv"), "--group-by", "patient",
                     env={"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert "Traceback" not in printed
    assert "inputs found 9 = kept 6 + rejected 3" in printed and "  rejected symlink_loop: 3" in printed
    assert any(line.startswith("north\\nwing ") for line in printed.splitlines())
    assert "SECRET" not in printed  # --group-by's values are never printed
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    assert manifest["class_names"] == ["COVID", "Normal"]
    assert {row["source"] for rows in splits.values() for row in rows} == {"north\nwing", "south"}  # stored as given
