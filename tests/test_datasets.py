"""Synthetic data."""

import numpy as np
import pytest

from keras_mpe.datasets import synthetic_ctr


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
