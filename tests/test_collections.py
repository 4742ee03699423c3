"""The public collections' adapters (cxr.ingest.collections) and the cohort filters
(cxr.ingest.cohort), on tiny trees built in each collection's layout with its real column
names; no outside data. No Ray: listing is driver-side and pure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from cxr import storage
from cxr.config import CohortConfig, PreprocessConfig
from cxr.errors import UserError
from cxr.ingest import sources
from cxr.ingest.cohort import AT_READ, age_range, apply_cohort, view_code
from cxr.ingest.collections import Tree, list_collection, map_class_folders
from cxr.ingest.metadata import EXTRA_PREFIX, parse_metadata_csv
from cxr.preprocess.dicom import decode_dicom
from cxr.preprocess.transforms import ImageRejected
from tests.dicom_files import gradient, make_dicom
from tests.trees import png_bytes, write_tree, write_zip

PNG = png_bytes(np.full((16, 16), 90, np.uint8))
# Planted values that must reach the items' columns and never a reject's detail.
PATIENT, AGE = "PATIENT-4471", "47"

# The newest header of ieee8023/covid-chestxray-dataset's metadata.csv, as published.
COHEN_HEADER = ("patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,intubation_present,went_icu,"
                "in_icu,needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,"
                "neutrophil_count,lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,"
                "clinical_notes,other_notes,")
# An older one: no modality or folder column, findings as words.
COHEN_OLD_HEADER = "Patientid,offset,sex,age,finding,survival,view,date,location,filename,doi, url,license,notes"
ACTUALMED_HEADER = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,imagename,"
                    "artifacts/distortion,notes")
FIGURE1_HEADER = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,"
                  "artifacts/distortion,notes")


def jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((16, 16), 90, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def csv_text(header: str, rows: list[dict]) -> bytes:
    """A CSV of `header`'s columns, each row's named cells filled in, the others empty."""
    names = header.split(",")
    lines = [header] + [",".join(str(row.get(name.strip(), "")) for name in names) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def folder_tree(root: Path, files: dict[str, bytes]) -> Tree:
    """What sources.list_source builds for a folder, as the adapters take it."""
    write_tree(root, files)
    location = storage.resolve(str(root))
    return Tree(kind="folder", root=location.uri, found=sources._folder_found(location),
                read=lambda rel: storage.read_bytes(location.join(rel)),
                uri_of=lambda rel: location.uri + "/" + rel,
                read_spec_of=lambda rel: ("file", location.join(rel).uri, ""),
                max_bytes=sources.max_input_bytes(PreprocessConfig.max_pixels))


def by_name(listing) -> dict[str, dict]:
    return {item["path"].rsplit("/", 1)[-1]: item for item in listing.items}


def rejects_by_name(listing) -> dict[str, dict]:
    return {reject["source_uri"].rsplit("/", 1)[-1]: reject for reject in listing.rejects}


def assert_no_planted_values(listing) -> None:
    for reject in listing.rejects:
        assert PATIENT not in reject["detail"] and AGE not in reject["detail"], reject


def cohen_files() -> dict[str, bytes]:
    rows = [
        dict(patientid=PATIENT, sex="M", age=AGE, finding="Pneumonia/Viral/COVID-19", view="PA", modality="X-ray",
             location="Somewhere Hospital", folder="images", filename="covid-pa.jpg"),
        dict(patientid="2", sex="F", age="70", finding="No Finding", view="AP Supine", modality="X-ray",
             folder="images", filename="normal-ap.png"),
        dict(patientid="3", finding="Pneumonia/Bacterial/Streptococcus", view="PA", modality="X-ray",
             folder="images", filename="strep.png"),
        dict(patientid="4", finding="Pneumonia/Viral/COVID-19", view="Axial", modality="CT", folder="images",
             filename="ct-slice.png"),
        dict(patientid=PATIENT, age=AGE, finding="Pneumonia/Viral/COVID-19", view="L", modality="X-ray",
             folder="images", filename="covid-lateral.jpg"),
        dict(patientid="6", finding="Pneumonia/Viral/COVID-19", view="PA", modality="X-ray", folder="images",
             filename="gone-from-disk.png"),
        dict(patientid="7", finding="Pneumonia/Viral/COVID-19", modality="CT", folder="volumes",
             filename="scan.nii.gz"),
    ]
    return {"metadata.csv": csv_text(COHEN_HEADER, rows), "README.md": b"# the collection\n",
            "images/covid-pa.jpg": jpeg(), "images/normal-ap.png": PNG, "images/strep.png": PNG,
            "images/ct-slice.png": PNG, "images/covid-lateral.jpg": jpeg(), "images/no-row.png": PNG,
            "images/notes.txt": b"not an image", "volumes/scan.nii.gz": b"\x1f\x8b"}


def test_cohen_collection_gives_labels_sources_and_demographics(tmp_path):
    listing = list_collection(folder_tree(tmp_path, cohen_files()))
    assert listing.class_names == ("COVID", "Normal")
    items = by_name(listing)
    assert set(items) == {"covid-pa.jpg", "normal-ap.png"}
    covid = items["covid-pa.jpg"]
    assert (covid["class_name"], covid["label"], covid["source"]) == ("COVID", 0, "cohen")
    assert {name: covid[EXTRA_PREFIX + name] for name in ("patient", "age", "sex", "view", "finding", "location")} \
        == {"patient": PATIENT, "age": AGE, "sex": "M", "view": "PA", "finding": "Pneumonia/Viral/COVID-19",
            "location": "Somewhere Hospital"}
    assert covid["path"] == "images/covid-pa.jpg" and covid[AT_READ] is False
    assert items["normal-ap.png"]["class_name"] == "Normal"
    rejects = rejects_by_name(listing)
    assert {name: r["reason"] for name, r in rejects.items()} == {
        "strep.png": "unmapped_finding", "ct-slice.png": "not_xray", "covid-lateral.jpg": "lateral_view",
        "no-row.png": "no_metadata_row", "notes.txt": "unsupported_file"}
    assert rejects["strep.png"]["detail"] == "Pneumonia/Bacterial/Streptococcus"
    assert all(r["source"] == "cohen" for r in listing.rejects)
    # found = kept + rejected: every file of images/; the rest of the repository is counted apart.
    assert listing.found == 7
    assert listing.ignored == {"collection_files": 3}  # metadata.csv, README.md, the CT volume
    assert listing.metadata["collection"] == {"name": "cohen", "path": "metadata.csv", "rows": 7,
                                              "rows_without_image": 2, "images_without_row": 1}
    assert listing.extra_columns == ("patient", "age", "sex", "view", "finding", "location", "cohort")
    assert_no_planted_values(listing)


def test_older_cohen_header_in_a_zip_with_a_wrapping_folder(tmp_path):
    rows = [dict(Patientid="1", finding="COVID-19", view="PA", filename="a.png"),
            dict(Patientid="2", finding="ARDS", view="PA", filename="b.png")]
    archive = write_zip(tmp_path / "cohen.zip", {"metadata.csv": csv_text(COHEN_OLD_HEADER, rows),
                                                 "images/a.png": PNG, "images/b.png": PNG},
                        prefix="covid-chestxray-dataset-master/")
    location = storage.resolve(str(archive))
    found, _ = sources._zip_found(location)

    def read(member: str) -> bytes:
        import zipfile
        with zipfile.ZipFile(archive) as opened:
            return opened.read(member)

    listing = list_collection(Tree("zip", location.uri, found, read, lambda rel: f"{location.uri}!/{rel}",
                                   lambda rel: ("zip", location.uri, rel)))
    assert listing.root.endswith("!/covid-chestxray-dataset-master") or listing.root.endswith(
        "/covid-chestxray-dataset-master")
    [item] = listing.items
    assert (item["class_name"], item["kind"], item["member"]) == ("COVID", "zip",
                                                                  "covid-chestxray-dataset-master/images/a.png")
    assert [(r["reason"], r["detail"]) for r in listing.rejects] == [("unmapped_finding", "ARDS")]


def test_actualmed_collection_and_an_empty_finding(tmp_path):
    rows = [dict(patientid="ANON1", finding="COVID-19", view="AP", modality="X-ray", imagename="CR.1.png"),
            dict(patientid="ANON2", finding="No finding", view="PA", modality="X-ray", imagename="CR.2.png"),
            dict(patientid="ANON3", view="PA", modality="X-ray", imagename="CR.3.png")]  # "Inconclusive"
    files = {"metadata.csv": csv_text(ACTUALMED_HEADER, rows), **{f"images/CR.{i}.png": PNG for i in (1, 2, 3)}}
    listing = list_collection(folder_tree(tmp_path, files))
    assert {name: (item["class_name"], item["source"]) for name, item in by_name(listing).items()} == {
        "CR.1.png": ("COVID", "actualmed"), "CR.2.png": ("Normal", "actualmed")}
    assert [(r["reason"], r["detail"]) for r in listing.rejects] == [("unmapped_finding",
                                                                     "the metadata gives no finding")]


def figure1_files() -> dict[str, bytes]:
    rows = [dict(patientid="COVID-00001", sex="M", age="33", finding="COVID-19", view="AP erect", modality="X-ray"),
            dict(patientid="COVID-00002", age="50+", finding="COVID-19", view="PA", modality="X-ray"),
            dict(patientid="COVID-00023", finding="No finding", modality="X-ray"),
            dict(patientid="COVID-00031", finding="Pneumonia", modality="X-ray")]
    return {"metadata.csv": csv_text(FIGURE1_HEADER, rows), "images/COVID-00001.jpg": jpeg(),
            "images/COVID-00002.jpg": jpeg(), "images/COVID-00023.png": PNG, "images/COVID-00031.jpg": jpeg()}


def test_figure1_images_are_named_by_patient_id(tmp_path):
    listing = list_collection(folder_tree(tmp_path, figure1_files()))
    items = by_name(listing)
    assert {name: (item["class_name"], item["source"]) for name, item in items.items()} == {
        "COVID-00001.jpg": ("COVID", "figure1"), "COVID-00002.jpg": ("COVID", "figure1"),
        "COVID-00023.png": ("Normal", "figure1")}
    assert items["COVID-00001.jpg"][EXTRA_PREFIX + "view"] == "AP erect"
    assert [(r["reason"], r["detail"]) for r in listing.rejects] == [("unmapped_finding", "Pneumonia")]


def rsna_files() -> dict[str, bytes]:
    """RSNA's layout; its headers' PatientAge is written as a bare number ("62"), not a DICOM Age String."""
    pixels = gradient(48, 40)
    return {
        "stage_2_train_images/p-normal.dcm": make_dicom(pixels, view="PA", extra={"PatientAge": "045Y"}),
        "stage_2_train_images/p-opacity.dcm": make_dicom(pixels, view="AP", extra={"PatientAge": "62"}),
        "stage_2_train_images/p-other.dcm": make_dicom(pixels, view="PA"),
        "stage_2_test_images/p-test.dcm": make_dicom(pixels),
        "stage_2_train_labels.csv": b"patientId,x,y,width,height,Target\np-normal,,,,,0\n"
                                    b"p-opacity,1,2,3,4,1\np-opacity,5,6,7,8,1\np-other,,,,,0\n",
        "stage_2_detailed_class_info.csv": b"patientId,class\np-normal,Normal\np-opacity,Lung Opacity\n"
                                           b"p-opacity,Lung Opacity\np-other,No Lung Opacity / Not Normal\n",
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_rsna_collection_reads_the_detailed_classes_and_defers_demographics(tmp_path):
    tree = folder_tree(tmp_path, rsna_files())
    listing = list_collection(tree)
    [normal] = listing.items
    assert (normal["class_name"], normal["source"], normal["kind"], normal[AT_READ]) == ("Normal", "rsna", "file",
                                                                                         True)
    assert normal[EXTRA_PREFIX + "age"] is None and normal[EXTRA_PREFIX + "patient"] == "p-normal"
    assert sorted(r["detail"] for r in listing.rejects) == ["Lung Opacity", "No Lung Opacity / Not Normal"]
    assert listing.ignored == {"collection_files": 3}  # the two CSVs and the unlabelled test image
    assert listing.metadata["collection"]["rows"] == 4 and listing.metadata["collection"]["rows_without_image"] == 0

    mapped = list_collection(tree, (("Normal", "Normal"), ("Lung Opacity", "Opacity"),
                                    ("No Lung Opacity/Not Normal", "Other")))
    assert mapped.class_names == ("Normal", "Opacity", "Other") and not mapped.rejects
    assert {item["class_name"]: item["label"] for item in mapped.items} == {"Normal": 0, "Opacity": 1, "Other": 2}
    # --classes chooses among the mapped classes: the others are left out, counted.
    chosen = list_collection(tree, (("Normal", "Normal"), ("Lung Opacity", "Opacity")), classes=("Opacity", "Normal"))
    assert [(item["class_name"], item["label"]) for item in chosen.items] == [("Normal", 1), ("Opacity", 0)]


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_rsna_cohort_is_checked_from_the_dicom_header_by_the_worker(tmp_path):
    files = rsna_files()
    listing = list_collection(folder_tree(tmp_path, files), (("Normal", "Normal"), ("Lung Opacity", "Opacity"),
                                                             ("No Lung Opacity / Not Normal", "Other")))
    strict = CohortConfig(min_age=50, views=("PA",), unknown_age="reject", unknown_view="reject")
    # At listing the age and view are unknown, but in the header: nothing is rejected yet.
    assert apply_cohort(listing, strict).items == listing.items
    data = {name.rsplit("/", 1)[-1]: payload for name, payload in files.items()}
    assert decode_dicom(data["p-normal.dcm"], 10**6).shape == (48, 40)  # no cohort: as before
    outcomes = {}
    for name in ("p-normal.dcm", "p-opacity.dcm", "p-other.dcm"):
        with pytest.raises(ImageRejected) as rejected:
            decode_dicom(data[name], 10**6, cohort=strict)
        outcomes[name] = rejected.value.reason
        assert "45" not in rejected.value.detail and "62" not in rejected.value.detail
    assert outcomes == {"p-normal.dcm": "age_out_of_range", "p-opacity.dcm": "view_not_selected",
                        "p-other.dcm": "age_unknown"}
    assert decode_dicom(data["p-opacity.dcm"], 10**6, cohort=CohortConfig(min_age=50, views=("PA", "AP"))).size


def pediatric_files() -> dict[str, bytes]:
    return {"chest_xray/train/NORMAL/IM-0115-0001.jpeg": jpeg(),
            "chest_xray/train/NORMAL/NORMAL2-IM-1427-0001.jpeg": jpeg(),
            "chest_xray/test/PNEUMONIA/person1_bacteria_1.jpeg": jpeg(),
            "chest_xray/val/PNEUMONIA/person3_virus_6.jpeg": jpeg(),
            "chest_xray/train/PNEUMONIA/person9_unlabelled.jpeg": jpeg(),
            "chest_xray/train/.DS_Store": b"\0"}


def test_pediatric_collection_findings_from_file_names(tmp_path):
    tree = folder_tree(tmp_path, pediatric_files())
    listing = list_collection(tree)
    assert {name: (item["class_name"], item[EXTRA_PREFIX + "patient"]) for name, item in by_name(listing).items()} \
        == {"IM-0115-0001.jpeg": ("Normal", "IM-0115"), "NORMAL2-IM-1427-0001.jpeg": ("Normal", "NORMAL2-IM-1427")}
    assert all(item["source"] == "pediatric-pneumonia" and item[EXTRA_PREFIX + "cohort"] == "paediatric"
               and item[EXTRA_PREFIX + "view"] == "AP" for item in listing.items)
    assert sorted(r["detail"] for r in listing.rejects) == ["Pneumonia", "Pneumonia/Bacterial", "Pneumonia/Viral"]
    assert listing.ignored == {"collection_files": 1}

    mapped = list_collection(tree, (("Normal", "Normal"), ("Bacterial", "Bacterial"), ("Pneumonia/Viral", "Viral")))
    assert {item["path"].rsplit("/", 1)[-1]: item["class_name"] for item in mapped.items} == {
        "IM-0115-0001.jpeg": "Normal", "NORMAL2-IM-1427-0001.jpeg": "Normal",
        "person1_bacteria_1.jpeg": "Bacterial", "person3_virus_6.jpeg": "Viral"}
    # Children: an adult cohort drops them all, each a recorded reject.
    adults = apply_cohort(mapped, CohortConfig(min_age=18))
    assert not adults.items and adults.found == mapped.found
    assert {r["reason"] for r in adults.rejects[-4:]} == {"age_out_of_range"}


def test_a_class_per_folder_tree_is_no_collection_and_its_folders_map_by_label_map(tmp_path):
    files = {f"{name}/images/{name}-1.png": PNG for name in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")}
    tree = folder_tree(tmp_path / "kaggle", files)
    assert list_collection(tree) is None
    # A split/NORMAL tree without the pneumonia set's file names is not that set either.
    assert list_collection(folder_tree(tmp_path / "other", {"train/NORMAL/a.png": PNG, "train/PNEUMONIA/b.png": PNG})) \
        is None
    listing = sources.list_source(PreprocessConfig(source=str(tmp_path / "kaggle"), classes=()))
    mapped = map_class_folders(listing, (("COVID", "COVID"), ("Normal", "Normal"), ("Viral Pneumonia", "Pneumonia")),
                               classes=("COVID", "Normal"))
    assert {item["class_name"] for item in mapped.items} == {"COVID", "Normal"}
    assert mapped.ignored == {"unselected_class:Pneumonia": 1}
    assert [(r["reason"], r["detail"]) for r in mapped.rejects] == [("unmapped_finding", "Lung_Opacity")]
    assert all(item[EXTRA_PREFIX + "finding"] == item["class_name"] for item in mapped.items)
    assert "finding" in mapped.extra_columns


def test_two_collections_in_one_tree_is_a_one_line_error(tmp_path):
    files = {f"actualmed/{k}": v for k, v in
             {"metadata.csv": csv_text(ACTUALMED_HEADER, []), "images/a.png": PNG}.items()}
    files.update({f"figure1/{k}": v for k, v in figure1_files().items()})
    with pytest.raises(UserError, match=r"several collections .*actualmed/, figure1/.*--source NAME=PATH"):
        list_collection(folder_tree(tmp_path, files))


def test_unreadable_metadata_is_a_one_line_error(tmp_path):
    files = {"metadata.csv": b"\xff\xfe\x00broken", "images/a.png": PNG}
    with pytest.raises(UserError, match=r"metadata.csv: not UTF-8 text$"):
        list_collection(folder_tree(tmp_path, files))


@pytest.mark.parametrize(("text", "years"), [
    ("65", (65, 65)), ("50+", (50, 130)), ("early 40s", (40, 43)), ("40s", (40, 49.99)), ("045Y", (45, 45)),
    ("006M", (0.5, 0.5)), ("1-5", (1, 5)), ("", None), ("unknown", None), (None, None)])
def test_ages_as_collections_write_them(text, years):
    assert age_range(text) == (None if years is None else pytest.approx(years))


def test_views_are_their_first_word():
    assert [view_code(v) for v in ("AP Supine", "ap-erect", "PA", " ", None)] == ["AP", "AP", "PA", None, None]


def metadata_csv_listing(tmp_path):
    """A class-per-folder tree with a --metadata CSV whose columns are `Age` and `VIEW`."""
    files = {f"{c}/{c}-{i}.png": PNG for c in ("COVID", "Normal") for i in range(4)}
    write_tree(tmp_path, files)
    listing = sources.list_source(PreprocessConfig(source=str(tmp_path)))
    table = parse_metadata_csv("path,Age,VIEW\nCOVID/COVID-0.png,30,PA\nCOVID/COVID-1.png,12,PA\n"
                               "COVID/COVID-2.png,40s,AP\nNormal/Normal-0.png,,PA\nNormal/Normal-1.png,70,\n",
                               "meta.csv")
    return sources.with_metadata_csv(listing, table)


@pytest.mark.parametrize(("cohort", "expected"), [
    (CohortConfig(), {}),
    (CohortConfig(min_age=18), {"COVID-1.png": "age_out_of_range"}),
    (CohortConfig(min_age=18, unknown_age="reject"),
     {"COVID-1.png": "age_out_of_range", "Normal-0.png": "age_unknown", "Normal-2.png": "age_unknown",
      "Normal-3.png": "age_unknown", "COVID-3.png": "age_unknown"}),
    (CohortConfig(min_age=45, max_age=65), {"COVID-0.png": "age_out_of_range", "COVID-1.png": "age_out_of_range",
                                            "Normal-1.png": "age_out_of_range"}),  # "40s" straddles: kept
    (CohortConfig(min_age=45, unknown_age="reject"),
     {"COVID-0.png": "age_out_of_range", "COVID-1.png": "age_out_of_range", "COVID-2.png": "age_unknown",
      "COVID-3.png": "age_unknown", "Normal-0.png": "age_unknown", "Normal-2.png": "age_unknown",
      "Normal-3.png": "age_unknown"}),
    (CohortConfig(views=("PA",)), {"COVID-2.png": "view_not_selected"}),
    (CohortConfig(views=("pa",), unknown_view="reject"),
     {"COVID-2.png": "view_not_selected", "COVID-3.png": "view_unknown", "Normal-1.png": "view_unknown",
      "Normal-2.png": "view_unknown", "Normal-3.png": "view_unknown"}),
])
def test_cohort_moves_what_it_removes_to_recorded_rejects(tmp_path, cohort, expected):
    listing = metadata_csv_listing(tmp_path)
    filtered = apply_cohort(listing, cohort)
    removed = {r["source_uri"].rsplit("/", 1)[-1]: r["reason"] for r in filtered.rejects}
    assert removed == expected
    assert filtered.found == listing.found == 8
    assert {item["source_uri"] for item in filtered.items}.isdisjoint(r["source_uri"] for r in filtered.rejects)
    for reject in filtered.rejects:  # the bound is named, never the patient's age
        assert not any(age in reject["detail"] for age in ("30", "12", "70")), reject
    assert len(listing.items) == 8  # the original listing is not changed
