"""Progress lines for logs: counts sent from Ray tasks reach the driver's lines."""

from __future__ import annotations

import io
import time

from cxr import progress
from cxr.progress import Progress


def test_a_line_says_stage_done_rate_time_left_and_counts():
    shown = Progress("preprocess", 3800, "images", "lines")
    line = shown.line({"done": 1200, "ok": 1100, "marking": 100}, seconds=40.0)
    assert line == "preprocess: 1,200/3,800 images (32%), 30.0 images/s, 1m27s left; marking 100, ok 1,100"
    final = shown.line({"done": 3800, "ok": 3800}, seconds=3725.0, final=True)
    assert final == "preprocess: 3,800/3,800 images (100%), 1.0 images/s, done in 1h02m; ok 3,800"
    # A worker's own rate wins over the driver's average (which counts startup).
    assert (shown.line({"done": 1000, "rate": 250.0}, seconds=1000.0)
            == "preprocess: 1,000/3,800 images (26%), 250.0 images/s, 11s left")
    assert "left" not in Progress("train", 0, "images", "lines").line({"done": 0}, seconds=5.0)


def test_counts_and_messages_from_ray_tasks_reach_the_driver(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0.1)
    def work(tally, index):
        progress.count(tally, 10, ok=9, marking=1)
        if index == 0:
            progress.say(tally, "first task done")

    out = io.StringIO()
    with Progress("preprocess", 40, "images", "lines", out=out, line_seconds=0.2) as shown:
        ray.get([work.remote(shown.tally, i) for i in range(4)])
        deadline = time.monotonic() + 30
        while "40/40 images" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)  # a line while the stage runs, whenever the next interval comes
    lines = out.getvalue().splitlines()
    assert "preprocess: first task done" in lines
    assert lines[-1].startswith("preprocess: 40/40 images (100%), ")
    assert lines[-1].endswith("; marking 4, ok 36") and "done in" in lines[-1]
    # A line while running too, not only the final one.
    running = [line for line in lines[:-1] if line.startswith("preprocess: 40/40 images (100%), ")]
    assert running and "left" not in running[0] and "done in" not in running[0]


def test_quiet_style_prints_messages_and_the_final_line_only(ray_session):
    out = io.StringIO()
    with Progress("preprocess", 5, "images", "quiet", out=out, line_seconds=0.1) as shown:
        progress.count(shown.tally, 5, ok=5)
        progress.say(shown.tally, "hello")
        time.sleep(0.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "preprocess: hello"
    assert len(lines) == 2 and lines[1].startswith("preprocess: 5/5 images (100%)")


def test_bar_style_draws_a_bar_and_keeps_messages_on_lines_of_their_own(ray_session):
    out = io.StringIO()
    with Progress("train", 64, "images", "bar", out=out) as shown:
        progress.position(shown.tally, 32, rate=16.0)
        progress.say(shown.tally, "epoch 1/2: loss 0.500")
        time.sleep(1.5)  # a redraw
    text = out.getvalue()
    assert "train:  50%" in text and "32/64" in text  # tqdm's bar, as drawn at its last update
    lines = text.replace("\r", "\n").splitlines()
    assert "train: epoch 1/2: loss 0.500" in lines
    assert lines[-1].startswith("train: 32/64 images (50%), 16.0 images/s, done in ")
