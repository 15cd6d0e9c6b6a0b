"""Tests for bench.metrics against scikit-learn, a naive protocol re-implementation and hand-computed numbers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, f1_score

from bench import metrics as M

F1_KEYS = ("macro_f1", "micro_f1", "samples_f1")


def random_multilabel(seed: int, n: int = 200, c: int = 10, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Labels with varied prevalence; scores correlated with labels, in (0, 1)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < rng.uniform(0.05, 0.5, c)).astype(int)
    logits = rng.normal(size=(n, c)) + 1.5 * labels - 1.0
    return (1.0 / (1.0 + np.exp(-logits))).astype(dtype), labels


def edge_multilabel(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tie-heavy scores on the grid (1 decimal, fp32) plus a no-positive class, a never-predicted class,
    samples without labels and an all-zero score row."""
    scores, labels = random_multilabel(seed, n=120, c=8)
    scores = np.round(scores, 1).astype(np.float32)
    labels[:, 0] = 0  # class 0: no positives
    scores[:, 1] = 0.0  # class 1: never predicted (all-zero scores)
    labels[:5] = 0  # samples without labels
    scores[5] = 0.0  # a sample with all-zero scores
    return scores, labels


def sk_f1s(scores: np.ndarray, labels: np.ndarray, thr: float) -> dict[str, float]:
    pred = (scores > thr).astype(int)
    return {f"{avg}_f1": f1_score(labels, pred, average=avg, zero_division=0) for avg in ("macro", "micro", "samples")}


def sk_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found in y_true"
        return np.array([average_precision_score(labels[:, j], scores[:, j].astype(np.float64))
                         for j in range(labels.shape[1])])


DATASETS = [random_multilabel(seed) for seed in range(4)] + [random_multilabel(9, dtype=np.float64)]
DATASETS += [edge_multilabel(seed) for seed in range(3)]


def test_threshold_grid():
    assert M.THRESHOLD_GRID == tuple(k / 100 for k in range(5, 100, 5))
    assert len(M.THRESHOLD_GRID) == 19 and all(type(t) is float for t in M.THRESHOLD_GRID)


@pytest.mark.parametrize("data", DATASETS)
def test_f1_and_ap_match_sklearn(data):
    scores, labels = data
    for thr in (0.05, 0.3, 0.5, 0.7, 0.95):
        got = M.multilabel_metrics(scores, labels, thr)
        ref = sk_f1s(scores, labels, thr)
        for key in F1_KEYS:
            assert got[key] == pytest.approx(ref[key], abs=1e-12), (key, thr)
        assert M.macro_f1(scores, labels, thr) == pytest.approx(ref["macro_f1"], abs=1e-12)
        per_class = f1_score(labels, (scores > thr).astype(int), average=None, zero_division=0)
        np.testing.assert_allclose(got["per_class_f1"], per_class, atol=1e-12)
    ap = sk_ap(scores, labels)
    np.testing.assert_allclose(M.per_class_average_precision(scores, labels), ap, atol=1e-12)
    assert M.mean_average_precision(scores, labels) == pytest.approx(ap.mean(), abs=1e-12)
    assert got["mAP"] == pytest.approx(ap.mean(), abs=1e-12)


