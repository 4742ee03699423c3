"""The evaluation report: report.json, report.md, MODEL_CARD.md and the figures.

`build_report` turns scores into numbers (metrics with intervals for the full images and
both shortcut variants, the threshold and where it came from, metrics per source of the
evaluated and the validation split, the training data's classes per source); `write_report` draws the
figures, explains a sample of decisions with Grad-CAM and writes everything under the
output folder, whole or not at all. The Markdown is generated from report.json's numbers only.
"""

from __future__ import annotations

import datetime
import json
import uuid

import numpy as np

from cxr import storage
from cxr.artifacts import (CONFUSION_FIGURE, GRADCAM_FIGURE, LEARNING_CURVE_FILE, MODEL_CARD_FILE, RELIABILITY_FIGURE,
                           REPORT_FILE, REPORT_MARKDOWN_FILE, REPORT_PATHS, ROC_FIGURE, ReportLayout, figure_path,
                           positive_label)
from cxr.config import AugmentConfig
from cxr.errors import UserError
from cxr.evaluate import by_source, figures, metrics
from cxr.evaluate.gradcam import grad_cam, overlay
from cxr.evaluate.shortcuts import VARIANTS, lung_crop_margin, template_ellipses, verdict
from cxr.scoring.export import load_export_model

VARIANT_TITLES = {"full": "full image", "lungs_masked": "lung fields blacked out", "lungs_only": "lung fields only"}
GRADCAM_GROUPS = (("true_positive", "true positives"), ("false_positive", "false positives"),
                  ("false_negative", "false negatives"))


def build_report(export, evaluated, validation, config) -> dict:
    names = list(export.class_names)
    positive = positive_label(names)
    threshold, threshold_note = _threshold(names, positive, validation, evaluated.description)
    by_variant = {variant: metrics.evaluate(evaluated.labels, probs, names, positive, threshold,
                                            n_resamples=config.resamples, seed=config.seed)
                  for variant, probs in evaluated.probs.items()}
    full = by_variant["full"]
    report = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"export": export.uri, "architecture": export.training.get("model"),
                  "image_size": export.image_size, "class_names": names,
                  "training": {k: export.training.get(k) for k in ("epochs_trained", "best_epoch", "stopped_early",
                                                                   "restarts", "config", "best")}},
        "data": {"evaluated": evaluated.description, "images": len(evaluated.labels),
                 "per_class": {name: int((evaluated.labels == i).sum()) for i, name in enumerate(names)},
                 "not_scored": evaluated.rejected,
                 "training_counts": export.manifest.counts_record(),
                 # The export's copy of the training data's manifest: its classes per source, and the warning.
                 "training_sources": by_source.training_sources(export.manifest.counts.class_by_source, names),
                 "preprocessing": export.manifest.config_record()},
        "threshold": {"value": threshold, "note": threshold_note},
        "metrics": full,
        "config": config.to_dict(),  # this evaluation's settings: `--config report.json` repeats it
    }
    per_source = by_source.source_metrics(evaluated, names, positive, threshold, config.resamples, config.seed)
    if per_source is not None:
        report["sources"] = per_source
    # The validation split's scores (they chose the threshold) per source: how the model was chosen;
    # not twice when the evaluated split is that split.
    per_validation_source = (by_source.source_metrics(validation, names, positive, threshold, config.resamples,
                                                      config.seed)
                             if validation is not None and validation.description != evaluated.description else None)
    if per_validation_source is not None:
        report["validation_sources"] = per_validation_source
    if "lungs_masked" in by_variant:
        auc = {v: by_variant[v]["auc"] for v in VARIANTS}
        crop_margin = lung_crop_margin(export)
        report["shortcuts"] = {
            "variants": {v: by_variant[v] for v in ("lungs_masked", "lungs_only")},
            "verdict": verdict(auc["full"], auc["lungs_masked"], auc["lungs_only"]),
            "lung_template": {"ellipses": [dict(zip(("centre_x", "centre_y", "half_width", "half_height"), e))
                                           for e in template_ellipses(crop_margin)],
                              "units": "fractions of the image side",
                              "fitted_to_lung_crop": crop_margin is not None},
        }
    return report


def _threshold(names: list[str], positive: int, validation, evaluated: str) -> tuple[float | None, str]:
    if len(names) != 2:
        return None, "more than two classes: the most probable class is predicted"
    if validation is None:
        return 0.5, "0.5: the training data's validation split was not available to choose one"
    binary = (validation.labels == positive).astype(int)
    value = metrics.choose_threshold(binary, validation.probs["full"][:, positive])
    where = ("the evaluated images themselves, so these metrics are optimistic"
             if validation.description == evaluated else "never on the evaluated images")
    return value, (f"chosen on the validation split ({len(binary)} images, {validation.description}) by "
                   f"Youden's J; {where}")


