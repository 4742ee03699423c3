"""Shared by the benchmarks: their inputs, what machine ran them, process-tree memory and CPU,
the results page, and the smoke mode.

docs/benchmarks.md holds one section per benchmark between `<!-- name:start -->` and
`<!-- name:end -->`; each benchmark rewrites its own section and leaves the others alone,
so the preprocessing, training and inference numbers can be refreshed independently.
Processes are read from /proc (Linux) rather than with psutil, which this venv only has
vendored inside Ray.

Every benchmark takes `--smoke`: the same script with its sizes shrunk (generated images
instead of the real sample, one epoch, one seed) so that tests/test_benchmarks.py can run
it in seconds; a smoke run prints its section and writes nothing into docs/.
A benchmark imports only this module of benchmarks/, and only public names of `cxr`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from time import perf_counter

from cxr.preprocess.manifest import package_versions

REPO = Path(__file__).resolve().parent.parent
RESULTS_PAGE = REPO / "docs" / "benchmarks.md"
# The 3,800 real chest X-rays laid beside the repository (never copied into it).
REAL_SAMPLE = REPO.parent / "shared" / "data" / "covid19-radiography-sample" / "COVID-19_Radiography_Dataset"
RAW_RESULTS = REPO / "docs" / "benchmarks"
PAGE_HEADER = """# Benchmarks

Measured numbers for the cxr jobs, each written by the script named in its section
(`python benchmarks/<name>.py`). A run replaces only its own section; the machine it ran
on is described in the section, and the raw numbers are in `docs/benchmarks/<name>.json`.

Every script also takes `--smoke`: the same steps on tiny generated images (64 px, one
epoch, one seed, no `../shared` data), in seconds to a minute, printing its section and
writing nothing here. `tests/test_benchmarks.py` runs each one that way (marked slow), so a
change to the jobs that breaks a benchmark fails the suite; the numbers on this page come
only from the full runs.
"""


# ---------------------------------------------------------------- inputs


def spread(items: list[dict], n: int | None) -> list[dict]:
    """n items evenly spaced over the (class-sorted) listing, so every class is represented."""
    if n is None or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


def link_subset(items: list[dict], folder: Path) -> str:
    """A class-per-folder tree of symlinks to `items`: a source that lists exactly these
    images, so that two runs see the same ones without copying any."""
    for item in items:
        target = Path(item["location"])
        link = folder / item["class_name"] / "images" / target.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return str(folder)


def prepare_shards(shards: str | None, source: Path, scratch: Path, image_size: int,
                   limit: int | None = None) -> tuple[str, float | None]:
    """`shards` when given (checked), else `source` preprocessed into `scratch`/shards with the
    job's defaults at `image_size` (`limit` images, spread over the classes): the shards path
    and the preprocessing wall time (None when given)."""
    from cxr.artifacts import MANIFEST_FILE
    from cxr.config import PreprocessConfig
    from cxr.ingest import sources
    from cxr.preprocess.pipeline import run_preprocess

    if shards:
        if not (Path(shards) / MANIFEST_FILE).is_file():
            fail(f"{shards}: no {MANIFEST_FILE}; pass the output of jobs/preprocess.py")
        return shards, None
    require_real_images(source)
    folder = str(source)
    if limit is not None:
        items = sources.list_source(PreprocessConfig(source=folder)).items
        folder = link_subset(spread(items, limit), scratch / "subset")  # symlinks, no copies
    start = perf_counter()
    run_preprocess(PreprocessConfig(source=folder, output=str(scratch / "shards"), image_size=image_size))
    return str(scratch / "shards"), perf_counter() - start


def load_split(shards: str, manifest, split: str) -> tuple:
    """A split as float32 (n, H, W, 1) images and int labels, decoded as Ray Data's tasks do."""
    import numpy as np
    import pyarrow.parquet as pq

    from cxr import storage
    from cxr.train.data import FEATURE, LABEL, decode_batch

    batches = [decode_batch(pq.read_table(path, columns=["image_png", "label"]).to_pydict())
               for path in manifest.split_paths(storage.resolve(shards), split)]
    return (np.concatenate([b[FEATURE] for b in batches]).astype(np.float32),
            np.concatenate([b[LABEL] for b in batches]))


def evaluate_run(run: str, train_seconds: float | None = None) -> dict:
    """`run_evaluation` of a run, with its training settings and time (by default, its epochs' sum)."""
    import csv

    from cxr.artifacts import RunLayout
    from cxr.config import EvaluateConfig
    from cxr.evaluate.job import run_evaluation

    report = run_evaluation(EvaluateConfig(run=run))
    training = report["model"]["training"]
    if train_seconds is None:
        with open(RunLayout.at(run).export.history.path) as handle:
            train_seconds = sum(float(row["seconds"]) for row in csv.DictReader(handle))
    return {"config": training["config"], "train_seconds": train_seconds,
            "epochs_trained": training["epochs_trained"], "best_epoch": training["best_epoch"], "report": report}


# ---------------------------------------------------------------- the machine