def test_edge_cases_explicitly():
    scores, labels = edge_multilabel(0)
    got = M.multilabel_metrics(scores, labels, 0.5)
    assert got["per_class_ap"][0] == 0.0 and got["per_class_f1"][0] == 0.0  # no positives: counted as 0
    assert got["per_class_f1"][1] == 0.0  # never predicted
    assert got["mAP"] == pytest.approx(np.mean(got["per_class_ap"]))  # zeros included in the mean
    # sklearn (zero_division=0) scores a sample with no true and no predicted labels as F1 0, not 1.
    empty = np.zeros((3, 4), dtype=np.float32)
    zero_labels = np.zeros((3, 4), dtype=int)
    m = M.multilabel_metrics(empty, zero_labels, 0.5)
    assert m["samples_f1"] == 0.0 == f1_score(zero_labels, zero_labels, average="samples", zero_division=0)
    assert m["macro_f1"] == m["micro_f1"] == m["mAP"] == 0.0
    # All scores tied: one threshold, AP = prevalence (sklearn), and all-zero scores predict nothing.
    tied_labels = np.array([[1], [0], [0], [1], [0]])
    assert M.mean_average_precision(np.zeros((5, 1)), tied_labels) == pytest.approx(0.4)
    assert M.macro_f1(np.zeros((5, 1)), tied_labels, 0.05) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strict_threshold_on_ties(dtype):
    scores = np.array([[0.5, 0.3], [0.6, 0.3], [0.3, 0.1]], dtype=dtype)
    labels = np.array([[1, 1], [1, 0], [0, 1]])
    # at 0.3 only the two scores strictly above count: class 0 -> TP 2, F1 1; class 1 -> none, F1 0
    assert M.macro_f1(scores, labels, 0.3) == pytest.approx(0.5)
    assert M.macro_f1(scores, labels, 0.5) == pytest.approx((2 / 3 + 0) / 2)
    assert sk_f1s(scores, labels, 0.3)["macro_f1"] == pytest.approx(0.5)
    # perfect for 0.3 <= thr < 0.6 under strict '>' (0.35 <= thr <= 0.6 under '>='): all tied, 0.5 is nearest 0.5
    assert M.choose_threshold(np.array([[0.6], [0.3]], dtype=dtype), np.array([[1], [0]])) == 0.5
    # perfect only for 0.3 <= thr < 0.45: the tied one nearest 0.5 is 0.4 (strict '>' keeps 0.45 out)
    assert M.choose_threshold(np.array([[0.45], [0.3]], dtype=dtype), np.array([[1], [0]])) == 0.4


