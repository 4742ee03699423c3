"""benchmarks/generalization.py's verdicts, from recorded runs: which variant raised the
held-out-site AUC by more than the seeds' spread (the bar of issue 30), and the section keeps
the study a run did not measure, in its own order. The runs themselves are the smoke run's
business (tests/test_benchmarks.py)."""

from __future__ import annotations

from benchmarks import generalization as bench


def _row(aucs: list[float], baseline: str | None = None) -> dict:
    runs = [{bench.HELD_OUT_AUC: auc, "in_distribution_auc": 1.0, "best_epoch": 8} for auc in aucs]
    return {"runs": runs, "images": {"train": 210, "val": 30, "test": 360}, "flags": "--synthetic-confound 1",
            "baseline": baseline, "confound": 1.0}


def test_a_variant_passes_the_bar_only_when_its_gain_exceeds_the_wider_range():
    rows = {bench.CLASS_IS_SOURCE: _row([0.70, 0.74]),  # range 0.04
            "negatives from every site": _row([0.90, 0.92], bench.CLASS_IS_SOURCE),
            "validation on a held-out site": _row([0.70, 0.80], bench.CLASS_IS_SOURCE)}  # gain 0.03 < range 0.10
    raised = bench.gain(rows, "negatives from every site")
    assert raised["beats_spread"] and round(raised["gain"], 3) == 0.19 and round(raised["spread"], 3) == 0.04
    assert not bench.gain(rows, "validation on a held-out site")["beats_spread"]
    assert bench.gain(rows, bench.CLASS_IS_SOURCE) is None  # no baseline of its own
    assert bench.gain({"source balance": _row([0.8], bench.CLASS_FOLLOWS_SOURCE)}, "source balance") is None


def test_the_section_keeps_the_other_study_and_the_variants_order():
    part = {"date": "2026-12-08", "arguments": " --seeds 0,1", "machine": None, "image_size": 64, "epochs": 8,
            "seeds": [0, 1], "synthetic_images": 600, "patience": 10, "site_rates": {"1": {"site-a": 0.0}},
            # as read back from the raw JSON: sorted by name, not in the study's order
            "rows": {"negatives from every site": _row([0.9, 0.92], bench.CLASS_IS_SOURCE),
                     bench.CLASS_IS_SOURCE: _row([0.70, 0.74])}}
    levers = {"date": "2026-12-07", "arguments": " --study levers", "machine": None, "image_size": 64, "epochs": 8,
              "synthetic_images": 600}
    machine = {"cpu_model": "x", "cpu_count": 2, "cpu_affinity": 2, "ram_gib": 1, "os": "y", "python": "3",
               "packages": {}, "OPENBLAS_CORETYPE": None}
    text = bench.report({"sources": {**part, "machine": machine}, "levers": {**levers, "machine": machine}})
    assert text.index(f"| {bench.CLASS_IS_SOURCE} |") < text.index("| negatives from every site |")
    assert "+0.190 vs class = source (spread 0.04): **yes**" in text
    assert "Raised it by more: negatives from every site." in text
    assert "--study levers`, 2026-12-07" in text  # the carried-over part, with its own command and date


def test_a_flag_of_the_other_study_is_refused_not_ignored(capsys):
    for argv in (["--levers", "no lever"], ["--skip-real"], ["--study", "levers", "--variants", "class"]):
        try:
            bench.parse_args(argv)
        except SystemExit as stop:
            assert stop.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
        assert "applies to the other study" in capsys.readouterr().err
    assert bench.parse_args(["--study", "levers", "--skip-real"]).skip_real
