"""The Keras flavour in use: `tf.keras`, resolved when keras_mpe is imported.

With `TF_USE_LEGACY_KERAS=1` set before the import this is tf-keras (which TensorFlow
Recommenders needs); otherwise it is Keras 3.
"""

from typing import Any

import tensorflow as tf

keras = tf.keras
ShardedVariable = tf.__internal__.distribute.ShardedVariable
IS_KERAS_3 = not keras.layers.Layer.__module__.startswith("tf_keras")

# Keras 3 passes symbolic KerasTensors to `compute_mask`; they need Keras ops.
not_equal = keras.ops.not_equal if IS_KERAS_3 else tf.not_equal


def losses_of_this_call(layer) -> list:
    """The losses `layer` has added since the outermost call began (each flavour
    clears them there): Keras 3 keeps them in `_losses`, tf-keras in `_eager_losses`
    (its `_losses` also holds those of the functional model's construction)."""
    return layer._losses if IS_KERAS_3 else layer._eager_losses


def flatten_layers(layer: Any, include_self: bool = True, recursive: bool = True) -> list:
    """`layer` and the layers inside it, each once, depth first.

    Keras's private `Layer._flatten_layers`, which both flavours have, called from this
    one place: it finds layers however they are held (a model's layers, a layer set
    as an attribute of another, the layers of a nested model).

    Args:
        layer: a layer or model.
        include_self: whether `layer` itself comes first.
        recursive: whether the layers inside the layers inside `layer` come too.

    Example:

    >>> tower = keras.Sequential([keras.layers.Dense(2)], name="tower")
    >>> model = keras.Sequential([tower, keras.layers.Dense(1)], name="model")
    >>> [type(layer).__name__ for layer in flatten_layers(model)]
    ['Sequential', 'Sequential', 'Dense', 'Dense']
    >>> [type(layer).__name__ for layer in flatten_layers(model, False, False)]
    ['Sequential', 'Dense']
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def set_variable_trainable(layer, variable, trainable: bool) -> None:
    """Marks one of `layer`'s own variables trainable or not, in either flavour.

    Keras 3 reads the flag from the variable; tf-keras from the layer's two lists.
    A train function traced before the change keeps the old list until it is rebuilt.
    In tf-keras the variable must be the last trainable one: it moves across the
    boundary of the two lists (last trainable <-> first non-trainable), so that
    `trainable_weights + non_trainable_weights`, the order in which tf-keras saves
    and loads weights by position (`.h5`), is the same in both states.
    """
    if IS_KERAS_3:
        variable.trainable = trainable
        return
    # tf-keras lists a variable sharded by a `variable_partitioner` as its shards
    parts = list(variable) if isinstance(variable, ShardedVariable) else [variable]
    trainables, others = layer._trainable_weights, layer._non_trainable_weights
    source = others if trainable else trainables
    moving = [part for part in parts if any(v is part for v in source)]
    source[:] = [v for v in source if not any(v is part for part in moving)]
    if trainable:
        trainables.extend(moving)
    else:
        others[0:0] = moving


def tf_variable(weight: Any) -> tf.Variable:
    """The `tf.Variable` that holds a Keras weight's value.

    Gather from it, not from the Keras 3 wrapper: `tf.gather` converts a Keras 3
    variable to a tensor first (reading it whole), while on a `tf.Variable` it is a
    `ResourceGather`, which reads only the gathered rows, in device memory.

    Track it, not the wrapper, in a SavedModel. A Keras 3 variable wraps a
    `tf.Variable` (its `value`), and the serving functions capture that inner
    variable's handle. Tracked as is, a Keras 3 variable exports
    its inner variable for the captures and then builds a second graph variable
    initialized from the first, which is the one its checkpoint entry restores.
    `tf.saved_model.load` binds the captures through the object graph and never
    notices; the TF1 session loader (`saved_model_cli run`, the C API, TF Serving)
    runs the saver's restore op, which fills only the second variable, so the
    functions read variables that were never restored ("Could not find variable").
    Tracking the inner `tf.Variable` gives one graph variable per weight, read by
    the functions and restored by the saver. (Upstream reports of the symptom:
    keras-team/keras#19274 and #20095, tensorflow/serving#2250.)
    """
    if IS_KERAS_3:
        weight = weight.value  # a property in Keras 3 (a method of tf.Variable)
    if not isinstance(weight, tf.Variable):
        raise TypeError(
            f"Weight {getattr(weight, 'name', weight)!r} is a {type(weight).__name__}; "
            "export needs weights backed by a tf.Variable (the TensorFlow backend)."
        )
    return weight


def gather_rows(variable: Any, indices: tf.Tensor) -> tf.Tensor:
    """Rows `indices` of a layer's variable, read by a gather from the variable itself.

    A variable that a `variable_partitioner` sharded (ParameterServerStrategy) is
    read with `tf.nn.embedding_lookup`, which gathers on each shard only the rows it
    holds and keeps the order of `indices` (TF 2.21's `ShardedVariable.sparse_read`,
    which `tf.gather` calls, returns them grouped by shard). Any other variable is
    gathered from its `tf.Variable` (`tf_variable`): a Keras 3 variable converts to
    a tensor by reading its whole value, and gathering from that read and then
    scatter-updating the variable in the same step makes TensorFlow copy the whole
    table at every step (copy-on-write), so even a row-sparse optimizer step would
    cost O(table). The gradient is the same `tf.IndexedSlices` either way.
    """
    if isinstance(variable, ShardedVariable):
        return tf.nn.embedding_lookup(variable, indices)
    return tf.gather(tf_variable(variable), indices)
