"""Model quality: the scratch CNN trained by the job's defaults on real images, evaluated as users do.

    python benchmarks/quality.py [--image-size 128] [--epochs 30] [--shards PATH]
                                 [--ablation-size 96] [--ablation-epochs 12] [--skip-ablation] [--no-write]
                                 [--smoke]

1. Headline: `run_training` with the job's default settings on the real sample (by default
   the shared chest X-rays, preprocessed at 128 px), then `run_evaluation` on its test split:
   accuracy, AUC, sensitivity and specificity with 95% intervals, and the shortcut checks
   (the same model with the lung fields blacked out, and with only the lungs left).
2. Ablation at a smaller size, each run one change away from the defaults, and the
   paper's own settings: what each part of the defaults is worth on held-out images.
   Scored on the test split with the same metrics (threshold 0.5 on the softmax, no
   validation tuning, so that only training differs).

Bar (issue 4): accuracy >= 0.95 and AUC >= 0.98 on the test split, trained on the CPU
within an hour. Results go to docs/benchmarks.md (section "quality") and
docs/benchmarks/quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import logging
import sys
import tempfile
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402
from cxr.artifacts import RunLayout  # noqa: E402
from cxr.config import AugmentConfig, TrainConfig  # noqa: E402

SECTION = "quality"
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "scikit-image")
BAR = {"accuracy": 0.95, "auc": 0.98}
log = logging.getLogger("benchmark")

# One change away from the defaults each, plus the paper's settings.
ABLATIONS = {
    "job defaults": {},
    "constant learning rate (no cosine decay)": {"lr_schedule": "constant"},
    "no dropout": {"dropout": 0.0},
    "dropout 0.5": {"dropout": 0.5},
    "no augmentation": {"augment": AugmentConfig(0, 0, 0)},
    "no class weights": {"class_weights": False},
    "paper: Adam 1e-3 constant, no dropout, no augmentation, no class weights":
        {"learning_rate": 1e-3, "lr_schedule": "constant", "dropout": 0.0, "augment": AugmentConfig(0, 0, 0),
         "class_weights": False},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-source", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--shards", default=None, help="an existing preprocess output for the headline run")
    parser.add_argument("--run", default=None,
                        help="a finished training run (jobs/train.py with its defaults) to evaluate for the "
                             "headline instead of training one; its training time is the sum of its epochs")
    parser.add_argument("--image-size", type=int, default=128, help="headline run (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="headline run (default: %(default)s)")
    parser.add_argument("--ablation-shards", default=None, help="an existing preprocess output for the ablation")
    parser.add_argument("--ablation-size", type=int, default=96, help="(default: %(default)s)")
    parser.add_argument("--ablation-epochs", type=int, default=12, help="(default: %(default)s)")
    parser.add_argument("--ablation", default=None,
                        help="comma-separated subset of the ablation rows, by their first word(s)")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--skip-headline", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


@functools.cache  # the headline and the ablation share one set of shards at equal sizes
def shards_for(path: str | None, size: int, source: Path, scratch: Path) -> str:
    return common.prepare_shards(path, source, scratch / f"shards-{size}", size)[0]


def headline(shards: str, epochs: int, scratch: Path) -> dict:
    from cxr.train.job import run_training

    config = TrainConfig(data=shards, storage=str(scratch / "runs"), name="headline", epochs=epochs)
    start = perf_counter()
    run_training(config)
    return common.evaluate_run(str(scratch / "runs" / "headline"), train_seconds=perf_counter() - start)


def ablation_run(shards: str, manifest, name: str, changes: dict, epochs: int, scratch: Path) -> dict:
    import numpy as np

    from cxr.evaluate import metrics
    from cxr.train.job import run_training
    from cxr.train.models import load_model

    run_name = "ablation-" + "".join(c if c.isalnum() else "-" for c in name)[:40]
    config = dataclasses.replace(TrainConfig(data=shards, storage=str(scratch / "runs"), name=run_name,
                                             epochs=epochs, patience=epochs), **changes)
    start = perf_counter()
    summary = run_training(config)
    seconds = perf_counter() - start
    images, labels = common.load_split(shards, manifest, "test")
    model = load_model(RunLayout.at(str(scratch / "runs" / run_name)).export.model.path)
    probs = model.predict(images, batch_size=128, verbose=0).astype(np.float64)
    names = manifest.class_names
    scores = metrics.evaluate(labels, probs, names, manifest.positive_label, 0.5, n_resamples=500)
    history = summary["best"]
    return {"name": name, "changes": {k: str(v) for k, v in changes.items()}, "seconds": seconds,
            "best_epoch": summary["best_epoch"], "best_val_loss": history["val_loss"],
            "val_accuracy_by_epoch": _val_accuracies(scratch / "runs" / run_name),
            "accuracy": scores["accuracy"], "auc": scores["auc"], "balanced_accuracy": scores["balanced_accuracy"]}


def _val_accuracies(run: Path) -> list[float]:
    import csv

    with open(RunLayout.at(str(run)).export.history.path) as handle:
        return [round(float(row["val_accuracy"]), 3) for row in csv.DictReader(handle)]


def report(results: dict) -> str:
    from cxr.evaluate.report import format_ci

    lines = ["## Model quality: the scratch CNN on the real sample", ""]
    if "headline" in results:
        h = results["headline"]
        r = h["report"]
        full, shortcuts = r["metrics"], r["shortcuts"]["variants"]
        covid = full["per_class"][full["positive_class"]]
        met = (full["accuracy"]["value"] >= BAR["accuracy"] and full["auc"]["value"] >= BAR["auc"]
               and h["train_seconds"] <= 3600)
        lines += [
            f"`python benchmarks/quality.py{results['arguments']}`, {results['date']}: `jobs/train.py` defaults "
            f"(scratch_cnn, {h['config']['epochs']} epochs at most, Adam {h['config']['learning_rate']} with "
            f"{h['config']['lr_schedule']} decay, dropout {h['config']['dropout']}, augmentation, class weights), "
            f"{r['model']['image_size']} px, then `jobs/evaluate.py` on the test split: {r['data']['images']} images "
            f"({', '.join(f'{n} {c}' for n, c in r['data']['per_class'].items())}). 95% bootstrap intervals.",
            "",
            common.markdown_table(
                ["accuracy", "balanced accuracy", "AUC", f"{full['positive_class']} sensitivity",
                 f"{full['positive_class']} specificity", "AUC, lung fields blacked out", "AUC, lungs only",
                 "training time"],
                [[format_ci(full["accuracy"]), format_ci(full["balanced_accuracy"]), format_ci(full["auc"]),
                  format_ci(covid["sensitivity"]), format_ci(covid["specificity"]),
                  format_ci(shortcuts["lungs_masked"]["auc"]), format_ci(shortcuts["lungs_only"]["auc"]),
                  f"{h['train_seconds'] / 60:.1f} min, {h['epochs_trained']} epochs"]]),
            "",
            f"- Bar: accuracy >= {BAR['accuracy']}, AUC >= {BAR['auc']}, trained on the CPU within an hour: "
            f"**{'met' if met else 'NOT met'}**. Threshold {r['threshold']['value']:.3f}, {r['threshold']['note']}.",
            f"- Shortcut check: {r['shortcuts']['verdict']}",
            f"- Calibration: expected calibration error {full['calibration']['ece']:.3f}.",
            "",
        ]
    if results.get("ablation"):
        a = results["ablation"]
        lines += [
            f"Ablation at {a['image_size']} px, {a['epochs']} epochs each (no early stop), scored on the test "
            f"split ({a['test_images']} images) at threshold 0.5:",
            "",
            common.markdown_table(
                ["settings", "test accuracy", "test AUC", "best epoch", "validation accuracy by epoch", "minutes"],
                [[run["name"], format_ci(run["accuracy"]), format_ci(run["auc"]), str(run["best_epoch"] + 1),
                  ", ".join(f"{v:.2f}" for v in run["val_accuracy_by_epoch"]), f"{run['seconds'] / 60:.1f}"]
                 for run in a["runs"]]),
            "",
        ]
    lines += [f"Machine:\n{common.machine_markdown(results['machine'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:  # both parts on one set of shards, one epoch each, one ablation row
        args = common.smoke(args, data_source=common.smoke_images(), image_size=64, ablation_size=64, epochs=1,
                            ablation_epochs=1, ablation="no dropout")
    common.require_own_ray()
    from cxr.keras_lib import configure_environment

    configure_environment()
    import ray

    from cxr import runtime
    from cxr.artifacts import read_manifest

    runtime.setup_logging()
    results: dict = {"date": datetime.date.today().isoformat(),
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES)}
    chosen = ABLATIONS
    if args.ablation:
        wanted = [w.strip() for w in args.ablation.split(",")]
        chosen = {k: v for k, v in ABLATIONS.items() if any(k.startswith(w) for w in wanted)}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-quality-") as scratch:
        scratch = Path(scratch)
        runtime.ensure_ray()
        if args.run:
            log.info("headline: evaluating %s", args.run)
            results["headline"] = common.evaluate_run(args.run)
        elif not args.skip_headline:
            shards = shards_for(args.shards, args.image_size, args.data_source, scratch)
            log.info("headline: training with the job's defaults on %s", shards)
            results["headline"] = headline(shards, args.epochs, scratch)
        if not args.skip_ablation:
            shards = shards_for(args.ablation_shards, args.ablation_size, args.data_source, scratch)
            manifest = read_manifest(shards)
            runs = []
            for name, changes in chosen.items():
                log.info("ablation: %s", name)
                runs.append(ablation_run(shards, manifest, name, changes, args.ablation_epochs, scratch))
            results["ablation"] = {"image_size": manifest.image_size, "epochs": args.ablation_epochs,
                                   "test_images": manifest.splits["test"].total, "runs": runs}
        ray.shutdown()
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)
