"""Synthetic data: `synthetic_ctr`, `synthetic_interactions` and the synthetic long tail
with its planted answer."""

import numpy as np
import pytest

from keras_mpe.datasets import synthetic_ctr, synthetic_interactions, synthetic_long_tail


def test_synthetic_ctr_shapes_split_and_heavy_tail():
    data = synthetic_ctr(rows=2000, fields=4, ids_per_field=100, seed=1)
    assert data.train[0].shape == (1600, 4) and data.validation[0].shape == (200, 4)
    assert data.test[1].shape == (200, 1)
    ids = data.train[0]
    assert ids.min() >= 0 and ids.max() < data.vocabulary_size
    assert (ids[:, 2] // 100 == 2).all()  # field 2 owns ids 200..299
    counts = np.bincount(ids[:, 0], minlength=100)
    assert counts[:10].sum() > counts[50:].sum()  # the head outweighs the tail
    assert "SYNTHETIC" in data.description
    assert 0.2 < data.train[1].mean() < 0.8


def test_synthetic_ctr_is_reproducible():
    a, b = synthetic_ctr(rows=100, seed=3), synthetic_ctr(rows=100, seed=3)
    np.testing.assert_array_equal(a.train[0], b.train[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"rows": 5}, "rows=5"), ({"fields": 0}, "fields=0"), ({"zipf_exponent": 0}, "zipf")],
)
def test_synthetic_ctr_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_ctr(**kwargs)


def test_synthetic_long_tail_plants_signal_on_the_head_only():
    planted = synthetic_long_tail(rows=20_000, vocabulary_size=10_000, signal_ranks=500, seed=2)
    signal = np.flatnonzero(planted.effects)
    assert signal.size == 150  # 30% of the 500 most likely ids, ...
    assert np.median(signal) < 500  # ... which stay near the head once ranked by count
    ids = planted.data.train[0]
    assert ids.shape == (16_000, 4) and ids.max() < 10_000
    counts = np.bincount(ids.ravel(), minlength=10_000)
    assert (np.diff(counts) <= 0).all()  # id 0 the most frequent in train
    assert counts[:100].sum() > counts[100:].sum() / 2  # a heavy head ...
    assert (counts[counts > 0] == 1).mean() > 0.25  # ... and a long tail
    # labels follow the planted logistic model: rows with a large effect click more
    logits = planted.effects[ids].sum(axis=1)
    clicks = planted.data.train[1].ravel()
    assert clicks[logits > 1].mean() > 0.7 > 0.3 > clicks[logits < -1].mean()


def test_signal_mass_kept_counts_train_lookups_of_signal_ids():
    planted = synthetic_long_tail(rows=1_000, vocabulary_size=50, signal_ranks=10, seed=0)
    counts = np.bincount(planted.data.train[0].ravel(), minlength=50)
    signal = planted.effects != 0
    kept = np.zeros(50, bool)
    kept[np.flatnonzero(signal)[0]] = True
    expected = counts[kept].sum() / counts[signal].sum()
    assert planted.signal_mass_kept(kept) == pytest.approx(expected)
    assert planted.signal_mass_kept(~signal) == 0.0
    assert planted.signal_mass_kept(np.ones(50, bool)) == 1.0
    with pytest.raises(ValueError, match=r"bool mask of shape \(50,\).*int64 and shape \(3,\)"):
        planted.signal_mass_kept(np.array([0, 1, 2]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rows": 5}, "rows=5"),
        ({"signal_ranks": 100, "vocabulary_size": 50}, "signal_ranks=100"),
        ({"signal_fraction": 0.0}, "signal_fraction=0.0"),
        ({"zipf_exponent": -1.0}, "zipf_exponent=-1.0"),
    ],
)
def test_synthetic_long_tail_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_long_tail(**{"rows": 100, "vocabulary_size": 200, "signal_ranks": 20, **kwargs})


def test_synthetic_interactions_shape_and_sampled_negatives():
    data = synthetic_interactions(ids=200, edges=2000, clusters=4, negatives=3, seed=2)
    ids, labels = data.train
    assert data.vocabulary_size == 200 and ids.shape[1] == 2
    parts = (data.train, data.validation, data.test)
    assert sum(part[0].shape[0] for part in parts) == 8000
    rows = np.concatenate([part[0] for part in parts])
    edge = np.concatenate([part[1] for part in parts])[:, 0] == 1
    assert edge.sum() == 2000  # one positive per three sampled negatives
    # each edge's first id comes with three negatives: per first id, 3x as many negatives
    first_positive = np.bincount(rows[edge, 0], minlength=200)
    np.testing.assert_array_equal(np.bincount(rows[~edge, 0], minlength=200), 3 * first_positive)
    assert ids.min() >= 0 and ids.max() < 200
    again = synthetic_interactions(ids=200, edges=2000, clusters=4, negatives=3, seed=2)
    np.testing.assert_array_equal(again.train[0], ids)
    assert "SYNTHETIC" in data.description
    with pytest.raises(ValueError, match="negatives=0"):
        synthetic_interactions(negatives=0)
    with pytest.raises(ValueError, match="noise=1.5"):
        synthetic_interactions(noise=1.5)
