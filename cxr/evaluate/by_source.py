"""Metrics per source: how the model does on each hospital or collection, and on held-out ones.

A model can score well by recognising where an image was taken when the class rates
differ between sources (DeGrave et al. 2021). Its accuracy on the sources it trained on
then says little about a new hospital; its accuracy on sources it never saw does. So
when the evaluated images come from several sources, the report gives the key metrics for
each, and when the test split holds sources out (jobs/preprocess.py --test-sources), for
the held-out sources together and for the training sources together: the gap between
the two is the measured cost of leaving home. The validation split gets the same (from the
scores that choose the threshold): with sources held out there (--val-sources) the model was
chosen on hospitals it never trained on, and the report says how it did on each.

The operating threshold is the report's one threshold: chosen on the validation split,
which holds no image of a source held out in test.

The training data's class-by-source table (its manifest's) comes with its confound warning:
a class from sources holding no other class can be recognised by its hospital.
"""

from __future__ import annotations

import numpy as np

from cxr.artifacts import UNKNOWN_SOURCE, ordered_sources
from cxr.evaluate import metrics
from cxr.preprocess.manifest import confound_sentences, printable, source_confound

HELD_OUT_GROUP = "held-out sources"
TRAINING_GROUP = "training sources"


def source_metrics(evaluated, class_names: list[str], positive: int, threshold: float | None,
                   resamples: int, seed: int) -> dict | None:
    """{split, held_out, groups, per_source} of a scored set, or None when it has fewer than
    two known sources and none held out (one number per source would only repeat the report's)."""
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
            groups[TRAINING_GROUP] = {"sources": ordered_sources(set(sources[~in_held_out])), **key_metrics(~in_held_out)}
    per_source = {name: {"held_out": name in held_out, **key_metrics(sources == name)}
                  for name in ordered_sources(set(sources))}
    return {"split": evaluated.split, "held_out": held_out, "groups": groups, "per_source": per_source}



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
    """What the split is, in one sentence or three, for the report and the model card."""
    held_out = by_source["held_out"]
    validation = by_source.get("split") == "val"
    if not held_out:
        if validation:
            return ("The validation split, on which the model (its best epoch) and the threshold were chosen, holds "
                    "images of sources also seen in training: it rewarded a model that recognises them. "
                    "jobs/preprocess.py --val-sources holds sources out of training for this choice.")
        return "The evaluated images come from several sources, each also seen in training."
    training = by_source["groups"].get(TRAINING_GROUP)
    rest = (f" It also holds a share of the training sources' images ({', '.join(training['sources'])}), chosen by "
            "hash as the ordinary split does." if training else "")
    which = f"the source {held_out[0]}" if len(held_out) == 1 else f"the sources {', '.join(held_out)}"
    if validation:
        return (f"The validation split holds out {which}: every one of their images, none of which was in "
                f"training.{rest} The model (its best epoch) and the threshold were chosen on this split, so its "
                "metrics flatter the model a little; on the held-out sources they say how well it was chosen for a "
                "hospital it never trained on.")
    return (f"The test split holds out {which}: every one of their images, none of which "
            f"was in training or validation.{rest} Metrics on held-out sources measure how the model does on a "
            f"hospital it never saw; a large gap to the training sources means it learned the sources, not the lungs.")


def markdown_section(by_source: dict | None, class_names: list[str], fmt, title: str = "Per source") -> list[str]:
    """A per-source section of the report; `fmt` formats a metric with its interval."""
    if not by_source:
        return []
    masked = any("auc_lungs_masked" in m for m in by_source["per_source"].values())
    header = ("| source | held out | images | " + " / ".join(class_names) + " | accuracy | balanced accuracy | "
              "ROC AUC |" + (" AUC, lungs blacked out |" if masked else ""))
    lines = [f"## {title}", "", split_note(by_source), "", header,
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


def summary_lines(by_source: dict | None, fmt, prefix: str = "") -> list[str]:
    """The job's closing lines: the held-out and training groups, else each source (a few)."""
    if not by_source:
        return []
    named = by_source["groups"] or dict(list(by_source["per_source"].items())[:8])
    lines = []
    for name, m in named.items():
        which = f"{name} ({', '.join(m['sources'])})" if "sources" in m else f"source {name}"
        lines.append(f"  {prefix}{which}: {m['n']} images, accuracy {fmt(m['accuracy'])}, AUC {fmt(m['auc'])}")
    return lines


def training_sources(table, class_names: list[str]) -> dict:
    """report.json's record of the training data's class-by-source table (the manifest's) and
    its confound analysis (cxr.preprocess.manifest.source_confound)."""
    table = {name: dict(per_class) for name, per_class in table.items()}
    return {"table": table, **source_confound(table, class_names)}


def training_source_sentences(record: dict | None, class_names: list[str]) -> tuple[list[str], str | None]:
    """(warnings, the share in mixed sources) of a training_sources record; nothing without one."""
    return confound_sentences(record, class_names) if record else ([], None)


def training_sources_section(record: dict | None, class_names: list[str]) -> list[str]:
    """The report's section on how the training data's classes spread over its sources."""
    if not record or not record["sources_known"]:
        return ["## Training data by source", "",
                "No training image's source was recorded: how the classes spread over hospitals is unknown, and "
                "with it how much of this report's scores is the hospital rather than the disease.", ""]
    header = "| source | " + " | ".join(map(_cell, class_names)) + " | total |"
    lines = ["## Training data by source", "",
             "Kept images of the training data (every split) per source and class. A class whose images come from "
             "sources holding no other class can be told apart by its hospital alone.", "",
             header, "|" + " --- |" * (len(class_names) + 2)]
    for name, per_class in record["table"].items():
        lines.append(f"| {_cell(name)} | " + " | ".join(str(per_class.get(c, 0)) for c in class_names)
                     + f" | {sum(per_class.values())} |")
    warnings, mixed = training_source_sentences(record, class_names)
    lines += [""] + [f"- **Warning:** {warning}." for warning in warnings]
    lines += [f"- {mixed[0].upper()}{mixed[1:]}." if mixed else "", ""]
    return lines


def _cell(name: str) -> str:
    """A name from the user's files as one Markdown table cell: one line, its bars escaped."""
    return printable(name).replace("|", "\\|")
