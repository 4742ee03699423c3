"""The class-by-source table: counted from the kept images, recorded in the manifest, read
back from older manifests, and printed with the confound warning in the job's summary."""

from __future__ import annotations

from cxr.artifacts import UNKNOWN_SOURCE
from cxr.preprocess.manifest import class_by_source, confound_sentences, format_summary, source_confound
from tests.manifests import as_manifest

NAMES = ("COVID", "Normal")


def kept(spread: dict[str | None, tuple[int, int]]) -> list[dict]:
    """Kept rows: per source (None: unknown), (COVID images, Normal images)."""
    return [{"source_uri": f"{source}/{name}-{i}.png", "source": source, "class_name": name}
            for source, counts in spread.items() for name, n in zip(NAMES, counts) for i in range(n)]


def test_the_table_counts_each_source_per_class_with_the_unknown_last():
    table = class_by_source(kept({"rsna": (0, 5), None: (1, 1), "bimcv": (4, 0), "actualmed": (2, 3)}), NAMES)
    assert table == {"actualmed": {"COVID": 2, "Normal": 3}, "bimcv": {"COVID": 4, "Normal": 0},
                     "rsna": {"COVID": 0, "Normal": 5}, UNKNOWN_SOURCE: {"COVID": 1, "Normal": 1}}
    assert list(table)[-1] == UNKNOWN_SOURCE


def test_classes_from_single_class_sources_are_warned_about_and_the_mixed_share_given():
    # The Kaggle database's shape: every COVID and every Normal from a source of its own class.
    table = class_by_source(kept({"bimcv": (90, 0), "sirm": (10, 0), "rsna": (0, 200)}), NAMES)
    warnings, mixed = confound_sentences(source_confound(table, NAMES), NAMES)
    assert warnings == ["COVID: 100% from sources without Normal images; a model can learn the hospital",
                        "Normal: 100% from sources without COVID images; a model can learn the hospital"]
    assert mixed == "images in sources that hold both classes: 0% (0 of 300)"


def test_negatives_from_the_positives_hospitals_silence_the_warning_below_the_threshold():
    # 79 of 100 COVID from COVID-only sources: under 80%, no warning; at 80 it warns.
    table = class_by_source(kept({"bimcv": (79, 0), "padchest": (21, 40), "rsna": (0, 39)}), NAMES)
    confound = source_confound(table, NAMES)
    assert confound["confounded"] == []
    assert confound["classes"]["COVID"] == {"images": 100, "from_single_class_sources": 79, "share": 0.79}
    assert confound_sentences(confound, NAMES) == ([], "images in sources that hold both classes: 34% (61 of 179)")
    at_threshold = source_confound(class_by_source(kept({"bimcv": (80, 0), "padchest": (20, 40)}), NAMES), NAMES)
    assert at_threshold["confounded"] == ["COVID"]


def test_images_of_unknown_source_are_evidence_of_neither():
    table = class_by_source(kept({None: (50, 50), "bimcv": (50, 0)}), NAMES)
    confound = source_confound(table, NAMES)
    assert confound["in_mixed_sources"] == 0 and confound["classes"]["COVID"]["share"] == 0.5
    assert confound["confounded"] == []
    # No known source at all: nothing to say, rather than "100% in mixed sources".
    assert confound_sentences(source_confound(class_by_source(kept({None: (3, 3)}), NAMES), NAMES), NAMES) == \
        ([], None)


def test_with_more_classes_the_warning_names_them_all():
    names = ("COVID", "Normal", "Viral Pneumonia")
    rows = kept({"bimcv": (10, 0)}) + [{"source": "kids", "class_name": "Viral Pneumonia"}] * 4 \
        + [{"source": "kids", "class_name": "Normal"}] * 6
    warnings, mixed = confound_sentences(source_confound(class_by_source(rows, names), names), names)
    assert warnings == ["COVID: 100% from sources without Normal or Viral Pneumonia images; a model can learn the "
                        "hospital"]
    assert mixed == "images in sources that hold more than one class: 50% (10 of 20)"


def test_shares_are_rounded_down_so_a_mixed_source_never_reads_as_100_percent():
    table = class_by_source(kept({"bimcv": (999, 0), "padchest": (1, 5)}), NAMES)
    assert confound_sentences(source_confound(table, NAMES), NAMES)[0] == \
        ["COVID: 99% from sources without Normal images; a model can learn the hospital"]


def sourced_manifest(by_source: dict[str, dict[str, int]] | None, split: dict) -> dict:
    """SAMPLE's counts with its 50 kept images spread over sources, split by split."""
    sources = {"train": {"bimcv": {"COVID": 11, "Normal": 0, "total": 11},
                         "rsna": {"COVID": 0, "Normal": 29, "total": 29}},
               "val": {"padchest": {"COVID": 1, "Normal": 4, "total": 5}},
               "test": {"rsna": {"COVID": 0, "Normal": 3, "total": 3},
                        UNKNOWN_SOURCE: {"COVID": 2, "Normal": 0, "total": 2}}}
    counts = {"sources": sources, **({"class_by_source": by_source} if by_source is not None else {})}
    return {"counts": counts, "config": {"split": split}}


RECORDED = {"bimcv": {"COVID": 11, "Normal": 0}, "padchest": {"COVID": 1, "Normal": 4},
            "rsna": {"COVID": 0, "Normal": 32}, UNKNOWN_SOURCE: {"COVID": 2, "Normal": 0}}


def test_the_summary_prints_the_table_the_warnings_and_the_held_out_sources():
    manifest = as_manifest(sourced_manifest(RECORDED, {"test_sources": [], "val_sources": ["padchest"]}))
    assert manifest.val_sources == ("padchest",) and manifest.counts.class_by_source["rsna"]["Normal"] == 32
    summary = format_summary(manifest, "out")
    table = summary[summary.index("images per source"):].splitlines()
    assert table[:6] == [
        "images per source (held out in val: padchest)",
        "source        COVID  Normal   train     val    test",
        "bimcv            11       0      11       0       0",
        "padchest          1       4       0       5       0",
        "rsna              0      32      29       0       3",
        "(unknown)         2       0       0       0       2",
    ]
    # COVID: 11 of 14 from COVID-only sources (79%, the unknown's 2 count for neither): no warning.
    assert table[6:8] == ["WARNING: Normal: 88% from sources without COVID images; a model can learn the hospital",
                          "images in sources that hold both classes: 10% (5 of 50)"]


def test_older_manifests_read_the_table_from_their_per_split_counts_or_have_none():
    older = as_manifest(sourced_manifest(None, {"test_sources": ["rsna"]}))
    assert {name: dict(per_class) for name, per_class in older.counts.class_by_source.items()} == RECORDED
    assert older.val_sources == () and older.test_sources == ("rsna",)
    assert "images per source (held out in test: rsna)" in format_summary(older, "out")
    oldest = as_manifest()  # no sources at all: no table, no warning
    assert oldest.counts.class_by_source == {} and oldest.val_sources == ()
    assert "images per source" not in format_summary(oldest, "out")


def test_one_source_prints_no_table_it_would_only_repeat_the_splits():
    one = {"train": {"synthetic": {"COVID": 11, "Normal": 29, "total": 40}},
           "val": {"synthetic": {"COVID": 1, "Normal": 4, "total": 5}},
           "test": {"synthetic": {"COVID": 2, "Normal": 3, "total": 5}}}
    assert "images per source" not in format_summary(as_manifest({"counts": {"sources": one}}), "out")
