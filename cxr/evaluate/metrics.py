"""Classifier metrics with stratified bootstrap confidence intervals, in plain numpy.

A test set of a few hundred chest X-rays gives a sensitivity that could move by ten points
with another draw of patients, so every number the evaluation reports carries a 95%
interval. The point estimate and every bootstrap resample go through one code path
(`_metric_table`, on a matrix of sample indices: the identity for the point, one row per
resample), so the two can never disagree about a definition.

Resampling is within each true class: a resample keeps the test set's class counts, so
sensitivity always has the same denominator and a rare class cannot vanish from a
resample and turn its metrics into NaN.

Conventions: rows of a confusion matrix are the true class, columns the predicted one; a
score at or above a threshold is positive (`predict_labels`, `roc_curve` and
`choose_threshold` agree); 0/0 is NaN, never an error; `evaluate` writes NaN as None.
"""

from __future__ import annotations

import warnings

import numpy as np

PER_CLASS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc")
# Sample indices held at once by the bootstrap (several int64 arrays of this size): about
# 100 MB at peak, and 1000 resamples of 2000 images in one chunk.
CHUNK_ELEMENTS = 1 << 21


def _labels(labels, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values from {labels.min()} to {labels.max()}")
    return labels


def _probs(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (n, k) with k >= 2 classes, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    # Catches logits or a lone sigmoid column passed as softmax outputs; float32 rounding passes.
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row of probs must sum to 1 (softmax outputs, not logits)")
    return probs


def _labels_and_probs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    probs = _probs(probs)
    labels = _labels(labels, probs.shape[1])
    if len(labels) != len(probs):
        raise ValueError(f"labels and probs differ in length: {len(labels)} and {len(probs)}")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    return labels, probs


def _binary(binary_labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(binary_labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or len(labels) != len(scores):
        raise ValueError(f"binary_labels and scores must be 1-D of one length, got {labels.shape} and {scores.shape}")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("binary_labels must be 0 or 1")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return labels.astype(bool), scores


def _ratio(numerator, denominator) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(numerator, dtype=np.float64) / denominator


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(k, k) counts, rows the true class, columns the predicted class."""
    labels = _labels(labels, num_classes)
    predicted = _labels(predicted, num_classes)
    if len(labels) != len(predicted):
        raise ValueError(f"labels and predicted differ in length: {len(labels)} and {len(predicted)}")
    cells = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes)


def _effective_threshold(num_classes: int, threshold: float | None) -> float | None:
    if threshold is None or num_classes > 2:
        return None
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return float(threshold)


def predict_labels(probs: np.ndarray, positive: int, threshold: float | None) -> np.ndarray:
    """Predicted classes: the positive class at or above `threshold` with two classes, else argmax."""
    probs = _probs(probs)
    if not 0 <= positive < probs.shape[1]:
        raise ValueError(f"positive must be a class index in [0, {probs.shape[1]}), got {positive}")
    threshold = _effective_threshold(probs.shape[1], threshold)
    if threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def _grouped_auc(positive_counts: np.ndarray, negative_counts: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC from counts per distinct score (ascending), one row per resample.

    A positive beats every negative at a lower score and half-beats those at its own
    score; counts instead of samples let a bootstrap resample be a row of weights.
    """
    below = np.cumsum(negative_counts, axis=-1) - negative_counts
    wins = np.sum(positive_counts * (below + 0.5 * negative_counts), axis=-1)
    return _ratio(wins, positive_counts.sum(axis=-1) * negative_counts.sum(axis=-1))


def roc_auc(binary_labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as P(positive scores above negative), ties 1/2; NaN with one class."""
    labels, scores = _binary(binary_labels, scores)
    distinct, group = np.unique(scores, return_inverse=True)
    positive = np.bincount(group[labels], minlength=len(distinct))
    negative = np.bincount(group[~labels], minlength=len(distinct))
    return float(_grouped_auc(positive, negative))


def roc_curve(binary_labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): (0, 0) at threshold +inf, then one point per distinct score, descending.

    A rate whose class is absent is NaN.
    """
    labels, scores = _binary(binary_labels, scores)
    distinct, group = np.unique(scores, return_inverse=True)
    # Descending thresholds; the point at a threshold counts every score at or above it.
    true_positives = np.cumsum(np.bincount(group[labels], minlength=len(distinct))[::-1])
    false_positives = np.cumsum(np.bincount(group[~labels], minlength=len(distinct))[::-1])
    fpr = np.concatenate([[0.0], _ratio(false_positives, (~labels).sum())])
    tpr = np.concatenate([[0.0], _ratio(true_positives, labels.sum())])
    if not labels.any():
        tpr[:] = np.nan
    if labels.all():
        fpr[:] = np.nan
    return fpr, tpr, np.concatenate([[np.inf], distinct[::-1]])


def choose_threshold(binary_labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising Youden's J (the highest on ties); 0.5 when a class is absent.

    Every threshold between the J-maximising score and the next lower score classifies the
    validation images alike; the midpoint of that gap is returned, not its top edge. At the
    edge, a new image scoring a hair below the lowest validation positive counts as negative:
    on a well-separated validation split that costs sensitivity for nothing.

    Choose it on the validation split: chosen on the test split, the test metrics flatter.
    """
    labels, scores = _binary(binary_labels, scores)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return 0.5
    distinct, group = np.unique(scores, return_inverse=True)
    true_positives = np.cumsum(np.bincount(group[labels], minlength=len(distinct))[::-1])
    false_positives = np.cumsum(np.bincount(group[~labels], minlength=len(distinct))[::-1])
    # J * positives * negatives, in integers: J as floats breaks exact ties by rounding
    # (1 - 4/6 > 1/3 - 0), which would pick a lower threshold than the rule says.
    scaled_j = true_positives * negatives - false_positives * positives
    descending = distinct[::-1]
    best = int(np.argmax(scaled_j))  # argmax: the first, so highest, of ties
    if best + 1 == len(descending):
        return float(descending[best])  # every image is positive: no lower score to meet
    return float((descending[best] + descending[best + 1]) / 2)


def calibration(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Expected calibration error of the top-label confidence, equal-width bins (low, high]."""
    labels, probs = _labels_and_probs(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # i / n_bins is correctly rounded, so a confidence of exactly 0.3 falls in (0.2, 0.3].
    edges = np.arange(n_bins + 1) / n_bins
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = bin_of == b
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "confidence": mean_confidence, "accuracy": accuracy})
    return {"ece": float(ece), "bins": bins}


def _metric_table(labels, predicted, probs, index, positive) -> dict[str, np.ndarray]:
    """Every metric for each row of `index` (R, n), a sample of positions: arrays (R,) or (R, k)."""
    num_classes = probs.shape[1]
    rows = np.arange(len(index))[:, None]
    cells = (labels * num_classes + predicted)[index] + rows * num_classes**2
    matrix = np.bincount(cells.ravel(), minlength=len(index) * num_classes**2)
    matrix = matrix.reshape(len(index), num_classes, num_classes)
    hits = np.diagonal(matrix, axis1=1, axis2=2)
    support, predicted_count = matrix.sum(axis=2), matrix.sum(axis=1)
    total = support.sum(axis=1, keepdims=True)
    false_negatives, false_positives = support - hits, predicted_count - hits
    true_negatives = total - hits - false_negatives - false_positives
    table = {
        "sensitivity": _ratio(hits, support),
        "specificity": _ratio(true_negatives, true_negatives + false_positives),
        "ppv": _ratio(hits, predicted_count),
        "npv": _ratio(true_negatives, true_negatives + false_negatives),
        "f1": _ratio(2 * hits, 2 * hits + false_positives + false_negatives),
    }
    aucs = []
    is_class = labels[index]
    for c in range(num_classes):
        distinct, group = np.unique(probs[:, c], return_inverse=True)
        flat = group[index] + rows * len(distinct)
        counts = [np.bincount(flat[mask], minlength=len(index) * len(distinct)).reshape(len(index), -1)
                  for mask in (is_class == c, is_class != c)]
        aucs.append(_grouped_auc(*counts))
    table["auc"] = np.stack(aucs, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN row is NaN, as meant
        # Over the classes present, as an absent class has no sensitivity or AUC.
        table["balanced_accuracy"] = np.nanmean(table["sensitivity"], axis=1)
        overall_auc = table["auc"][:, positive] if num_classes == 2 else np.nanmean(table["auc"], axis=1)
    table["overall_auc"] = overall_auc
    table["accuracy"] = _ratio(hits.sum(axis=1), total[:, 0])
    table["support"] = support
    return table


def _check_classes(probs, class_names, positive) -> None:
    if len(class_names) != probs.shape[1] or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be {probs.shape[1]} distinct names, got {class_names}")
    if not 0 <= positive < probs.shape[1]:
        raise ValueError(f"positive must be a class index in [0, {probs.shape[1]}), got {positive}")


def _layout(class_names: list[str], support: np.ndarray, metric) -> dict:
    """The nested result layout, each value from `metric(table_key, class_index_or_None)`."""
    return {
        "accuracy": metric("accuracy", None),
        "balanced_accuracy": metric("balanced_accuracy", None),
        "auc": metric("overall_auc", None),
        "per_class": {name: {**{key: metric(key, c) for key in PER_CLASS}, "support": int(support[c])}
                      for c, name in enumerate(class_names)},
    }


def point_metrics(labels, probs, class_names: list[str], positive: int, threshold: float | None) -> dict:
    """Accuracy, balanced accuracy, AUC, and per class sensitivity to AUC and support; NaN where undefined."""
    labels, probs = _labels_and_probs(labels, probs)
    _check_classes(probs, class_names, positive)
    predicted = predict_labels(probs, positive, threshold)
    table = _metric_table(labels, predicted, probs, np.arange(len(labels))[None, :], positive)
    return _layout(class_names, table["support"][0],
                   lambda key, c: float(table[key][0] if c is None else table[key][0, c]))


def _resample_indices(labels: np.ndarray, num_classes: int, n_resamples: int, seed: int):
    """Chunks of (R, n) sample positions, each row drawn with replacement within each true class."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    chunk = max(1, CHUNK_ELEMENTS // len(labels))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        yield np.concatenate([m[rng.integers(0, len(m), size=(size, len(m)))] for m in members if len(m)], axis=1)


def _json_float(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def evaluate(labels, probs, class_names: list[str], positive: int, threshold: float | None,
             n_resamples: int = 1000, seed: int = 0, level: float = 0.95, n_bins: int = 10) -> dict:
    """point_metrics with stratified percentile bootstrap intervals, and calibration, as JSON-ready data."""
    labels, probs = _labels_and_probs(labels, probs)
    _check_classes(probs, class_names, positive)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    predicted = predict_labels(probs, positive, threshold)
    point = _metric_table(labels, predicted, probs, np.arange(len(labels))[None, :], positive)
    chunks = [_metric_table(labels, predicted, probs, index, positive)
              for index in _resample_indices(labels, probs.shape[1], n_resamples, seed)]
    resampled = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in point}
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def interval(key: str, column: int | None):
        values = resampled[key] if column is None else resampled[key][:, column]
        value = point[key][0] if column is None else point[key][0, column]
        values = values[np.isfinite(values)]  # a NaN resample says nothing about the spread
        low, high = np.percentile(values, tails) if len(values) else (np.nan, np.nan)
        return {"value": _json_float(value), "ci_low": _json_float(low), "ci_high": _json_float(high)}

    return {
        **_layout(class_names, point["support"][0], interval),
        "confusion_matrix": confusion_matrix(labels, predicted, probs.shape[1]).tolist(),
        "threshold": _effective_threshold(probs.shape[1], threshold),
        "n": len(labels),
        "class_names": list(class_names),
        "positive_class": class_names[positive],
        "calibration": calibration(labels, probs, n_bins),
        "bootstrap": {"n_resamples": n_resamples, "level": level, "seed": seed, "method": "stratified percentile"},
    }
