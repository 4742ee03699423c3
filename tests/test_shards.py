"""The driver's global decisions: duplicate removal, stratified split, shard grouping."""

from __future__ import annotations

import hashlib
import random

import pytest

from cxr.config import SplitConfig
from cxr.preprocess.shards import assign_splits, plan_shards, remove_duplicates


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


def test_test_sources_must_exist_and_leave_some_for_training():
    from cxr.errors import UserError
    from cxr.preprocess.shards import check_test_sources

    rows = sourced(3, ("a", "b"))
    check_test_sources(rows, SplitConfig(test_sources=("b",)))
    with pytest.raises(UserError, match=r"no image comes from x \(sources: a, b\)"):
        check_test_sources(rows, SplitConfig(test_sources=("b", "x")))
    with pytest.raises(UserError, match="every source"):
        check_test_sources(rows, SplitConfig(test_sources=("a", "b")))
    with pytest.raises(UserError, match="no image's source is known"):
        check_test_sources(dataset(2, 2), SplitConfig(test_sources=("a",)))
    with pytest.raises(UserError, match="duplicates"):
        SplitConfig(test_sources=("a", "a"))
