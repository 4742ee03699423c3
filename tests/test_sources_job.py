"""Sources through the jobs, as a user runs them: into shards and the manifest (synthetic sites,
a --metadata CSV on S3), leave-sources-out splits, and the evaluation report per source."""

from __future__ import annotations

import json

import pytest

from cxr.artifacts import Manifest
from cxr.config import AugmentConfig, EvaluateConfig, PreprocessConfig, SplitConfig, SyntheticConfig, TrainConfig
from cxr.preprocess.manifest import format_summary
from cxr.preprocess.pipeline import run_preprocess
from tests.cli import assert_one_line_error, run_job
from tests.test_preprocess_job import check_consistent, read_output
from tests.trees import class_tree, write_tree


def ray_env(ray_session) -> dict[str, str]:
    return {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}


def rows_of(splits: dict) -> list[tuple[str, dict]]:
    return [(split, row) for split, rows in splits.items() for row in rows]


def check_source_counts(manifest: dict, splits: dict) -> None:
    """The manifest's per-source counts are the shards' rows, split by split."""
    for split, rows in splits.items():
        counted = {source: per_class["total"] for source, per_class in manifest["counts"]["sources"][split].items()}
        found = {}
        for row in rows:
            found[row["source"] or "(unknown)"] = found.get(row["source"] or "(unknown)", 0) + 1
        assert counted == found, split


@pytest.mark.slow
def test_synthetic_sites_with_held_out_sites_for_test_and_validation(ray_session, tmp_path):
    output = tmp_path / "shards"
    common = ["--synthetic-images", "90", "--synthetic-size", "96", "--image-size", "32",
              "--synthetic-sources", "4", "--synthetic-confound", "0.5"]
    result = run_job("preprocess", *common, "--test-sources", "site-d", "--val-sources", "site-b",
                     "--output", str(output), env=ray_env(ray_session))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    check_source_counts(manifest, splits)
    placed = rows_of(splits)
    assert {row["source"] for _, row in placed} == {"site-a", "site-b", "site-c", "site-d"}
    assert not [row for split, row in placed if row["source"] == "site-d" and split != "test"]
    assert not [row for split, row in placed if row["source"] == "site-b" and split != "val"]
    assert {row["source"] for split, row in placed if split == "train"} == {"site-a", "site-c"}
    assert {row["source"] for split, row in placed if split == "val"} == {"site-a", "site-b", "site-c"}
    read = Manifest.from_dict(manifest)
    assert read.test_sources == ("site-d",) and read.val_sources == ("site-b",)
    by_class: dict[str, dict[str, int]] = {}
    for _, row in placed:
        per_class = by_class.setdefault(row["source"], {"COVID": 0, "Normal": 0})
        per_class[row["class_name"]] += 1
    assert manifest["counts"]["class_by_source"] == by_class
    assert "images per source (held out in test: site-d; held out in val: site-b)" in result.stdout
    table_rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("site-")}
    assert {name: [int(n) for n in row[:2]] for name, row in table_rows.items()} == \
        {name: [per_class["COVID"], per_class["Normal"]] for name, per_class in by_class.items()}
    assert "images in sources that hold both classes: " in result.stdout

    for flag in ("--test-sources", "--val-sources"):
        again = run_job("preprocess", *common, flag, "site-c,site-x", "--output", str(tmp_path / "other"),
                        env=ray_env(ray_session))
        assert_one_line_error(again, f"{flag}: no image comes from site-x (sources: site-a, site-b, site-c, site-d)")
        assert not (tmp_path / "other").exists()


PATIENTS = [f"PX-{i:04d}" for i in range(12)]


