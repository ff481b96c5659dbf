"""SavedModel export of models whose MixedPrecisionEmbedding tables are packed."""

import os
import shutil
from typing import Any

import tensorflow as tf

from keras_mpe.backend import keras
from keras_mpe.embedding import RETRAIN, MixedPrecisionEmbedding


def find_mixed_precision_layers(model: Any) -> list[MixedPrecisionEmbedding]:
    """Every `MixedPrecisionEmbedding` inside `model`, nested ones included."""
    return [
        layer for layer in model._flatten_layers() if isinstance(layer, MixedPrecisionEmbedding)
    ]


def export_saved_model(model: Any, export_dir: str, overwrite: bool = False) -> None:
    """Writes `model` as a SavedModel whose embedding tables are int-packed.

    A copy of the model is made (the original stays trainable), every
    `MixedPrecisionEmbedding` of the copy is packed (`layer.pack()`), and the copy is
    saved with `tf.saved_model.save`: the tables are stored once, as uint32 words,
    and unpacked inside the serving graph for the looked-up ids only. Signatures:
    `serving_default` over the model's named inputs, and `serving_xla`, the same
    compiled with XLA.

    Functional and `Sequential` models are supported (the copy is made with
    `keras.models.clone_model`).

    Args:
        model: a built functional or Sequential model whose MixedPrecisionEmbedding
            layers are in the retrain state.
        export_dir: the directory to write; must be empty or missing unless
            `overwrite=True`.
        overwrite: whether to replace a non-empty `export_dir`.

    Example:

    ```python
    keras_mpe.export_saved_model(model, "export/1")
    served = tf.saved_model.load("export/1").signatures["serving_default"]
    ```
    """
    layers = find_mixed_precision_layers(model)
    if not layers:
        raise ValueError("`model` holds no MixedPrecisionEmbedding layer to pack.")
    for layer in layers:
        if layer.state != RETRAIN:
            raise ValueError(
                f"Layer '{layer.name}' is in the {layer.state} state; export needs every "
                "MixedPrecisionEmbedding in the retrain state. Run the search "
                "(`PrecisionSearch`) or call `layer.freeze_precision()` first."
            )
    if os.path.isdir(export_dir) and os.listdir(export_dir):
        if not overwrite:
            raise FileExistsError(
                f"`export_dir` {export_dir!r} is not empty. Pass `overwrite=True` to "
                "replace it, or choose another directory."
            )
        shutil.rmtree(export_dir)
    try:
        copy = keras.models.clone_model(model)
    except ValueError as error:
        raise TypeError(
            "`export_saved_model` supports functional and Sequential models; cloning "
            f"this {type(model).__name__} failed: {error}"
        ) from error
    for original, twin in zip(layers, find_mixed_precision_layers(copy), strict=True):
        twin.freeze_precision(original.group_bit_widths.numpy())  # same weight order
    copy.set_weights(model.get_weights())
    for layer in find_mixed_precision_layers(copy):
        layer.pack()

    specs = [
        tf.TensorSpec(tensor.shape, tensor.dtype, name=_input_name(tensor, index))
        for index, tensor in enumerate(copy.inputs)
    ]

    def serve(*inputs):
        outputs = copy(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        return {"output_0": outputs}

    module = tf.Module()
    # Track the weights, not the model: a compiled model would bring its optimizer,
    # whose slots hold float copies of the training tables.
    module.weights = list(copy.weights)
    module.serve = tf.function(serve, input_signature=specs)
    module.serve_xla = tf.function(serve, input_signature=specs, jit_compile=True)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={"serving_default": module.serve, "serving_xla": module.serve_xla},
    )


def _input_name(tensor: Any, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0].replace("/", "_")
