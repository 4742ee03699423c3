"""The driver's global decisions: duplicate removal, stratified split, shard grouping."""

from __future__ import annotations

import hashlib
import random

import pytest

from cxr.config import SplitConfig
from cxr.preprocess.shards import assign_splits, group_by_value, plan_shards, remove_duplicates


def row(uri: str, label: int, content: str) -> dict:
    return {"source_uri": uri, "label": label, "class_name": ["COVID", "Normal"][label],
            "content_hash": hashlib.sha256(content.encode()).hexdigest(), "marking_score": 0.0}


def dataset(n_covid: int, n_normal: int) -> list[dict]:
    return ([row(f"c/{i:04d}.png", 0, f"covid{i}") for i in range(n_covid)]
            + [row(f"n/{i:04d}.png", 1, f"normal{i}") for i in range(n_normal)])


def test_duplicates_keep_the_smallest_uri_whatever_the_order():
    rows = dataset(3, 3) + [row("a/first.png", 0, "covid1"), row("z/last.png", 0, "covid1")]
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        kept, rejected = remove_duplicates(shuffled)
        assert len(kept) == 6
        assert "a/first.png" in {r["source_uri"] for r in kept}
        assert sorted(r["source_uri"] for r in rejected) == ["c/0001.png", "z/last.png"]
        assert {r["reason"] for r in rejected} == {"duplicate"}
        assert all("a/first.png" in r["detail"] for r in rejected)


def test_duplicates_across_classes_are_all_rejected():
    rows = dataset(2, 2) + [row("n/copy.png", 1, "covid0")]
    kept, rejected = remove_duplicates(rows)
    assert sorted(r["source_uri"] for r in rejected) == ["c/0000.png", "n/copy.png"]
    assert {r["reason"] for r in rejected} == {"conflicting_duplicate"}
    assert len(kept) == 3


def test_split_is_stratified_with_exact_ratios():
    assignment = assign_splits(dataset(100, 280), SplitConfig())
    counts = {}
    for uri, split in assignment.items():
        key = (uri[0], split)
        counts[key] = counts.get(key, 0) + 1
    assert counts == {("c", "train"): 80, ("c", "val"): 10, ("c", "test"): 10,
                      ("n", "train"): 224, ("n", "val"): 28, ("n", "test"): 28}


def test_split_depends_only_on_the_images():
    rows = dataset(50, 120)
    reference = assign_splits(rows, SplitConfig())
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert assign_splits(shuffled, SplitConfig()) == reference
    # Another class's images do not move this class's images between splits.
    covid_only = assign_splits([r for r in rows if r["label"] == 0], SplitConfig())
    assert covid_only == {u: s for u, s in reference.items() if u.startswith("c/")}
    assert assign_splits(rows, SplitConfig(seed=1)) != reference


@pytest.mark.parametrize("ratios", [(0.7, 0.3, 0.0), (0.6, 0.2, 0.2), (1.0, 0.0, 0.0)])
def test_split_covers_every_image_once(ratios):
    rows = dataset(37, 53)
    assignment = assign_splits(rows, SplitConfig(*ratios))
    assert set(assignment) == {r["source_uri"] for r in rows}
    for name, ratio in zip(("train", "val", "test"), ratios):
        share = sum(s == name for s in assignment.values()) / len(rows)
        assert share == pytest.approx(ratio, abs=0.03)


def test_bad_ratios_are_user_errors():
    from cxr.errors import UserError
    with pytest.raises(UserError, match="add up to 1"):
        SplitConfig(0.8, 0.1, 0.2)
    with pytest.raises(UserError, match="negative"):
        SplitConfig(1.1, -0.1, 0.0)


def test_plan_shards_groups_files_up_to_the_row_budget():
    file_rows = {f"s/{i}.parquet": {"train": 30, "val": 3 if i % 2 else 0, "test": 4} for i in range(10)}
    plan = plan_shards(file_rows, rows_per_shard=100)
    assert [len(group) for group in plan["train"]] == [3, 3, 3, 1]
    assert sum(len(group) for group in plan["val"]) == 5 and len(plan["val"]) == 1
    assert sorted(f for group in plan["test"] for f in group) == sorted(file_rows)


def sourced(n_per_source: int, sources: tuple[str, ...]) -> list[dict]:
    rows = []
    for source in sources:
        for i in range(n_per_source):
            rows.append({**row(f"{source}/{i:04d}.png", i % 3 == 0, f"{source}{i}"), "source": source})
    return rows


