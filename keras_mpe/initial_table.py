"""The initial table of a large layer, drawn in place a chunk of rows at a time.

A Keras initializer draws the whole `[rows, dim]` tensor at once, and its
temporaries take several times the table (about 3x for `RandomNormal` in Keras 3),
which a 100-million-row table cannot spare. An initializer that draws each value on
its own, from a distribution that does not depend on the shape
(`ELEMENTWISE_INITIALIZERS`), gives the same distribution drawn in pieces: the
table variable starts at zeros and each chunk of `CHUNK_VALUES` values is drawn by a
copy of the initializer with its own seed, derived from the initializer's seed and
the chunk's index, and written into the variable in place. The draw then takes the
table plus one chunk.
"""

from typing import Any

import numpy as np
import tensorflow as tf

CHUNK_VALUES = 2**24  # 64 MiB of float32 per draw
ELEMENTWISE_INITIALIZERS = (
    "Constant",
    "Ones",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "Zeros",
)


def draws_in_chunks(
    initializer: Any, shape: tuple[int, int], chunk_values: int | None = None
) -> bool:
    """Whether a table of `shape` drawn by `initializer` is filled a chunk at a time:
    more than `chunk_values` (default `CHUNK_VALUES`) values, an initializer of
    `ELEMENTWISE_INITIALIZERS` with an integer seed or none, eager execution and
    no distribution strategy (whose variables are copied to every replica: they
    are drawn whole).

    Example:

    >>> from keras_mpe.backend import keras
    >>> init = keras.initializers.RandomNormal(0.0, 0.003)
    >>> draws_in_chunks(init, (1000, 16)), draws_in_chunks(init, (10**7, 16))
    (False, True)
    >>> draws_in_chunks(keras.initializers.GlorotUniform(), (10**7, 16))  # fan-based
    False
    """
    seed = initializer.get_config().get("seed")
    chunk_values = CHUNK_VALUES if chunk_values is None else chunk_values
    return (
        int(np.prod(shape)) > chunk_values
        and type(initializer).__name__ in ELEMENTWISE_INITIALIZERS
        and (seed is None or isinstance(seed, int))
        and tf.executing_eagerly()
        and not tf.distribute.has_strategy()
    )


def _chunk_initializer(initializer: Any, index: int) -> Any:
    """A copy of `initializer` that draws chunk `index`: its seed derived from the
    initializer's (a fresh random one for an unseeded initializer)."""
    config = initializer.get_config()
    if "seed" not in config:  # a constant: the same values for every chunk
        return initializer
    seed = config["seed"]
    if seed is not None:
        seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)
    return type(initializer).from_config({**config, "seed": seed})


def fill_table(
    variable: tf.Variable, initializer: Any, chunk_values: int | None = None
) -> tf.Tensor:
    """Draws `variable`'s `[rows, dim]` values with `initializer`, a chunk of rows
    (about `chunk_values` values, default `CHUNK_VALUES`) at a time, written in
    place; returns their mean |value| (a float32 scalar).

    The values differ from one whole draw with the same seed (each chunk has its
    own), and a seeded initializer gives the same table every time.

    Example:

    >>> from keras_mpe.backend import keras
    >>> table = tf.Variable(tf.zeros([2500, 8]))
    >>> init = keras.initializers.RandomUniform(-1.0, 1.0, seed=3)
    >>> round(float(fill_table(table, init, chunk_values=8000)), 2)  # 1000 rows a chunk
    0.5
    >>> bool(np.array_equal(table[:1000], table[1000:2000]))  # each chunk its own values
    False
    >>> first = table.numpy()
    >>> _ = fill_table(table, init, chunk_values=8000)
    >>> bool(np.array_equal(first, table.numpy()))  # seeded: drawn again alike
    True
    """
    rows, dim = (int(n) for n in variable.shape)
    step = max(1, (CHUNK_VALUES if chunk_values is None else chunk_values) // dim)
    abs_sum = 0.0
    for index, start in enumerate(range(0, rows, step)):
        end = min(start + step, rows)
        chunk = _chunk_initializer(initializer, index)((end - start, dim), "float32")
        abs_sum += float(tf.reduce_sum(tf.abs(chunk)))
        # the raw op, not `variable[start:end].assign`: that one reads the variable
        # back, and a second reference makes the next write copy the whole table
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=variable.handle,
            begin=[start, 0],
            end=[end, dim],
            strides=[1, 1],
            value=tf.cast(chunk, variable.dtype),
        )
    return tf.constant(abs_sum / (rows * dim), tf.float32)