def write_report(report: dict, export, evaluated, output: ReportLayout, config) -> None:
    """Draw the figures, explain a sample with Grad-CAM, and write the report folder whole:
    every file is made in memory first, and any failure leaves the folder as it was."""
    write_together(output, report_files(report, export, evaluated, config))


def report_files(report: dict, export, evaluated, config) -> dict[str, bytes]:
    """Every file of the report, by its path under the report folder; completes `report`
    (its figures and Grad-CAM records) on the way."""
    names = report["model"]["class_names"]
    positive = positive_label(names)
    title = f"{report['model']['architecture']}, {len(evaluated.labels)} images"
    binary = (evaluated.labels == positive).astype(int)
    curves = {}
    for variant, probs in evaluated.probs.items():
        fpr, tpr, _ = metrics.roc_curve(binary, probs[:, positive])
        curves[VARIANT_TITLES[variant]] = (fpr, tpr, metrics.roc_auc(binary, probs[:, positive]))
    full = report["metrics"]
    pictures = {
        ROC_FIGURE: figures.roc_png(curves, f"ROC, {names[positive]} vs rest: {title}"),
        CONFUSION_FIGURE: figures.confusion_png(full["confusion_matrix"], names, f"Confusion matrix: {title}"),
        RELIABILITY_FIGURE: figures.reliability_png(full["calibration"]["bins"], full["calibration"]["ece"],
                                                    f"Reliability: {title}"),
    }
    if storage.is_file(export.layout.learning_curve):
        pictures[LEARNING_CURVE_FILE] = storage.read_bytes(export.layout.learning_curve)
    if config.gradcam_examples:
        panels, report["gradcam"] = _gradcam_panels(export, evaluated, report, config.gradcam_examples)
        if panels:
            pictures[GRADCAM_FIGURE] = figures.gradcam_grid_png(panels, f"Grad-CAM: {title}", columns=4)
    report["figures"] = [figure_path(name) for name in pictures]
    return {**{figure_path(name): data for name, data in pictures.items()},
            REPORT_FILE: (json.dumps(report, indent=2) + "\n").encode(),
            REPORT_MARKDOWN_FILE: report_markdown(report).encode(), MODEL_CARD_FILE: model_card(report).encode()}


def write_together(output: ReportLayout, files: dict[str, bytes]) -> None:
    """Write `files` (by path under the report folder) so that no reader meets half a report.

    Each goes under a temporary name first; only when all are written are they moved into
    place, and the files of an older report there that this one lacks (a Grad-CAM figure)
    deleted, so two reports never mix. A failure while writing removes what was written,
    and the folder too if it was not there before.
    """
    existed = storage.exists(output.root)
    suffix = storage.PARTIAL_MARK + uuid.uuid4().hex[:8]
    written: list[storage.Location] = []
    try:
        for relative, data in files.items():
            written.append(output.root.join(relative + suffix))
            storage.write_bytes(written[-1], data)
    except BaseException:
        _remove(written, output.root if not existed else None)
        raise
    for stale in sorted(set(REPORT_PATHS) - set(files)):
        location = output.root.join(stale)
        if storage.is_file(location):
            location.fs.delete_file(location.path)
    for partial in written:
        partial.fs.move(partial.path, partial.path[:-len(suffix)])


def _remove(partials: list[storage.Location], folder: storage.Location | None) -> None:
    """After a failed write: its files, and the folder it made. Failures here would only hide
    the write's own error."""
    for partial in partials:
        try:
            partial.fs.delete_file(partial.path)
        except OSError:
            pass
    if folder is not None:
        try:
            storage.delete_tree(folder)
        except UserError:
            pass


