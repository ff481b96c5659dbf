"""The initial table of a large layer, drawn in place a chunk of rows at a time:
which initializers are chunked, what the chunks hold, and that a layer built inside
`fit` or under a strategy still starts from a drawn table."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mpe import MixedPrecisionEmbedding, initial_table, quantizers
from keras_mpe.backend import keras

ROWS, DIM = 100, 8


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 rows of 8 values, so that a 100-row table takes 13 of them."""
    monkeypatch.setattr(initial_table, "CHUNK_VALUES", 64)


def _built(initializer):
    layer = MixedPrecisionEmbedding(ROWS, DIM, embeddings_initializer=initializer)
    layer.build()
    return layer


def test_large_tables_of_elementwise_initializers_draw_in_chunks():
    normal = keras.initializers.RandomNormal(0.0, 0.003, seed=1)
    assert initial_table.draws_in_chunks(normal, (ROWS, DIM), chunk_values=64)
    assert not initial_table.draws_in_chunks(normal, (8, DIM), chunk_values=64)  # one chunk
    # a variance-scaling draw depends on the shape: a chunk would get another scale
    glorot = keras.initializers.GlorotUniform(seed=1)
    assert not initial_table.draws_in_chunks(glorot, (ROWS, DIM), chunk_values=64)
    with tf.distribute.MirroredStrategy(["cpu:0"]).scope():  # replicas copy one draw
        assert not initial_table.draws_in_chunks(normal, (ROWS, DIM), chunk_values=64)


def test_chunked_table_is_drawn_per_chunk_and_sets_the_quantizer(small_chunks):
    normal = keras.initializers.RandomNormal(0.0, 0.5, seed=7)
    layer = _built(normal)
    table = layer.embeddings.numpy()
    assert np.count_nonzero(table) == table.size
    # each chunk of 8 rows is its own draw, with a seed derived from 7 and its index
    chunks = [table[start : start + 8] for start in range(0, ROWS, 8)]
    assert len({chunk.tobytes() for chunk in chunks}) == len(chunks)
    assert abs(table.std() - 0.5) < 0.05 and abs(table.mean()) < 0.05
    # the same seed gives the same table
    np.testing.assert_array_equal(_built(normal).embeddings.numpy(), table)
    # the quantizer starts from the drawn table, as for a whole draw
    mean_abs = np.abs(table).mean()
    np.testing.assert_allclose(float(layer.offset_scale.numpy()), mean_abs, rtol=1e-6)
    expected = np.log(quantizers.initial_step_sizes(mean_abs, layer._nonzero_bit_widths))
    np.testing.assert_allclose(
        layer.log_step_sizes.numpy() * layer.quantizer_learning_rate_scale, expected, rtol=1e-5
    )


def test_an_unseeded_initializer_draws_distinct_chunks(small_chunks):
    table = _built(keras.initializers.RandomUniform(-1.0, 1.0)).embeddings.numpy()
    assert not np.array_equal(table[:8], table[8:16])
    assert table.min() >= -1.0 and table.max() <= 1.0


def test_other_initializers_draw_the_whole_table(small_chunks):
    glorot = keras.initializers.GlorotUniform(seed=3)
    layer = _built(glorot)
    np.testing.assert_array_equal(layer.embeddings.numpy(), glorot((ROWS, DIM)).numpy())


def test_a_layer_built_inside_fit_starts_from_a_drawn_table(small_chunks):
    # no Input: the model, and the layer's table, are built while `fit` traces its step
    layer = MixedPrecisionEmbedding(ROWS, DIM, num_groups=4)
    model = keras.Sequential([layer, keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    ids = np.zeros((16, 2), np.int32)  # only row 0 is trained
    model.fit(ids, np.ones((16, 1)), epochs=1, verbose=0)
    table = layer.embeddings.numpy()
    assert np.count_nonzero(table[1:]) == table[1:].size
    model.fit(ids, np.ones((16, 1)), epochs=1, verbose=0)
    np.testing.assert_array_equal(layer.embeddings.numpy()[1:], table[1:])  # drawn once
    std = keras.initializers.RandomNormal(0.0, 0.003).get_config()["stddev"]
    assert abs(table[1:].std() - std) < 0.2 * std