def test_hand_computed_example():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = np.array([[0.9, 0.3], [0.4, 0.7], [0.6, 0.3], [0.1, 0.3]])
    m = M.multilabel_metrics(scores, labels, 0.5)
    # preds at 0.5: [1,0],[0,1],[1,0],[0,0]. class 0: TP1 FP1 FN1 -> 1/2; class 1: TP1 FP0 FN1 -> 2/3
    assert m["per_class_f1"] == pytest.approx([1 / 2, 2 / 3])
    assert m["macro_f1"] == pytest.approx(7 / 12)
    assert m["micro_f1"] == pytest.approx(4 / 7)  # TP2 FP1 FN2
    assert m["samples_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)  # empty sample counts 0
    # class 0 ranking 0.9(+) 0.6(-) 0.4(+) 0.1(-): AP = (1 + 2/3) / 2
    # class 1 ranking 0.7(+) then a tie {0.3: +,-,-} seen as one threshold: AP = 1/2*1 + 1/2*2/4
    assert m["per_class_ap"] == pytest.approx([5 / 6, 3 / 4])
    assert m["mAP"] == pytest.approx(19 / 24)
    # at 0.6 the class-0 score 0.6 is not above the threshold: both classes TP1 FP0 FN1
    assert M.macro_f1(scores, labels, 0.6) == pytest.approx(2 / 3)
    assert M.multilabel_metrics(scores, labels, 0.6)["macro_f1_at_0_5"] == pytest.approx(7 / 12)


def naive_protocol(val_scores, val_labels, test_scores, test_labels):
    """The Intentonomy threshold protocol with the harness's tie rule, written plainly: sklearn's val macro F1 at
    each threshold 0.05 ... 0.95; those within 0.001 of the best are tied; the tied one nearest 0.5, then the lower."""
    f1s = {}
    thr = 0.05
    while thr < 0.96:
        t = round(thr, 2)
        f1s[t] = f1_score(val_labels, (val_scores > t).astype(int), average="macro", zero_division=0)
        thr += 0.05
    best = max(f1s.values())
    best_thr = min((t for t, f in f1s.items() if f >= best - 0.001), key=lambda t: (round(abs(t - 0.5), 9), t))
    return best_thr, sk_f1s(val_scores, val_labels, best_thr), sk_f1s(test_scores, test_labels, best_thr)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("maker", [random_multilabel, edge_multilabel])
def test_evaluate_matches_naive_protocol(seed, maker):
    val_scores, val_labels = maker(seed)
    test_scores, test_labels = maker(seed + 100)
    thr, ref_val, ref_test = naive_protocol(val_scores, val_labels, test_scores, test_labels)
    val, test = M.evaluate("multilabel", val_scores, val_labels, test_scores, test_labels)
    assert val["threshold"] == test["threshold"] == thr == M.choose_threshold(val_scores, val_labels)
    splits = ((val, ref_val, val_scores, val_labels), (test, ref_test, test_scores, test_labels))
    for got, ref, scores, labels in splits:
        for key in F1_KEYS:
            assert got[key] == pytest.approx(ref[key], abs=1e-12)
            assert got[f"{key}_at_0_5"] == pytest.approx(sk_f1s(scores, labels, 0.5)[key], abs=1e-12)
        assert got["mAP"] == pytest.approx(sk_ap(scores, labels).mean(), abs=1e-12)
    fixed_val, fixed_test = M.evaluate("multilabel", val_scores, val_labels, test_scores, test_labels, threshold=0.35)
    assert fixed_val["threshold"] == fixed_test["threshold"] == 0.35
    assert fixed_test["macro_f1"] == pytest.approx(sk_f1s(test_scores, test_labels, 0.35)["macro_f1"], abs=1e-12)


def test_choose_threshold_ties_nearest_half():
    labels = np.ones((6, 3), dtype=int)
    assert M.choose_threshold(np.full((6, 3), 0.99), labels) == 0.5  # F1 = 1 everywhere
    assert M.choose_threshold(np.zeros((6, 3)), labels) == 0.5  # F1 = 0 everywhere
    scores = np.tile([[0.42], [0.2]], (1, 2))
    assert M.choose_threshold(scores, np.array([[1, 1], [0, 0]])) == 0.4  # 0.2 ... 0.4 all perfect: 0.4 nearest 0.5
    from bench.selection import threshold_preference

    assert sorted([0.55, 0.45, 0.6], key=threshold_preference) == [0.45, 0.55, 0.6]  # equally near 0.5: the lower


def test_threshold_selection_tolerance_and_margin():
    """1000 val images, one class: F1 is exact from counts, so the tie set and margin can be computed by hand."""
    n = 1000
    labels = np.zeros((n, 1), dtype=int)
    labels[:100] = 1
    scores = np.full((n, 1), 0.01)
    scores[:100] = 0.97  # every positive above every threshold
    scores[100:101] = 0.32  # one more negative above 0.05 ... 0.30: 4 FP there, F1 = 200/204
    scores[101:104] = 0.62  # three negatives above 0.05 ... 0.60: 3 FP at 0.35 ... 0.60, F1 = 200/203
    sel = M.threshold_selection(scores, labels)
    assert sel.best == pytest.approx(1.0) and sel.chosen == 0.65  # 0.65 ... 0.95 perfect; nearest 0.5
    assert sel.tie_set == [0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert sel.margin == pytest.approx(1.0 - 200 / 203)  # the best outside the tie set: 0.35 ... 0.6
    assert not sel.fragile
    # a tie set reaching the edge: perfect F1 minus 0.0007 is tied (inside 0.001)
    big = np.zeros((3000, 1), dtype=int)
    big[:1500] = 1
    s = np.full((3000, 1), 0.01)
    s[:1500] = 0.97
    s[1500:1502] = 0.62  # two negatives above 0.05 ... 0.60: F1 = 3000/3002 = 1 - 0.00067
    sel = M.threshold_selection(s, big)
    assert 1 - 3000 / 3002 < 1e-3
    assert sel.chosen == 0.5 and sel.margin is None  # every threshold is tied: the rule picks 0.5
    assert M.choose_threshold(s, big) == 0.5


def test_outputs_are_json_floats():
    scores, labels = DATASETS[0]
    val, test = M.evaluate("multilabel", scores, labels, scores, labels)
    json.dumps([val, test], allow_nan=False)
    assert all(type(v) is float for k, v in test.items() if not k.startswith("per_class"))
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in test["per_class_f1"] + test["per_class_ap"])


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 200, 10
    labels = rng.integers(0, c - 1, n)  # class c-1 never occurs
    scores = np.round(rng.random((n, c)) + 0.5 * np.eye(c)[labels], 1).astype(np.float32)  # many argmax ties
    scores[:7] = 0.0  # all tied: argmax picks class 0
    val, test = M.evaluate("multiclass", scores, labels, scores[:100], labels[:100], threshold=0.3)
    pred = np.argmax(scores, axis=1)
    assert (pred[:7] == 0).all()
    assert val["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert M.accuracy(scores, labels) == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        bal = balanced_accuracy_score(labels, pred)
        bal_test = balanced_accuracy_score(labels[:100], pred[:100])
    assert val["mean_class_accuracy"] == pytest.approx(bal, abs=1e-12)
    assert test["mean_class_accuracy"] == pytest.approx(bal_test, abs=1e-12)
    assert val["per_class_accuracy"][c - 1] == 0.0
    assert val["per_class_accuracy"][0] == pytest.approx(np.mean(pred[labels == 0] == 0))
    json.dumps([val, test], allow_nan=False)


def test_multiclass_hand_computed():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.5, 0.5, 0.0]])
    m = M.multiclass_metrics(scores, np.array([0, 1, 1, 1]))  # preds 0, 1, 0, 0 (tie -> 0)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class_accuracy"] == pytest.approx([1.0, 1 / 3, 0.0])
    assert m["mean_class_accuracy"] == pytest.approx((1 + 1 / 3) / 2)  # class 2 absent: excluded


