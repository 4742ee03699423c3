"""Training throughput: the Ray Train job fed from Parquet shards vs. the same model fed from memory.

    python benchmarks/train.py [--image-size 96] [--epochs 3] [--batch-size 32] [--shards PATH]
                               [--limit N] [--no-write] [--skip-failure] [--skip-streaming] [--smoke]

In one process, on the same shards (by default the shared real chest X-rays, preprocessed
into a temporary directory) and with the same scratch CNN, batch size and epochs:

1. plain: the train split decoded into numpy arrays, then one `model.fit` in this process;
   nothing can feed the model faster, so this is the feeding limit;
2. the Ray Train job (`run_training`) with 1 worker, fed by Ray Data from the shards, once
   as it is (decoded images kept by the worker after epoch 1) and once streaming every epoch;
3. the failure drill: the job with 2 workers, once as it is and once with one worker
   raising mid-epoch 1; the difference of the two wall times is the time to recover.

Goal: Ray Train images/s >= 0.9 x plain images/s (the input pipeline never starves the model).
Results go to docs/benchmarks.md (section "train") and docs/benchmarks/train.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402
from cxr.artifacts import RunLayout  # noqa: E402
from cxr.config import AugmentConfig, TrainConfig  # noqa: E402

SECTION = "train"
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "pyarrow")
MODEL = "scratch_cnn"
GOAL_RATIO = 0.9
log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-source", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images to preprocess (default: the shared sample)")
    parser.add_argument("--shards", default=None, help="an existing preprocess output: skip preprocessing")
    parser.add_argument("--image-size", type=int, default=96, help="when preprocessing (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="preprocess only N images, spread over classes")
    parser.add_argument("--epochs", type=int, default=3, help="for every run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (default: %(default)s)")
    parser.add_argument("--skip-failure", action="store_true", help="skip the 2-worker failure drill")
    parser.add_argument("--skip-streaming", action="store_true", help="skip the run streaming every epoch")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


def median_after_first(values: list[float]) -> float:
    """The first epoch traces the graph (and starts the data pipeline): leave it out when we can."""
    return statistics.median(values[1:] if len(values) > 1 else values)


# ---------------------------------------------------------------- plain: in-memory arrays, one process


def train_plain(shards: str, manifest, config: TrainConfig) -> dict:
    from cxr.train.data import class_weights
    from cxr.keras_lib import keras
    from cxr.train.loop import compile_model, steps_per_epoch
    from cxr.train.models import build_model

    start = perf_counter()
    x, y = common.load_split(shards, manifest, "train")
    val_x, val_y = common.load_split(shards, manifest, "val")
    decode_seconds = perf_counter() - start
    names, tf_keras = manifest.class_names, keras()
    one_hot = tf_keras.utils.to_categorical
    model = build_model(config.model, manifest.image_size, len(names), dropout=config.dropout)
    compile_model(model, config, names, steps_per_epoch(manifest, config.batch_size))
    train_seconds: list[float] = []
    epoch_seconds: list[float] = []

    class EpochTimer(tf_keras.callbacks.Callback):
        """Training seconds of each epoch without its validation pass, as the job's own timer."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = perf_counter()

        def on_test_begin(self, logs=None):
            train_seconds.append(perf_counter() - self.start)

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(perf_counter() - self.start)

    with common.ProcessTreeMonitor() as processes:
        start = perf_counter()
        # Reshuffled every epoch, as the job's training stream.
        model.fit(x, one_hot(y, len(names)), batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
                  class_weight=class_weights(manifest), validation_data=(val_x, one_hot(val_y, len(names))),
                  verbose=0, callbacks=[EpochTimer()])
        fit_seconds = perf_counter() - start
    tf_keras.backend.clear_session()  # free the driver's graph before the Ray runs
    rates = [len(x) / s for s in train_seconds]
    return {"train_images": len(x), "val_images": len(val_x), "decode_ms_per_image": 1000 * decode_seconds / (len(x) + len(val_x)),
            "images_per_s": rates, "median_images_per_s": median_after_first(rates),
            "train_seconds": train_seconds, "epoch_seconds": epoch_seconds, "wall_seconds": fit_seconds,
            "peak_memory_mib": processes.peaks, "cpu_seconds_by_title": processes.cpu_seconds_by_title}


