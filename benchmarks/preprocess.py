"""Preprocessing throughput: the Ray Data job against a plain loop doing the same per-image work.

    python benchmarks/preprocess.py [--data PATH] [--limit N] [--no-write] [--smoke]

On the real chest X-rays, in one process and on the same images with the same config,
this runs first a single-process loop (list, read, `process_image`, one Parquet write)
and then `run_preprocess` on an already started and warmed-up Ray. It reports images/s
of both, per-image stage times, framework overhead and peak memory, prints them and
writes them into docs/benchmarks.md and docs/benchmarks/preprocess.json.

The goal: on N cores the job reaches at least 0.8 x N times the loop's throughput once
Ray is up, i.e. its per-image cost is the image work, not the framework.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import resource
import sys
import tempfile
from collections import Counter
from pathlib import Path
from time import perf_counter

# `python benchmarks/preprocess.py` puts benchmarks/ on sys.path; add the repository so that
# `benchmarks.common` (and `cxr`, when it is not installed) import.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from cxr.config import PreprocessConfig  # noqa: E402

SECTION = "preprocess"
PACKAGES = ("ray", "numpy", "scikit-image", "pyarrow", "pillow")
GOAL_PER_CORE = 0.8
log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use N images, evenly spread over the listing (a quick check)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the two contenders


def run_loop(config: PreprocessConfig, parquet_path: Path) -> dict:
    """The job's per-image work with no framework: what one core does on its own.

    It mirrors process_batch (read with BatchReader, process_image, failures become a
    status) and writes the rows with the job's staging schema to one local Parquet file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr.ingest import sources
    from cxr.preprocess import shards
    from cxr.preprocess.pipeline import process_image
    from cxr.preprocess.transforms import ImageRejected

    start = perf_counter()
    listing = sources.list_source(config)
    rows = []
    with sources.BatchReader(config.synthetic) as reader:
        for item in listing.items:
            row = {"source_uri": item["source_uri"], "class_name": item["class_name"], "label": item["label"]}
            read_start = perf_counter()
            data, row["marking_truth"] = reader.read(item)
            row["t_read"] = perf_counter() - read_start
            try:
                row.update(process_image(data, config))
            except ImageRejected as exc:
                row.update(status=exc.reason, detail=exc.detail)
            except Exception as exc:  # noqa: BLE001 - as the job: counted, never fatal
                row.update(status="processing_error", detail=str(exc))
            rows.append(row)
    write_start = perf_counter()
    pq.write_table(pa.Table.from_pylist(rows, schema=shards.STAGING_SCHEMA), parquet_path)
    wall = perf_counter() - start
    return {"images": len(rows), "wall_seconds": wall, "write_seconds": perf_counter() - write_start,
            "stage_seconds": {s: sum(r.get(f"t_{s}") or 0.0 for r in rows) for s in shards.STAGES},
            "status": dict(Counter(r["status"] for r in rows))}


def run_pipeline(config: PreprocessConfig) -> dict:
    from cxr.preprocess.pipeline import run_preprocess

    with common.ProcessTreeMonitor() as processes:
        start = perf_counter()
        manifest = run_preprocess(config)
        wall = perf_counter() - start
    return {"wall_seconds": wall, "manifest_wall_seconds": manifest["timing"]["wall_seconds"],
            "stage_seconds": manifest["timing"]["stage_cpu_seconds"], "counts": manifest["counts"],
            "peak_memory_mib": processes.peaks, "cpu_seconds": processes.cpu_seconds,
            "sampler_cpu_seconds": processes.sampler_cpu_seconds}


# ---------------------------------------------------------------- the report


def derive(loop: dict, pipeline: dict, cores: float) -> dict:
    images = loop["images"]
    loop_rate, pipeline_rate = images / loop["wall_seconds"], images / pipeline["wall_seconds"]
    speedup = pipeline_rate / loop_rate
    return {
        "images_per_second": {"loop": loop_rate, "pipeline": pipeline_rate},
        "speedup": speedup, "speedup_per_core": speedup / cores,
        "goal_speedup": GOAL_PER_CORE * cores, "goal_met": speedup >= GOAL_PER_CORE * cores,
        # Time on the job's cores not spent inside a measured stage: Ray scheduling, Arrow
        # conversion, the staging write, duplicate/split decisions, the shard pass, idle cores.
        "overhead_ms_per_image": {
            "loop": 1000 * (loop["wall_seconds"] - sum(loop["stage_seconds"].values())) / images,
            "pipeline": 1000 * (pipeline["wall_seconds"] * cores
                                - sum(pipeline["stage_seconds"].values())) / images},
    }


