"""The quickstart as a new user sees it: `./scripts/run.sh` at a terminal, for several seeds.

    python benchmarks/quickstart.py [--seeds 0,1,2] [--no-write] [--smoke]

Each seed runs `scripts/run.sh --seed N --outputs <fresh folder>` under a pseudo-terminal
(so the jobs draw their bars, as for a person), with `.venv` already set up. Measured: the
wall time, the test split's AUC and accuracy from the report that the run wrote, and the
lines a person is shown (bars redraw in place, so a line is what ends in a newline).
The bar (issue 13): AUC >= 0.95 and accuracy >= 0.90 within 6 minutes on 2 cores, in at
most about 40 lines. The first seed's transcript goes to docs/benchmarks/quickstart-seed<N>.txt.
Results go to docs/benchmarks.md (section "quickstart") and docs/benchmarks/quickstart.json.

`--smoke` runs, for one seed, the three jobs that scripts/run.sh runs (it has no flags for
their sizes) with tiny sizes, by this Python, under the same pseudo-terminal.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402

SECTION = "quickstart"
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "scikit-image")
BAR = {"auc": 0.95, "accuracy": 0.90, "minutes": 6.0, "lines": 40}
# A terminal of ordinary size: the bars fit their width to it.
COLUMNS, ROWS = 100, 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=common.number_list, default="0,1,2",
                        help="synthetic data and training seeds (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/ alone")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


def quickstart_command(seed: int, outputs: Path, smoke: bool) -> list[str]:
    """`scripts/run.sh` for `seed`; for a smoke run, the same three jobs on 60 images at 64 px, 1 epoch."""
    if not smoke:
        return ["bash", "scripts/run.sh", "--seed", str(seed), "--outputs", str(outputs)]
    name, python = f"quickstart-seed{seed}", sys.executable
    shards, runs = outputs / "shards" / name, outputs / "runs"
    jobs = [["preprocess", "--synthetic-images", "60", "--synthetic-size", "64", "--synthetic-seed", str(seed),
             "--image-size", "64", "--output", str(shards)],
            ["train", "--data", str(shards), "--epochs", "1", "--batch-size", "16", "--seed", str(seed),
             "--storage", str(runs), "--name", name],
            ["evaluate", "--run", str(runs / name)]]
    return ["bash", "-c", " && ".join(shlex.join([python, f"jobs/{job}.py", *flags]) for job, *flags in jobs)]


def run_at_terminal(command: list[str], env: dict) -> tuple[int, str, float]:
    """Run `command` with a pseudo-terminal as its stdin, stdout and stderr; its exit code,
    everything it wrote (as the terminal received it) and its wall seconds."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    started = perf_counter()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env,
                               cwd=REPO, close_fds=True, start_new_session=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = process.wait()
    os.close(leader)
    return code, b"".join(chunks).decode("utf-8", "replace"), perf_counter() - started


def shown_lines(transcript: str) -> list[str]:
    """The lines left on the screen: a bar's redraws (carriage returns) keep only their last state."""
    text = ANSI.sub("", transcript).replace("\r\n", "\n")
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")[:-1]]


def run_seed(seed: int, scratch: Path, smoke: bool = False) -> dict:
    outputs = scratch / f"seed{seed}"
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "RAY_ADDRESS")}
    env.setdefault("TERM", "xterm-256color")
    code, transcript, seconds = run_at_terminal(quickstart_command(seed, outputs, smoke), env)
    lines = shown_lines(transcript)
    if code != 0:
        print("\n".join(lines[-30:]), file=sys.stderr)
        common.fail(f"seed {seed}: the quickstart exited with {code}")
    report = json.loads((outputs / "runs" / f"quickstart-seed{seed}" / "report" / "report.json").read_text())
    training = json.loads((outputs / "runs" / f"quickstart-seed{seed}" / "model" / "training.json").read_text())
    metrics = report["metrics"]
    return {"seed": seed, "seconds": round(seconds, 1), "lines": len(lines),
            "test_images": report["data"]["images"],
            "auc": metrics["auc"], "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "threshold": report["threshold"]["value"], "epochs_trained": training["epochs_trained"],
            "best_epoch": training["best_epoch"] + 1, "transcript": "\n".join(lines)}


def interval(metric: dict) -> str:
    return f"{metric['value']:.3f} ({metric['ci_low']:.3f}-{metric['ci_high']:.3f})"


def render(runs: list[dict], machine: dict) -> str:
    rows = [[r["seed"], f"{r['seconds'] / 60:.1f} min", r["test_images"], interval(r["auc"]), interval(r["accuracy"]),
             interval(r["balanced_accuracy"]), f"{r['threshold']:.3f}", f"{r['best_epoch']} of {r['epochs_trained']}",
             r["lines"]] for r in runs]
    met = all(r["auc"]["value"] >= BAR["auc"] and r["accuracy"]["value"] >= BAR["accuracy"]
              and r["seconds"] <= BAR["minutes"] * 60 and r["lines"] <= BAR["lines"] for r in runs)
    return "\n".join([
        "## Quickstart: `./scripts/run.sh` as a new user runs it",
        "",
        f"Measured {datetime.date.today().isoformat()} by `benchmarks/quickstart.py`: the whole quickstart "
        "(preprocess 1,000 synthetic images at 96 px, train the scratch CNN for 5 epochs in batches of 16, evaluate on the "
        "test split) under a pseudo-terminal, `.venv` already set up, one seed after the other on the "
        "same machine. Test metrics with 95% bootstrap intervals, at the threshold chosen on the "
        "validation split; lines are what the terminal shows at the end.",
        "",
        common.markdown_table(["seed", "wall time", "test images", "test AUC", "test accuracy", "balanced accuracy",
                               "threshold", "best epoch", "lines"], rows),
        "",
        f"Bar: AUC >= {BAR['auc']}, accuracy >= {BAR['accuracy']}, at most {BAR['minutes']:g} minutes and "
        f"about {BAR['lines']} lines, for every seed: {'met' if met else 'NOT met'}.",
        "",
        "The synthetic task is easier than real data: its classes differ only by the drawn opacities, "
        "with no hospital, device or age confounded with the class. Real-data quality is the "
        "\"quality\" section.",
        "",
        f"What seed {runs[0]['seed']} printed: `docs/benchmarks/quickstart-seed{runs[0]['seed']}.txt`.",
        "",
        "Machine:",
        common.machine_markdown(machine),
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args = common.smoke(args, seeds=[0])
    common.require_own_ray()
    machine = common.machine_description(PACKAGES)
    with tempfile.TemporaryDirectory(prefix="cxr-quickstart-") as scratch:
        runs = []
        for seed in args.seeds:
            print(f"seed {seed}: running scripts/run.sh at a pseudo-terminal", flush=True)
            runs.append(run_seed(seed, Path(scratch), args.smoke))
            run = runs[-1]
            print(f"seed {seed}: {run['seconds']:.0f} s, AUC {run['auc']['value']:.3f}, "
                  f"accuracy {run['accuracy']['value']:.3f}, {run['lines']} lines", flush=True)
    text = render(runs, machine)
    results = {"machine": machine, "bar": BAR, "runs": [{k: v for k, v in r.items() if k != "transcript"}
                                                         for r in runs]}
    if not args.no_write:
        transcript = common.RAW_RESULTS / f"quickstart-seed{runs[0]['seed']}.txt"
        transcript.parent.mkdir(parents=True, exist_ok=True)
        transcript.write_text(runs[0]["transcript"].replace(f"{scratch}/seed{runs[0]['seed']}", "outputs") + "\n")
    common.publish(SECTION, text, results, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
