"""cxr.evaluate.metrics against values worked out by hand on small fixed arrays (the working is in comments)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from cxr.evaluate.metrics import (_resample_indices, calibration, choose_threshold, confusion_matrix, evaluate,
                                  point_metrics, predict_labels, roc_auc, roc_curve)

CLASSES = ["COVID", "Normal"]
# Ten samples, positive class COVID = 0, `covid` is probs[:, 0].
#   sample   0    1    2    3    4    5    6    7    8    9
#   label    C    C    C    C    N    N    N    N    N    N
#   covid   .95  .80  .60  .40  .70  .30  .20  .10  .60  .05
LABELS_10 = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
COVID_10 = np.array([0.95, 0.80, 0.60, 0.40, 0.70, 0.30, 0.20, 0.10, 0.60, 0.05])
PROBS_10 = np.stack([COVID_10, 1 - COVID_10], axis=1)


def approx(value):
    return pytest.approx(value, abs=1e-12)


def test_confusion_matrix_of_ten_samples_at_threshold_half():
    # covid >= 0.5: samples 0, 1, 2 (COVID, right), 4 and 8 (Normal, wrong); sample 3 (.40) is
    # a missed COVID. Rows true, columns predicted: COVID [3, 1], Normal [2, 4].
    predicted = predict_labels(PROBS_10, positive=0, threshold=0.5)
    assert predicted.tolist() == [0, 0, 0, 1, 0, 1, 1, 1, 0, 1]
    assert confusion_matrix(LABELS_10, predicted, 2).tolist() == [[3, 1], [2, 4]]


def test_per_class_rates_of_ten_samples():
    # From [[3, 1], [2, 4]]. COVID: TP 3, FN 1, FP 2, TN 4.
    #   sensitivity 3/4, specificity 4/6, PPV 3/5, NPV 4/5, F1 = 2*3 / (2*3 + 2 + 1) = 6/9.
    # Normal is the mirror: TP 4, FN 2, FP 1, TN 3.
    #   sensitivity 4/6, specificity 3/4, PPV 4/5, NPV 3/5, F1 = 8 / (8 + 1 + 2) = 8/11.
    # Accuracy (3 + 4)/10; balanced accuracy (3/4 + 4/6)/2 = 17/24.
    # AUC of COVID, each COVID score against the six Normal ones (below 1, tie 1/2):
    #   .95 beats 6, .80 beats 6, .60 beats 4 (.30 .20 .10 .05) and ties .60, .40 beats 4
    #   -> (6 + 6 + 4.5 + 4) / (4 * 6) = 20.5/24. Normal's scores are 1 - covid: the same order
    #   reversed, the same tie, so the same AUC.
    metrics = point_metrics(LABELS_10, PROBS_10, CLASSES, positive=0, threshold=0.5)
    assert metrics["accuracy"] == approx(0.7)
    assert metrics["balanced_accuracy"] == approx(17 / 24)
    assert metrics["auc"] == approx(20.5 / 24)
    assert metrics["per_class"]["COVID"] == {
        "sensitivity": approx(3 / 4), "specificity": approx(4 / 6), "ppv": approx(3 / 5),
        "npv": approx(4 / 5), "f1": approx(6 / 9), "auc": approx(20.5 / 24), "support": 4}
    assert metrics["per_class"]["Normal"] == {
        "sensitivity": approx(4 / 6), "specificity": approx(3 / 4), "ppv": approx(4 / 5),
        "npv": approx(3 / 5), "f1": approx(8 / 11), "auc": approx(20.5 / 24), "support": 6}


def test_auc_counts_ties_as_half():
    # Positives .35 and .8, negatives .1 and .4: .35 beats .1 only, .8 beats both -> 3/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == approx(0.75)
    # Every pair tied -> 1/2; a perfect ranking -> 1; a reversed one -> 0.
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == approx(0.5)
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == approx(1.0)
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.3]) == approx(0.0)
    # The ten samples with COVID as the positive label (see above).
    assert roc_auc(LABELS_10 == 0, COVID_10) == approx(20.5 / 24)


def test_auc_is_nan_with_one_class():
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(roc_auc([0, 0], [0.2, 0.5]))


def test_roc_curve_of_ten_samples():
    # 4 positives, 6 negatives; distinct scores descending (.60 appears twice, once per class):
    #   >= .95: TP 1 FP 0   >= .80: 2 0   >= .70: 2 1   >= .60: 3 2   >= .40: 4 2
    #   >= .30: 4 3         >= .20: 4 4   >= .10: 4 5   >= .05: 4 6
    fpr, tpr, thresholds = roc_curve(LABELS_10 == 0, COVID_10)
    assert thresholds[0] == np.inf
    assert thresholds[1:].tolist() == [0.95, 0.80, 0.70, 0.60, 0.40, 0.30, 0.20, 0.10, 0.05]
    assert fpr * 6 == pytest.approx([0, 0, 0, 1, 2, 2, 3, 4, 5, 6])
    assert tpr * 4 == pytest.approx([0, 1, 2, 2, 3, 4, 4, 4, 4, 4])


def test_roc_curve_area_is_the_auc():
    # The tied .60 pair is one diagonal step, whose trapezoid is exactly the 1/2 credit.
    fpr, tpr, _ = roc_curve(LABELS_10 == 0, COVID_10)
    assert np.trapezoid(tpr, fpr) == approx(roc_auc(LABELS_10 == 0, COVID_10))


def test_youden_threshold_of_ten_samples():
    # J = tpr - fpr at the points above: 1/4, 2/4, 2/4-1/6, 3/4-2/6, 1-2/6, 1-3/6, ...
    # The largest, 2/3, is at .40 (all four COVID, two false alarms); the next lower score
    # is .30, so every threshold in (.30, .40] does the same and the midpoint is returned.
    assert choose_threshold(LABELS_10 == 0, COVID_10) == approx(0.35)


def test_youden_ties_go_to_the_highest_threshold():
    # labels 1 0 1 0 at .9 .8 .7 .6: J = 1/2, 0, 1/2, 0 -> .9, not .7 (then halfway to .8).
    assert choose_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == approx(0.85)
    # 3 positives, 6 negatives, labels 1 0 0 1 0 0 1 0 0 at .9 down to .1:
    # J = 1/3 - 0 = 2/3 - 2/6 = 3/3 - 4/6 at .9, .6 and .3, an exact three-way tie. In floats
    # 1 - 4/6 is 0.33333333333333337 > 1/3, so comparing float J would answer .3.
    labels = [1, 0, 0, 1, 0, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert choose_threshold(labels, scores) == approx(0.85)


def test_youden_threshold_sits_in_the_middle_of_a_clean_separation():
    # Perfectly separated: any threshold in (.20, .85] is perfect on these images; the top
    # edge would call a new COVID image at .84 negative.
    assert choose_threshold([1, 1, 0, 0], [0.99, 0.85, 0.20, 0.01]) == approx(0.525)
    # The lowest score maximises J (everything positive): there is no lower score to meet.
    assert choose_threshold([0, 1], [0.9, 0.1]) == 0.1


def test_youden_threshold_without_both_classes_is_half():
    assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5
    assert choose_threshold([0, 0, 0], [0.2, 0.9, 0.4]) == 0.5


def test_predict_labels_threshold_and_argmax():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.25, 0.75], [0.9, 0.1]])
    # Positive 1 at .7: only .75 reaches it. Argmax: the larger column.
    assert predict_labels(probs, positive=1, threshold=0.7).tolist() == [0, 0, 1, 0]
    assert predict_labels(probs, positive=1, threshold=None).tolist() == [0, 1, 1, 0]
    # At or above: exactly .6 is positive.
    assert predict_labels(probs, positive=1, threshold=0.6).tolist() == [0, 1, 1, 0]
    # Positive 0 at .4: column 0 is .7 .4 .25 .9 -> 0 0 1 0.
    assert predict_labels(probs, positive=0, threshold=0.4).tolist() == [0, 0, 1, 0]
    # Three classes: the threshold does not apply.
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    assert predict_labels(three, positive=1, threshold=0.25).tolist() == [0, 2]


def test_expected_calibration_error_by_hand():
    # Five bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]. Top-label confidence, right?
    #   [.9 .1] C -> .9 yes    [.1 .9] C -> .9 no     [.95 .05] C -> .95 yes   (.8, 1]
    #   [.3 .7] N -> .7 yes    [.65 .35] N -> .65 no                           (.6, .8]
    #   [.45 .55] N -> .55 yes                                                 (.4, .6]
    # (.8, 1]: confidence 2.75/3, accuracy 2/3, gap .25; (.6, .8]: .675 against .5, gap .175;
    # (.4, .6]: .55 against 1, gap .45. ECE = (3 * .25 + 2 * .175 + 1 * .45) / 6 = 1.55/6.
    probs = [[0.9, 0.1], [0.1, 0.9], [0.95, 0.05], [0.3, 0.7], [0.65, 0.35], [0.45, 0.55]]
    result = calibration([0, 0, 0, 1, 1, 1], probs, n_bins=5)
    assert result["ece"] == approx(1.55 / 6)
    bins = result["bins"]
    assert [(b["low"], b["high"], b["count"]) for b in bins] == [
        (0.0, 0.2, 0), (0.2, 0.4, 0), (0.4, 0.6, 1), (0.6, 0.8, 2), (0.8, 1.0, 3)]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[4]["confidence"] == approx(2.75 / 3) and bins[4]["accuracy"] == approx(2 / 3)
    assert bins[3]["confidence"] == approx(0.675) and bins[3]["accuracy"] == approx(0.5)


def test_calibration_bins_are_closed_on_the_right():
    # Confidences exactly .6 and .8 belong to (.4, .6] and (.6, .8]; 1.0 to the last bin.
    result = calibration([0, 0, 0], [[0.6, 0.4], [0.8, 0.2], [1.0, 0.0]], n_bins=5)
    assert [b["count"] for b in result["bins"]] == [0, 0, 1, 1, 1]
    # All right, so the gaps are 1 - .6, 1 - .8, 0: ECE = (.4 + .2) / 3.
    assert result["ece"] == approx(0.2)


# Three classes, two samples each:
#   sample  label   probs            one-vs-rest
#   s0      0       .6  .3  .1
#   s1      0       .4  .4  .2       argmax ties go to the first column: predicted 0
#   s2      1       .3  .5  .2
#   s3      1       .5  .2  .3
#   s4      2       .2  .3  .5
#   s5      2       .1  .2  .7
# Class 0: .6 beats all four others (.3 .5 .2 .1), .4 beats three (not .5) -> 7/8.
# Class 1: .5 beats all four (.3 .4 .3 .2), .2 ties s5's .2 and beats none -> 4.5/8.
# Class 2: .5 and .7 beat all of .1 .2 .2 .3 -> 8/8.
# Macro AUC (7/8 + 4.5/8 + 1)/3 = 0.8125. Predictions 0 0 1 0 2 2.
LABELS_3 = np.array([0, 0, 1, 1, 2, 2])
PROBS_3 = np.array([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2], [0.3, 0.5, 0.2],
                    [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]])


def test_three_class_macro_auc_and_argmax():
    metrics = point_metrics(LABELS_3, PROBS_3, ["a", "b", "c"], positive=1, threshold=0.9)
    assert [metrics["per_class"][n]["auc"] for n in "abc"] == [approx(7 / 8), approx(4.5 / 8), approx(1.0)]
    assert metrics["auc"] == approx(0.8125)
    # Confusion [[2, 0, 0], [1, 1, 0], [0, 0, 2]]: accuracy 5/6; b has sensitivity 1/2, PPV 1/1.
    assert metrics["accuracy"] == approx(5 / 6)
    assert metrics["per_class"]["b"]["sensitivity"] == approx(0.5)
    assert metrics["per_class"]["a"]["ppv"] == approx(2 / 3)
    assert metrics["per_class"]["a"]["specificity"] == approx(3 / 4)
    result = evaluate(LABELS_3, PROBS_3, ["a", "b", "c"], positive=1, threshold=0.9, n_resamples=50)
    assert result["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert result["threshold"] is None  # not applied beyond two classes


def test_undefined_ratios_are_nan_when_a_class_is_missing():
    # All three are COVID; covid >= .5 at .8 and .6: confusion [[2, 1], [0, 0]].
    # COVID: sensitivity 2/3, specificity 0/0, PPV 2/2, NPV 0/(0 + 1), F1 4/5.
    # Normal: sensitivity 0/0, specificity 2/3, PPV 0/1, NPV 2/2, F1 0/1. No AUC at all.
    # Balanced accuracy is over the classes present: 2/3.
    probs = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    metrics = point_metrics([0, 0, 0], probs, CLASSES, positive=0, threshold=0.5)
    covid, normal = metrics["per_class"]["COVID"], metrics["per_class"]["Normal"]
    assert covid["sensitivity"] == approx(2 / 3) and math.isnan(covid["specificity"])
    assert covid["ppv"] == 1.0 and covid["npv"] == 0.0 and covid["f1"] == approx(0.8)
    assert math.isnan(normal["sensitivity"]) and normal["specificity"] == approx(2 / 3)
    assert normal["ppv"] == 0.0 and normal["npv"] == 1.0 and normal["f1"] == 0.0
    assert math.isnan(metrics["auc"]) and math.isnan(covid["auc"])
    assert metrics["balanced_accuracy"] == approx(2 / 3)
    result = evaluate([0, 0, 0], probs, CLASSES, positive=0, threshold=0.5, n_resamples=100)
    assert result["auc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert result["per_class"]["Normal"]["sensitivity"]["value"] is None
    assert result["per_class"]["Normal"]["support"] == 0
    json.dumps(result, allow_nan=False)


def test_nan_resamples_are_left_out_of_the_interval():
    # Only the COVID sample at .9 is predicted COVID, so PPV is 1/1. A resample that misses
    # it (chance (3/4)^4, about a third) has PPV 0/0; every other one has PPV 1.
    probs = np.array([[1 - s, s] for s in (0.1, 0.2, 0.3, 0.4, 0.9, 0.3, 0.2, 0.1)])
    result = evaluate([0, 0, 0, 0, 1, 1, 1, 1], probs, ["Normal", "COVID"], 1, 0.5, n_resamples=200)
    assert result["per_class"]["COVID"]["ppv"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}


def synthetic_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 30% positive class whose scores sit higher: an AUC near 0.85."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = 1 / (1 + np.exp(-rng.normal(np.where(labels == 1, 1.0, -1.0), 1.0)))
    return labels, np.stack([1 - scores, scores], axis=1)


def test_evaluate_is_json_ready_and_complete():
    labels, probs = synthetic_scores(300, seed=1)
    result = evaluate(labels, probs, ["Normal", "COVID"], positive=1, threshold=0.5, n_resamples=200, seed=3)
    json.loads(json.dumps(result, allow_nan=False))
    point = point_metrics(labels, probs, ["Normal", "COVID"], positive=1, threshold=0.5)
    assert result["auc"]["value"] == point["auc"] and result["accuracy"]["value"] == point["accuracy"]
    assert result["per_class"]["COVID"]["support"] == int(labels.sum()) == sum(result["confusion_matrix"][1])
    assert result["n"] == 300 and result["threshold"] == 0.5 and result["positive_class"] == "COVID"
    assert result["class_names"] == ["Normal", "COVID"]
    assert result["calibration"] == calibration(labels, probs)
    assert result["bootstrap"] == {"n_resamples": 200, "level": 0.95, "seed": 3, "method": "stratified percentile"}


def test_intervals_contain_the_point_and_narrow_with_more_samples():
    def width(result: dict, *path: str) -> float:
        for key in path:
            result = result[key]
        assert result["ci_low"] <= result["value"] <= result["ci_high"]
        return result["ci_high"] - result["ci_low"]

    names = ["Normal", "COVID"]
    small = evaluate(*synthetic_scores(100, seed=0), names, positive=1, threshold=0.5, n_resamples=500)
    large = evaluate(*synthetic_scores(2000, seed=0), names, positive=1, threshold=0.5, n_resamples=500)
    # Widths go as 1/sqrt(n): about 4.5 times narrower at 20 times the samples.
    for path in (("auc",), ("accuracy",), ("per_class", "COVID", "sensitivity")):
        assert width(large, *path) < width(small, *path) / 2


def test_bootstrap_matches_a_plain_loop_over_the_same_resamples():
    labels, probs = synthetic_scores(60, seed=2)
    names = ["Normal", "COVID"]
    indices = np.concatenate(list(_resample_indices(labels, 2, 40, seed=5)))
    # Stratified: every resample keeps the class counts, and draws each class from itself.
    assert indices.shape == (40, 60)
    assert (labels[indices].sum(axis=1) == labels.sum()).all()
    loop = [point_metrics(labels[i], probs[i], names, positive=1, threshold=0.4) for i in indices]
    result = evaluate(labels, probs, names, positive=1, threshold=0.4, n_resamples=40, seed=5, level=0.9)
    for values, interval in ([[m["auc"] for m in loop], result["auc"]],
                             [[m["per_class"]["COVID"]["f1"] for m in loop], result["per_class"]["COVID"]["f1"]]):
        assert [interval["ci_low"], interval["ci_high"]] == pytest.approx(np.percentile(values, [5, 95]))


def test_same_seed_same_intervals():
    labels, probs = synthetic_scores(200, seed=4)
    run = lambda seed: evaluate(labels, probs, ["Normal", "COVID"], 1, 0.5, n_resamples=100, seed=seed)
    assert run(7) == run(7)
    assert run(7)["auc"] != run(8)["auc"]


def test_a_thousand_resamples_of_two_thousand_is_fast():
    labels, probs = synthetic_scores(2000, seed=0)
    start = time.perf_counter()
    evaluate(labels, probs, ["Normal", "COVID"], positive=1, threshold=0.5, n_resamples=1000)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("call, message", [
    (lambda: point_metrics([0, 1], [[0.5, 0.5]] * 3, CLASSES, 0, 0.5), "differ in length"),
    (lambda: point_metrics([0, 1], [0.5, 0.5], CLASSES, 0, 0.5), r"\(n, k\)"),
    (lambda: point_metrics([0, 2], [[0.5, 0.5]] * 2, CLASSES, 0, 0.5), r"in \[0, 2\)"),
    (lambda: point_metrics([0, 1], [[2.0, -1.0]] * 2, CLASSES, 0, 0.5), "probabilities"),
    (lambda: point_metrics([0, 1], [[0.9, 0.9]] * 2, CLASSES, 0, 0.5), "sum to 1"),
    (lambda: point_metrics([0, 1], [[0.5, 0.5]] * 2, ["COVID"], 0, 0.5), "class_names"),
    (lambda: point_metrics([0, 1], [[0.5, 0.5]] * 2, CLASSES, 2, 0.5), "positive"),
    (lambda: point_metrics([0.0, 1.0], [[0.5, 0.5]] * 2, CLASSES, 0, 0.5), "integers"),
    (lambda: predict_labels([[0.5, 0.5]], 0, 1.5), "threshold"),
    (lambda: confusion_matrix([0, 1], [0], 2), "differ in length"),
    (lambda: roc_auc([0, 2], [0.1, 0.2]), "0 or 1"),
    (lambda: roc_curve([0, 1], [0.1]), "one length"),
    (lambda: evaluate([0, 1], [[0.5, 0.5]] * 2, CLASSES, 0, 0.5, level=95), "level"),
])
def test_bad_inputs_are_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
