"""SavedModel export of models whose MixedPrecisionEmbedding tables are packed."""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
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


def export_saved_model(
    model: Any, export_dir: str, overwrite: bool = False, input_signature: Any = None
) -> None:
    """Writes `model` as a SavedModel whose embedding tables are int-packed.

    Every `MixedPrecisionEmbedding` of the model gets a packed twin (`layer.pack()` on
    a copy of the layer; the model itself stays trainable), and the serving functions
    are traced with each layer's call routed to its twin, so the SavedModel stores
    each table once, as uint32 words, unpacked inside the serving graph for the
    looked-up ids only. Any Keras model works: functional, `Sequential`, subclassed,
    `tfrs.models.Model`. Only the variables the serving functions read are saved
    (no optimizer slots, no float table).

    Signatures: `serving_default` over the model's inputs, and `serving_xla`, the
    same compiled with XLA (TF Serving runs it on CPU with
    `--xla_cpu_compilation_enabled=true`). XLA cannot compile the hash tables of
    vocabulary lookups (`StringLookup`, `IntegerLookup`): `serving_default` keeps
    them, and when each lookup reads one of a functional model's inputs (and
    nothing else reads it), `serving_xla` takes that input as the lookup's integer
    ids instead; otherwise such a model has no `serving_xla`. The outputs are the
    model's dict of outputs, else `output_0`, `output_1`, ... in `tf.nest` order.
    Each table's variables are tracked as `tables/<index>/<field>`;
    `assets.extra/keras_mpe.json` keeps its static facts, for `keras_mpe.inspect`.

    Args:
        model: a Keras model whose MixedPrecisionEmbedding layers are in the retrain
            state.
        export_dir: the directory to write; must be empty or missing unless
            `overwrite=True`.
        overwrite: whether to replace a non-empty `export_dir`.
        input_signature: what `model(...)` takes, as a `tf.TensorSpec` or a dict,
            list or tuple of them; the signature's inputs are named by the specs'
            names, else by their dict keys. Defaults to the `inputs` of a functional
            or Sequential model; needed for a subclassed one, e.g.
            `{"user_id": tf.TensorSpec([None], tf.string)}`.

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
    structure = _input_structure(model, input_signature)
    if os.path.isdir(export_dir) and os.listdir(export_dir):
        if not overwrite:
            raise FileExistsError(
                f"`export_dir` {export_dir!r} is not empty. Pass `overwrite=True` to "
                "replace it, or choose another directory."
            )
        shutil.rmtree(export_dir)
    twins = [_packed_twin(layer) for layer in layers]
    lookups = [layer for layer in model._flatten_layers() if hasattr(layer, "lookup_table")]
    module = tf.Module()
    # Vocabulary lookups (StringLookup, IntegerLookup) keep their tables in
    # resources that are not variables.
    module.lookup_tables = [layer.lookup_table for layer in lookups]
    module.serve = _serving_function(model, structure)
    signatures = {"serving_default": module.serve}
    # XLA cannot compile hash-table lookups: a model with lookups gets an XLA
    # endpoint only from the lookups' integer ids on.
    xla_model, xla_structure = (
        (model, structure)
        if not lookups
        else _model_after_lookups(model, lookups, input_signature)
    )
    if xla_model is not None:
        module.serve_xla = _serving_function(xla_model, xla_structure, jit_compile=True)
        signatures["serving_xla"] = module.serve_xla
    with _calls_routed_to(layers, twins):
        read = {id(v): v for f in signatures.values() for v in f.get_concrete_function().variables}
        # Track what serving reads, not the model: a compiled model would bring its
        # optimizer, whose slots hold float copies of the tables. Each packed table's
        # variables go under `tables/<index>/<field>` (layer variable names need not
        # be unique), the other variables read under `weights/<index>`.
        module.tables = [_table_variables(twin) for twin in twins]
        in_tables = {id(variable) for table in module.tables for variable in table.values()}
        module.weights = [v for key, v in read.items() if key not in in_tables]
        tf.saved_model.save(module, export_dir, signatures=signatures)
    _write_metadata(export_dir, twins)


def _serving_function(model: Any, structure: Any, jit_compile: bool = False) -> Any:
    """`model` in inference mode as a `tf.function` over the flat, named specs of
    `structure`, returning a dict of outputs."""
    specs = [
        tf.TensorSpec(spec.shape, spec.dtype, name=name) for name, spec in _named_specs(structure)
    ]

    def serve(*inputs):
        outputs = model(tf.nest.pack_sequence_as(structure, list(inputs)), training=False)
        if isinstance(outputs, dict):
            return outputs
        return {f"output_{i}": output for i, output in enumerate(tf.nest.flatten(outputs))}

    return tf.function(serve, input_signature=specs, jit_compile=jit_compile)


def _model_after_lookups(model: Any, lookups: list, input_signature: Any) -> tuple[Any, Any]:
    """For a functional model whose vocabulary lookups each read one of its inputs and
    nothing else reads those inputs: the model from the lookups' integer ids on, and
    its input specs, named as the inputs they replace. Else `(None, None)`."""
    if input_signature is not None or not getattr(model, "inputs", None):
        return None, None
    ids_for_input = {}
    for lookup in lookups:
        if len(lookup._inbound_nodes) != 1:  # called eagerly (no `input`) or shared
            return None, None
        source = [tensor for tensor in model.inputs if tensor is lookup.input]
        if not source:
            return None, None
        ids_for_input[id(source[0])] = lookup.output
    inputs = [ids_for_input.get(id(tensor), tensor) for tensor in model.inputs]
    try:
        model_after_lookups = keras.Model(inputs, model.output)
    except ValueError:  # "Graph disconnected": another layer reads a lookup's input
        return None, None
    return model_after_lookups, _input_specs(inputs, model.inputs)


def _input_structure(model: Any, input_signature: Any) -> Any:
    """`input_signature`, checked, or the specs of a functional model's inputs."""
    if input_signature is None:
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError(
                f"`input_signature` is needed: this {type(model).__name__} has no "
                "`inputs` (a subclassed model). Pass what `model(...)` takes as "
                "tf.TensorSpec, e.g. `{'user_id': tf.TensorSpec([None], tf.string)}`."
            )
        return _input_specs(inputs, inputs)
    flat = tf.nest.flatten(input_signature)
    if not flat or not all(isinstance(spec, tf.TensorSpec) for spec in flat):
        raise TypeError(
            "`input_signature` must be a tf.TensorSpec or a dict, list or tuple of them; "
            f"received {input_signature!r}."
        )
    return input_signature


