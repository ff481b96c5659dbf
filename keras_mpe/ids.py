"""The ids an embedding layer is given: integers, and whether each is in range.

Shared by the training layer and the packed lookup (`keras_mpe.lookup`). Nothing here
imports Keras, so both Keras flavours share it.
"""

from typing import Any

import tensorflow as tf


def integer_ids(inputs: Any, input_dim: int) -> tf.Tensor:
    """The ids an embedding layer was given, as integers.

    Integer ids pass as they are. float32 ids (a Keras 3 `Sequential` without
    `keras.Input(dtype="int32")` feeds them) become int32 when `input_dim <= 2**24`,
    which float32 holds exactly; fractional or non-finite ones become -1, an
    out-of-range id that looks up zeros.

    Example:

    >>> integer_ids(tf.constant([2.0, 0.5, -1.0]), 10).numpy()
    array([ 2, -1, -1], dtype=int32)
    """
    inputs = tf.convert_to_tensor(inputs)
    if inputs.dtype.is_integer:
        return inputs
    if inputs.dtype != tf.float32 or input_dim > 2**24:
        raise TypeError(
            "An embedding layer takes integer ids (or float32 ids when input_dim <= "
            "2**24, which float32 holds exactly). Received inputs of dtype "
            f"{inputs.dtype.name} for input_dim={input_dim}. Feed int32 ids, e.g. start "
            "a Keras 3 `Sequential` model with `keras.Input(shape=..., dtype='int32')`."
        )
    whole = tf.logical_and(tf.equal(tf.math.floor(inputs), inputs), tf.abs(inputs) <= input_dim)
    return tf.where(whole, tf.cast(tf.where(whole, inputs, 0.0), tf.int32), -1)


def ids_in_range(ids: Any, input_dim: int, fill: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Ids as uint32 (`fill` where out of range) and whether each is in `[0, input_dim)`.

    Ids of at most 32 bits are reinterpreted as uint32 first, so that a negative id
    becomes at least 2**31 and one unsigned comparison checks both ends, and so that
    a GPU keeps them in device memory (it reshapes, compares and even takes the
    shape of int32 tensors in host memory).

    Args:
        ids: integer ids, any shape.
        input_dim: the number of ids, below 2**31.
        fill: what stands for an out-of-range id, in `[0, 2**32)`.

    Returns:
        `(ids, valid)`, uint32 and bool, of the shape of `ids`.

    Example:

    >>> ids, valid = ids_in_range(tf.constant([[3, -1], [7, 9]]), 8)
    >>> ids.numpy().tolist(), valid.numpy().tolist()
    ([[3, 0], [7, 0]], [[True, False], [True, False]])
    """
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be integers. Received ids of dtype {ids.dtype.name}.")
    if ids.dtype.size <= 4:
        ids = tf.cast(ids, tf.uint32)
        valid = ids < input_dim
    else:
        valid = ids < input_dim
        if not ids.dtype.is_unsigned:
            valid = tf.logical_and(valid, ids >= 0)
    ids = tf.where(valid, tf.cast(ids, tf.uint32), tf.constant(fill, tf.uint32))
    return ids, valid
