"""The Keras flavour in use: `tf.keras`, resolved when keras_mpe is imported.

With `TF_USE_LEGACY_KERAS=1` set before the import this is tf-keras (which TensorFlow
Recommenders needs); otherwise it is Keras 3.
"""

import tensorflow as tf

keras = tf.keras
IS_KERAS_3 = not keras.layers.Layer.__module__.startswith("tf_keras")

# Keras 3 passes symbolic KerasTensors to `compute_mask`; they need Keras ops.
not_equal = keras.ops.not_equal if IS_KERAS_3 else tf.not_equal


def set_variable_trainable(layer, variable, trainable: bool) -> None:
    """Marks one of `layer`'s own variables trainable or not, in either flavour.

    Keras 3 reads the flag from the variable; tf-keras from the layer's two lists.
    A train function traced before the change keeps the old list until it is rebuilt.
    """
    if IS_KERAS_3:
        variable.trainable = trainable
        return
    # tf-keras lists a variable sharded by a `variable_partitioner` as its shards
    parts = (
        list(variable)
        if isinstance(variable, tf.__internal__.distribute.ShardedVariable)
        else [variable]
    )
    source, target = layer._non_trainable_weights, layer._trainable_weights
    if not trainable:
        source, target = target, source
    for part in parts:
        if any(v is part for v in source):
            source[:] = [v for v in source if v is not part]
            target.append(part)
