"""Batch inference throughput: the Ray Data scoring pipeline vs. the model's plain `predict`.

    python benchmarks/predict.py [--shards PATH] [--image-size 128] [--raw DIR] [--actors 1,2] [--no-write]
                                 [--smoke]

In one run, on the same preprocessed images (every split of the shards; by default the
shared real chest X-rays, preprocessed into a temporary directory) and the same model
(scratch_cnn; untrained weights cost what trained ones do):

1. plain: the images decoded into one float32 array, then `model.predict` in a fresh
   process, once with one TensorFlow thread (one core) and once with all cores;
2. the scoring pipeline of evaluation and `jobs/predict.py` (`cxr.scoring.predictor.score`): Ray
   Data reads and decodes the shards in tasks and the model runs in actors, with 1 and
   with 2 actors, each over the data once and three times over (its marginal rate);
3. for information, `jobs/predict.py`'s whole job (`run_predict`) on the raw images,
   where preprocessing (markings, CLAHE) is most of the work.

Goal: pipeline images/s per core >= 0.8 x plain images/s on one core.
Results go to docs/benchmarks.md (section "predict") and docs/benchmarks/predict.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402

SECTION = "predict"
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "pyarrow")
GOAL_PER_CORE = 0.8
REPEAT = 3  # passes over the data in the longer pipeline run (see time_pipelines)
log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", default=None, help="an existing preprocess output (default: preprocess --raw)")
    parser.add_argument("--raw", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of raw images (default: the shared sample)")
    parser.add_argument("--image-size", type=int, default=128, help="when preprocessing (default: %(default)s)")
    parser.add_argument("--actors", type=common.number_list, default="1,2",
                        help="scoring actors of each pipeline run, comma-separated (default: %(default)s)")
    parser.add_argument("--skip-raw", action="store_true", help="skip the whole job on raw images")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    parser.add_argument("--plain-worker", nargs=3, metavar=("EXPORT", "SHARDS", "THREADS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def all_paths(shards: str, manifest) -> list[str]:
    from cxr import storage
    from cxr.artifacts import SPLITS

    return [p for split in SPLITS for p in manifest.split_paths(storage.resolve(shards), split)]


def plain_worker(export_uri: str, shards: str, threads: int) -> None:
    """In a fresh process: decode everything, then time `model.predict` with `threads` threads."""
    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow as tf

    from cxr.artifacts import read_manifest
    from cxr.scoring.export import load_export_model, open_export
    from cxr.train.data import decode_batch

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    export = open_export(export_uri)
    images = np.concatenate([decode_batch(pq.read_table(p, columns=["image_png", "label"]).to_pydict())["image"]
                             for p in all_paths(shards, read_manifest(shards))]).astype(np.float32)
    model = load_export_model(export)
    model.predict(images[:256], batch_size=64, verbose=0)  # trace the graph outside the timing
    start = perf_counter()
    model.predict(images, batch_size=64, verbose=0)
    print(json.dumps({"images": len(images), "seconds": perf_counter() - start}))


def time_plain(export_uri: str, shards: str, threads: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--plain-worker", export_uri, shards, str(threads)],
                            capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        common.fail(f"plain predict failed: {result.stderr.strip().splitlines()[-1]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {**measured, "threads": threads, "images_per_s": measured["images"] / measured["seconds"]}


def time_pipeline(export, shards: str, manifest, actors: int, copies: int) -> dict:
    """One run of the scoring pipeline over every image of `shards`, `copies` times over."""
    from cxr import storage
    from cxr.scoring.datasets import shard_images
    from cxr.scoring.predictor import score

    with common.ProcessTreeMonitor() as processes:
        start = perf_counter()
        dataset = shard_images(storage.resolve(shards), all_paths(shards, manifest))
        # union, not repeated paths: read_parquet reads a path listed twice once.
        dataset = dataset.union(*[dataset] * (copies - 1)) if copies > 1 else dataset
        rows = sum(len(batch["label"]) for batch in
                   score(dataset, export, actors=actors).iter_batches(batch_size=None, batch_format="numpy"))
        seconds = perf_counter() - start
    return {"actors": actors, "copies": copies, "images": rows, "seconds": seconds,
            "cpu_seconds_by_title": processes.cpu_seconds_by_title, "peak_memory_mib": processes.peaks}


def time_pipelines(export, shards: str, manifest, actors: int) -> dict:
    """The pipeline's marginal images/s: extra images over extra seconds, one pass vs. REPEAT passes.

    Starting the actors (importing TensorFlow, loading the model) is a fixed cost of each
    run, which the difference cancels, as the plain side's timing leaves out loading and
    tracing. (Timing batches as they reach the driver cannot do it: Ray Data bundles the
    small scored blocks, so they arrive together at the end.)
    """
    once = time_pipeline(export, shards, manifest, actors, 1)
    repeated = time_pipeline(export, shards, manifest, actors, REPEAT)
    if repeated["images"] != REPEAT * once["images"] or repeated["seconds"] <= once["seconds"]:
        common.fail(f"pipeline runs not comparable: {once['images']} images in {once['seconds']:.1f} s, "
                    f"{repeated['images']} in {repeated['seconds']:.1f} s")
    marginal = (repeated["images"] - once["images"]) / (repeated["seconds"] - once["seconds"])
    return {"actors": actors, "images_per_s": marginal, "wall_images_per_s": once["images"] / once["seconds"],
            "fixed_seconds": once["seconds"] - once["images"] / marginal, "runs": [once, repeated]}


def time_raw_job(export_uri: str, raw: Path, scratch: Path) -> dict:
    from cxr.config import PredictConfig
    from cxr.predict.job import run_predict

    start = perf_counter()
    summary = run_predict(PredictConfig(model=export_uri, input=str(raw), output=str(scratch / "predictions")))
    seconds = perf_counter() - start
    return {"files": summary["files"], "seconds": seconds, "images_per_s": summary["files"] / seconds,
            "status": summary["status"]}


def make_export(shards: str, manifest, scratch: Path) -> str:
    """An export folder as the training job writes one, with an untrained scratch_cnn."""
    from cxr import storage
    from cxr.artifacts import ExportLayout
    from cxr.train.models import build_model

    layout = ExportLayout.at(str(scratch / "export"))
    storage.ensure_parent(layout.model)
    model = build_model("scratch_cnn", manifest.image_size, len(manifest.class_names))
    model.save(layout.model.path)
    storage.write_json(layout.manifest, manifest.to_dict())
    storage.write_json(layout.training, {"model": "scratch_cnn", "config": {"data": shards}})
    return layout.root.uri


def report(results: dict) -> str:
    plain1, plain_all = results["plain_1_thread"], results["plain_all_threads"]
    cores = results["machine"]["cpu_count"]
    rows = [["plain `model.predict`, 1 thread (1 core)", f"{plain1['images_per_s']:.0f}", "-", "1.00", "-"],
            [f"plain `model.predict`, {plain_all['threads']} threads", f"{plain_all['images_per_s']:.0f}", "-",
             f"{plain_all['images_per_s'] / plain1['images_per_s']:.2f}", "-"]]
    for run in results["pipeline"]:
        ratio = run["images_per_s"] / plain1["images_per_s"]
        rows.append([f"Ray Data scoring pipeline, {run['actors']} actor(s)", f"{run['images_per_s']:.0f}",
                     f"{run['wall_images_per_s']:.0f} (fixed cost {run['fixed_seconds']:.1f} s)",
                     f"{ratio:.2f}", f"{ratio / cores:.2f}"])
    if "raw_job" in results:
        raw = results["raw_job"]
        rows.append([f"`jobs/predict.py` on {raw['files']} raw images (preprocessing included)", "-",
                     f"{raw['images_per_s']:.0f}", f"{raw['images_per_s'] / plain1['images_per_s']:.2f}", "-"])
    best = max(results["pipeline"], key=lambda r: r["images_per_s"])
    per_core = best["images_per_s"] / plain1["images_per_s"] / cores
    lines = [
        "## Batch inference: Ray Data scoring vs. plain `model.predict`",
        "",
        f"`python benchmarks/predict.py{results['arguments']}`, {results['date']}: scratch_cnn at "
        f"{results['image_size']} px on {plain1['images']} preprocessed images ({results['shards_source']}).",
        "",
        common.markdown_table(["", "images/s (marginal)", "images/s over one pass", "x plain on 1 core",
                               "per core"], rows),
        "",
        common.busy_machine_warning([load[0] for _, load in results["load_average"]], cores),
        f"- **Per core: {per_core:.2f} of plain on one core** (best pipeline, {best['actors']} actor(s), "
        f"{cores} cores); goal >= {GOAL_PER_CORE}: **{'met' if per_core >= GOAL_PER_CORE else 'NOT met'}**.",
        f"- Marginal images/s: the extra images over the extra seconds between one pass over the data and "
        f"{REPEAT} passes, which cancels the fixed cost of a run (starting the actors: importing TensorFlow, "
        f"loading the model), as the plain side's timing leaves out decoding and tracing. One pass pays it.",
        "- Load average (1 min) at the start and after each part: " + ", ".join(
            f"{part} {load[0]:.2f}" for part, load in results["load_average"])
        + f" ({cores} cores; other processes on them slow whichever side runs at the time).",
        "- CPU-s by process, pipeline runs: " + "; ".join(
            f"{run['actors']} actor(s), one pass: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(
                run["runs"][0]["cpu_seconds_by_title"].items(), key=lambda kv: -kv[1])[:4])
            for run in results["pipeline"]) + ".",
        "",
        "How it is measured: one process starts a local Ray once, before any timed run. The plain side "
        "runs in a fresh process per thread count (TensorFlow fixes its thread pools at start), decodes "
        "every image into one float32 array and times `model.predict(batch_size=64)` alone. The pipeline "
        "is `cxr.scoring.predictor.score` as evaluation uses it: Parquet read and PNG decode in Ray Data tasks, "
        "the model in actors (each with its share of the cores as TensorFlow threads), batches of 64.",
        "",
        f"Machine (Ray sees {results['ray_cpus']:g} CPUs):",
        "",
        common.machine_markdown(results["machine"]),
    ]
    return "\n".join(line for line in lines if line is not None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cxr.keras_lib import configure_environment

    configure_environment()
    if args.plain_worker:
        plain_worker(args.plain_worker[0], args.plain_worker[1], int(args.plain_worker[2]))
        return 0
    if args.smoke:
        args = common.smoke(args, raw=common.smoke_images(), image_size=64, actors=[1])
    common.require_own_ray()
    import ray

    from cxr import runtime
    from cxr.artifacts import read_manifest
    from cxr.config import PreprocessConfig
    from cxr.scoring.export import open_export

    runtime.setup_logging()
    results: dict = {"date": datetime.date.today().isoformat(),
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES), "load_average": [("start", os.getloadavg())]}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-predict-") as scratch:
        scratch = Path(scratch)
        shards, _ = common.prepare_shards(args.shards, args.raw, scratch, args.image_size)
        manifest = read_manifest(shards)
        export_uri = make_export(shards, manifest, scratch)
        results.update(image_size=manifest.image_size,
                       shards_source=f"`{args.shards}`" if args.shards else
                       f"preprocessed from `{args.raw}` with the job's defaults, lung crop "
                       + ("on" if PreprocessConfig().lungs.crop else "off"))
        log.info("plain predict, 1 thread and all threads")
        results["plain_1_thread"] = time_plain(export_uri, shards, 1)
        results["plain_all_threads"] = time_plain(export_uri, shards, os.cpu_count() or 1)
        results["load_average"].append(("plain", os.getloadavg()))
        runtime.ensure_ray()
        results["ray_cpus"] = float(ray.cluster_resources().get("CPU", 1))
        export = open_export(export_uri)
        results["pipeline"] = []
        for actors in args.actors:
            log.info("scoring pipeline, %d actor(s)", actors)
            results["pipeline"].append(time_pipelines(export, shards, manifest, actors))
            results["load_average"].append((f"pipeline, {actors} actor(s)", os.getloadavg()))
        if not args.skip_raw and args.raw.is_dir():
            log.info("jobs/predict.py on the raw images")
            results["raw_job"] = time_raw_job(export_uri, args.raw, scratch)
            results["load_average"].append(("raw job", os.getloadavg()))
        ray.shutdown()
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)