def test_held_out_sources_go_whole_to_test_and_nowhere_else():
    rows = sourced(60, ("a", "b", "c", "d")) + [row("u/0.png", 0, "unknown")]
    for ratios in ((0.8, 0.1, 0.1), (0.9, 0.1, 0.0)):
        assignment = assign_splits(rows, SplitConfig(*ratios, test_sources=("b", "d")))
        split_of_source = {}
        for r in rows:
            split_of_source.setdefault(r.get("source"), set()).add(assignment[r["source_uri"]])
        assert split_of_source["b"] == split_of_source["d"] == {"test"}
        assert "train" in split_of_source["a"] and "val" in split_of_source["a"]
        # The other sources are split as if the held-out ones were not there.
        rest = [r for r in rows if r.get("source") not in ("b", "d")]
        assert {u: s for u, s in assignment.items() if u.split("/")[0] not in ("b", "d")} == \
            assign_splits(rest, SplitConfig(*ratios))
        in_test = {r.get("source") for r in rows if assignment[r["source_uri"]] == "test"}
        assert in_test == ({"b", "d"} if ratios[2] == 0 else {"a", "b", "c", "d"} | ({None} & in_test))


def test_a_held_out_image_copied_into_a_training_source_is_in_one_split_only():
    rows = sourced(20, ("a", "b"))
    twin = {**rows[23], "source_uri": "a/twin.png", "source": "a"}  # b's image, filed under a as well
    kept, rejected = remove_duplicates(rows + [twin])
    assignment = assign_splits(kept, SplitConfig(test_sources=("b",)))
    splits_of_pixels = {}
    for r in kept:
        splits_of_pixels.setdefault(r["content_hash"], set()).add(assignment[r["source_uri"]])
    assert all(len(s) == 1 for s in splits_of_pixels.values())
    assert [(r["reason"], r["source_uri"]) for r in rejected] == [("duplicate", "b/0003.png")]


def test_validation_sources_go_whole_to_val_and_the_rest_split_as_without_them():
    rows = sourced(60, ("a", "b", "c", "d")) + [row("u/0.png", 0, "unknown")]
    assignment = assign_splits(rows, SplitConfig(0.7, 0.1, 0.2, test_sources=("d",), val_sources=("b",)))
    split_of_source = {}
    for r in rows:
        split_of_source.setdefault(r.get("source"), set()).add(assignment[r["source_uri"]])
    assert split_of_source["b"] == {"val"} and split_of_source["d"] == {"test"}
    assert split_of_source["a"] == split_of_source["c"] == {"train", "val", "test"}
    rest = [r for r in rows if r.get("source") not in ("b", "d")]
    assert {u: s for u, s in assignment.items() if u.split("/")[0] not in ("b", "d")} == \
        assign_splits(rest, SplitConfig(0.7, 0.1, 0.2))
    # With no val ratio, the validation split is the held-out sources' alone.
    only = assign_splits(rows, SplitConfig(0.8, 0.0, 0.2, val_sources=("b",)))
    assert {r.get("source") for r in rows if only[r["source_uri"]] == "val"} == {"b"}


def test_a_validation_sources_near_duplicates_follow_it_and_test_wins_over_val():
    rows = sourced(20, ("a", "b", "c"))
    # a/0001 is grouped with b/0002 (a near-duplicate), c/0004 with b/0005 and a/0007.
    joined = {"a/0001.png": "g1", "b/0002.png": "g1", "c/0004.png": "g2", "b/0005.png": "g2", "a/0007.png": "g2"}
    grouped = [{**r, "group": joined.get(r["source_uri"], r["content_hash"])} for r in rows]
    assignment = assign_splits(grouped, SplitConfig(val_sources=("b",)))
    assert {assignment[u] for u in joined} == {"val"}
    both = assign_splits(grouped, SplitConfig(val_sources=("b",), test_sources=("c",)))
    assert both["a/0001.png"] == both["b/0002.png"] == "val"
    assert both["b/0005.png"] == both["a/0007.png"] == both["c/0004.png"] == "test"


