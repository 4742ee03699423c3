"""One training worker's overhead: TensorFlow's CPU allocator, and the distribution strategy.

    python benchmarks/worker_overhead.py [--shards PATH] [--pairs 3] [--epochs 3] [--batch-size 16]
                                         [--no-write] [--smoke]

First TensorFlow's CPU allocator, which a profile of the quickstart's training worker
pointed at (page faults in the kernel). This runs `jobs/train.py` unchanged, as a user does,
on the same shards (by default the quickstart's: 1,000 synthetic images at 96 px, made once
in a temporary folder), with TF_CPU_ALLOCATOR_USE_BFC true and false, alternating so that a
machine's slow minutes fall on both sides. Measured: the training images/s of each epoch
after the first (from the run's history.csv, validation excluded), the job's wall time, and
the CPU time of the job's process tree split into user and system time.

Then the strategy: a worker alone trains under TensorFlow's default strategy, where two or
more need MultiWorkerMirroredStrategy (cxr.train.loop). Measured in plain `model.fit` on
random arrays of the same shape, one fresh process per side (a strategy cannot be undone
in a process), alternating, with TensorFlow's default allocator.
Results go to docs/benchmarks.md (section "worker_overhead") and docs/benchmarks/worker_overhead.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402

SECTION = "worker_overhead"
STRATEGIES = ("default", "multi-worker mirrored")
STRATEGY_IMAGES = 704
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy")
SIDES = {"BFC pool (TF_CPU_ALLOCATOR_USE_BFC=true)": "true", "system allocator (the default)": "false"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", help="preprocessed shards (default: the quickstart's synthetic set, made here)")
    parser.add_argument("--pairs", type=int, default=3, help="runs per side, alternating (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="as the quickstart (default: %(default)s)")
    parser.add_argument("--synthetic-images", type=int, default=1000,
                        help="images of the shards made when --shards is not given (default: %(default)s)")
    parser.add_argument("--strategy-images", type=int, default=STRATEGY_IMAGES,
                        help="random images of each strategy run (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/ alone")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    parser.add_argument("--measure-strategy", choices=STRATEGIES, help=argparse.SUPPRESS)  # one side, in its process
    return parser.parse_args(argv)


def measure_strategy(strategy_name: str, batch_size: int, n_images: int, image_size: int = 96) -> None:
    """Print 'images/s user-s system-s' of 2 epochs of plain fit under one strategy (after a warm-up epoch),
    as the last line of this process's output."""
    from cxr.keras_lib import configure_environment
    configure_environment()
    import numpy as np
    import tensorflow as tf

    from cxr.train.models import build_model
    tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if strategy_name == "multi-worker mirrored"
                else tf.distribute.get_strategy())
    generator = np.random.default_rng(0)
    images = generator.random((n_images, image_size, image_size, 1), dtype=np.float32)
    labels = np.eye(2, dtype=np.float32)[generator.integers(0, 2, n_images)]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    with strategy.scope():
        model = build_model("scratch_cnn", image_size, 2)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(data, epochs=1, verbose=0)
    before, started = os.times(), time.perf_counter()
    model.fit(data, epochs=2, verbose=0)
    seconds, after = time.perf_counter() - started, os.times()
    print(f"{2 * n_images / seconds:.2f} {after.user - before.user:.1f} {after.system - before.system:.1f}")