# ---------------------------------------------------------------- Ray Train


def train_ray(config: TrainConfig) -> dict:
    """One run of the job; its per-epoch numbers come from the exported history.csv."""
    from cxr.train.job import run_training

    log.info("Ray Train: %s, %d worker(s)%s", config.run_name, config.workers,
             f", failure in epoch {config.fail_at_epoch}" if config.fail_at_epoch else "")
    with common.ProcessTreeMonitor() as processes:
        start = perf_counter()
        summary = run_training(config)
        wall = perf_counter() - start
    with open(RunLayout.at(str(Path(config.storage) / config.run_name)).export.history.path) as handle:
        rows = list(csv.DictReader(handle))
    rates = [float(r["images_per_s"]) for r in rows]
    return {"wall_seconds": wall, "restarts": summary["restarts"], "epochs": [int(r["epoch"]) for r in rows],
            "attempts": [int(r["attempt"]) for r in rows], "epoch_seconds": [float(r["seconds"]) for r in rows],
            "images_per_s": rates, "median_images_per_s": median_after_first(rates),
            "peak_memory_mib": processes.peaks, "cpu_seconds_by_title": processes.cpu_seconds_by_title}


# ---------------------------------------------------------------- the report


def _rates(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _roles(cpu: dict[str, float], top: int = 5) -> str:
    busiest = sorted(cpu.items(), key=lambda item: -item[1])[:top]
    return ", ".join(f"{role} {seconds:.0f}" for role, seconds in busiest)


def report(results: dict) -> str:
    plain, runs, derived = results["plain"], results["ray"], results["derived"]
    n_train, epochs = plain["train_images"], results["epochs"]
    columns = {"plain (arrays in memory, 1 process)": plain, "Ray Train, 1 worker": runs["one_worker"]}
    if "one_worker_streaming" in runs:
        columns["Ray Train, 1 worker, streaming every epoch (`--cache-mib 0`)"] = runs["one_worker_streaming"]
    if "two_workers" in runs:
        columns["Ray Train, 2 workers"] = runs["two_workers"]

    def train_seconds(run: dict) -> list[float]:
        return run.get("train_seconds") or [n_train / rate for rate in run["images_per_s"]]

    def tf_cpu(run: dict) -> float:  # CPU-s of the process(es) running TensorFlow
        cpu = run["cpu_seconds_by_title"]
        return cpu.get("driver", 0.0) if run is plain else cpu.get("RayTrainWorker", 0.0)

    rows = [
        [f"**images/s, median of epochs 2-{epochs}**"] + [f"**{r['median_images_per_s']:.1f}**" for r in columns.values()],
        ["images/s per epoch"] + [_rates(r["images_per_s"]) for r in columns.values()],
        ["training s per epoch"] + [_rates(train_seconds(r)) for r in columns.values()],
        ["epoch s with validation"] + [_rates(r["epoch_seconds"]) for r in columns.values()],
        ["wall time, s"] + [f"{r['wall_seconds']:.1f}" for r in columns.values()],
        ["CPU-s of the TensorFlow process(es)"] + [f"{tf_cpu(r):.0f}" for r in columns.values()],
        # Per image trained: equal numbers mean the same TF work, whatever the thread settings.
        ["TF CPU ms per training image (all of the run)"]
        + [f"{1000 * tf_cpu(r) / (n_train * epochs):.1f}" for r in columns.values()],
        # Not "cores while training": epoch seconds include validation and any wait for data.
        ["TF CPU-s / epoch seconds (validation and waits included)"]
        + [f"{tf_cpu(r) / sum(r['epoch_seconds']):.2f}" for r in columns.values()],
        ["peak RSS sum, driver + Ray workers, MiB"] + [f"{r['peak_memory_mib']['driver+workers_rss_mib']:.0f}"
                                                      for r in columns.values()],
        ["peak PSS sum, driver + Ray workers, MiB"] + [f"{r['peak_memory_mib']['driver+workers_pss_mib']:.0f}"
                                                      for r in columns.values()],
    ]
    goal = "met" if derived["goal_met"] else "NOT met"
    lines = [
        "## Training: Ray Train job vs. the same model fed from memory",
        "",
        f"`python benchmarks/train.py{results['arguments']}`, {results['date']}: {MODEL}, {results['image_size']} px, "
        f"{n_train} training and {plain['val_images']} validation images ({results['shards_source']}), "
        f"global batch {results['batch_size']}, {epochs} epochs, no augmentation, class weights on.",
        "",
        common.markdown_table([""] + list(columns), rows),
        "",
        f"- **Ratio Ray Train (1 worker) / plain: {derived['ratio']:.2f}**; goal >= {GOAL_RATIO}: **{goal}**.",
    ]
    if "drill" in derived:
        drill = derived["drill"]
        lines += [
            f"- **Time to recover from a worker failure: {drill['recovery_seconds']:.1f} s** (2 workers, {epochs} "
            f"epochs): {drill['failed_wall_seconds']:.1f} s with one worker raising at batch 3 of epoch 2, "
            f"{drill['clean_wall_seconds']:.1f} s without. The failing run restarted {drill['restarts']} time(s) "
            f"and resumed from the epoch-1 checkpoint: its history has epochs {[e + 1 for e in drill['epochs']]} with "
            f"attempts {drill['attempts']}, epoch seconds {_rates(drill['epoch_seconds'])} "
            f"(without failure: {_rates(runs['two_workers']['epoch_seconds'])}). Of the difference, "
            f"{drill['outside_epochs_seconds']:.1f} s fell outside any epoch (the lost part of epoch 2, restarting "
            f"the worker group, loading the checkpoint), {drill['resumed_epoch_seconds']:.1f} s is the resumed "
            f"epoch 2 taking longer than in the clean run, the rest is noise in the other epochs.",
        ]
    lines += ["- CPU-s by process during each run: " + "; ".join(
        f"{name}: {_roles(run['cpu_seconds_by_title'])}" for name, run in
        [("plain", plain)] + [(key.replace("_", " "), run) for key, run in runs.items()]) + ".",
        f"- Training seconds per epoch beyond the plain side's, median of epochs 2-{epochs}: "
        f"{derived['extra_train_seconds']:.1f} s with 1 worker.",
        f"- Decoding the PNGs (what Ray Data's tasks do for the job) took {plain['decode_ms_per_image']:.2f} ms "
        f"an image in one process, for the plain side's arrays (not in its images/s).",
        f"- Load average (1 min) {results['load_average_start'][0]:.2f} at the start, "
        f"{results['load_average_end'][0]:.2f} at the end ({results['machine']['cpu_count']} cores; another job may share the machine). "
        f"Whole benchmark {results['total_seconds'] / 60:.1f} min"
        + (f", of which preprocessing {results['preprocess_seconds']:.0f} s." if results["preprocess_seconds"] else "."),
        "",
        "How it is measured: all runs share one process, one local Ray (started before any timed run) and "
        "the same shards. The plain side decodes the train and validation splits into float32 arrays "
        "and calls `model.fit` once for all epochs (reshuffled every epoch, as the job), with the job's model, "
        "`compile_model`, class weights and batch size. The job runs `run_training` unchanged (its "
        "workers use `MultiWorkerMirroredStrategy` (since 2026-11-28 only two or more of them; one alone "
        "trains under the default strategy) and a Ray Data stream decoded by parallel tasks, which "
        "each worker keeps in memory after the first epoch unless `--cache-mib 0`). "
        "Images/s is training images / training seconds of the epoch, the validation pass excluded, "
        "timed by the same kind of Keras callback on both sides (the job's numbers come from its "
        "exported history.csv). The first epoch also traces the graph and starts the data stream, "
        "so the headline is the median of the later epochs. Wall times of job runs include starting "
        "the worker group, per-epoch checkpoints and the export. Time to recover = wall time of the "
        "failing run - wall time of the same run without the failure: the lost part of epoch 2, "
        "the restart of the worker group, reloading the checkpoint and re-tracing. CPU and memory "
        "come from /proc over this process and its descendants (see the preprocessing section); "
        "\"IDLE\" and task titles are Ray's pooled task processes, here Ray Data's read-and-decode tasks.",
        "",
        f"Machine (Ray sees {results['ray_cpus']:g} CPUs):",
        "",
        common.machine_markdown(results["machine"]),
    ]
    return "\n".join(lines)


def derive(plain: dict, runs: dict) -> dict:
    ratio = runs["one_worker"]["median_images_per_s"] / plain["median_images_per_s"]
    plain_seconds = median_after_first(plain["train_seconds"])
    ray_seconds = median_after_first([plain["train_images"] / r for r in runs["one_worker"]["images_per_s"]])
    derived = {"ratio": ratio, "goal_met": ratio >= GOAL_RATIO, "extra_train_seconds": ray_seconds - plain_seconds}
    if "two_workers_failure" in runs:
        failed, clean = runs["two_workers_failure"], runs["two_workers"]
        # Split the difference: time outside any epoch (the lost part of the failed epoch, the
        # restart of the worker group, loading the checkpoint), the resumed epoch being slower
        # (re-tracing), and what is left, the run-to-run noise of the untouched epochs.
        outside = [run["wall_seconds"] - sum(run["epoch_seconds"]) for run in (failed, clean)]
        resumed = failed["epoch_seconds"][1] - clean["epoch_seconds"][1]
        derived["drill"] = {"recovery_seconds": failed["wall_seconds"] - clean["wall_seconds"],
                            "outside_epochs_seconds": outside[0] - outside[1], "resumed_epoch_seconds": resumed,
                            "failed_wall_seconds": failed["wall_seconds"], "clean_wall_seconds": clean["wall_seconds"],
                            "restarts": failed["restarts"], "epochs": failed["epochs"],
                            "attempts": failed["attempts"], "epoch_seconds": failed["epoch_seconds"]}
    return derived


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        # The plain side and one job run: the drill and the streaming run add two minutes of worker starts.
        args = common.smoke(args, data_source=common.smoke_images(), image_size=64, epochs=2, batch_size=16,
                            skip_failure=True, skip_streaming=True)
    common.require_own_ray()
    if args.shards and args.limit is not None:
        common.fail("--limit applies to preprocessing; it cannot be combined with --shards")
    if args.limit is not None and args.limit < 1:
        common.fail(f"--limit must be positive, got {args.limit}")
    if args.epochs < 2 and not args.skip_failure:
        common.fail("the failure drill fails in epoch 2: pass --epochs 2 or more, or --skip-failure")
    from cxr.keras_lib import configure_environment

    # Before anything imports tf.keras or ray.train.tensorflow: this process must get Keras 2.
    configure_environment()
    import dataclasses

    import ray

    from cxr import runtime
    from cxr.artifacts import read_manifest

    runtime.setup_logging()
    started = perf_counter()
    results: dict = {"date": datetime.date.today().isoformat(), "load_average_start": os.getloadavg(),
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES), "epochs": args.epochs,
                     "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-train-") as scratch:
        scratch = Path(scratch)
        shards, results["preprocess_seconds"] = common.prepare_shards(args.shards, args.data_source, scratch,
                                                                      args.image_size, args.limit)
        manifest = read_manifest(shards)
        results.update(image_size=manifest.image_size, counts=manifest.counts_record()["splits"],
                       shards_source=f"`{args.shards}`" if args.shards else
                       f"preprocessed from `{args.data_source}`" + (f", {args.limit} of them" if args.limit else ""))
        base = TrainConfig(data=shards, storage=str(scratch / "runs"), model=MODEL, epochs=args.epochs,
                           batch_size=args.batch_size, augment=AugmentConfig(0, 0, 0),
                           patience=args.epochs + 1)  # no early stop: every run trains every epoch
        runtime.ensure_ray()  # now, so that no timed run includes ray.init
        results["ray_cpus"] = float(ray.cluster_resources().get("CPU", 1))

        log.info("plain: model.fit on in-memory arrays")
        plain = train_plain(shards, manifest, base)
        runs = {"one_worker": train_ray(dataclasses.replace(base, name="one-worker"))}
        if not args.skip_streaming:
            runs["one_worker_streaming"] = train_ray(dataclasses.replace(base, name="one-worker-streaming",
                                                                         cache_mib=0))
        if not args.skip_failure:
            runs["two_workers"] = train_ray(dataclasses.replace(base, name="two-workers", workers=2))
            runs["two_workers_failure"] = train_ray(dataclasses.replace(base, name="two-workers-failure",
                                                                        workers=2, fail_at_epoch=1))
        ray.shutdown()
    results.update(plain=plain, ray=runs, derived=derive(plain, runs), load_average_end=os.getloadavg(),
                   total_seconds=perf_counter() - started)
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)  # a UserError from the job becomes one line on stderr