def machine_description(packages: tuple[str, ...] = ()) -> dict:
    """CPU, cores, RAM, OS, Python and package versions: what a number depends on."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        # The cores this process may run on; less than cpu_count under taskset or cgroups.
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(int(meminfo.group(1)) / 2**20, 1) if meminfo else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(packages),
        # Some aarch64 OpenBLAS builds need it; when set it changes which kernels numpy uses.
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


def machine_markdown(machine: dict) -> str:
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines = [f"- CPU: {machine['cpu_model']}, {machine['cpu_count']} logical cores "
             f"({machine['cpu_affinity']} usable by this process)",
             f"- RAM: {machine['ram_gib']} GiB; OS: {machine['os']}; Python {machine['python']}",
             f"- Packages: {packages}",
             f"- OPENBLAS_CORETYPE: {machine['OPENBLAS_CORETYPE'] or 'not set'}"]
    return "\n".join(lines)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------- memory


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Ray's per-node agents also take a "ray::" title, but they are Ray's machinery, not workers.
_RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _rss_kib(pid: int) -> int:
    """Resident memory of one process (cheap: /proc/<pid>/statm); 0 if it has gone."""
    fields = _read(f"/proc/{pid}/statm").split()
    return int(fields[1]) * _PAGE_KIB if fields else 0


def _pss_kib(pid: int) -> int:
    """Proportional memory: each shared page (libraries, Ray's shared-memory object store)
    split between the processes that map it, so a sum of PSS is what a tree occupies, where
    a sum of RSS counts shared pages once per process. Costs 1 to 4 ms per Ray process."""
    found = re.search(r"^Pss:\s*(\d+)", _read(f"/proc/{pid}/smaps_rollup"), re.MULTILINE)
    return int(found.group(1)) if found else 0


def tree_cpu_times(root: int) -> dict[int, tuple[float, float]]:
    """`root` and its descendants: pid -> (user, system) CPU-seconds used so far, from /proc."""
    parent, cpu = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read(f"/proc/{entry.name}/stat")
            if stat:  # "pid (comm) state ppid ... utime stime ...": comm may hold spaces
                fields = stat.rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(fields[1])
                cpu[int(entry.name)] = (int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS)
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = {root: cpu.get(root, (0.0, 0.0))}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            tree[child] = cpu[child]
            stack.append(child)
    return tree


def _process_tree(root: int) -> dict[int, tuple[str, float]]:
    """`root` and its descendants: pid -> (group, CPU-seconds used so far), from /proc.

    Groups: "driver" (root), "worker" (Ray task and actor processes, titled "ray::..."),
    "system" (raylet, GCS, dashboard and agents).
    """
    tree = {}
    for pid, (user, system) in tree_cpu_times(root).items():
        if pid == root:
            group = "driver"
        else:
            title = _read(f"/proc/{pid}/cmdline").split("\0", 1)[0]
            group = "worker" if title.startswith("ray::") and not title.startswith(_RAY_AGENTS) else "system"
        tree[pid] = (group, user + system)
    return tree


class ProcessTreeMonitor:
    """Memory and CPU of this process and its descendants, sampled from a background thread.

    Only descendants count, not every "ray::" process of the host, so another Ray on the
    same machine does not leak into the numbers; that needs a Ray started by this process
    (a local `ray.init`), whose raylet, GCS, dashboard and workers are all descendants.

    Every `interval` s it sums RSS per group; every `rescan_every`-th sample it also finds
    new processes, reads CPU times, and sums PSS of the driver and workers (PSS is costly
    to read, and on few cores the sampler must not steal much from what it measures).
    `peaks` (MiB) are maxima of those sums; `cpu_seconds` is each group's CPU time between
    the first and last sample; `sampler_cpu_seconds` is what the sampling itself cost.
    """

    def __init__(self, interval: float = 0.2, rescan_every: int = 5):
        self.interval, self.rescan_every = interval, rescan_every
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self.sampler_cpu_seconds = 0.0
        self._tree: dict[int, tuple[str, float]] = {}
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self._cpu_by_title: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTreeMonitor:
        self._sample(rescan=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(rescan=True)

    @property
    def cpu_seconds(self) -> dict[str, float]:
        used = {"driver": 0.0, "worker": 0.0, "system": 0.0}
        for pid, (group, cpu) in self._cpu_last.items():
            used[group] += cpu - self._cpu_first[pid]
        return {group: round(seconds, 2) for group, seconds in used.items()}

    @property
    def cpu_seconds_by_title(self) -> dict[str, float]:
        """CPU time per process title: "driver", "system", or a Ray worker's title without
        "ray::" and the method ("RayTrainWorker", "SplitCoordinator", "IDLE", or the Ray Data
        task it was running, "ReadParquet->MapBatches(decode_batch)"). A pooled Ray worker
        changes title from task to task: CPU used between two rescans goes to the title seen
        at the second, so short tasks are partly counted as "IDLE"."""
        return {title: round(seconds, 2) for title, seconds in sorted(self._cpu_by_title.items())}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            start = time.thread_time()
            self._sample(rescan=self.samples % self.rescan_every == 0)
            self.sampler_cpu_seconds += time.thread_time() - start

    def _sample(self, rescan: bool) -> None:
        if rescan:
            self._tree = _process_tree(os.getpid())
            for pid, (group, cpu) in self._tree.items():
                # A process first seen after the first sample started during the run: count from 0.
                self._cpu_first.setdefault(pid, cpu if self.samples == 0 else 0.0)
                used = cpu - self._cpu_last.get(pid, (group, self._cpu_first[pid]))[1]
                title = _title(pid, group)
                self._cpu_by_title[title] = self._cpu_by_title.get(title, 0.0) + used
                self._cpu_last[pid] = (group, cpu)
        rss = {"driver": 0, "worker": 0, "system": 0}
        pss = {"driver": 0, "worker": 0}
        for pid, (group, _) in self._tree.items():
            rss[group] += _rss_kib(pid)
            if rescan and group in pss:
                pss[group] += _pss_kib(pid)
        sums = {"driver_rss": rss["driver"], "driver+workers_rss": rss["driver"] + rss["worker"],
                "all_rss": sum(rss.values())}
        if rescan:
            sums.update({"driver_pss": pss["driver"], "driver+workers_pss": pss["driver"] + pss["worker"]})
        for name, kib in sums.items():
            self.peaks[f"{name}_mib"] = round(max(self.peaks.get(f"{name}_mib", 0.0), kib / 1024), 1)
        self.samples += 1


def _title(pid: int, group: str) -> str:
    """A Ray worker's title without "ray::" and an actor's method; the group for other processes."""
    if group != "worker":
        return group
    title = _read(f"/proc/{pid}/cmdline").split("\0", 1)[0].removeprefix("ray::")
    return title if "(" in title else title.split(".", 1)[0]


# ---------------------------------------------------------------- the results page


def busy_machine_warning(load_averages: list[float], cores: int) -> str | None:
    """A bold line when the 1-minute load average exceeded the cores during a run (None if not)."""
    if max(load_averages) <= cores:
        return None
    return (f"- **Measured on a busy machine** (load average up to {max(load_averages):.1f} on {cores} cores): "
            "the sides got different shares of the cores, so their ratios are not comparable; rerun on an "
            "idle machine before drawing conclusions from them.")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, page: Path = RESULTS_PAGE) -> None:
    """Replace the `name` section of the results page (or append it), keeping the rest."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = page.read_text() if page.exists() else PAGE_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)


def write_raw(name: str, results: dict) -> Path:
    path = RAW_RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def read_raw(name: str) -> dict:
    """A benchmark's raw numbers as its last full run wrote them ({} before the first)."""
    path = RAW_RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def require_real_images(folder: Path) -> None:
    if not folder.is_dir():
        fail(f"{folder}: real images not found; pass a class-per-folder tree of them (see --help)")


def require_own_ray() -> None:
    """A benchmark measures a Ray it starts itself, never a cluster that RAY_ADDRESS names."""
    if os.environ.get("RAY_ADDRESS"):
        fail("RAY_ADDRESS is set: this benchmark measures a Ray it starts itself; unset it")


def number_list(text: str) -> list[int]:
    """An argparse type: "0,1,2" -> [0, 1, 2]; anything else is the usage error argparse prints."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers, got {text!r}") from None


def fail(message: str) -> None:
    """End a benchmark with one line on stderr, as the jobs do for user errors."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def publish(name: str, text: str, results: dict, write: bool) -> None:
    """Print a benchmark's section; with `write`, also put it and its raw numbers in docs/."""
    print(text)
    if write:
        write_section(name, text)
        raw = write_raw(name, results)
        print(f"\nwrote {RESULTS_PAGE.relative_to(REPO)} and {raw.relative_to(REPO)}")


# ---------------------------------------------------------------- smoke mode


SMOKE_HELP = ("check that the benchmark runs: the same steps on tiny generated data, in seconds to a minute; "
              "prints its section, writes nothing into docs/")


def smoke(args: argparse.Namespace, **sizes) -> argparse.Namespace:
    """`args` for a smoke run: `sizes` replace the real run's sizes, and nothing goes into docs/."""
    unknown = set(sizes) - set(vars(args))
    if unknown:  # a smoke setting that names no flag of the script would be silently ignored
        raise ValueError(f"smoke settings name no argument: {sorted(unknown)}")
    return argparse.Namespace(**{**vars(args), **sizes, "no_write": True})


def smoke_images(per_class: int = 24, size: int = 64) -> Path:
    """A class-per-folder tree (COVID, Normal; `<class>/images/*.png` beside `masks/`, as the real
    sample) of unmarked synthetic chest X-rays, in a temporary folder removed at exit: what a
    smoke run reads instead of the real sample."""
    from tests.trees import class_tree, write_tree

    return write_tree(scratch_folder("cxr-smoke-images-"), class_tree(per_class, size))


def scratch_folder(prefix: str) -> Path:
    """A new temporary folder, removed when this process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
