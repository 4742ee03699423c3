"""Hyperparameter search: jobs/tune.py's default space on the real sample, its best trial
against the training job's defaults, both scored by jobs/evaluate.py on the test split.

    python benchmarks/tune.py [--shards PATH] [--image-size 96] [--epochs 10] [--trials 10]
                              [--grace-period 3] [--no-write] [--smoke]

1. The sweep: `run_tuning` with the default search space (learning rate, dropout, batch
   size, augmentation strength, class weights), ASHA and the default searcher, every trial
   the training job with `--epochs` at most. The best trial is chosen on validation loss.
2. The training job's defaults, trained with the same epochs on the same shards.
3. `run_evaluation` of both on the test split, which neither the search nor the choice of
   the best trial ever read: accuracy, balanced accuracy and AUC with 95% intervals, at the
   threshold each report chooses on the validation split.

The quality benchmark's ablation ran at 96 px for 10 epochs; so does this search by default,
to fit about an hour on 2 cores. Results go to docs/benchmarks.md (section "tune") and
docs/benchmarks/tune.json.

    python benchmarks/tune.py --confirm --shards PATH --epochs 20 [--seeds 0,1,2] [--lower-rate RATE]
                              [--no-write]

A sweep's budget is short, and settings that win over a few epochs need not win over a
training job's full length. `--confirm` skips the sweep: it trains the candidates with
`--epochs` on the same shards, once per seed: the best trial's settings recorded in
docs/benchmarks/tune.json, the job's defaults, and with `--lower-rate` the job's defaults
with only the peak learning rate lowered (which separates the rate from the batch size and
augmentation the search also changed). It scores every run as in 3., picks the candidate
with the lowest mean validation loss over the seeds (the test split never chooses), and
writes section "tune_confirm".
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import logging
import sys
import tempfile
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402
from cxr.config import TrainConfig, TuneConfig  # noqa: E402

SECTION = "tune"
CONFIRM_SECTION = "tune_confirm"
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "optuna")
log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TuneConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-source", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--shards", default=None, help="an existing preprocess output")
    parser.add_argument("--image-size", type=int, default=96, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="per trial, and for the defaults (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument("--grace-period", type=int, default=defaults.grace_period, help="(default: %(default)s)")
    parser.add_argument("--confirm", action="store_true",
                        help="no sweep: the recorded best trial's settings against the defaults, with --epochs")
    parser.add_argument("--seeds", type=common.number_list, default="0",
                        help="with --confirm: comma-separated seeds (default: %(default)s)")
    parser.add_argument("--lower-rate", type=float, default=None,
                        help="with --confirm: also the job's defaults with this peak learning rate")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


def trial_rows(table: Path) -> list[dict]:
    with open(table) as handle:
        return list(csv.DictReader(handle))


def report(results: dict) -> str:
    sweep, runs = results["sweep"], results["runs"]
    lines = [
        "## Hyperparameter search: jobs/tune.py's best trial vs. the training job's defaults", "",
        f"`python benchmarks/tune.py{results['arguments']}`, {results['date']}: {results['source']} at "
        f"{results['image_size']} px ({results['images']['train']} training, {results['images']['val']} validation, "
        f"{results['images']['test']} test images). A sweep of {sweep['trials']} trials of at most "
        f"{results['epochs']} epochs over the default space, one trial at a time on 2 cores "
        f"({sweep['minutes']:.0f} min, {sweep['epochs_trained']} epochs trained in all; {sweep['how']}), the best "
        f"chosen on validation loss; then the training job's defaults with the same epochs. Both scored by "
        f"`jobs/evaluate.py` on the test split, at the threshold each report chose on the validation split; "
        f"95% bootstrap intervals.",
        "",
        runs_table(runs),
        "",
        "Every trial of the sweep (trials.md), best validation scores:",
        "",
        common.markdown_table(
            ["trial", "status", "epochs", "learning rate", "dropout", "batch", "augment", "class weights",
             "best val loss", "best val AUC"],
            [[row["trial"], row["status"], row["epochs"], f"{float(row['learning_rate']):.2g}",
              f"{float(row['dropout']):.2f}", row["batch_size"], f"{float(row['augment']):.2f}",
              row["class_weights"], f"{float(row['best_val_loss']):.3f}", f"{float(row['best_val_auc']):.3f}"]
             for row in sweep["rows"]]),
        "",
        f"Machine:\n{common.machine_markdown(results['machine'])}",
    ]
    return "\n".join(lines)


def runs_table(runs: list[dict]) -> str:
    """Each run's settings and its scores on the test split; the lungs-blacked-out AUC where recorded."""
    from cxr.evaluate.report import format_ci

    lungs = all("lungs_masked_auc" in run for run in runs)
    seeds = all("seed" in run for run in runs)
    header = (["run"] + (["seed"] if seeds else [])
              + ["learning rate", "dropout", "batch", "augmentation", "class weights", "epochs (best)", "val loss",
                 "test accuracy", "balanced accuracy", "test AUC"]
              + (["AUC, lungs blacked out"] if lungs else []) + ["training minutes"])
    return common.markdown_table(header, [
        [run["name"]] + ([run["seed"]] if seeds else [])
        + [f"{run['config']['learning_rate']:.2g}", f"{run['config']['dropout']:.2f}", run["config"]["batch_size"],
           run["augment_text"], run["config"]["class_weights"], f"{run['epochs_trained']} ({run['best_epoch'] + 1})",
           f"{run['best_val_loss']:.3f}", format_ci(run["metrics"]["accuracy"]),
           format_ci(run["metrics"]["balanced_accuracy"]), format_ci(run["metrics"]["auc"])]
        + ([format_ci(run["lungs_masked_auc"])] if lungs else []) + [f"{run['minutes']:.1f}"]
        for run in runs])


