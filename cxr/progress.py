"""Progress of a long stage: a bar for a person at a terminal, a line now and then for a log.

The work runs in Ray tasks and actors on any node, so they count into a small actor of
this stage (`Progress.tally`, no CPU reserved) with fire-and-forget calls, and a thread of
the driver reads it. Under `ray job submit` the driver's output is the job's log, so
`ray job logs --follow` shows the lines: stage, done of total, per second, time left, and
the messages the workers send (one per training epoch, with its metrics).
"""

from __future__ import annotations

import sys
import threading
import time

import ray
from tqdm import tqdm

# Seconds between two progress lines in a log: often enough to see it move, rarely enough
# to read the log. A bar at a terminal redraws every second.
LINE_SECONDS = 30.0
BAR_SECONDS = 1.0


class Tally:
    """The actor's state: counters and messages, added to from anywhere, read by the driver."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}
        self.messages: list[str] = []

    def add(self, counts: dict[str, float]) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def put(self, values: dict[str, float]) -> None:
        self.counts.update(values)

    def say(self, message: str) -> None:
        self.messages.append(message)

    def read(self, since: int) -> tuple[dict[str, int], list[str]]:
        return dict(self.counts), self.messages[since:]


def count(tally, done: int, **counts: int) -> None:
    """From a task or worker: `done` more units of the stage, and other counters (kept, ...)."""
    if tally is not None:
        tally.add.remote({"done": done, **counts})


def position(tally, done: int, rate: float) -> None:
    """From the one worker that knows: the stage is at `done`, going at `rate` a second now
    (its own measure: the driver's average would count startup and a resumed run's past)."""
    if tally is not None:
        tally.put.remote({"done": done, "rate": rate})


def say(tally, message: str) -> None:
    """From a task or worker: a message the driver prints as a line of its own."""
    if tally is not None:
        tally.say.remote(message)


class Progress:
    """`with Progress("preprocess", total, "images", style) as progress:` pass `progress.tally`
    to the work; the driver shows it until the block ends, then prints a final line.

    style: "bar" (a person at a terminal), "lines" (a log), or "quiet" (another bar already
    shows this stage, such as Ray Data's; messages and the final line are still printed).
    """

    def __init__(self, stage: str, total: int, unit: str, style: str, out=None, line_seconds: float = LINE_SECONDS):
        if style not in ("bar", "lines", "quiet"):
            raise ValueError(f"unknown progress style {style!r}")
        self.stage, self.total, self.unit, self.style = stage, total, unit, style
        self.out = out or sys.stdout
        self.line_seconds = line_seconds
        self.tally = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_messages = 0
        self._bar = None
        self._started = 0.0

    def __enter__(self) -> Progress:
        self.tally = ray.remote(num_cpus=0)(Tally).remote()
        self._started = time.monotonic()
        if self.style == "bar":
            self._bar = tqdm(total=self.total, unit=f" {self.unit}", desc=self.stage, file=self.out,
                             dynamic_ncols=True, leave=False)  # the final line replaces it
        self._thread = threading.Thread(target=self._show, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # After a failure or Ctrl-C, no last line: the error is what the reader needs.
        counts = self._poll() if exc_type is None else None
        if self._bar is not None:
            self._bar.close()
        if counts is not None:
            self._print(self.line(counts, time.monotonic() - self._started, final=True))
        try:
            ray.kill(self.tally)
        except Exception:  # noqa: BLE001 - Ray may already be gone with the failure that ended the stage
            pass

    def _show(self) -> None:
        wait = BAR_SECONDS if self.style == "bar" else self.line_seconds
        while not self._stop.wait(wait):
            counts = self._poll()
            if counts is not None and self.style == "lines":
                self._print(self.line(counts, time.monotonic() - self._started))

    def _poll(self) -> dict[str, int] | None:
        """Read the tally, print new messages, move the bar; None when the actor did not answer."""
        try:
            counts, messages = ray.get(self.tally.read.remote(self._seen_messages), timeout=10)
        except Exception:  # noqa: BLE001 - a slow or lost tally must never stop the job
            return None
        self._seen_messages += len(messages)
        for message in messages:
            self._print(f"{self.stage}: {message}")
        if self._bar is not None:
            self._bar.update(counts.get("done", 0) - self._bar.n)
        return counts

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def line(self, counts: dict[str, int], seconds: float, final: bool = False) -> str:
        """'preprocess: 1,200/3,800 images (32%), 31.5 images/s, 1m22s left; ok 1,100, marking 100'."""
        done = int(counts.get("done", 0))
        rate = counts.get("rate", done / seconds if seconds > 0 else 0.0)
        text = f"{self.stage}: {done:,}/{self.total:,} {self.unit}"
        if self.total:
            text += f" ({100 * done / self.total:.0f}%)"
        text += f", {rate:.1f} {self.unit}/s"
        if final:
            text += f", done in {_duration(seconds)}"
        elif rate > 0 and done < self.total:
            text += f", {_duration((self.total - done) / rate)} left"
        others = [f"{key} {value:,}" for key, value in sorted(counts.items()) if key not in ("done", "rate")]
        return text + ("; " + ", ".join(others) if others else "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