def _gradcam_panels(export, evaluated, report: dict, per_group: int) -> tuple[list, list[dict]]:
    """The most confident true positives, false positives and false negatives, explained."""
    names = report["model"]["class_names"]
    positive = positive_label(names)
    probs = evaluated.probs["full"]
    predicted = metrics.predict_labels(probs, positive, report["threshold"]["value"])
    is_pos, said_pos = evaluated.labels == positive, predicted == positive
    chosen = []
    for group, mask in (("true_positive", is_pos & said_pos), ("false_positive", ~is_pos & said_pos),
                        ("false_negative", is_pos & ~said_pos)):
        indices = np.flatnonzero(mask)
        # Most confident first: a confident mistake is the one worth looking at.
        confidence = probs[indices, positive] if group != "false_negative" else 1 - probs[indices, positive]
        chosen += [(group, int(i)) for i in indices[np.argsort(-confidence)][:per_group]]
    if not chosen:
        return [], []
    uris = [evaluated.source_uris[i] for _, i in chosen]
    images = evaluated.images(uris)
    model = load_export_model(export)
    # HiResCAM for the Flatten head of scratch_cnn, whose Grad-CAM averages cancel (cxr.evaluate.gradcam).
    method = "hirescam" if report["model"]["architecture"] == "scratch_cnn" else "gradcam"
    maps = grad_cam(model, images[..., None].astype(np.float32), np.full(len(chosen), positive), method=method)
    panels, records = [], []
    for (group, i), image, heat in zip(chosen, images, maps):
        p = float(probs[i, positive])
        panels.append((f"{group.replace('_', ' ')}, p={p:.2f}", overlay(image, heat)))
        records.append({"group": group, "source_uri": evaluated.source_uris[i], "probability": p,
                        "method": method})
    return panels, records


# ---------------------------------------------------------------- Markdown


def format_ci(metric: dict | None, digits: int = 3) -> str:
    if metric is None or metric.get("value") is None:
        return "n/a"
    if metric.get("ci_low") is None:
        return f"{metric['value']:.{digits}f}"
    return f"{metric['value']:.{digits}f} ({metric['ci_low']:.{digits}f}-{metric['ci_high']:.{digits}f})"


def metrics_table(by_name: dict[str, dict], names: list[str]) -> list[str]:
    """Rows of metrics with 95% intervals, one column per evaluated variant."""
    header = "| metric | " + " | ".join(by_name) + " |"
    lines = [header, "|" + " --- |" * (len(by_name) + 1)]
    rows = [("accuracy", lambda m: m["accuracy"]), ("balanced accuracy", lambda m: m["balanced_accuracy"]),
            ("ROC AUC", lambda m: m["auc"])]
    for name in names:
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1"):
            rows.append((f"{name} {key.upper() if key in ('ppv', 'npv') else key}",
                         lambda m, n=name, k=key: m["per_class"][n][k]))
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(format_ci(get(m)) for m in by_name.values()) + " |")
    return lines


def report_markdown(report: dict) -> str:
    names = report["model"]["class_names"]
    full = report["metrics"]
    columns = {"full image": full}
    if "shortcuts" in report:
        columns.update({VARIANT_TITLES[v]: m for v, m in report["shortcuts"]["variants"].items()})
    threshold = report["threshold"]
    lines = [
        f"# Evaluation: {report['model']['architecture']} ({report['model']['image_size']} px)",
        "",
        f"Model `{report['model']['export']}`, evaluated on {report['data']['evaluated']}: "
        f"{report['data']['images']} images ("
        + ", ".join(f"{n} {c}" for n, c in report["data"]["per_class"].items()) + ")."
        + (f" Not scored: {report['data']['not_scored']}." if report["data"]["not_scored"] else "")
        + _overlap_sentence(report["data"].get("near_duplicates_in_training")),
        "",
        f"Not for clinical use. See {MODEL_CARD_FILE}.",
        "",
        "## Metrics (95% stratified bootstrap intervals, "
        f"{full['bootstrap']['n_resamples']} resamples)",
        "",
        f"Operating threshold: {_fmt_threshold(threshold['value'])} for {full['positive_class']}; "
        f"{threshold['note']}.",
        "",
        *metrics_table(columns, names),
        "",
        "Confusion matrix (rows true, columns predicted):",
        "",
        "| | " + " | ".join(names) + " |",
        "|" + " --- |" * (len(names) + 1),
        *[f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(names, full["confusion_matrix"])],
        "",
        f"Calibration: expected calibration error {full['calibration']['ece']:.3f} "
        f"({len(full['calibration']['bins'])} bins of top-class confidence); see {figure_path(RELIABILITY_FIGURE)}.",
        "",
    ]
    lines += by_source.training_sources_section(report["data"].get("training_sources"), names)
    lines += by_source.markdown_section(report.get("sources"), names, format_ci)
    lines += by_source.markdown_section(report.get("validation_sources"), names, format_ci,
                                        "Per source, validation split")
    if "shortcuts" in report:
        lines += ["## Shortcut check", "", report["shortcuts"]["verdict"], "",
                  f"The lung fields are a fixed template of two ellipses ({REPORT_FILE}: shortcuts.lung_template"
                  + ("; fitted to the frame of images cropped to their lung fields"
                     if report["shortcuts"]["lung_template"].get("fitted_to_lung_crop") else "") + "); "
                  "blacked-out pixels are 0. In this database class and source hospital are confounded "
                  "(DeGrave et al. 2021), so this check matters more than the accuracy above.", ""]
    lines += ["## Generalization", "", _levers_sentence(report), ""]
    if report.get("gradcam"):
        lines += ["## Grad-CAM", "",
                  f"{figure_path(GRADCAM_FIGURE)}: the most confident true positives, false positives and false "
                  f"negatives ({report['gradcam'][0]['method']}, for {full['positive_class']}). A heatmap shows what the "
                  f"model used, not where disease is; heat outside the lungs is a warning sign.", ""]
    lines += ["## Figures", ""] + [f"- {path}" for path in report.get("figures", [])] + [""]
    return "\n".join(lines)


