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
    source, target = layer._non_trainable_weights, layer._trainable_weights
    if not trainable:
        source, target = target, source
    if any(v is variable for v in source):
        source[:] = [v for v in source if v is not variable]
        target.append(variable)


def gather_rows(variable, indices):
    """`tf.gather(variable, indices)` straight from the variable (`ResourceGather`).

    A Keras 3 variable converts to a tensor by reading its whole value; gathering
    from that read and then scatter-updating the variable in the same step makes
    TensorFlow copy the whole table at every step (copy-on-write), so even a
    row-sparse optimizer step costs O(table). Gathering from the wrapped
    `tf.Variable` reads only the gathered rows; the gradient is the same
    `tf.IndexedSlices`.
    """
    return tf.gather(variable.value if IS_KERAS_3 else variable, indices)