def report(results: dict) -> str:
    loop, pipeline, derived = results["loop"], results["pipeline"], results["derived"]
    images, cores = results["images"], results["ray_cpus"]
    memory, cpu = pipeline["peak_memory_mib"], pipeline["cpu_seconds"]

    def per_image(seconds: float) -> str:
        return f"{1000 * seconds / images:.2f}"

    rows = [["images/s", f"{derived['images_per_second']['loop']:.1f}",
             f"{derived['images_per_second']['pipeline']:.1f}"],
            ["wall time, s", f"{loop['wall_seconds']:.1f}", f"{pipeline['wall_seconds']:.1f}"]]
    rows += [[f"{stage}, ms/image", per_image(loop["stage_seconds"][stage]),
              per_image(pipeline["stage_seconds"][stage])] for stage in loop["stage_seconds"]]
    rows += [["all stages, ms/image", per_image(sum(loop["stage_seconds"].values())),
              per_image(sum(pipeline["stage_seconds"].values()))],
             ["overhead (wall x cores - stages), ms/image", f"{derived['overhead_ms_per_image']['loop']:.2f}",
              f"{derived['overhead_ms_per_image']['pipeline']:.2f}"],
             ["CPU time of Ray workers, ms/image", "-", per_image(cpu["worker"])],
             ["CPU time of the driver (sampler excluded), ms/image",
              per_image(loop["cpu_seconds"]["driver"] - loop["sampler_cpu_seconds"]),
              per_image(cpu["driver"] - pipeline["sampler_cpu_seconds"])],
             ["CPU time of Ray system processes, ms/image", "-", per_image(cpu["system"])],
             ["peak RSS sum, driver + Ray workers, MiB", f"{loop['peak_rss_mib']:.0f}",
              f"{memory['driver+workers_rss_mib']:.0f}"],
             ["peak PSS sum, driver + Ray workers, MiB", f"{loop['peak_pss_mib']:.0f}",
              f"{memory['driver+workers_pss_mib']:.0f}"],
             ["peak RSS sum, with Ray system processes, MiB", "-", f"{memory['all_rss_mib']:.0f}"]]
    counts = pipeline["counts"]
    reasons = ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items()) or "none"
    loop_status = ", ".join(f"{k} {v}" for k, v in sorted(loop["status"].items()))
    goal = "met" if derived["goal_met"] else "NOT met"
    machine = results["machine"]
    loop_cpu_ms = 1000 * (loop["cpu_seconds"]["driver"] - loop["sampler_cpu_seconds"]) / images
    pipeline_cpu_ms = 1000 * (sum(cpu.values()) - pipeline["sampler_cpu_seconds"]) / images
    return "\n".join(line for line in [
        "## Preprocessing: Ray Data job vs. a single-process loop",
        "",
        f"`python benchmarks/preprocess.py{results['arguments']}`, {results['date']}: "
        f"{images} real chest X-rays from `{results['data']}`, default `PreprocessConfig` "
        f"({results['image_size']} px, markings {results['markings']}, lung crop {results['lung_crop']}, "
        "scikit-image CLAHE). With the lung crop, the clahe stage also finds the lungs and equalizes "
        "the whole image for its fingerprint (`process_image` times the lung focus with CLAHE).",
        "",
        common.markdown_table(["", "loop (1 process)", f"pipeline ({cores:g} Ray CPUs)"], rows),
        "",
        common.busy_machine_warning([*results["load_average_start"][:1], *results["load_average_end"][:1]],
                                    machine["cpu_count"]),
        f"- Speed-up {derived['speedup']:.2f}x on {cores:g} cores = {derived['speedup_per_core']:.2f} per core; "
        f"goal >= {GOAL_PER_CORE} per core ({derived['goal_speedup']:.1f}x): **{goal}**.",
        f"- Pipeline wall time split: processing pass {pipeline['manifest_wall_seconds']['process']:.1f} s "
        f"(listing, Ray Data map and staging write), total {pipeline['manifest_wall_seconds']['total']:.1f} s "
        f"(adds duplicates, split, shard pass, manifest). Loop Parquet write: {loop['write_seconds']:.2f} s.",
        f"- Not in the pipeline's time: Ray start-up {results['ray_startup_seconds']:.1f} s and a warm-up run "
        f"of {results['warmup_images']} images {results['warmup_seconds']:.1f} s. Progress bars "
        f"{'on (run at a terminal)' if results['progress_bars'] else 'off'}.",
        f"- CPU time per image, every process (sampler excluded): loop {loop_cpu_ms:.1f} ms, pipeline "
        f"{pipeline_cpu_ms:.1f} ms ({pipeline_cpu_ms / loop_cpu_ms:.2f}x). Unlike the speed-up, it does not fall "
        "when other processes take cores; with every core to itself, a pipeline that keeps them busy would "
        f"reach about loop / pipeline CPU = {loop_cpu_ms / pipeline_cpu_ms:.2f} per core.",
        f"- Load average (1 min) {results['load_average_start'][0]:.2f} at the start, "
        f"{results['load_average_end'][0]:.2f} at the end ({results['machine']['cpu_count']} cores; other "
        "processes may share the machine, and then both contenders run slower).",
        f"- Pipeline: found {counts['found']}, kept {counts['kept']}, rejected {counts['rejected']} ({reasons}). "
        f"Loop statuses (no duplicate removal): {loop_status}.",
        "",
        "How it is measured: the loop runs first, in a fresh process with a warm page cache, then Ray "
        "starts and the job runs once on a few images before the measured run. Stage times are the "
        "`t_*` perf-counter intervals that `process_image` and `process_batch` record per image (wall "
        "time inside each stage, so they include time a worker waited for a core). Overhead is the "
        "rest of the cores' time. CPU times and memory come from /proc, over this process and its "
        "descendants only (workers are the `ray::` processes; system = raylet, GCS, dashboard and "
        "agents): RSS every 0.2 s, CPU and PSS every 1 s. The loop's peak RSS is `getrusage` (exact). "
        "RSS sums count shared pages, such as Ray's object store, once per process; PSS shares them out. "
        f"The sampler itself used {pipeline['sampler_cpu_seconds']:.2f} CPU-s during the pipeline run.",
        "",
        f"Machine (Ray sees {cores:g} CPUs):",
        "",
        common.machine_markdown(machine),
    ] if line is not None)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args = common.smoke(args, data=common.smoke_images())
    common.require_real_images(args.data)
    common.require_own_ray()
    if args.limit is not None and args.limit < 1:
        common.fail(f"--limit must be positive, got {args.limit}")
    from cxr import runtime
    from cxr.ingest import sources
    from cxr.preprocess.pipeline import ROWS_PER_BLOCK

    runtime.setup_logging()
    results: dict = {"data": str(args.data), "date": datetime.date.today().isoformat(),
                     "load_average_start": os.getloadavg(),
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES)}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as scratch:
        scratch = Path(scratch)
        items = sources.list_source(PreprocessConfig(source=str(args.data))).items
        if not items:
            common.fail(f"{args.data}: no images found")
        chosen = common.spread(items, args.limit)
        source = str(args.data) if len(chosen) == len(items) else common.link_subset(chosen, scratch / "subset")
        # Enough warm-up images that every core gets a block, so every worker has imported cxr.
        warmup = common.spread(chosen, ROWS_PER_BLOCK * len(os.sched_getaffinity(0)))
        warmup_source = common.link_subset(warmup, scratch / "warmup")
        config = PreprocessConfig(source=source, output=str(scratch / "pipeline"))
        results.update(image_size=config.image_size, markings=config.markings.policy,
                       lung_crop="on" if config.lungs.crop else "off",
                       config=config.to_dict(), warmup_images=len(warmup))

        # Read every file once, untimed, so that neither contender pays for a cold disk.
        for item in chosen:
            Path(item["location"]).read_bytes()

        log.info("loop: %d images in one process", len(chosen))
        with common.ProcessTreeMonitor() as processes:
            loop = run_loop(config, scratch / "loop.parquet")
        # ru_maxrss is this process's high-water mark; Ray has not started, so it is the loop's.
        loop["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        loop["peak_pss_mib"] = processes.peaks["driver_pss_mib"]
        loop["cpu_seconds"] = processes.cpu_seconds
        loop["sampler_cpu_seconds"] = processes.sampler_cpu_seconds
        log.info("loop: %.1f s", loop["wall_seconds"])

        import ray

        start = perf_counter()
        runtime.ensure_ray()
        results["ray_startup_seconds"] = perf_counter() - start
        # The job shows Ray Data progress bars only at a terminal; they cost the driver a little.
        results["progress_bars"] = runtime.interactive()
        results["ray_cpus"] = cores = float(ray.cluster_resources().get("CPU", 1))
        start = perf_counter()
        run_pipeline(PreprocessConfig(source=warmup_source, output=str(scratch / "warmup-out")))
        results["warmup_seconds"] = perf_counter() - start

        log.info("pipeline: %d images on %g Ray CPUs", len(chosen), cores)
        pipeline = run_pipeline(config)
        log.info("pipeline: %.1f s", pipeline["wall_seconds"])
        ray.shutdown()

    results.update(images=loop["images"], loop=loop, pipeline=pipeline, derived=derive(loop, pipeline, cores),
                   load_average_end=os.getloadavg())
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)  # a UserError from the job becomes one line on stderr