def _source_performance(per_source: dict | None, prefix: str = "") -> list[str]:
    """The model card's lines on sources: the held-out and training groups, or each source."""
    if not per_source:
        return []
    lines = [f"- {by_source.split_note(per_source)}"]
    named = per_source["groups"] or per_source["per_source"]
    for name, m in named.items():
        lines.append(f"- {prefix}{name}: {m['n']} images, accuracy {format_ci(m['accuracy'])}, "
                     f"ROC AUC {format_ci(m['auc'])}")
    return lines


def _confound_lines(report: dict) -> list[str]:
    """The model card's first confounder: measured on the training data's sources, when known."""
    names = report["model"]["class_names"]
    record = report["data"].get("training_sources")
    warnings, mixed = by_source.training_source_sentences(record, names)
    if mixed is None:
        return ["- No training image's source was recorded, so how class and hospital go together in the training "
                "data is unknown. In the COVID-19 Radiography Database the COVID images come from other "
                "collections than the Normal ones: hospital, device, exposure, borders and text differ with the "
                "class, and a model can score well by reading them (DeGrave et al. 2021, Nature Machine "
                "Intelligence)."]
    return ([f"- **{warning}** (in the training data; see Training data by source)." for warning in warnings]
            + [f"- Training data: {mixed}. Hospital, device, exposure, borders and text differ between sources; "
               "where they differ with the class, a model can score well by reading them (DeGrave et al. 2021, "
               "Nature Machine Intelligence)."])


def _fmt_threshold(value: float | None) -> str:
    return "argmax" if value is None else f"{value:.3f}"


