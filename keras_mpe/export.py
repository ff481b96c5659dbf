"""SavedModel export of models whose MixedPrecisionEmbedding tables are packed."""

import json
import os
import shutil
from typing import Any

import tensorflow as tf

from keras_mpe.backend import IS_KERAS_3, keras
from keras_mpe.embedding import RETRAIN, MixedPrecisionEmbedding

# Static facts of the packed tables that the checkpoint's arrays do not carry (the
# number of ids, the candidate bit-widths) and where in the SavedModel's object graph
# each table's variables are, for `keras_mpe.inspect`. TF Serving ignores
# `assets.extra` (where it reads warmup requests from).
METADATA_FILE = os.path.join("assets.extra", "keras_mpe.json")
METADATA_FORMAT = 1


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
    compiled with XLA, unless the model holds vocabulary lookups (`StringLookup`,
    `IntegerLookup`): XLA cannot compile their hash tables, so such a model gets
    `serving_default` only, with the lookup inside the serving graph. Each table's
    variables are tracked as `tables/<index>/<field>`; `assets.extra/keras_mpe.json`
    keeps its static facts, for `keras_mpe.inspect`.

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

    # Track the weights, not the model: a compiled model would bring its optimizer,
    # whose slots hold float copies of the training tables. Each packed table's
    # variables go under `tables/<index>/<field>` (its layer's variable names need
    # not be unique), the other weights under `weights/<index>`.
    packed_layers = find_mixed_precision_layers(copy)
    tables = [_table_variables(layer) for layer in packed_layers]
    in_tables = {id(variable) for table in tables for variable in table.values()}
    module = tf.Module()
    module.tables = tables
    module.weights = [
        variable for variable in map(_tf_variable, copy.weights) if id(variable) not in in_tables
    ]
    # Vocabulary lookups (StringLookup, IntegerLookup) keep their tables in
    # resources that are not weights.
    module.lookup_tables = [
        layer.lookup_table for layer in copy._flatten_layers() if hasattr(layer, "lookup_table")
    ]
    module.serve = tf.function(serve, input_signature=specs)
    signatures = {"serving_default": module.serve}
    if not module.lookup_tables:  # XLA cannot compile hash-table lookups
        module.serve_xla = tf.function(serve, input_signature=specs, jit_compile=True)
        signatures["serving_xla"] = module.serve_xla
    tf.saved_model.save(module, export_dir, signatures=signatures)
    _write_metadata(export_dir, packed_layers)


def _table_variables(layer: MixedPrecisionEmbedding) -> dict[str, tf.Variable]:
    """A packed layer's variables by field: `words`, `first_rows`, ..., `offset`."""
    return {field: _tf_variable(variable) for field, variable in layer._packed.items()}


def _write_metadata(export_dir: str, layers: list[MixedPrecisionEmbedding]) -> None:
    tables = [
        {
            "name": layer.name,
            "object_path": ["tables", str(index)],
            "input_dim": int(layer.input_dim),
            "output_dim": int(layer.output_dim),
            "bit_widths": [int(b) for b in layer.bit_widths],
        }
        for index, layer in enumerate(layers)
    ]
    path = os.path.join(export_dir, METADATA_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump({"format": METADATA_FORMAT, "tables": tables}, file, indent=1)


def _input_name(tensor: Any, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0].replace("/", "_")


def _tf_variable(weight: Any) -> tf.Variable:
    """The `tf.Variable` that holds `weight`'s value, to track in the SavedModel.

    A Keras 3 variable wraps a `tf.Variable` (its `value`), and the serving functions
    capture that inner variable's handle. Tracked as is, a Keras 3 variable exports
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
