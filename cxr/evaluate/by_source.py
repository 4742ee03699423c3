"""Metrics per source: how the model does on each hospital or collection, and on held-out ones.

A model can score well by recognising where an image was taken when the class rates
differ between sources (DeGrave et al. 2021). Its accuracy on the sources it trained on
then says little about a new hospital; its accuracy on sources it never saw does. So
when the evaluated images come from several sources, the report gives the key metrics for
each, and when the test split holds sources out (jobs/preprocess.py --test-sources), for
the held-out sources together and for the training sources together: the gap between
the two is the measured cost of leaving home.

The operating threshold is the report's one threshold: chosen on the validation split,
which holds no image of a held-out source.
"""

from __future__ import annotations

import numpy as np

from cxr.artifacts import UNKNOWN_SOURCE
from cxr.evaluate import metrics

HELD_OUT_GROUP = "held-out sources"
TRAINING_GROUP = "training sources"


def source_metrics(evaluated, class_names: list[str], positive: int, threshold: float | None,
                   resamples: int, seed: int) -> dict | None:
    """{held_out, groups, per_source} of a scored set, or None when it has fewer than two
    known sources and none held out (one number per source would only repeat the report's)."""
    sources = np.array([s or UNKNOWN_SOURCE for s in evaluated.sources], dtype=object)
    known = set(sources) - {UNKNOWN_SOURCE}
    held_out = [name for name in evaluated.held_out if name in known]
    if len(known) < 2 and not held_out:
        return None

    def key_metrics(mask: np.ndarray) -> dict:
        return _key_metrics(evaluated, mask, class_names, positive, threshold, resamples, seed)

    groups = {}
    if held_out:
        in_held_out = np.isin(sources, held_out)
        groups[HELD_OUT_GROUP] = {"sources": held_out, **key_metrics(in_held_out)}
        if (~in_held_out).any():
            groups[TRAINING_GROUP] = {"sources": _ordered(set(sources[~in_held_out])), **key_metrics(~in_held_out)}
    per_source = {name: {"held_out": name in held_out, **key_metrics(sources == name)}
                  for name in _ordered(set(sources))}
    return {"held_out": held_out, "groups": groups, "per_source": per_source}


def _ordered(names: set[str]) -> list[str]:
    """Sorted, the images of unknown source last."""
    return sorted(names, key=lambda name: (name == UNKNOWN_SOURCE, name))


def _key_metrics(evaluated, mask: np.ndarray, class_names: list[str], positive: int, threshold: float | None,
                 resamples: int, seed: int) -> dict:
    """n, images per class, accuracy, balanced accuracy, AUC (None with one class) and the
    positive class's sensitivity and specificity, with intervals; AUC with the lungs blacked out."""
    labels = evaluated.labels[mask]
    full = metrics.evaluate(labels, evaluated.probs["full"][mask], class_names, positive, threshold,
                            n_resamples=resamples, seed=seed)
    record = {"n": int(mask.sum()),
              "per_class": {name: full["per_class"][name]["support"] for name in class_names},
              "accuracy": full["accuracy"], "balanced_accuracy": full["balanced_accuracy"], "auc": full["auc"],
              "sensitivity": full["per_class"][class_names[positive]]["sensitivity"],
              "specificity": full["per_class"][class_names[positive]]["specificity"]}
    if "lungs_masked" in evaluated.probs:
        record["auc_lungs_masked"] = metrics.evaluate(labels, evaluated.probs["lungs_masked"][mask], class_names,
                                                      positive, threshold, n_resamples=resamples, seed=seed)["auc"]
    return record


def split_note(by_source: dict) -> str:
    """What the evaluated split is, in one sentence, for the report and the model card."""
    held_out = by_source["held_out"]
    if not held_out:
        return "The evaluated images come from several sources, each also seen in training."
    training = by_source["groups"].get(TRAINING_GROUP)
    rest = (f" It also holds a share of the training sources' images ({', '.join(training['sources'])}), chosen by "
            "hash as the ordinary split does." if training else "")
    which = f"the source {held_out[0]}" if len(held_out) == 1 else f"the sources {', '.join(held_out)}"
    return (f"The test split holds out {which}: every one of their images, none of which "
            f"was in training or validation.{rest} Metrics on held-out sources measure how the model does on a "
            f"hospital it never saw; a large gap to the training sources means it learned the sources, not the lungs.")


def markdown_section(by_source: dict | None, class_names: list[str], fmt) -> list[str]:
    """The report's per-source section; `fmt` formats a metric with its interval."""
    if not by_source:
        return []
    masked = any("auc_lungs_masked" in m for m in by_source["per_source"].values())
    header = ("| source | held out | images | " + " / ".join(class_names) + " | accuracy | balanced accuracy | "
              "ROC AUC |" + (" AUC, lungs blacked out |" if masked else ""))
    lines = ["## Per source", "", split_note(by_source), "", header,
             "|" + " --- |" * (header.count("|") - 1)]
    rows = [(name, "yes" if name == HELD_OUT_GROUP else "no", m) for name, m in by_source["groups"].items()]
    rows += [(name, "yes" if m["held_out"] else "no", m) for name, m in by_source["per_source"].items()]
    for name, held, m in rows:
        label = f"**{name}**" if name in by_source["groups"] else name
        lines.append(f"| {label} | {held} | {m['n']} | " + " / ".join(str(m["per_class"][c]) for c in class_names)
                     + f" | {fmt(m['accuracy'])} | {fmt(m['balanced_accuracy'])} | {fmt(m['auc'])} |"
                     + (f" {fmt(m.get('auc_lungs_masked'))} |" if masked else ""))
    lines += ["", "AUC is n/a for a source with images of one class only. 95% stratified bootstrap intervals.", ""]
    return lines


def summary_lines(by_source: dict | None, fmt) -> list[str]:
    """The job's closing lines: the held-out and training groups, else each source (a few)."""
    if not by_source:
        return []
    named = by_source["groups"] or dict(list(by_source["per_source"].items())[:8])
    lines = []
    for name, m in named.items():
        which = f"{name} ({', '.join(m['sources'])})" if "sources" in m else f"source {name}"
        lines.append(f"  {which}: {m['n']} images, accuracy {fmt(m['accuracy'])}, AUC {fmt(m['auc'])}")
    return lines