GOOD_S, GOOD_Y = np.full((4, 3), 0.5), np.zeros((4, 3), dtype=int)
NAN_S = GOOD_S.copy()
NAN_S[2, 1] = np.nan


@pytest.mark.parametrize(
    ("task", "args", "match"),
    [
        ("multilabel", (GOOD_S, np.zeros((4, 2)), GOOD_S, GOOD_Y), r"val_labels.*\(4, 3\).*\(4, 2\)"),
        ("multilabel", (GOOD_S, GOOD_Y, GOOD_S[0], GOOD_Y[0]), r"test_scores.*\(3,\)"),
        ("multilabel", (GOOD_S, GOOD_Y, NAN_S, GOOD_Y), r"test_scores must be finite.*nan.*\(2, 1\)"),
        ("multilabel", (GOOD_S * np.inf, GOOD_Y, GOOD_S, GOOD_Y), r"val_scores must be finite.*inf"),
        ("multilabel", (GOOD_S, GOOD_Y + 2, GOOD_S, GOOD_Y), r"val_labels must be binary.*2"),
        ("multilabel", (GOOD_S, GOOD_Y, GOOD_S[:, :2], GOOD_Y[:, :2]), r"test_scores has 2 classes.*val_scores has 3"),
        ("multiclass", (GOOD_S, GOOD_Y, GOOD_S, np.zeros(4, int)), r"val_labels must have shape \(4,\).*\(4, 3\)"),
        ("multiclass", (GOOD_S, np.zeros(4, int), GOOD_S, np.array([0, 1, 3, 0])), r"test_labels.*\[0, 3\).*max 3"),
        ("multiclass", (GOOD_S, np.zeros(4, int), NAN_S, np.zeros(4, int)), r"test_scores must be finite"),
        ("multiclass", (GOOD_S, np.zeros(4), GOOD_S, np.zeros(4, int)), r"val_labels must be integer"),
        ("multitask", (GOOD_S, GOOD_Y, GOOD_S, GOOD_Y), r"task must be one of"),
    ],
)
def test_invalid_inputs_raise(task, args, match):
    with pytest.raises(ValueError, match=match):
        M.evaluate(task, *args)


def test_metrics_functions_validate_too():
    with pytest.raises(ValueError, match=r"scores must be finite"):
        M.multilabel_metrics(NAN_S, GOOD_Y, 0.5)
    with pytest.raises(ValueError, match=r"labels must have the shape"):
        M.multilabel_metrics(GOOD_S, GOOD_Y[:3], 0.5)
    with pytest.raises(ValueError, match=r"threshold must be finite"):
        M.evaluate("multilabel", GOOD_S, GOOD_Y, GOOD_S, GOOD_Y, threshold=float("nan"))


def test_official_code_ap_orders_ties_by_the_sort_instead_of_grouping_them():
    scores = np.array([[0.9], [0.8], [0.8], [0.1]], dtype=np.float32)
    labels = np.array([[1], [0], [1], [0]])
    # numpy's argsort of [0.9, 0.8, 0.8, 0.1] is [3, 1, 2, 0]; reversed, the positive at index 2 ranks second: P = 2/2
    assert M.official_average_precision(scores, labels)[0] == pytest.approx(1.0)
    # scikit-learn's AP groups the tie: the second positive gets the precision at the group's end, 2/3
    assert M.per_class_average_precision(scores, labels)[0] == pytest.approx((1 + 2 / 3) / 2)
    rng = np.random.default_rng(1)
    distinct, y = rng.random((300, 6)), (rng.random((300, 6)) < 0.3).astype(int)
    np.testing.assert_allclose(M.official_average_precision(distinct, y), M.per_class_average_precision(distinct, y), atol=1e-7)
    val, test = M.evaluate("multilabel", distinct, y, distinct, y, 0.5, official_ap=True)
    assert "mAP_official" in val and test["mAP_official"] == pytest.approx(test["mAP"], abs=1e-7)