def _input_specs(tensors: list, named_like: list) -> Any:
    """Specs of `tensors` named as the model inputs `named_like`: one spec for one
    input, else a list, as a functional model takes them."""
    specs = [
        tf.TensorSpec(tensor.shape, tensor.dtype, name=_input_name(original, index))
        for index, (tensor, original) in enumerate(zip(tensors, named_like, strict=True))
    ]
    return specs[0] if len(specs) == 1 else specs


def _named_specs(structure: Any) -> list[tuple[str, tf.TensorSpec]]:
    """The flat specs of `structure`, each with its signature input name."""
    flat = tf.nest.flatten(structure)
    flat_dict = isinstance(structure, dict) and len(structure) == len(flat)
    keys = sorted(structure) if flat_dict else [None] * len(flat)  # tf.nest's dict order
    named = [
        (spec.name or key or f"input_{index}", spec)
        for index, (key, spec) in enumerate(zip(keys, flat, strict=True))
    ]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(
            f"The serving inputs need distinct names; `input_signature` gives {names}."
        )
    return named


def _packed_twin(layer: MixedPrecisionEmbedding) -> MixedPrecisionEmbedding:
    """A packed copy of a retrain-state layer, made from its packed arrays: the twin
    never holds a float table (building one first, to pack it, took 2x the table)."""
    table = layer.packed_table()
    arrays = table.arrays()
    layout = {
        "max_bits": table.max_bits,
        "arrays": {name: [list(a.shape), a.dtype.name] for name, a in arrays.items()},
    }
    twin = MixedPrecisionEmbedding.from_config({**layer.get_config(), "packed_layout": layout})
    twin.build()
    for name, variable in twin._packed.items():
        variable.assign(arrays[name])
    return twin


@contextlib.contextmanager
def _calls_routed_to(
    layers: list[MixedPrecisionEmbedding], twins: list[MixedPrecisionEmbedding]
) -> Iterator[None]:
    """Makes each layer call its packed twin instead, while the serving functions trace.

    Set with `object.__setattr__`, so that Keras does not track the twin as a sublayer.
    """
    for layer, twin in zip(layers, twins, strict=True):
        object.__setattr__(layer, "call", twin.call)
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")


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
