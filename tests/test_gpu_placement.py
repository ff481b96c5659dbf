"""GPU placement without a GPU: every op of the serving graphs and of the layer's part of
a train step is checked against TensorFlow's GPU kernel registry (the CPU wheel carries
it) for the dtypes it runs with.

A tensor is in host memory on a GPU server when its op has no GPU kernel for its
dtypes, or when the kernel keeps that argument in host memory (TensorFlow keeps int32
arithmetic there by design). The rule: only small tensors of static shape (at most
`SMALL` elements: scalars, shape vectors, the seed of the sampling) may be in host
memory; nothing whose size grows with the batch or the table. Resource handles are
always on the host and carry no data. The packed words are read only through
`ResourceGather` (a gather from the variable), which has a GPU kernel for uint32.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import keras_mpe
from keras_mpe.backend import keras

SMALL = 16  # elements: shape arithmetic, scalars, seeds
# arguments that hold shape arithmetic by definition (shapes, axes), of unknown static
# length but never longer than a rank: host memory by TensorFlow's design
SHAPE_ARGUMENTS = {
    ("BroadcastGradientArgs", "s0"),
    ("BroadcastGradientArgs", "s1"),
    ("BroadcastGradientArgs", "r0"),
    ("BroadcastGradientArgs", "r1"),
    ("Sum", "reduction_indices"),
}
# ops that run no kernel of their own: graph inputs
NOT_KERNELS = {"Placeholder", "NoOp"}
FUNCTION_ATTRS = ("f", "then_branch", "else_branch", "cond", "body")

_registry: dict[str, list] = {}


def _gpu_kernels(op_type):
    if op_type not in _registry:
        found = kernels.get_registered_kernels_for_op(op_type).kernel
        _registry[op_type] = [k for k in found if k.device_type in ("GPU", "DEFAULT")]
    return _registry[op_type]


def _attr_types(op, name):
    value = op.node_def.attr[name]
    return list(value.list.type) if value.HasField("list") else [value.type]


def _matching_kernel(op):
    for kernel in _gpu_kernels(op.type):
        allowed = {c.name: set(c.allowed_values.list.type) for c in kernel.constraint}
        if all(set(_attr_types(op, name)) <= types for name, types in allowed.items()):
            return kernel
    return None


def _args(op, arg_defs, tensors):
    """The tensors of each named argument of `op`."""
    named, position = {}, 0
    for arg in arg_defs:
        if arg.number_attr:
            count = op.get_attr(arg.number_attr)
        elif arg.type_list_attr:
            count = len(op.get_attr(arg.type_list_attr))
        else:
            count = 1
        named[arg.name] = tensors[position : position + count]
        position += count
    return named


def _small(tensor):
    shape = tensor.shape
    return shape.is_fully_defined() and shape.num_elements() <= SMALL


def _functions(op):
    graph = op.graph
    for name in FUNCTION_ATTRS:
        if name in op.node_def.attr and op.node_def.attr[name].HasField("func"):
            yield graph._get_function(op.node_def.attr[name].func.name).graph


def all_ops(graph, keep=lambda op: True):
    """The ops of `graph` that `keep` selects, and every op of the functions they
    call, nested ones included."""
    for op in graph.get_operations():
        if keep(op):
            yield op
            for function in _functions(op):
                yield from all_ops(function)


def host_memory_problems(graph, keep=lambda op: True):
    """`(op, tensor, why)` for each tensor over `SMALL` elements that a GPU server
    would hold in host memory, in the ops of `graph` that `keep` selects and the
    functions they call."""
    problems = []
    for op in all_ops(graph, keep):
        if op.type in NOT_KERNELS:
            continue
        kernel = _matching_kernel(op)
        inputs = _args(op, op.op_def.input_arg, list(op.inputs))
        outputs = _args(op, op.op_def.output_arg, list(op.outputs))
        arguments = {**inputs, **outputs}
        if kernel is None:
            host, why = arguments, "no GPU kernel"
        else:
            host = {name: arguments[name] for name in kernel.host_memory_arg}
            why = "GPU kernel keeps it in host memory"
        for name, tensors in host.items():
            for tensor in tensors:
                if (op.type, name) in SHAPE_ARGUMENTS:
                    continue
                if tensor.dtype != tf.resource and not _small(tensor):
                    problems.append((f"{op.type} {op.name}", f"{name}: {tensor}", why))
    return problems


def _model(layer):
    inputs = keras.Input(shape=(4,), dtype="int32", name="ids")
    hidden = keras.layers.Dense(8, "relu")(keras.layers.Flatten()(layer(inputs)))
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def _layer(ordered):
    layer = keras_mpe.MixedPrecisionEmbedding(
        300, 8, num_groups=6, bit_widths=(0, 2, 3, 5), bit_penalty=1e-3, name="mpe"
    )
    if not ordered:
        layer.adapt(np.random.default_rng(0).integers(0, 300, size=2000))
    return layer


def test_the_checker_finds_a_host_only_gather():
    """Reading a uint32 table whole and gathering the tensor (GatherV2 has no GPU
    kernel for uint32) is what the check exists to catch."""
    table = tf.Variable(np.arange(1000, dtype=np.uint32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def whole_read(ids):
        return tf.gather(tf.convert_to_tensor(table), ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def resource_gather(ids):
        return tf.gather(table, ids)

    problems = host_memory_problems(whole_read.get_concrete_function().graph)
    assert any(op.startswith("GatherV2") for op, _, _ in problems)
    assert host_memory_problems(resource_gather.get_concrete_function().graph) == []


@pytest.mark.parametrize("ordered", [True, False])
def test_serving_graphs_stay_in_device_memory(tmp_path, ordered):
    layer = _layer(ordered)
    model = _model(layer)
    layer.freeze_precision([0, 2, 3, 5, 3, 2])
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir)
    loaded = tf.saved_model.load(export_dir)
    for name in ("serving_default", "serving_xla"):
        graph = loaded.signatures[name].graph
        assert host_memory_problems(graph) == [], name
        ops = list(all_ops(graph))
        # uint32 arrays are gathered from their variables; only the [G] first rows
        # are read whole (for `searchsorted`, outside XLA)
        assert any(op.type == "ResourceGather" for op in ops), name
        whole = [
            op.outputs[0].shape.as_list()
            for op in ops
            if op.type == "ReadVariableOp" and op.outputs[0].dtype == tf.uint32
        ]
        assert whole == ([] if name == "serving_xla" else [[layer.groups]]), name


@pytest.mark.parametrize("serving_table", ["int8", "float32"])
def test_serving_graphs_of_a_table_decoded_at_load_stay_in_device_memory(tmp_path, serving_table):
    layer = _layer(ordered=False)
    model = _model(layer)
    layer.freeze_precision([0, 2, 3, 5, 3, 2])
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir, serving_table=serving_table)
    loaded = tf.saved_model.load(export_dir)
    for name in ("serving_default", "serving_xla"):
        graph = loaded.signatures[name].graph
        assert host_memory_problems(graph) == [], name
        ops = list(all_ops(graph))
        gathered = {op.get_attr("dtype") for op in ops if op.type == "ResourceGather"}
        assert gathered == {tf.float32} | (
            {tf.int8, tf.uint8} if serving_table == "int8" else set()
        )
        # the packed arrays (uint8, uint32) are not read: only the decoded ones
        reads = {op.get_attr("dtype") for op in ops if op.type == "ReadVariableOp"}
        assert reads == {tf.float32}, name  # the dense layers' weights


@pytest.mark.parametrize("state", ["search", "retrain"])
def test_train_step_of_the_layer_stays_in_device_memory(state):
    layer = _layer(ordered=False)
    model = _model(layer)
    optimizer = keras.optimizers.Adam(1e-3)
    if state == "retrain":
        layer.freeze_precision([0, 2, 3, 5, 3, 2])

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32), tf.TensorSpec([None, 1])])
    def train_step(ids, labels):
        with tf.GradientTape() as tape:
            outputs = model(ids, training=True)
            loss = tf.reduce_mean((outputs - labels) ** 2) + tf.add_n(model.losses)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    graph = train_step.get_concrete_function().graph
    mine = [op for op in graph.get_operations() if "mpe" in op.name]
    assert any(op.type == "ResourceGather" for op in mine)
    assert host_memory_problems(graph, keep=lambda op: "mpe" in op.name) == []
