"""keras_mpe.table_files: a table kept in a file for the rewind, in chunks."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mpe import MixedPrecisionEmbedding, PrecisionSearch
from keras_mpe.backend import keras
from keras_mpe.table_files import restore_table, save_table


@pytest.mark.parametrize("chunk_bytes", [1, 40, 2**20])  # a row per chunk, a ragged end, one
def test_save_and_restore_are_bit_exact(tmp_path, chunk_bytes):
    values = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32)
    values[3] = [np.nan, -0.0, np.inf, 1e-45, -np.inf]  # every bit pattern survives
    table = tf.Variable(values)
    saved = save_table(table, os.path.join(tmp_path, "t.npy"), chunk_bytes=chunk_bytes)
    np.testing.assert_array_equal(
        np.load(os.path.join(tmp_path, "t.npy")).view(np.uint32), values.view(np.uint32)
    )
    table.assign(tf.zeros_like(table))
    restore_table(table, saved, chunk_bytes=chunk_bytes)
    np.testing.assert_array_equal(table.numpy().view(np.uint32), values.view(np.uint32))
    table.assign(tf.zeros_like(table))
    restore_table(table, values.copy(), chunk_bytes=chunk_bytes)  # an array in memory
    np.testing.assert_array_equal(table.numpy().view(np.uint32), values.view(np.uint32))


def test_restore_refuses_another_shape(tmp_path):
    saved = save_table(tf.Variable(tf.zeros([4, 2])), os.path.join(tmp_path, "t.npy"))
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*\(5, 2\)"):
        restore_table(tf.Variable(tf.zeros([5, 2])), saved)


def test_the_search_rewinds_bit_for_bit_from_a_file_and_removes_it():
    layer = MixedPrecisionEmbedding(300, 4, num_groups=4, bit_widths=(2, 4))
    inputs = keras.Input(shape=(3,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(layer(inputs))))
    model.compile("adam", "mse")
    initial = layer.embeddings.numpy()
    ids = np.random.default_rng(0).integers(0, 300, (64, 3))
    search = PrecisionSearch(monitor="loss", verbose=0)
    model.fit(ids, np.ones((64, 1)), epochs=2, verbose=0, callbacks=[search])
    directory = search._table_directory.name
    assert not os.path.exists(directory)
    np.testing.assert_array_equal(
        layer.embeddings.numpy().view(np.uint32), initial.view(np.uint32)
    )
