"""SavedModel export of packed tables."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scripts import printed_json

import keras_mpe
from keras_mpe.backend import keras


def _model(frequencies=None):
    layer = keras_mpe.MixedPrecisionEmbedding(
        300, 8, num_groups=6, bit_widths=(0, 2, 3, 5), frequencies=frequencies, name="mpe"
    )
    inputs = keras.Input(shape=(4,), dtype="int32", name="ids")
    x = keras.layers.Flatten()(layer(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(16, "relu")(x)))
    rng = np.random.default_rng(0)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(rng.integers(0, 300, size=(256, 4)), rng.normal(size=(256, 1)), verbose=0)
    layer.freeze_precision([0, 2, 3, 5, 3, 2])
    model.fit(rng.integers(0, 300, size=(256, 4)), rng.normal(size=(256, 1)), verbose=0)
    return model, layer


@pytest.mark.parametrize("ordered", [True, False])
def test_saved_model_outputs_equal_the_retrain_model_in_a_fresh_process(tmp_path, ordered):
    frequencies = None if ordered else np.random.default_rng(1).integers(0, 50, size=300)
    model, layer = _model(frequencies)
    ids = np.random.default_rng(2).integers(-3, 305, size=(64, 4)).astype(np.int32)
    expected = model.predict(ids, verbose=0)
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir)
    assert layer.state == "retrain"  # the original stays trainable

    np.save(tmp_path / "ids.npy", ids)
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        f"loaded = tf.saved_model.load({export_dir!r})\n"
        f"ids = np.load({str(tmp_path / 'ids.npy')!r})\n"
        "out = {k: f(ids=tf.constant(ids))['output_0'].numpy().tolist()\n"
        "       for k, f in loaded.signatures.items()}\n"
        "print(json.dumps({'mpe': 'keras_mpe' in sys.modules, 'out': out}))\n"
    )
    served = printed_json(script)
    assert served["mpe"] is False
    scale = np.abs(expected).max()
    for name in ("serving_default", "serving_xla"):
        np.testing.assert_allclose(served["out"][name], expected, atol=1e-6 * scale)

    stored = dict(tf.train.list_variables(export_dir + "/variables/variables"))
    assert not any(shape == [300, 8] for shape in stored.values())  # no float table
    report = layer.memory_report()
    tables = [stored[f"tables/0/rows_{b}/.ATTRIBUTES/VARIABLE_VALUE"] for b in (2, 3, 5)]
    assert sum(rows * width for rows, width in tables) == report["payload_bytes"]
    # kernels, biases, step sizes, offset, 3 row tables, 3 group arrays (+ the permutation)
    assert len(stored) - 1 == 12 + (not ordered)


def test_each_signature_traces_the_lookup_op_mix_of_its_compiler(tmp_path):
    """`serving_default` finds groups with `searchsorted` (UpperBound) and splits the
    ids by bit-width (DynamicPartition), and holds nothing XLA must compile (TF
    Serving refuses such a model unless started with XLA enabled); `serving_xla`
    takes the binary search XLA compiles well, and is compiled."""
    model, _ = _model()
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir)
    loaded = tf.saved_model.load(export_dir)
    for name, compiled in (("serving_default", False), ("serving_xla", True)):
        graph = loaded.signatures[name].graph
        library = graph.as_graph_def().library.function
        nodes = [*graph.as_graph_def().node, *(n for f in library for n in f.node_def)]
        ops = {node.op for node in nodes}
        assert ("UpperBound" in ops) is not compiled, name
        assert ("DynamicPartition" in ops) is not compiled, name
        assert "DynamicStitch" not in ops, name  # a GPU keeps its indices on the host
        must_compile = [n.attr["_XlaMustCompile"].b for n in nodes if "_XlaMustCompile" in n.attr]
        must_compile += [
            f.attr["_XlaMustCompile"].b for f in library if "_XlaMustCompile" in f.attr
        ]
        assert any(must_compile) is compiled, name


def test_export_refuses_a_search_state_model_and_a_full_directory(tmp_path):
    layer = keras_mpe.MixedPrecisionEmbedding(20, 2, num_groups=2)
    inputs = keras.Input(shape=(1,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(ValueError, match="search state.*freeze_precision"):
        keras_mpe.export_saved_model(model, str(tmp_path / "a"))
    layer.freeze_precision()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        keras_mpe.export_saved_model(model, str(tmp_path / "b"))
    keras_mpe.export_saved_model(model, str(tmp_path / "b"), overwrite=True)


def test_saved_model_cli_runs_the_export(tmp_path):
    import os
    import shutil

    cli = shutil.which("saved_model_cli") or os.path.join(
        os.path.dirname(sys.executable), "saved_model_cli"
    )
    model, _ = _model()
    ids = np.array([[0, 5, 299, 17]], np.int32)
    expected = model.predict(ids, verbose=0)
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir)
    np.save(tmp_path / "ids.npy", ids)
    result = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            export_dir,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"ids={tmp_path / 'ids.npy'}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.split("output_0")[-1]
    value = float(printed.split("[[")[1].split("]]")[0])
    np.testing.assert_allclose(value, expected[0, 0], rtol=1e-5)


def test_the_saved_graph_holds_one_variable_per_stored_variable(tmp_path):
    # The TF1 session loader restores the saver's variables and runs the functions
    # on the graph's variables: they must be the same ones, each created once.
    from tensorflow.core.protobuf import saved_model_pb2

    model, _ = _model()
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir)
    saved = saved_model_pb2.SavedModel()
    with open(export_dir + "/saved_model.pb", "rb") as file:
        saved.ParseFromString(file.read())
    (graph,) = saved.meta_graphs
    handles = sorted(
        node.attr["shared_name"].s.decode()
        for node in graph.graph_def.node
        if node.op == "VarHandleOp"
    )
    stored = tf.train.list_variables(export_dir + "/variables/variables")
    assert len(handles) == len(set(handles)) == len(stored) - 1  # minus the object graph
    names = {name.split("/")[-1] for name in handles}
    assert {"rows_2", "first_rows", "row_shift", "group_bits"} <= names


def test_string_ids_through_a_string_lookup_inside_the_model(tmp_path):
    vocabulary = [f"user{i}" for i in range(40)]
    layer = keras_mpe.MixedPrecisionEmbedding(41, 4, num_groups=4, name="mpe")
    lookup = keras.layers.StringLookup(vocabulary=vocabulary)
    inputs = keras.Input(shape=(2,), dtype="string", name="user")
    hidden = keras.layers.Flatten()(layer(lookup(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    layer.freeze_precision([0, 2, 4, 6])
    names = tf.constant([["user1", "user39"], ["unknown", "user7"]])
    expected = model(names).numpy()
    keras_mpe.export_saved_model(model, str(tmp_path / "export"))
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    served = loaded.signatures["serving_default"](user=names)["output_0"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-6 * np.abs(expected).max())
    # XLA cannot compile the hash table: its endpoint takes the lookup's ids instead.
    ids = lookup(names)
    assert ids.numpy().tolist() == [[2, 40], [0, 8]]
    served_xla = loaded.signatures["serving_xla"](user=ids)["output_0"].numpy()
    np.testing.assert_allclose(served_xla, expected, atol=1e-6 * np.abs(expected).max())


def test_no_xla_endpoint_when_the_lookup_is_not_on_an_input(tmp_path):
    layer = keras_mpe.MixedPrecisionEmbedding(11, 4, num_groups=2, name="mpe")
    inputs = keras.Input(shape=(1,), dtype="string", name="word")
    lookup = keras.layers.StringLookup(vocabulary=[f"w{i}" for i in range(10)])
    model = keras.Model(inputs, layer(lookup(keras.layers.Identity()(inputs))))
    layer.freeze_precision([2, 4])
    keras_mpe.export_saved_model(model, str(tmp_path / "a"))
    assert sorted(tf.saved_model.load(str(tmp_path / "a")).signatures) == ["serving_default"]

    class LookupThenEmbed(keras.layers.Layer):
        """A layer that calls its lookup inside `call`, not as a node of the model."""

        def __init__(self):
            super().__init__()
            self.lookup = keras.layers.StringLookup(vocabulary=[f"w{i}" for i in range(10)])
            self.embedding = keras_mpe.MixedPrecisionEmbedding(11, 4, num_groups=2)

        def call(self, words):
            return self.embedding(self.lookup(words))

    inner = LookupThenEmbed()
    model = keras.Model(inputs, inner(inputs))
    inner.embedding.freeze_precision([2, 4])
    keras_mpe.export_saved_model(model, str(tmp_path / "b"))
    served = tf.saved_model.load(str(tmp_path / "b"))
    assert sorted(served.signatures) == ["serving_default"]
    words = tf.constant([["w3"], ["zz"]])
    np.testing.assert_allclose(
        served.signatures["serving_default"](word=words)["output_0"], model(words), atol=1e-6
    )


class TwoTowers(keras.Model):
    """A subclassed model with dict inputs, an MPE table in each tower, and two
    outputs: the score and the embeddings."""

    def __init__(self):
        super().__init__()
        self.user = keras_mpe.MixedPrecisionEmbedding(50, 4, num_groups=5, name="user")
        self.item = keras_mpe.MixedPrecisionEmbedding(70, 4, num_groups=7, name="item")
        self.head = keras.layers.Dense(1)

    def call(self, features):
        pair = keras.layers.concatenate([self.user(features["user"]), self.item(features["item"])])
        return self.head(pair), pair


def test_subclassed_model_exports_with_an_input_signature(tmp_path):
    model = TwoTowers()
    features = {"user": np.array([0, 49, 3, 50]), "item": np.array([69, 1, -2, 8])}
    model(features)
    model.user.freeze_precision([0, 2, 3, 4, 6])
    model.item.freeze_precision([6, 5, 4, 3, 2, 1, 0])
    expected = [output.numpy() for output in model(features)]
    with pytest.raises(ValueError, match="`input_signature` is needed: this TwoTowers"):
        keras_mpe.export_saved_model(model, str(tmp_path / "a"))
    with pytest.raises(TypeError, match="`input_signature` must be a tf.TensorSpec.*int64"):
        keras_mpe.export_saved_model(model, str(tmp_path / "a"), input_signature={"user": "int64"})
    signature = {name: tf.TensorSpec([None], tf.int64) for name in features}
    keras_mpe.export_saved_model(model, str(tmp_path / "a"), input_signature=signature)
    assert model.user.state == model.item.state == "retrain"
    loaded = tf.saved_model.load(str(tmp_path / "a"))
    for name in ("serving_default", "serving_xla"):
        served = loaded.signatures[name](**features)
        for index, output in enumerate(expected):
            np.testing.assert_allclose(
                served[f"output_{index}"], output, atol=1e-6 * np.abs(output).max()
            )
    report = keras_mpe.inspect(str(tmp_path / "a"))
    assert report["user"]["total_bytes"] == model.user.memory_report()["total_bytes"]
    assert report["item"]["total_bytes"] == model.item.memory_report()["total_bytes"]


def test_a_failed_overwrite_keeps_the_previous_export(tmp_path):
    model, _ = _model()
    export_dir = tmp_path / "export"
    keras_mpe.export_saved_model(model, str(export_dir))
    before = sorted(str(p.relative_to(export_dir)) for p in export_dir.rglob("*"))
    bad_signature = tf.TensorSpec([None, 3], tf.int32, name="ids")  # the model takes 4 ids
    with pytest.raises(ValueError):
        keras_mpe.export_saved_model(
            model, str(export_dir), overwrite=True, input_signature=bad_signature
        )
    assert sorted(str(p.relative_to(export_dir)) for p in export_dir.rglob("*")) == before
    assert keras_mpe.inspect(str(export_dir))["mpe"]["total_bytes"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging left
    keras_mpe.export_saved_model(model, str(export_dir), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert "serving_xla" in tf.saved_model.load(str(export_dir)).signatures


def test_export_refuses_a_file_in_the_way(tmp_path):
    model, _ = _model()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="'.*file' is a file"):
        keras_mpe.export_saved_model(model, str(tmp_path / "file"), overwrite=True)
    assert (tmp_path / "file").read_text() == "x"


def test_a_serving_twin_leaves_the_compiled_model_training():
    """Making the packed twin (as the export does) changes nothing in the model it
    came from: training goes on against the float table, `predict` equals a call."""
    model, layer = _model()
    table = layer.embeddings.numpy().copy()
    keras_mpe.PackedEmbedding.from_layer(layer)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 300, size=(64, 4))
    model.fit(ids, rng.normal(size=(64, 1)), verbose=0)
    assert not np.array_equal(layer.embeddings.numpy(), table)
    np.testing.assert_allclose(model.predict(ids, verbose=0), model(ids).numpy(), atol=1e-6)