def scored(name: str, run: str, minutes: float) -> dict:
    evaluated = common.evaluate_run(run)
    training = evaluated["report"]["model"]["training"]
    augment = training["config"]["augment"]
    return {"name": name, "run": run, "config": training["config"], "minutes": minutes,
            "augment_text": f"rotation {augment['rotation']:g}, shift {augment['shift']:g}, zoom {augment['zoom']:g}",
            "epochs_trained": evaluated["epochs_trained"], "best_epoch": evaluated["best_epoch"],
            "best_val_loss": training["best"]["val_loss"], "metrics": evaluated["report"]["metrics"],
            "lungs_masked_auc": evaluated["report"]["shortcuts"]["variants"]["lungs_masked"]["auc"]}


def recorded_best() -> tuple[int, dict]:
    """The best trial of the recorded sweep: its number and its settings as TrainConfig fields."""
    import json

    from cxr.config import AugmentConfig

    recorded = json.loads((common.RAW_RESULTS / f"{SECTION}.json").read_text())
    config = recorded["runs"][0]["config"]
    return recorded["sweep"]["best"]["trial"], {
        "learning_rate": config["learning_rate"], "dropout": config["dropout"], "batch_size": config["batch_size"],
        "augment": AugmentConfig(**config["augment"]), "class_weights": config["class_weights"]}


def confirm(base: TrainConfig, runs: Path, seeds: list[int], lower_rate: float | None) -> list[dict]:
    """Each candidate trained once per seed with `base`'s budget: the recorded best trial's settings, the
    defaults with a lower peak rate when asked for, and the defaults."""
    from cxr.train.job import run_training

    trial, settings = recorded_best()
    candidates = [(f"best trial ({trial}) of the recorded sweep", "best", settings), ("job defaults", "defaults", {})]
    if lower_rate is not None:
        candidates.insert(1, (f"job defaults, peak rate {lower_rate:.2g}", "lower-rate", {"learning_rate": lower_rate}))
    scored_runs = []
    for seed in seeds:
        for name, run_name, changes in candidates:
            log.info("confirm: training %s, seed %d", name, seed)
            run_name = f"{run_name}-seed{seed}"
            run_training(dataclasses.replace(base, name=run_name, seed=seed, **changes))
            scored_runs.append({**scored(name, str(runs / run_name), _trial_minutes(runs / run_name)), "seed": seed})
    return scored_runs


def candidate_means(runs: list[dict]) -> list[dict]:
    """Per candidate: the mean, lowest and highest over its seeds of validation loss and the test scores,
    sorted by mean validation loss, so that the first is the one chosen."""
    import statistics

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "low": min(values), "high": max(values)}

    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    rows = [{"name": name, "seeds": [run["seed"] for run in group],
             "val_loss": spread([run["best_val_loss"] for run in group]),
             "accuracy": spread([run["metrics"]["accuracy"]["value"] for run in group]),
             "auc": spread([run["metrics"]["auc"]["value"] for run in group]),
             "lungs_masked_auc": spread([run["lungs_masked_auc"]["value"] for run in group]),
             "minutes": spread([run["minutes"] for run in group])}
            for name, group in by_name.items()]
    return sorted(rows, key=lambda row: row["val_loss"]["mean"])


