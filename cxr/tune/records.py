"""What a sweep leaves behind for people: a record per trial, the trials table and figure,
and which trial is best.

The best trial is chosen on the validation split only: by the --metric of the epoch each
trial's export keeps (its lowest validation loss, the training job's own rule), so the
model chosen is the model exported (cxr.tune.trials.export_best). Pure: records come from
cxr.tune.trials, which reads them from the runs and Ray Tune.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from cxr import storage
from cxr.artifacts import SweepLayout
from cxr.config import TuneConfig
from cxr.errors import UserError, one_line
from cxr.plotting import png, pyplot

FINISHED = "finished"  # trained every epoch
EARLY_STOPPED = "early-stopped"  # the training job's own early stopping (--patience)
SCHEDULER_STOPPED = "stopped by the scheduler"
FAILED = "failed"
NOT_RUN = "not run"  # ended before its first epoch, without an error


@dataclass(frozen=True)
class TrialRecord:
    number: int  # 1 for the sweep's first trial (Ray Tune's ids say nothing of order)
    trial_id: str
    run_uri: str
    drawn: dict  # the settings it drew: name -> value
    status: str
    history: tuple[dict, ...]  # one row per epoch trained, as history.csv
    best_epoch: int | None  # 0-based: the epoch its export keeps (lowest validation loss)
    error: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)

    def best(self, key: str, mode: str) -> float | None:
        values = [row[key] for row in self.history if row.get(key) is not None]
        return (min if mode == "min" else max)(values) if values else None

    def score(self, metric: str) -> float | None:
        """`metric` at the epoch its export keeps: what the sweep compares."""
        row = next((r for r in self.history if r["epoch"] == self.best_epoch), None)
        return None if row is None else row.get(metric)


def creation_index(experiment_tag: str) -> int:
    """Where a trial comes in the order the searcher created it: Ray Tune's experiment tag
    starts with its creation counter ("3_learning_rate=..."). Neither its id (random for a
    model-based searcher) nor the order Ray Tune lists a restored sweep's trials in says it."""
    return int(experiment_tag.split("_", 1)[0])


def trial_number(experiment_tag: str, tags: list[str]) -> int:
    """A trial's number from 1 among the trials created so far (`tags`, its own included)."""
    index = creation_index(experiment_tag)
    return 1 + sum(creation_index(tag) < index for tag in tags)


def error_text(error: BaseException) -> str:
    """One line for the error that ended a trial: a UserError's message (a non-finite loss,
    a refused resume), else the exception's type and first line."""
    cause = getattr(error, "cause", None) or error  # Ray wraps the trial's exception in a RayTaskError
    return str(cause) if isinstance(cause, UserError) else one_line(cause)


def best_trial(records: list[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The trial whose exported epoch scores best on the validation split; the earlier on a tie."""
    scored = [r for r in records if r.status != FAILED and r.score(metric) is not None]
    if not scored:
        return None
    sign = 1 if mode == "min" else -1
    return min(scored, key=lambda r: (sign * r.score(metric), r.number))


# ---------------------------------------------------------------- the table and the figure

def table_rows(records: list[TrialRecord], config: TuneConfig) -> list[dict]:
    """trials.csv's rows: one per trial, its drawn settings, how it ended, its validation scores."""
    rows = []
    for r in records:
        rows.append({
            "trial": r.number, "trial_id": r.trial_id, "status": r.status,
            "stopped_by_scheduler": r.status == SCHEDULER_STOPPED, "epochs": r.epochs,
            "best_epoch": None if r.best_epoch is None else r.best_epoch + 1,
            "score": r.score(config.metric),
            "best_val_loss": r.best("val_loss", "min"), "best_val_auc": r.best("val_auc", "max"),
            "best_val_accuracy": r.best("val_accuracy", "max"),
            **r.drawn, "error": r.error, "run": r.run_uri,
        })
    return rows


def trials_csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def trials_markdown(rows: list[dict], best: TrialRecord | None, config: TuneConfig, sweep: SweepLayout,
                    how: str) -> bytes:
    """trials.md: the sweep in a sentence or two, then the table."""
    shown = ["trial", "status", "epochs", "best_epoch", "score", "best_val_loss", "best_val_auc",
             "best_val_accuracy", *(p.name for p in config.space), "error"]
    lines = [f"# Sweep {config.sweep_name}", "",
             f"{config.trials} trials of `{config.train.model}` on `{config.train.data}`, up to "
             f"{config.train.epochs} epochs each. {how}", "",
             f"`score` is the {config.metric} of the epoch each trial's export keeps (`best_epoch`, its lowest "
             "validation loss), on the validation split: the sweep chooses on it and never looks at the test split.",
             ""]
    if best is not None:
        lines += [f"Best: trial {best.number} (`{best.trial_id}`), {config.metric} {best.score(config.metric):.4f}, "
                  f"exported to `{sweep.best.export.root.uri}`.", ""]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key in shown) + " |")
    return ("\n".join(lines) + "\n").encode()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def drawn_text(drawn: dict) -> str:
    """'learning_rate 0.00021, dropout 0.31, batch_size 32, augment 0.8, class_weights on'."""
    def value(v):
        if isinstance(v, bool):
            return "on" if v else "off"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{name} {value(v)}" for name, v in drawn.items())


def val_auc_png(records: list[TrialRecord], best: TrialRecord | None, title: str) -> bytes:
    """Validation AUC per epoch, one line per trial; the best in colour, stopped trials dashed."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for record in records:
        epochs = [row["epoch"] + 1 for row in record.history if row.get("val_auc") is not None]
        values = [row["val_auc"] for row in record.history if row.get("val_auc") is not None]
        if not values or record is best:
            continue
        stopped = record.status == SCHEDULER_STOPPED
        axis.plot(epochs, values, "--" if stopped else "-", color="0.6", linewidth=1, alpha=0.8,
                  marker="x" if stopped else None, markevery=[-1] if stopped else None)
    if best is not None and best.history:
        axis.plot([row["epoch"] + 1 for row in best.history], [row.get("val_auc") for row in best.history], "-o",
                  color="C3", linewidth=2.5, markersize=3, label=f"best: trial {best.number}")
    axis.plot([], [], "-", color="0.6", label="other trials")
    axis.plot([], [], "--x", color="0.6", label="stopped by the scheduler")
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation AUC")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return png(plt, figure)


def write(records: list[TrialRecord], best: TrialRecord | None, sweep: SweepLayout, config: TuneConfig,
          how: str) -> None:
    """trials.csv, trials.md and the figure, under the sweep's folder."""
    rows = table_rows(records, config)
    storage.write_bytes(sweep.trials_csv, trials_csv(rows))
    storage.write_bytes(sweep.trials_markdown, trials_markdown(rows, best, config, sweep, how))
    storage.write_bytes(sweep.trials_figure, val_auc_png(
        records, best, f"{config.sweep_name}: validation AUC per epoch, {len(records)} trials"))