def run_job(command: list[str], env: dict) -> tuple[float, float, float]:
    """Run a job to the end; its wall seconds and the user and system CPU seconds of its
    process tree (Ray's workers are the raylet's children, not waited for by the job, so
    the tree is read from /proc while it runs, keeping each process's last reading)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last: dict[int, tuple[float, float]] = {}
    output = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        last.update(common.tree_cpu_times(process.pid))
        time.sleep(0.5)
    reader.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        print("".join(output)[-6000:], file=sys.stderr)
        common.fail(f"{' '.join(command[1:3])} exited with {process.returncode}")
    return seconds, sum(u for u, _ in last.values()), sum(s for _, s in last.values())


def training_rates(run: Path) -> list[float]:
    with open(run / "model" / "history.csv", newline="") as handle:
        return [float(row["images_per_s"]) for row in csv.DictReader(handle)]


def render(args: argparse.Namespace, shards: str, runs: dict[str, list[dict]],
           strategies: dict[str, list[dict]], machine: dict) -> str:
    def later_epochs(side):
        return [rate for run in runs[side] for rate in run["images_per_s"][1:]]

    def median(done, key):
        return statistics.median(run[key] for run in done)

    rows = [[side, f"{statistics.median(later_epochs(side)):.1f}",
             ", ".join(f"{rate:.1f}" for rate in later_epochs(side)),
             ", ".join(f"{run['seconds']:.0f}" for run in runs[side]),
             f"{median(runs[side], 'user'):.0f}", f"{median(runs[side], 'system'):.0f}"] for side in SIDES]
    strategy_rows = [[name, f"{median(strategies[name], 'images_per_s'):.1f}",
                      ", ".join(f"{run['images_per_s']:.1f}" for run in strategies[name]),
                      f"{median(strategies[name], 'user'):.0f}", f"{median(strategies[name], 'system'):.0f}"]
                     for name in STRATEGIES]
    alone, mirrored = (median(strategies[name], "images_per_s") for name in STRATEGIES)
    on, off = (statistics.median(later_epochs(side)) for side in SIDES)
    wall_on, wall_off = (median(runs[side], "seconds") for side in SIDES)
    return "\n".join([
        "## One training worker: TensorFlow's CPU allocator and the distribution strategy",
        "",
        f"`python benchmarks/worker_overhead.py`, {datetime.date.today().isoformat()}: `jobs/train.py` on {shards} "
        f"(scratch CNN, batch {args.batch_size}, {args.epochs} epochs, 1 worker), {args.pairs} runs per side, "
        "alternating. Images/s are each epoch's training images per training second after the first "
        "epoch (which also traces the graph and fills the cache); CPU seconds are the job's whole process tree.",
        "",
        common.markdown_table(["allocator", "images/s, median", "images/s per epoch", "job wall s per run",
                               "user CPU-s, median", "system CPU-s, median"], rows),
        "",
        f"- **BFC / system images/s: {on / off:.2f}**; job wall time {wall_on / wall_off:.2f} of the system "
        "allocator's. Within the noise of this machine, so the job keeps TensorFlow's default. (One profiled "
        "run had shown much of the worker's time in the kernel's page-fault path; these runs show no such "
        "difference between the allocators.)",
        "",
        f"The strategy of a worker alone, plain `model.fit` of the same model on {args.strategy_images} random "
        f"96 px images in batches of {args.batch_size}, 2 epochs after a warm-up one, a fresh "
        f"process per run, {args.pairs} runs per side, alternating:",
        "",
        common.markdown_table(["strategy", "images/s, median", "images/s per run", "user CPU-s, median",
                               "system CPU-s, median"], strategy_rows),
        "",
        f"- **Default / multi-worker mirrored images/s: {alone / mirrored:.2f}.** With one worker there is "
        "nothing to all-reduce, yet MultiWorkerMirroredStrategy runs its collective ops every step; the job "
        "uses it from two workers on.",
        "",
        "Machine:",
        common.machine_markdown(machine),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_strategy:
        measure_strategy(args.measure_strategy, args.batch_size, args.strategy_images)
        return 0
    if args.smoke:
        args = common.smoke(args, pairs=1, epochs=2, synthetic_images=48, strategy_images=64)
    common.require_own_ray()
    if args.pairs < 1 or args.epochs < 2:
        common.fail("--pairs must be at least 1 and --epochs at least 2 (the first epoch is not counted)")
    machine = common.machine_description(PACKAGES)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="cxr-worker-overhead-") as scratch:
        shards = args.shards
        if shards is None:
            shards = f"{scratch}/shards"
            print("making the quickstart's shards", flush=True)
            run_job([python, "jobs/preprocess.py", "--synthetic-images", str(args.synthetic_images),
                     "--synthetic-size", "192", "--image-size", "96", "--output", shards], dict(os.environ))
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for number in range(args.pairs):
            for side, value in SIDES.items():
                name = f"{value}-{number}"
                env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": value}
                seconds, user, system = run_job(
                    [python, "jobs/train.py", "--data", shards, "--epochs", str(args.epochs), "--batch-size",
                     str(args.batch_size), "--storage", f"{scratch}/runs", "--name", name], env)
                rates = training_rates(Path(scratch, "runs", name))
                runs[side].append({"seconds": round(seconds, 1), "user": round(user, 1), "system": round(system, 1),
                                   "images_per_s": rates})
                print(f"{side}, run {number + 1}: {seconds:.0f} s, images/s {rates}, "
                      f"CPU user {user:.0f} s, system {system:.0f} s", flush=True)
        shown = (f"the quickstart's synthetic shards ({args.synthetic_images:,} images, 96 px)" if args.shards is None
                 else f"`{shards}`")
        strategies: dict[str, list[dict]] = {name: [] for name in STRATEGIES}
        for number in range(args.pairs):
            for name in STRATEGIES:
                measured = subprocess.run([python, __file__, "--measure-strategy", name, "--batch-size",
                                           str(args.batch_size), "--strategy-images", str(args.strategy_images)],
                                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                                          capture_output=True, text=True)
                if measured.returncode != 0:
                    print(measured.stderr[-3000:], file=sys.stderr)
                    common.fail(f"the {name} strategy run exited with {measured.returncode}")
                rate, user, system = (float(value) for value in measured.stdout.split()[-3:])
                strategies[name].append({"images_per_s": rate, "user": user, "system": system})
                print(f"{name} strategy, run {number + 1}: {rate:.1f} images/s, CPU user {user:.0f} s, "
                      f"system {system:.0f} s", flush=True)
        text = render(args, shown, runs, strategies, machine)
    common.publish(SECTION, text, {"machine": machine, "runs": runs, "strategies": strategies,
                                   "epochs": args.epochs, "batch_size": args.batch_size}, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