@pytest.mark.slow
def test_metadata_csv_on_s3_for_an_s3_folder(ray_session, s3_env, s3_bucket, s3_client, tmp_path, caplog):
    files = class_tree(per_class=6, size=64)
    for relative, data in files.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"hospitals/{relative}", Body=data)
    images = sorted(r for r in files if "/images/" in r)
    lines = ["path,source,patient_id,view"]
    # Two hospitals, one image without a row, one row without an image.
    for i, relative in enumerate(images[:-1]):
        lines.append(f"{relative},{'north' if i % 2 else 'south'},{PATIENTS[i]},{'AP' if i % 3 else 'PA'}")
    lines.append("COVID/images/not-there.png,north,PX-9999,AP")
    s3_client.put_object(Bucket=s3_bucket, Key="meta/images.csv", Body="\n".join(lines).encode())

    output = tmp_path / "shards"
    # In this process: the session's Ray gives its S3 settings to this process's tasks only.
    caplog.set_level("DEBUG")
    run_preprocess(PreprocessConfig(source=f"s3://{s3_bucket}/hospitals/", metadata=f"s3://{s3_bucket}/meta/images.csv",
                                    split=SplitConfig(test_sources=("north",)), image_size=32, output=str(output)))
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    assert manifest["counts"]["kept"] == 12
    check_source_counts(manifest, splits)
    summary = format_summary(Manifest.from_dict(manifest), str(output))
    expected = {relative: (i, 'north' if i % 2 else 'south') for i, relative in enumerate(images[:-1])}
    for split, row in rows_of(splits):
        relative = row["source_uri"].split("/hospitals/", 1)[1]
        if relative not in expected:
            assert row["source"] is None and row["patient_id"] is None and row["view"] is None
            continue
        i, hospital = expected[relative]
        assert (row["source"], row["patient_id"], row["view"]) == (hospital, PATIENTS[i], "AP" if i % 3 else "PA")
        assert split == "test" or hospital != "north"
    assert manifest["columns"]["patient_id"] == "string"
    assert manifest["source"]["metadata"]["csv"]["rows_without_image"] == 1
    assert manifest["source"]["metadata"]["csv"]["images_without_row"] == 1
    assert "1 naming no image found, 1 images without a row; columns kept: patient_id, view" in summary
    # Patient ids are data for the shards, never for the output or the log.
    assert not any(p in summary + caplog.text for p in PATIENTS + ["PX-9999"])
    assert "found 12 inputs" in caplog.text  # the log was searched


@pytest.mark.slow
def test_group_by_a_patient_column_keeps_each_patients_images_in_one_split(ray_session, tmp_path, caplog):
    files = class_tree(per_class=15, size=48, kaggle_layout=False)
    images = sorted(files)
    # Ten patients of three images each, COVID and Normal mixed; one image without an id.
    lines = ["path,patient_id"] + [f"{relative},{PATIENTS[i % 10]}" for i, relative in enumerate(images[:-1])]
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    output = tmp_path / "shards"
    caplog.set_level("DEBUG")
    run_preprocess(PreprocessConfig(source=str(write_tree(tmp_path / "src", files)),
                                    metadata=str(tmp_path / "meta.csv"), image_size=32, output=str(output),
                                    split=SplitConfig(0.6, 0.2, 0.2, group_by="patient_id")))
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    split_of_patient: dict[str, set[str]] = {}
    for split, row in rows_of(splits):
        split_of_patient.setdefault(row["patient_id"], set()).add(split)
    assert all(len(found) == 1 for patient, found in split_of_patient.items() if patient is not None)
    assert len({split for found in split_of_patient.values() for split in found}) == 3
    assert not rejected
    grouped = manifest["counts"]["grouped_by"]
    assert grouped == {"column": "patient_id", "groups": 10, "images_in_groups": 29,
                       "groups_with_several_classes": 10, "images_without_value": 1}
    summary = format_summary(Manifest.from_dict(manifest), str(output))
    assert "images that share a patient_id kept within one split: 10 groups (29 images; 10 groups hold" in summary
    assert "warning: 1 kept images have no patient_id" in summary
    assert not any(p in summary + caplog.text + json.dumps(manifest) for p in PATIENTS)