def model_card(report: dict) -> str:
    model, data, full = report["model"], report["data"], report["metrics"]
    training = model["training"] or {}
    config = training.get("config") or {}
    counts = data["training_counts"]
    prep = data["preprocessing"]
    split_lines = [f"- {split}: " + ", ".join(f"{n} {c[n]}" for n in model["class_names"]) + f" (total {c['total']})"
                   for split, c in counts["splits"].items()]
    rejected = ", ".join(f"{k} {v}" for k, v in counts.get("rejected_by_reason", {}).items()) or "none"
    lines = [
        f"# Model card: {model['architecture']} chest X-ray classifier ({', '.join(model['class_names'])})",
        "",
        "**Not for clinical use.** A research model trained on a public database whose classes are confounded "
        "with their source hospitals; it has not been validated prospectively or on other populations, and it "
        "must not inform any diagnosis or treatment.",
        "",
        "## Intended use",
        "",
        "Research and teaching: studying how image classifiers behave on chest X-rays, including their shortcuts. "
        "Input: one frontal (PA/AP) chest X-ray, any size, PNG, JPEG or DICOM, preprocessed by this project exactly as "
        "the training data. Output: a probability per class.",
        "",
        "## Data",
        "",
        f"Source: `{prep.get('source')}`. Found {counts['found']} inputs, kept {counts['kept']}, "
        f"rejected {counts['rejected']} ({rejected}). Splits are stratified by class and keyed by pixel content, "
        "so exact duplicates never cross splits:",
        "",
        *split_lines,
        "",
        *by_source.training_sources_section(data.get("training_sources"), model["class_names"]),
        "## Preprocessing",
        "",
        f"Grayscale, images with burned-in markings handled by policy `{prep['markings']['policy']}` "
        f"(score threshold {prep['markings']['threshold']}), {_lung_focus_text(prep.get('lungs'))}"
        f"CLAHE (clip limit {prep['clahe']['clip_limit']}), resized to {model['image_size']} x "
        f"{model['image_size']} px.",
        "",
        "## Architecture and training",
        "",
        f"`{model['architecture']}` (see cxr/train/models.py). Trained for {training.get('epochs_trained')} epochs "
        f"(best epoch {None if training.get('best_epoch') is None else training['best_epoch'] + 1}"
        f"{', stopped early' if training.get('stopped_early') else ''}); batch {config.get('batch_size')}, "
        f"learning rate {config.get('learning_rate')}, class weights {config.get('class_weights')}, "
        f"augmentation {config.get('augment')}, seed {config.get('seed')}.",
        "",
        "## Performance",
        "",
        f"On {data['evaluated']} ({data['images']} images), threshold {_fmt_threshold(report['threshold']['value'])} "
        f"({report['threshold']['note']}); 95% bootstrap intervals:",
        "",
        f"- accuracy {format_ci(full['accuracy'])}, balanced accuracy {format_ci(full['balanced_accuracy'])}, "
        f"ROC AUC {format_ci(full['auc'])}",
        *[f"- {n}: sensitivity {format_ci(full['per_class'][n]['sensitivity'])}, specificity "
          f"{format_ci(full['per_class'][n]['specificity'])}" for n in model["class_names"]],
        f"- expected calibration error {full['calibration']['ece']:.3f}",
        *_source_performance(report.get("sources")),
        *_source_performance(report.get("validation_sources"), "validation split, "),
        "",
        "## Known confounders and limits",
        "",
        *_confound_lines(report),
    ]
    if "shortcuts" in report:
        lines.append(f"- Shortcut check on the evaluated images: {report['shortcuts']['verdict']}")
    lines.append(f"- {_levers_sentence(report)}")
    lines += [
        "- The lung-field template of the shortcut check is fixed, not segmented per image.",
        "- Near-duplicates (resized, re-windowed, re-compressed copies) are kept in one split only when the "
        "preprocessing grouped them (`--near-duplicate-distance`); two films of one patient are not detected.",
        ("- Performance on other hospitals than those evaluated, devices, children, or other lung diseases is "
         "unknown." if not (report.get("sources") or {}).get("held_out") else
         "- Held-out sources measure one unseen hospital or collection each; performance on others, devices, "
         "children, or other lung diseases is unknown."),
        "",
    ]
    return "\n".join(lines)


def _lung_focus_text(lungs: dict | None) -> str:
    lungs = lungs or {}
    if not (lungs.get("crop") or lungs.get("suppress")):
        return ""
    return " and ".join(part for part, on in (
        (f"cropped to the box around the lung fields found in each image (margin {lungs.get('margin')})",
         lungs.get("crop")), ("blacked out outside them", lungs.get("suppress"))) if on) + ", "


def _levers(report: dict) -> list[str]:
    """The levers against shortcuts this model was trained with, as read from its records."""
    prep = report["data"]["preprocessing"]
    lungs, markings = prep.get("lungs") or {}, prep.get("markings") or {}
    augment = ((report["model"]["training"] or {}).get("config") or {}).get("augment") or {}
    return [name for name, used in (("the lung crop", lungs.get("crop")),
                                    ("lung suppression", lungs.get("suppress")),
                                    ("removal of every burned-in mark", markings.get("remove_all")),
                                    ("appearance augmentation", AugmentConfig(**augment).appearance))
            if used]


def _levers_sentence(report: dict) -> str:
    levers = _levers(report)
    if not levers:
        return ("Trained without any lever against shortcuts (the lung crop, appearance augmentation): on the "
                "planted-shortcut testbed such a model reads the source instead of the lungs and fails on a "
                "held-out source (docs/benchmarks.md, \"generalization\"). Expect it to do worse on hospitals "
                "it never saw than on the evaluated images.")
    named = ", ".join(levers[:-1]) + " and " + levers[-1] if len(levers) > 1 else levers[0]
    return (f"Trained with {named}: levers that point the model at the lungs rather than at the hospital. "
            "docs/benchmarks.md (\"generalization\") measures what each gains on a held-out source and costs "
            "on the training sources. The trade is deliberate: some accuracy on the hospitals the model was "
            "trained on, for accuracy on hospitals it never saw.")


def _overlap_sentence(overlap: dict | None) -> str:
    if not overlap:
        return ""
    return (f" {overlap['with_near_duplicate']} of them have a near-duplicate among the model's "
            f"{overlap['training_images']} training images (fingerprints at most {overlap['max_distance']} of 256 "
            f"bits apart; {overlap['with_same_fingerprint']} with the same fingerprint): their scores are not "
            "evidence of generalisation.")