def confirm_report(results: dict) -> str:
    means = results["means"]

    def mean_and_range(value: dict) -> str:
        return f"{value['mean']:.3f} ({value['low']:.3f}-{value['high']:.3f})"

    return "\n".join([
        "### The best trial's settings at a training job's length", "",
        f"`python benchmarks/tune.py{results['arguments']}`, {results['date']}: {results['source']} at "
        f"{results['image_size']} px ({results['images']['train']} training, {results['images']['val']} validation, "
        f"{results['images']['test']} test images). The candidates, each trained with up to {results['epochs']} "
        f"epochs (early stopping as in the job) on the same shards, once per seed "
        f"({', '.join(map(str, results['seeds']))}); scored by `jobs/evaluate.py` on the test split at the "
        f"threshold each report chose on the validation split; 95% bootstrap intervals. The candidate with the "
        f"lowest mean validation loss is chosen; the test split chooses nothing.",
        "",
        "Mean over the seeds (lowest and highest in brackets), chosen first:",
        "",
        common.markdown_table(
            ["candidate", "seeds", "val loss", "test accuracy", "test AUC", "AUC, lungs blacked out",
             "training minutes"],
            [[row["name"], len(row["seeds"])]
             + [mean_and_range(row[key]) for key in ("val_loss", "accuracy", "auc", "lungs_masked_auc")]
             + [f"{row['minutes']['mean']:.1f}"] for row in means]),
        "",
        "Every run:",
        "",
        runs_table(results["runs"]),
        "",
        f"Machine:\n{common.machine_markdown(results['machine'])}",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args = common.smoke(args, data_source=common.smoke_images(), image_size=64, epochs=1, trials=1,
                            grace_period=1)
    common.require_own_ray()
    if not args.shards:
        common.require_real_images(args.data_source)
    from cxr.keras_lib import configure_environment

    configure_environment()
    import ray

    from cxr import runtime
    from cxr.artifacts import read_manifest
    from cxr.train.job import run_training
    from cxr.tune.job import run_tuning

    runtime.setup_logging()
    results: dict = {"date": datetime.date.today().isoformat(),
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES), "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-tune-") as scratch:
        scratch = Path(scratch)
        # The sweep's Ray, with the State API it needs (cxr.tune.job), for every stage.
        runtime.ensure_ray(state_api=True)
        shards, _ = common.prepare_shards(args.shards, args.data_source, scratch, args.image_size)
        manifest = read_manifest(shards)
        results["image_size"] = manifest.image_size
        results["source"] = manifest.source_uri
        results["images"] = {split: manifest.splits[split].total for split in ("train", "val", "test")}
        base = TrainConfig(data=shards, storage=str(scratch / "runs"), epochs=args.epochs)
        if args.confirm:
            results["seeds"] = args.seeds
            results["runs"] = confirm(base, scratch / "runs", args.seeds, args.lower_rate)
            results["means"] = candidate_means(results["runs"])
            ray.shutdown()
            common.publish(CONFIRM_SECTION, confirm_report(results), results, write=not args.no_write)
            return 0

        start = perf_counter()
        summary = run_tuning(TuneConfig(train=dataclasses.replace(base, name="sweep"), trials=args.trials,
                                        grace_period=args.grace_period))
        sweep_minutes = (perf_counter() - start) / 60
        sweep = scratch / "runs" / "sweep"
        rows = trial_rows(sweep / "trials.csv")
        results["sweep"] = {"trials": args.trials, "minutes": sweep_minutes, "rows": rows,
                            "epochs_trained": sum(int(row["epochs"] or 0) for row in rows),
                            "how": summary["search"], "best": summary["best"]}

        run_training(dataclasses.replace(base, name="defaults"))
        best_trial = summary["best"]["trial"]
        results["runs"] = [
            scored(f"best trial ({best_trial})", str(sweep / "best"), _trial_minutes(sweep / "best")),
            scored("job defaults", str(scratch / "runs" / "defaults"), _trial_minutes(scratch / "runs" / "defaults")),
        ]
        ray.shutdown()
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


def _trial_minutes(run: Path) -> float:
    """A run's training time: the sum of its epochs' seconds (history.csv)."""
    from cxr.artifacts import RunLayout

    with open(RunLayout.at(str(run)).export.history.path) as handle:
        return sum(float(row["seconds"]) for row in csv.DictReader(handle)) / 60


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)
