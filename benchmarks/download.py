"""Kaggle downloads inside the preprocessing pipeline: what they cost over reading local files.

    python benchmarks/download.py [--latency 0.1] [--concurrency 1,4,16] [--no-write] [--smoke]

In one run, on the same real chest X-rays (the shared sample), on one warmed-up local Ray,
with the same config (128 px), the preprocessing job runs:

1. from a local folder: no download, the baseline;
2. from Kaggle, per file, at each `--concurrency` (downloads in flight), into a raw cache;
3. again from Kaggle with that raw cache full: nothing is downloaded;
4. from Kaggle with `--kaggle-archive`: one zip download, then its members read in parallel.

"Kaggle" is the local stand-in of the tests (tests/kaggle_server.py), driven by the real
client, holding the sample in memory and waiting `--latency` seconds before answering each
file request, as a remote server's round trip does. It runs in this process, on the same
cores as the job: its CPU time is reported.

The question (issue 5: "the download scales"): does throughput grow with the downloads in
flight until the image work, not the network, is the limit, and at what share of the
local-folder throughput?
Results go to docs/benchmarks.md (section "download") and docs/benchmarks/download.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import sys
import tempfile
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402

SECTION = "download"
PACKAGES = ("ray", "kaggle", "kagglesdk", "requests", "pyarrow")
log = logging.getLogger("benchmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--latency", type=float, default=0.1,
                        help="seconds the server waits before each file answer (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,4,16",
                        help="downloads in flight, one run each (default: %(default)s)")
    parser.add_argument("--warmup-images", type=int, default=200,
                        help="synthetic images of the untimed warm-up run (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


def dataset_files(root: Path) -> dict[str, bytes]:
    """The sample's images under the Kaggle archive's paths."""
    from tests.kaggle_server import WRAPPER

    return {f"{WRAPPER}/{p.relative_to(root).as_posix()}": p.read_bytes()
            for p in sorted(root.rglob("*.png")) if "masks" not in p.parts}


def timed_run(config, server) -> dict:
    from cxr.preprocess.pipeline import run_preprocess

    before = sum(server.downloads().values())
    with common.ProcessTreeMonitor() as processes:
        start = perf_counter()
        manifest = run_preprocess(config)
        wall = perf_counter() - start
    # "driver" is this process: the job's driver and the stand-in server's threads.
    return {"wall_seconds": wall, "found": manifest["counts"]["found"], "kept": manifest["counts"]["kept"],
            "downloads": sum(server.downloads().values()) - before, "cpu_seconds": processes.cpu_seconds,
            "fetched": manifest["source"].get("kaggle", {}).get("fetched")}


def report(results: dict) -> str:
    # The local-folder run is repeated last; its mean is the baseline, its spread the noise.
    local = sum(results["runs"][n]["wall_seconds"] for n in ("local folder", "local folder, again")) / 2
    rows = []
    for name, run in results["runs"].items():
        cpu = run["cpu_seconds"]
        rows.append([name, f"{run['wall_seconds']:.1f}", f"{run['found'] / run['wall_seconds']:.1f}",
                     f"{local / run['wall_seconds']:.2f}", run["downloads"], f"{cpu['worker']:.0f}",
                     f"{cpu['driver']:.0f}", f"{cpu['system']:.0f}",
                     f"{sum(cpu.values()) / run['wall_seconds']:.2f}"])
    machine = results["machine"]
    runs = results["runs"]
    busiest = max((n for n in runs if n.startswith("per file, ") and "in flight" in n),
                  key=lambda n: int(n.split()[2]))

    def worker_ms(name: str) -> float:
        return 1000 * runs[name]["cpu_seconds"]["worker"] / runs[name]["found"]

    top = runs[busiest]
    busy = sum(top["cpu_seconds"].values()) / top["wall_seconds"]
    cost = (f"- Workers' CPU an image: {worker_ms('local folder'):.1f} ms from the local folder, "
            f"{worker_ms(busiest):.1f} ms {busiest.removeprefix('per file, ')}, "
            f"{worker_ms('per file, raw cache full'):.1f} ms from the full raw cache: the difference is the "
            f"download's own work in the workers (the client's HTTP, checks, writing the cache).\n"
            f"- What limits the busiest run ({busiest.removeprefix('per file, ')}): not the network "
            f"({top['found']} requests x {results['latency']:g} s / {busiest.split()[2]} in flight = "
            f"{top['found'] * results['latency'] / int(busiest.split()[2]):.0f} s) but the cores, "
            f"{busy:.2f} of {machine['cpu_affinity']} busy: the image work, the downloads' own CPU above, and the "
            f"stand-in server's {top['cpu_seconds']['driver']:.0f} CPU-s (with the driver's) share them.")
    return "\n".join([
        "## Kaggle downloads in the preprocessing pipeline",
        "",
        f"`python benchmarks/download.py{results['arguments']}`, {results['date']}: the preprocessing job on "
        f"the same {results['images']} real chest X-rays (COVID and Normal, {results['image_size']} px) from a "
        f"local folder and from Kaggle's API (the tests' local stand-in, {results['latency']:g} s before each "
        f"file answer), one run after another on one warmed-up local Ray.",
        "",
        common.markdown_table(
            ["run", "wall s", "inputs/s", "x local folder", "file requests served", "CPU s: workers",
             "driver + server", "Ray system", "cores busy"], rows),
        "",
        "- x local folder: the mean wall time of the two local-folder runs (first and last) over this run's "
        "(1.00: downloading costs nothing). Cores busy: all CPU seconds over the wall time "
        f"(the machine has {machine['cpu_affinity']}).",
        "- Per file, each image is one API request (answered after the latency with a redirect) and one "
        "transfer; at concurrency 1 the job waits on the network, and more downloads in flight hide it behind "
        "the image work, which then sets the pace, as with local files.",
        "- The raw-cache rerun downloads nothing: it reads the originals back from the cache.",
        cost,
        "- The archive run downloads one zip (no latency: one request) and reads its members in parallel.",
        "- CPU seconds from /proc over this process and its descendants: Ray's worker processes (image work "
        "and downloads), this process (the job's driver and the stand-in server's threads: a real server's CPU "
        "is not taken from the job's cores) and Ray's own processes.",
        "",
        "Machine:",
        "",
        common.machine_markdown(machine),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args = common.smoke(args, data=common.smoke_images(), latency=0.01, concurrency="2", warmup_images=8)
    common.require_real_images(args.data)
    common.require_own_ray()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    from cxr import runtime
    from cxr.config import DownloadConfig, PreprocessConfig
    from tests.kaggle_server import FakeKaggle

    runtime.setup_logging()
    server = FakeKaggle(files=dataset_files(args.data), delay_seconds=args.latency).start()
    results: dict = {"data": str(args.data), "date": datetime.date.today().isoformat(), "latency": args.latency,
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as scratch:
        os.environ.update(KAGGLE_API_ENVIRONMENT="TEST", KAGGLE_USERNAME=server.username, KAGGLE_KEY=server.key,
                          KAGGLE_CONFIG_DIR=scratch)
        base = PreprocessConfig(source=str(args.data), output=f"{scratch}/out", image_size=128, overwrite=True,
                                classes=())  # every class folder, from the folder and from Kaggle alike
        results["image_size"] = base.image_size
        runtime.ensure_ray()
        timed_run(dataclasses.replace(base, synthetic=dataclasses.replace(base.synthetic, images=args.warmup_images),
                                      source="synthetic"), server)  # warm-up: every worker imports cxr

        runs = {"local folder": base}
        for n in concurrencies:
            runs[f"per file, {n} in flight"] = dataclasses.replace(
                base, source="kaggle", download=DownloadConfig(concurrency=n, raw_cache=f"{scratch}/raw-{n}"))
        last = concurrencies[-1]
        runs["per file, raw cache full"] = runs[f"per file, {last} in flight"]
        runs["archive"] = dataclasses.replace(
            base, source="kaggle", download=DownloadConfig(archive=True, raw_cache=f"{scratch}/raw-archive"))
        runs["local folder, again"] = base
        for name, config in runs.items():
            log.info("run: %s", name)
            results["runs"][name] = timed_run(config, server)
            log.info("%s: %.1f s", name, results["runs"][name]["wall_seconds"])
    server.stop()
    results["images"] = results["runs"]["local folder"]["found"]
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)
