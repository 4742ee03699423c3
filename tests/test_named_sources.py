"""Several named sources in one job (`--source NAME=SOURCE`, repeated): every source through the
one pipeline into one shard set, each image's source its name (or the finer one its metadata
gives), the classes of all of them, found = kept + rejected per source."""

from __future__ import annotations

import pytest

from cxr.artifacts import Manifest
from cxr.cli.preprocess import JOB
from cxr.config import PreprocessConfig
from cxr.config.preprocess import source_spec
from cxr.errors import UserError
from cxr.ingest import sources
from cxr.preprocess.manifest import format_summary
from cxr.preprocess.pipeline import list_inputs, run_preprocess
from tests.test_preprocess_job import check_consistent, read_output
from tests.trees import broken_files, class_tree, synthetic_png, write_tree, write_zip


def built(*argv: str) -> PreprocessConfig:
    return JOB.build_config(JOB.parse_args(list(argv)))


def test_a_source_is_named_by_a_word_before_an_equals_sign():
    assert source_spec("rsna=s3://bucket/rsna") == ("rsna", "s3://bucket/rsna")
    assert source_spec("site.a-1=data/x") == ("site.a-1", "data/x")
    for bare in ("s3://bucket/date=2024/", "./a=b", "kaggle:owner/set", "data", "=x", "a="):
        assert source_spec(bare) == (None, bare)
    config = built("--source", "a=one", "--source", "b=two.zip")
    assert config.named_sources == (("a", "one"), ("b", "two.zip")) and config.source == ("a=one", "b=two.zip")
    assert built().named_sources == ((None, "synthetic"),)


@pytest.mark.parametrize("argv, message", [
    (["--source", "a=one", "--source", "two"], "several sources must each be named"),
    (["--source", "a=one", "--source", "a=two"], "--source names a source twice: ['a', 'a']"),
    (["--source", "a=one", "--source", "b=one"], "--source reads the same source twice"),
    (["--source", "a=kaggle", "--source", "b=kaggle:x/y"], "at most one Kaggle dataset a job"),
    (["--source", "a=one", "--source", "b=two", "--metadata", "m.csv"], "--metadata applies to a single --source"),
])
def test_sources_that_cannot_be_told_apart_are_one_line(argv, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        built(*argv)


def test_the_listings_merge_into_one_with_every_class_labelled_by_its_place(tmp_path):
    hospital = write_tree(tmp_path / "hospital", {**class_tree(per_class=3, size=48), **broken_files(48)})
    normals = {path: data for path, data in class_tree(per_class=4, size=48).items() if path.startswith("Normal")}
    extra = {"Pneumonia/images/p0.png": synthetic_png("COVID", 5, 48)}
    clinic = write_zip(tmp_path / "clinic.zip", {**normals, **extra})
    config = built("--source", f"hospital={hospital}", "--source", f"clinic={clinic}")
    listing = list_inputs(config)
    assert listing.class_names == ("COVID", "Normal", "Pneumonia")  # every class of either, sorted
    assert all(listing.class_names[item["label"]] == item["class_name"] for item in listing.items)
    assert {item["source"] for item in listing.items} == {"hospital", "clinic"}
    one = [sources.list_source(config, str(hospital)), sources.list_source(config, str(clinic))]
    assert listing.found == sum(each.found for each in one)
    assert set(listing.inputs.values()) == {"hospital", "clinic"}
    assert len(listing.inputs) == listing.found  # every input and every reject has its source
    chosen = list_inputs(built("--source", f"hospital={hospital}", "--source", f"clinic={clinic}",
                               "--classes", "Normal,COVID"))
    assert chosen.class_names == ("Normal", "COVID")
    assert {item["class_name"] for item in chosen.items} == {"Normal", "COVID"}


def test_two_named_sources_make_one_shard_set_counted_per_source(ray_session, tmp_path):
    hospital = write_tree(tmp_path / "hospital", {**class_tree(per_class=8, size=64), **broken_files(64)})
    clinic = write_tree(tmp_path / "clinic", class_tree(per_class=6, size=64, kaggle_layout=False))
    output = tmp_path / "shards"
    config = built("--source", f"hospital={hospital}", "--source", f"clinic={clinic}", "--image-size", "32",
                   "--no-lung-crop", "--output", str(output))
    run_preprocess(config)
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    inputs = manifest["source"]["inputs"]
    assert set(inputs) == {"hospital", "clinic"}
    for name, counts in inputs.items():
        assert counts["found"] == counts["kept"] + counts["rejected"]
    assert sum(counts["found"] for counts in inputs.values()) == manifest["counts"]["found"]
    assert inputs["hospital"]["rejected"] >= len(broken_files(64))
    assert {row["source"] for rows in splits.values() for row in rows} == {"hospital", "clinic"}
    assert manifest["config"]["source"] == [f"hospital={hospital}", f"clinic={clinic}"]
    summary = format_summary(Manifest.from_dict(manifest), str(output))
    counts = inputs["clinic"]
    assert (f"  from clinic ({clinic}): found {counts['found']} = kept {counts['kept']} + rejected "
            f"{counts['rejected']}") in summary


def test_public_collections_as_named_sources_with_a_label_map_and_an_adult_cohort(ray_session, tmp_path):
    """The COVID-19 image data collection and the paediatric pneumonia set, read in their own
    layouts: findings mapped to the job's classes, children left out by --min-age, every image
    found accounted for per source."""
    from tests.test_collections import cohen_files, pediatric_files

    cohen = write_tree(tmp_path / "covid-chestxray-dataset", cohen_files())
    pediatric = write_tree(tmp_path / "pneumonia", pediatric_files())
    output = tmp_path / "shards"
    config = built("--source", f"cohen={cohen}", "--source", f"kids={pediatric}",
                   "--label-map", "COVID-19=COVID", "--label-map", "No Finding=Normal", "--label-map", "Normal=Normal",
                   "--min-age", "18", "--image-size", "32", "--no-lung-crop", "--markings", "keep",
                   "--split", "0.5,0.25,0.25", "--output", str(output))
    listing = list_inputs(config)
    assert listing.class_names == ("COVID", "Normal")
    manifest = run_preprocess(config)
    inputs = manifest["source"]["inputs"]
    assert all(counts["found"] == counts["kept"] + counts["rejected"] for counts in inputs.values())
    assert inputs["kids"]["kept"] == 0  # every child is below --min-age 18
    reasons = manifest["counts"]["rejected_by_reason"]
    assert reasons["age_out_of_range"] >= 2 and reasons["unmapped_finding"] >= 1
    assert manifest["config"]["cohort"]["min_age"] == 18


def test_a_class_folder_named_as_a_class_keeps_it_under_a_label_map(tmp_path):
    from cxr.ingest.collections import Labels

    labels = Labels.of((("COVID-19", "COVID"), ("No Finding", "Normal")))
    assert labels.class_of("COVID") == "COVID" and labels.class_of("normal") == "Normal"
    assert labels.class_of("Pneumonia/Viral/COVID-19") == "COVID" and labels.class_of("Lung_Opacity") is None
    tree = write_tree(tmp_path / "db", {**class_tree(per_class=2, size=32),
                                        "Lung_Opacity/images/o.png": synthetic_png("Normal", 3, 32)})
    listing = sources.list_source(built("--source", str(tree), "--label-map", "COVID-19=COVID",
                                        "--label-map", "No Finding=Normal"))
    assert {item["class_name"] for item in listing.items} == {"COVID", "Normal"}
    assert [(r["reason"], r["detail"]) for r in listing.rejects] == [("unmapped_finding", "Lung_Opacity")]