def test_group_by_needs_a_metadata_column_and_says_so_in_one_line(tmp_path):
    write_tree(tmp_path / "src", class_tree(per_class=2, size=48))
    (tmp_path / "meta.csv").write_text("path,source,patient_id\nCOVID/images/COVID-1.png,north,PX-1\n")
    common = ["--source", str(tmp_path / "src"), "--output", str(tmp_path / "shards")]
    assert_one_line_error(run_job("preprocess", *common, "--group-by", "patient_id"),
                          "--group-by patient_id: no source gives such a column (a --metadata CSV, or a "
                          "collection's metadata; columns here: none)")
    assert_one_line_error(run_job("preprocess", *common, "--metadata", str(tmp_path / "meta.csv"), "--group-by", "pid"),
                          f"--group-by pid: --metadata {tmp_path / 'meta.csv'} has no such column (its columns: "
                          "patient_id)")
    assert not (tmp_path / "shards").exists()


def test_bad_metadata_csv_fails_in_one_line_before_anything_is_written(tmp_path):
    write_tree(tmp_path / "src", class_tree(per_class=2, size=64))
    (tmp_path / "meta.csv").write_text("path,source,patient_id\nCOVID/images/COVID-1.png,north\n")
    result = run_job("preprocess", "--source", str(tmp_path / "src"), "--metadata", str(tmp_path / "meta.csv"),
                     "--output", str(tmp_path / "shards"))
    assert_one_line_error(result, "row 2 has 2 fields, the header 3")
    assert not (tmp_path / "shards").exists()


@pytest.mark.slow
def test_evaluate_reports_held_out_and_training_sources_of_test_and_validation(ray_session, tmp_path):
    # In this process, on the session's Ray: what jobs/evaluate.py runs and prints (its command
    # line and output are tested in tests/test_evaluate_predict.py and tests/test_job_output.py).
    from cxr.evaluate.job import format_summary, run_evaluation
    from cxr.train.job import run_training

    shards = str(tmp_path / "shards")
    manifest = run_preprocess(PreprocessConfig(
        output=shards, image_size=48, split=SplitConfig(test_sources=("site-d",), val_sources=("site-c",)),
        synthetic=SyntheticConfig(images=120, size=96, sources=4, confound=1.0)))
    run_training(TrainConfig(data=shards, storage=str(tmp_path / "runs"), name="sites", epochs=1, batch_size=16,
                             augment=AugmentConfig(0, 0, 0)))
    summary = format_summary(run_evaluation(EvaluateConfig(run=str(tmp_path / "runs" / "sites"), resamples=100,
                                                          gradcam_examples=0)))
    report = json.loads((tmp_path / "runs" / "sites" / "report" / "report.json").read_text())
    sources = report["sources"]
    assert sources["held_out"] == ["site-d"]
    test_counts = manifest["counts"]["sources"]["test"]
    assert sources["per_source"]["site-d"]["n"] == test_counts["site-d"]["total"]
    assert sources["per_source"]["site-d"]["held_out"] and not sources["per_source"]["site-a"]["held_out"]
    groups = sources["groups"]
    assert groups["held-out sources"]["n"] + groups["training sources"]["n"] == report["data"]["images"]
    assert groups["training sources"]["sources"] == sorted(set(test_counts) - {"site-d"})
    assert "held-out sources (site-d):" in summary
    # The validation split's scores (those that chose the threshold), per source.
    validation = report["validation_sources"]
    val_counts = manifest["counts"]["sources"]["val"]
    assert validation["held_out"] == ["site-c"] and validation["split"] == "val"
    assert validation["groups"]["held-out sources"]["n"] == val_counts["site-c"]["total"]
    assert sum(m["n"] for m in validation["per_source"].values()) == manifest["counts"]["splits"]["val"]["total"]
    assert "validation split, held-out sources (site-c):" in summary
    assert report["data"]["training_sources"]["table"] == manifest["counts"]["class_by_source"]
    markdown = (tmp_path / "runs" / "sites" / "report" / "report.md").read_text()
    card = (tmp_path / "runs" / "sites" / "report" / "MODEL_CARD.md").read_text()
    assert "## Per source" in markdown and "holds out the source site-d" in markdown
    assert "## Per source, validation split" in markdown and "The validation split holds out the source site-c" \
        in markdown
    for text in (markdown, card):
        assert "## Training data by source" in text and "images in sources that hold both classes" in text.lower()
    assert "holds out the source site-d" in card and "validation split, held-out sources:" in card