def test_held_out_sources_must_exist_and_leave_some_for_training():
    from cxr.errors import UserError
    from cxr.preprocess.shards import check_held_out_sources

    rows = sourced(3, ("a", "b", "c"))
    check_held_out_sources(rows, SplitConfig(test_sources=("b",)))
    check_held_out_sources(rows, SplitConfig(test_sources=("b",), val_sources=("c",)))
    with pytest.raises(UserError, match=r"^--test-sources: no image comes from x \(sources: a, b, c\)$"):
        check_held_out_sources(rows, SplitConfig(test_sources=("b", "x")))
    with pytest.raises(UserError, match=r"^--val-sources: no image comes from y \(sources: a, b, c\)$"):
        check_held_out_sources(rows, SplitConfig(val_sources=("y", "b")))
    with pytest.raises(UserError, match="^--test-sources names every source"):
        check_held_out_sources(rows, SplitConfig(test_sources=("a", "b", "c")))
    with pytest.raises(UserError, match="^--val-sources names every source"):
        check_held_out_sources(rows, SplitConfig(val_sources=("a", "b", "c")))
    with pytest.raises(UserError, match="^--test-sources and --val-sources name every source: none would be left"):
        check_held_out_sources(rows, SplitConfig(test_sources=("a",), val_sources=("b", "c")))
    with pytest.raises(UserError, match="no image's source is known"):
        check_held_out_sources(dataset(2, 2), SplitConfig(val_sources=("a",)))
    with pytest.raises(UserError, match="duplicates"):
        SplitConfig(test_sources=("a", "a"))
    with pytest.raises(UserError, match="--val-sources and --test-sources both name b"):
        SplitConfig(test_sources=("b",), val_sources=("b",))


def patients(n_patients: int, per_patient: int) -> tuple[list[dict], dict[str, str]]:
    """Rows of `n_patients` with `per_patient` images each, alternating classes within a patient."""
    rows, values = [], {}
    for p in range(n_patients):
        for i in range(per_patient):
            label = (p + i) % 2
            r = row(f"{'cn'[label]}/p{p:03d}-{i}.png", label, f"patient{p}-image{i}")
            rows.append(r)
            values[r["source_uri"]] = f"PX-{p:04d}"
    return rows, values


def test_a_patients_images_stay_in_one_split_whatever_their_classes():
    rows, values = patients(60, 3)
    ungrouped = assign_splits(rows, SplitConfig())
    assert any(len({ungrouped[r["source_uri"]] for r in rows if values[r["source_uri"]] == p}) > 1
               for p in set(values.values()))  # without the grouping, patients cross the splits
    grouped, counts = group_by_value(rows, values)
    assignment = assign_splits(grouped, SplitConfig())
    for patient in set(values.values()):
        assert len({assignment[r["source_uri"]] for r in rows if values[r["source_uri"]] == patient}) == 1
    assert counts == {"groups": 60, "images_in_groups": 180, "groups_with_several_classes": 60,
                      "images_without_value": 0}
    splits = list(assignment.values())
    assert 0.7 <= splits.count("train") / len(splits) <= 0.9 and splits.count("test") > 0
    # The group key is a content hash, never the patient id.
    assert {r["group"] for r in grouped} <= {r["content_hash"] for r in rows}


def test_patients_and_near_duplicates_join_and_images_without_a_value_stand_alone():
    rows, values = patients(3, 2)
    # A near-duplicate group joins patient 0's first image with patient 1's first image.
    near = {rows[0]["source_uri"]: "shared", rows[2]["source_uri"]: "shared"}
    rows = [{**r, "group": "shared-hash" if r["source_uri"] in near else r["content_hash"]} for r in rows]
    alone = row("n/no-id.png", 1, "no id")
    values[rows[1]["source_uri"]] = None  # patient 0's second image has no id
    grouped, counts = group_by_value(rows + [alone], values)
    keys = {r["source_uri"]: r["group"] for r in grouped}
    assert keys[rows[0]["source_uri"]] == keys[rows[2]["source_uri"]] == keys[rows[3]["source_uri"]]
    assert len({keys[rows[1]["source_uri"]], keys[rows[4]["source_uri"]], keys[alone["source_uri"]],
                keys[rows[0]["source_uri"]]}) == 4
    assert counts["images_without_value"] == 2 and counts["groups"] == 2


def test_single_class_groups_split_as_before():
    rows = dataset(30, 70)
    grouped, counts = group_by_value(rows, {})
    assert counts["groups"] == 0 and assign_splits(grouped, SplitConfig()) == assign_splits(rows, SplitConfig())
