"""The label-efficiency subsets (bench.datasets.subsets): nested, stratified training fractions (iterative
stratification, then swaps), exact k-shot counts, partial-label masks at their rate, and the hashes that make a
subset part of a run's identity. Pure numpy: no model, no rendering."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from bench.datasets import subsets
from bench.datasets.base import DatasetError, Split

FRACTIONS = [0.05, 0.1, 0.25, 0.5, 1.0]


def multilabel(n: int = 600, seed: int = 0) -> np.ndarray:
    """Skewed, co-occurring multi-hot labels (12 classes from 1% to 40% frequent; class 1 mostly with class 0;
    some images without any label), float32 as the datasets give them."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, 12)) < np.geomspace(0.01, 0.4, 12)
    y[:, 1] |= y[:, 0] & (rng.random(n) < 0.8)
    return y.astype(np.float32)


def deviation(y: np.ndarray, indices: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class positive count of the subset minus its proportional target."""
    return y[indices].sum(axis=0) - fraction * y.sum(axis=0)


def test_fractions_are_nested_exact_in_size_and_within_one_positive_per_class():
    y = multilabel()
    n = len(y)
    for seed in range(3):
        drawn = subsets.nested_fractions(y, FRACTIONS, seed)
        assert list(drawn) == FRACTIONS
        for small, large in itertools.pairwise(FRACTIONS):
            assert set(drawn[small]) < set(drawn[large]), (seed, small, large)
        for f, idx in drawn.items():
            assert len(idx) == int(np.floor(f * n + 0.5)) and len(set(idx)) == len(idx)
            assert np.all(np.diff(idx) > 0)  # sorted
            assert np.abs(deviation(y, idx, f)).max() <= 1.0, (seed, f, deviation(y, idx, f))
        assert np.array_equal(drawn[1.0], np.arange(n))


def test_a_plain_random_subset_is_balanced_worse():
    """The same sizes drawn uniformly at random miss the per-class targets by several positives; the stratified
    subsets never by more than one (and by less in total, at every fraction and seed)."""
    y = multilabel()
    worst_random = 0.0
    for seed in range(3):
        drawn = subsets.nested_fractions(y, FRACTIONS, seed)
        rng = np.random.default_rng(100 + seed)
        for f in FRACTIONS[:-1]:
            plain = rng.choice(len(y), len(drawn[f]), replace=False)
            ours, theirs = deviation(y, drawn[f], f), deviation(y, plain, f)
            assert (ours**2).sum() < (theirs**2).sum(), (seed, f)
            worst_random = max(worst_random, np.abs(theirs).max())
    assert worst_random > 3.0


def test_single_label_fractions_are_stratified_per_class():
    labels = np.repeat(np.arange(5), [7, 13, 40, 25, 115])
    drawn = subsets.nested_fractions(labels, [0.1, 0.3], seed=4)
    onehot = subsets.as_multihot(labels)
    for f, idx in drawn.items():
        assert np.abs(deviation(onehot.astype(float), idx, f)).max() <= 1.0
    assert np.array_equal(subsets.as_multihot(np.array([2, 0])), [[False, False, True], [True, False, False]])


def test_same_seed_same_subset_different_seed_different():
    y = multilabel()
    a = subsets.nested_fractions(y, [0.1, 0.5], seed=0)
    b = subsets.nested_fractions(y, [0.1, 0.5], seed=0)
    c = subsets.nested_fractions(y, [0.1, 0.5], seed=1)
    for f in (0.1, 0.5):
        assert np.array_equal(a[f], b[f])
        assert not np.array_equal(a[f], c[f])


def test_a_fraction_depends_on_the_smaller_fractions_only():
    """What the runner relies on: drawing a fraction with only its smaller fractions gives the subset the suite's
    whole chain gave it (larger fractions are drawn after it)."""
    y = multilabel()
    whole_chain = subsets.nested_fractions(y, FRACTIONS, seed=2)
    for i, f in enumerate(FRACTIONS):
        assert np.array_equal(subsets.nested_fractions(y, FRACTIONS[: i + 1], seed=2)[f], whole_chain[f])
    # a different smaller fraction below it is a different nesting, so (in general) a different subset
    assert not np.array_equal(subsets.nested_fractions(y, [0.1, 0.5], seed=2)[0.5], whole_chain[0.5])


def test_stratify_sends_a_rare_label_where_it_is_wanted():
    """Sechidis's rule by hand: one label, seven examples, folds wanting 0.7 and 6.3 of them: the first six go to
    the fold that wants more (6.3, 5.3, ..., 1.3 > 0.7), the seventh to the other (0.7 > 0.3)."""
    y = np.ones((7, 1), dtype=bool)
    fold = subsets.stratify(y, [0.7, 6.3], np.array([[0.7], [6.3]]), np.random.default_rng(0))
    assert np.bincount(fold, minlength=2).tolist() == [1, 6]
    # examples without labels go by size alone
    fold = subsets.stratify(np.zeros((10, 2), dtype=bool), [3, 7], np.zeros((2, 2)), np.random.default_rng(0))
    assert np.bincount(fold, minlength=2).tolist() == [3, 7]


def test_k_shot_counts_are_exact_and_nested():
    labels = np.repeat(np.arange(4), [20, 17, 30, 16])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    drawn = {seed: subsets.k_shot(labels, [1, 2, 4, 8, 16], seed, ["a", "b", "c", "d"], "toy") for seed in (0, 1)}
    for k, idx in drawn[0].items():
        assert np.bincount(labels[idx], minlength=4).tolist() == [k] * 4
    for small, large in zip([1, 2, 4, 8], [2, 4, 8, 16]):
        assert set(drawn[0][small]) < set(drawn[0][large])
    assert np.array_equal(drawn[0][4], subsets.k_shot(labels, [4], 0, ["a", "b", "c", "d"], "toy")[4])
    assert not np.array_equal(drawn[0][4], drawn[1][4])


def test_k_shot_names_the_dataset_and_the_short_classes():
    labels = np.repeat(np.arange(3), [20, 5, 9])
    with pytest.raises(DatasetError, match=r"emotionroi: 8-shot needs 8 training images per class; too few in 'sad' \(5\)"):
        subsets.k_shot(labels, [1, 8], 0, ["happy", "sad", "calm"], "emotionroi")
    with pytest.raises(DatasetError, match=r"toy: k-shot subsets need single-label data"):
        subsets.k_shot(np.zeros((4, 3)), [1], 0, ["a", "b", "c"], "toy")


def test_partial_mask_observes_labels_at_rate_p():
    """Each label observed with probability p, independently of its value: the observed count, overall, per class
    and among positives, within the binomial distribution's 1e-6 tails."""
    y = multilabel(n=2000)
    for p in (0.1, 0.5, 0.9):
        observed = subsets.partial_mask(y.shape, p, seed=3)
        for cells in (observed, observed[:, 4], observed[y > 0]):
            n, k = cells.size, int(cells.sum())
            assert stats.binom.ppf(1e-6, n, p) <= k <= stats.binom.ppf(1 - 1e-6, n, p), (p, n, k)
    assert np.array_equal(subsets.partial_mask(y.shape, 0.5, 3), subsets.partial_mask(y.shape, 0.5, 3))
    assert not np.array_equal(subsets.partial_mask(y.shape, 0.5, 3), subsets.partial_mask(y.shape, 0.5, 4))
    assert subsets.partial_mask(y.shape, 1.0, 0).all()


def test_hidden_labels_are_minus_one_exactly_where_unobserved():
    y = multilabel(n=50)
    observed = subsets.partial_mask(y.shape, 0.4, seed=0)
    hidden = subsets.hide_labels(y, observed)
    assert hidden.dtype == np.float32
    assert np.array_equal(hidden[observed], y[observed])
    assert (hidden[~observed] == subsets.UNOBSERVED).all() and subsets.UNOBSERVED == -1.0


def test_hashes_identify_the_subset_and_the_mask():
    idx = np.array([5, 1, 9])
    assert subsets.indices_sha256(idx) == subsets.indices_sha256(np.array([1, 5, 9], dtype=np.int32))
    assert subsets.indices_sha256(idx) != subsets.indices_sha256(np.array([1, 5, 8]))
    mask = np.zeros((4, 3), dtype=bool)
    flipped = mask.copy()
    flipped[2, 1] = True
    assert subsets.mask_sha256(mask) != subsets.mask_sha256(flipped)
    assert subsets.mask_sha256(mask) != subsets.mask_sha256(np.zeros((3, 4), dtype=bool))  # the shape counts


def test_subset_split_takes_the_rows_and_hides_the_labels():
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    split = Split(images, multilabel(n=6)[:, :3], [f"img{i}" for i in range(6)])
    observed = np.array([[True, False, True]] * 2)
    part = subsets.subset_split(split, np.array([4, 1]), observed)
    assert part.ids == ["img4", "img1"] and np.array_equal(part.images, images[[4, 1]])
    assert np.array_equal(part.labels[:, [0, 2]], split.labels[[4, 1]][:, [0, 2]]) and (part.labels[:, 1] == -1).all()


def test_a_fraction_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="outside"):
        subsets.nested_fractions(multilabel(n=10), [0.0], 0)
    with pytest.raises(ValueError, match="outside"):
        subsets.partial_mask((3, 3), 1.5, 0)
