"""SavedModel export of models whose MixedPrecisionEmbedding tables are packed."""

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from keras_mpe import checks, metadata
from keras_mpe import serving_table as serving_tables
from keras_mpe.backend import ShardedVariable, flatten_layers, keras, tf_variable
from keras_mpe.embedding import (
    RETRAIN,
    MixedPrecisionEmbedding,
    calls_routed,
    find_mixed_precision_layers,
)
from keras_mpe.packed_embedding import PackedEmbedding


def export_saved_model(
    model: Any,
    export_dir: str,
    overwrite: bool = False,
    input_signature: Any = None,
    serving_table: str = "packed",
) -> None:
    """Writes `model` as a SavedModel whose embedding tables are int-packed.

    Every `MixedPrecisionEmbedding` of the model gets a packed twin
    (`keras_mpe.PackedEmbedding.from_layer`; the model itself stays trainable), and
    the serving functions are traced with each layer's call routed to its twin, so
    the SavedModel stores each table once, in the packed layout of
    `keras_mpe.codec`, decoded inside the serving graph for the looked-up ids only.
    Any Keras model works: functional, `Sequential`, subclassed,
    `tfrs.models.Model`. Only the variables the serving functions read are saved (no
    optimizer slots, no float table).

    Signatures: `serving_default` over the model's inputs, and `serving_xla`, the
    same compiled with XLA (TF Serving runs it on CPU with
    `--xla_cpu_compilation_enabled=true`). XLA cannot compile the hash tables of
    vocabulary lookups (`StringLookup`, `IntegerLookup`): `serving_default` keeps
    them, and when each lookup reads one of a functional model's inputs (and
    nothing else reads it), `serving_xla` takes that input as the lookup's integer
    ids instead; otherwise such a model has no `serving_xla`. The outputs are the
    model's dict of outputs, else `output_0`, `output_1`, ... in `tf.nest` order.
    Each table's variables are tracked as `tables/<index>/<field>`;
    `assets.extra/keras_mpe.json` keeps its static facts (`keras_mpe.metadata`), for
    `keras_mpe.inspect`.

    Args:
        model: a Keras model whose MixedPrecisionEmbedding layers are in the retrain
            state.
        export_dir: the directory to write; must be empty or missing unless
            `overwrite=True`. The export is written into a new directory beside
            it and moved into place only once complete: a failed or interrupted
            export leaves `export_dir` as it was.
        overwrite: whether to replace a non-empty `export_dir` (only once the new
            export is complete).
        input_signature: what `model(...)` takes, as a `tf.TensorSpec` or a dict,
            list or tuple of them; the signature's inputs are named by the specs'
            names, else by their dict keys. Defaults to the `inputs` of a functional
            or Sequential model; needed for a subclassed one, e.g.
            `{"user_id": tf.TensorSpec([None], tf.string)}`.
        serving_table: what the serving functions look ids up in, trading serving
            memory for CPU (`keras_mpe.serving_table`); the stored table is packed
            either way. `"packed"`: each call decodes the rows it looks up (least
            memory). `"int8"`: the SavedModel decodes the table into int8 codes when
            it loads (plus `V * (D + 1)` bytes of memory per table). `"float32"`: into
            float32 values when it loads (plus the float32 table's memory; each call
            costs what the float32 model's does).

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
    serving_table = serving_tables.check(serving_table)
    target = checks.local_path("export_dir", export_dir)
    overwrite = checks.boolean("overwrite", overwrite)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise FileExistsError(
                f"`export_dir` {export_dir!r} is a file; the export is a directory. "
                "Choose another path."
            )
        if os.listdir(target) and not overwrite:
            raise FileExistsError(
                f"`export_dir` {export_dir!r} is not empty. Pass `overwrite=True` to "
                "replace it (once the new export is complete), or choose another directory."
            )
    with _written_in_place_of(target, overwrite) as staging:
        _write_export(model, layers, structure, input_signature, serving_table, staging)


_STAGING = re.compile(r"^\.(?P<name>.+)\.writing-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


@contextlib.contextmanager
def _written_in_place_of(target: str, overwrite: bool) -> Iterator[str]:
    """A fresh directory beside `target` to write into, put in its place only once the
    writing completes: a failed or interrupted export never leaves a partial
    `target`, nor removes the export it was to replace.

    The staging directory, `.<name>.writing-<host>-<pid>-<token>`, is made with
    `os.mkdir`, so the export's permissions follow the umask; one that a killed
    export left behind is removed by the next export to the same path. The commit
    removes nothing that this export did not create: without `overwrite` it is a
    rename, which fails if another writer filled `target` meanwhile; with it, an
    atomic exchange of the two directories (`renameat2`), after which the staging
    name holds the replaced export, removed last.
    """
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent, name)
    staging = os.path.join(
        parent, f".{name}.writing-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    os.mkdir(staging)
    try:
        yield staging
        if overwrite and os.path.isdir(target) and os.listdir(target):
            _exchange(staging, target)  # staging now holds the replaced export
            shutil.rmtree(staging)
        else:
            _rename_unless_filled(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _rename_unless_filled(staging: str, target: str) -> None:
    """Renames `staging` to `target`, which may be missing or an empty directory;
    refuses when another writer has filled `target` since the export began."""
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise FileExistsError(
            f"`export_dir` {target!r} was filled by another writer while this export "
            "ran; it is left as that writer made it. Pass `overwrite=True` to replace "
            "it, or choose another directory."
        ) from error


def _exchange(staging: str, target: str) -> None:
    """Swaps two directories in one step (Linux `renameat2(RENAME_EXCHANGE)`), so that
    `target` is never missing; elsewhere two renames, the first undone if the second
    fails or is interrupted."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        at_cwd, exchange = -100, 2
        if renameat2(at_cwd, os.fsencode(staging), at_cwd, os.fsencode(target), exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # not: unsupported here
            raise OSError(code, os.strerror(code), target)
    aside = staging + "-replaced"
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    os.rename(aside, staging)


def _renameat2() -> Any:
    """The C library's `renameat2`, or None where it has none."""
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _remove_stale_staging(parent: str, name: str) -> None:
    """Removes the staging directories of exports to `parent/name` whose process, on
    this host, has died (killed mid-export)."""
    host = socket.gethostname()
    for entry in os.listdir(parent):
        match = _STAGING.match(entry)
        if match and match["name"] == name and match["host"] == host:
            if not _process_alive(int(match["pid"])):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write_export(
    model: Any,
    layers: list[MixedPrecisionEmbedding],
    structure: Any,
    input_signature: Any,
    serving_table: str,
    export_dir: str,
) -> None:
    """Traces the serving functions through packed twins (or the tables decoded from
    them when the SavedModel loads) and writes the SavedModel and its metadata into
    `export_dir`."""
    twins = [PackedEmbedding.from_layer(layer) for layer in layers]
    module = tf.Module()
    if serving_table == "packed":
        routes = _to_twins(layers, twins)
    else:
        module.decoded_tables = [serving_tables.DecodedTable(t, serving_table) for t in twins]
        routes = [
            (layer, lambda inputs, table=table, **_: table(inputs))
            for layer, table in zip(layers, module.decoded_tables, strict=True)
        ]
    lookups = [layer for layer in flatten_layers(model) if hasattr(layer, "lookup_table")]
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
        # checked on the packed lookup (a function of its own: it keeps its trace),
        # since XLA reads the shapes of the decoded arrays from their values, which
        # exist only once a SavedModel loads
        with calls_routed(_to_twins(layers, twins)):
            compiles = _compiles(_serving_function(xla_model, xla_structure, jit_compile=True))
        if compiles:
            module.serve_xla = _serving_function(xla_model, xla_structure, jit_compile=True)
            signatures["serving_xla"] = module.serve_xla
    with calls_routed(routes):
        read = _in_model_order(
            model, [v for f in signatures.values() for v in f.get_concrete_function().variables]
        )
        # Track what serving reads, not the model: a compiled model would bring its
        # optimizer, whose slots hold float copies of the tables. Each packed table's
        # variables go under `tables/<index>/<field>` (layer variable names need not
        # be unique), the other variables read under `weights/<index>`.
        module.tables = [
            {name: tf_variable(v) for name, v in twin.packed_variables.items()} for twin in twins
        ]
        in_tables = {id(variable) for table in module.tables for variable in table.values()}
        module.weights = [v for key, v in read.items() if key not in in_tables]
        # A variable that a `variable_partitioner` sharded (ParameterServerStrategy)
        # is saved whole: the functions, retraced for saving, read its one saving
        # variable, which only the tracked `ShardedVariable` maps.
        sharded = _sharded_variables(model, read)
        parts = {id(part.handle) for variable in sharded for part in variable.variables}
        module.weights = [v for v in module.weights if id(v.handle) not in parts] + sharded
        tf.saved_model.save(module, export_dir, signatures=signatures)
    metadata.write(export_dir, twins, serving_table)


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


def _compiles(function: Any) -> bool:
    """Whether XLA compiles `function` (a `jit_compile` `tf.function` with an input
    signature) on a batch of one: a model whose ops XLA lacks (string inputs, a
    `Hashing` layer) gets no `serving_xla`, rather than one that fails every call."""
    examples = [
        tf.zeros([1 if size is None else size for size in spec.shape], spec.dtype)
        for spec in function.input_signature
    ]
    try:
        function.experimental_get_compiler_ir(*examples)(stage="hlo")
    except (tf.errors.OpError, ValueError, TypeError):
        return False
    return True


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


def _to_twins(layers: list[MixedPrecisionEmbedding], twins: list[PackedEmbedding]) -> list:
    """Routes for `calls_routed`: each layer calls its packed twin instead, while the
    serving functions trace. The twin is inference-only: the `training` argument
    Keras passes is dropped."""
    return [
        (layer, lambda inputs, twin=twin, **_: twin.call(inputs))
        for layer, twin in zip(layers, twins, strict=True)
    ]


def _in_model_order(model: Any, variables: list[tf.Variable]) -> dict[int, tf.Variable]:
    """`variables` by id, each once, in the order of `model.variables` (then any
    others by name): the export's variable order, the same in every run."""
    rank = {id(tf_variable(v)): index for index, v in enumerate(model.variables)}
    unique = {id(v): v for v in variables}
    ordered = sorted(unique.values(), key=lambda v: (rank.get(id(v), len(rank)), v.name))
    return {id(v): v for v in ordered}


def _sharded_variables(model: Any, read: dict) -> list:
    """The `ShardedVariable`s of `model`'s layers that have shards in `read` (a
    function's variables, which are the shards' inner variables: compared by handle)."""
    handles = {id(variable.handle) for variable in read.values()}
    found = {}
    for layer in flatten_layers(model):
        for value in vars(layer).values():
            if isinstance(value, ShardedVariable) and any(
                id(part.handle) in handles for part in value.variables
            ):
                found[id(value)] = value
    return list(found.values())


def _input_name(tensor: Any, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0].replace("/", "_")
