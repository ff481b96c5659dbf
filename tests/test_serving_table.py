"""Tables decoded when the SavedModel loads (`export_saved_model(serving_table=...)`):
the same values as the packed lookup bit for bit, the same stored bytes, the load-time
decode run by `tf.saved_model.load` and by the TF1 session loader."""

import json

import numpy as np
import pytest
import tensorflow as tf
from export_models import random_ids, two_table_model
from hypothesis import given, settings
from reference import hlo_types
from scripts import printed_json
from test_codec import _expected, _make_case
from test_lookup import cases

import keras_mpe
from keras_mpe import codec, lookup, metadata, serving_table

DECODED = ("int8", "float32")


def _decoded_arrays(packed: codec.PackedTable, form: str) -> dict:
    facts = {"input_dim": packed.input_dim, "nonzero_bit_widths": packed.nonzero_bit_widths}
    arrays = packed.arrays()
    rows = np.arange(packed.input_dim + 1)  # the ids and the zero row
    codes = lookup.decoded_codes(rows, arrays, **facts)
    kinds = lookup.decoded_kinds(rows, arrays, **facts)
    scale_rows, offset_rows = lookup.dequantization_rows(arrays["step_sizes"], arrays["offset"])
    if form == "float32":  # as DecodedTable makes it, and also from the int8 arrays
        values = lookup.lookup_packed(rows, arrays, **facts)
        from_codes = lookup.dequantize_kinds(codes, kinds, scale_rows, offset_rows)
        np.testing.assert_array_equal(_bits(from_codes), _bits(values))
        return {"values": values}
    return {"codes": codes, "kinds": kinds, "scale_rows": scale_rows, "offset_rows": offset_rows}


def _bits(values) -> np.ndarray:
    return np.asarray(values, np.float32).view(np.uint32)


@settings(max_examples=30, deadline=None)
@given(cases())
def test_decoded_lookups_equal_the_packed_lookup_bit_for_bit(case):
    sizes, bits, dim, layout, seed = case
    table, steps, offset, candidates, groups, bits = _make_case(sizes, bits, dim, layout, seed)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    rows = table.shape[0]
    ids = np.random.default_rng(seed).integers(-3, rows + 3, size=(7, 5)).astype(np.int32)
    facts = {"input_dim": rows, "nonzero_bit_widths": packed.nonzero_bit_widths}
    expected = lookup.lookup_packed(ids, packed.arrays(), **facts).numpy()
    for form in DECODED:
        arrays = _decoded_arrays(packed, form)
        for dtype in (tf.int32, tf.int64):
            got = lookup.lookup_decoded(tf.constant(ids, dtype), arrays, input_dim=rows)
            assert got.shape == (7, 5, dim)
            np.testing.assert_array_equal(_bits(got), _bits(expected), err_msg=form)
    valid = np.arange(rows)
    np.testing.assert_array_equal(
        lookup.lookup_decoded(valid, _decoded_arrays(packed, "int8"), input_dim=rows),
        _expected(table, steps, offset, candidates, groups, bits, valid),
    )


@pytest.mark.parametrize("form", DECODED)
def test_the_decoded_lookup_under_xla_is_exact_and_lowers_to_32_bit_types(form):
    """What a TPU server would compile: int32 ids in, no 64-bit type."""
    case = _make_case([5, 9, 7], [0, 3, 8], 4, "shuffled", 2)
    packed = codec.pack_table(*case)
    arrays = {name: tf.Variable(array) for name, array in _decoded_arrays(packed, form).items()}
    serve = tf.function(
        lambda ids: lookup.lookup_decoded(ids, arrays, input_dim=21), jit_compile=True
    )
    ids = tf.constant(np.random.default_rng(0).integers(-3, 24, size=(6, 5)), tf.int32)
    expected = lookup.lookup_packed(
        ids, packed.arrays(), input_dim=21, nonzero_bit_widths=packed.nonzero_bit_widths
    )
    np.testing.assert_array_equal(_bits(serve(ids)), _bits(expected))
    types = hlo_types(serve.experimental_get_compiler_ir(ids)(stage="hlo"))
    assert "f32" in types and not {"s64", "u64", "f64"} & types, types


def test_decoded_codes_and_kinds_by_hand():
    """Two ids at 2 bits (codes 0..3 stored; q = code - 2), one at 0 bits, the zero
    row last; kinds number the non-zero widths from 1."""
    table = np.array([[0.5, -0.5], [0.0, 0.25], [9.0, 9.0]], np.float32)
    packed = codec.pack_table(table, [0.25, 0.125], [0.0, 0.0], (0, 2, 4), [1, 1, 0], [0, 2])
    facts = {"input_dim": 3, "nonzero_bit_widths": (2, 4)}
    ids = [0, 1, 2, 3, -1]
    codes = lookup.decoded_codes(ids, packed.arrays(), **facts).numpy()
    kinds = lookup.decoded_kinds(ids, packed.arrays(), **facts).numpy()
    # 0.5 / 0.25 = 2 clips to q = 1 (2 bits hold -2..1)
    assert codes.tolist() == [[1, -2], [0, 1], [0, 0], [0, 0], [0, 0]]
    assert codes.dtype == np.int8 and kinds.dtype == np.uint8
    assert kinds.tolist() == [1, 1, 0, 0, 0]
    scale_rows, offset_rows = lookup.dequantization_rows([0.25, 0.125], [1.0, -1.0])
    assert scale_rows.numpy().tolist() == [[0, 0], [0.25, 0.25], [0.125, 0.125]]
    assert offset_rows.numpy().tolist() == [[0, 0], [1, -1], [1, -1]]


def _exported(tmp_path, model, table: str) -> str:
    export_dir = str(tmp_path / table)
    keras_mpe.export_saved_model(model, export_dir, serving_table=table)
    return export_dir


def _served_in_a_fresh_process(export_dir: str, ids: dict) -> dict:
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        f"loaded = tf.saved_model.load({export_dir!r})\n"
        f"ids = {json.dumps({k: v.tolist() for k, v in ids.items()})}\n"
        "feed = {k: tf.constant(v, tf.int32) for k, v in ids.items()}\n"
        "out = {k: f(**feed)['output_0'].numpy().view(np.uint32).tolist()\n"
        "       for k, f in loaded.signatures.items()}\n"
        "print(json.dumps(out))\n"
    )
    served = printed_json(script)
    return {k: np.array(v, np.uint32).view(np.float32) for k, v in served.items()}


@pytest.mark.parametrize("table", DECODED)
def test_a_decoded_export_serves_the_packed_exports_outputs_and_stores_the_same(tmp_path, table):
    ids = random_ids(np.random.default_rng(3), 40)
    model, _, _ = two_table_model()
    packed_dir, decoded_dir = (_exported(tmp_path, model, t) for t in ("packed", table))
    packed, decoded = (_served_in_a_fresh_process(d, ids) for d in (packed_dir, decoded_dir))
    assert set(decoded) == {"serving_default", "serving_xla"}
    # the same embeddings into the same graph of dense layers: the same bits
    np.testing.assert_array_equal(
        _bits(decoded["serving_default"]), _bits(packed["serving_default"])
    )
    scale = np.abs(packed["serving_default"]).max()
    np.testing.assert_allclose(
        decoded["serving_xla"], packed["serving_default"], rtol=0, atol=1e-6 * scale
    )
    # nothing decoded is stored: the same variables, the same bytes
    stored = dict(tf.train.list_variables(decoded_dir + "/variables/variables"))
    assert stored == dict(tf.train.list_variables(packed_dir + "/variables/variables"))
    assert json.load(open(f"{decoded_dir}/{metadata.FILE}"))["serving_table"] == table
    reports = keras_mpe.inspect(decoded_dir), keras_mpe.inspect(packed_dir)
    assert reports[0]["item_table"]["stored_bytes"] == reports[1]["item_table"]["stored_bytes"]


def test_the_tf1_session_loader_runs_the_load_time_decode(tmp_path):
    """What TF Serving does: restore the variables, run the init op, then the
    signature, in one session, as separate runs."""
    ids = random_ids(np.random.default_rng(4), 16)
    model, _, _ = two_table_model()
    packed_dir, int8_dir = (_exported(tmp_path, model, t) for t in ("packed", "int8"))
    expected = _served_in_a_fresh_process(packed_dir, ids)["serving_default"]
    script = (
        "import json, numpy as np, tensorflow as tf\n"
        "tf.compat.v1.disable_eager_execution()\n"
        f"ids = {json.dumps({k: v.tolist() for k, v in ids.items()})}\n"
        "with tf.compat.v1.Session(graph=tf.Graph()) as session:\n"
        f"    graph = tf.compat.v1.saved_model.load(session, ['serve'], {int8_dir!r})\n"
        "    signature = graph.signature_def['serving_default']\n"
        "    feed = {signature.inputs[k].name: v for k, v in ids.items()}\n"
        "    name = signature.outputs['output_0'].name\n"
        "    runs = [session.run(name, feed).view(np.uint32).tolist() for _ in range(2)]\n"
        "print(json.dumps(runs))\n"
    )
    for run in printed_json(script):
        np.testing.assert_array_equal(np.array(run, np.uint32), _bits(expected))


@pytest.mark.parametrize("table", DECODED)
def test_serving_default_gathers_whole_rows_and_holds_nothing_xla_must_compile(tmp_path, table):
    model, _, _ = two_table_model()
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir, serving_table=table)
    graph = tf.saved_model.load(export_dir).signatures["serving_default"].graph
    library = graph.as_graph_def().library.function
    nodes = [*graph.as_graph_def().node, *(n for f in library for n in f.node_def)]
    ops = {node.op for node in nodes}
    assert not ops & {"Unique", "DynamicPartition", "UpperBound", "BitwiseAnd", "RightShift"}
    gathered = sorted(
        tf.as_dtype(n.attr["dtype"].type).name for n in nodes if n.op == "ResourceGather"
    )
    per_table = ["float32"] if table == "float32" else ["float32", "float32", "int8", "uint8"]
    assert gathered == sorted(per_table * 2)  # two tables
    assert not any(n.attr["_XlaMustCompile"].b for n in nodes if "_XlaMustCompile" in n.attr)
    assert not any(f.attr["_XlaMustCompile"].b for f in library if "_XlaMustCompile" in f.attr)


def test_loading_an_export_twice_serves_from_both(tmp_path):
    """The decoded arrays are resources found by name: a second load of the same
    export shares them, and both keep serving after the first is dropped."""
    ids = random_ids(np.random.default_rng(5), 8)
    export_dir = _exported(tmp_path, two_table_model()[0], "int8")
    feed = {k: tf.constant(v) for k, v in ids.items()}
    first = tf.saved_model.load(export_dir)
    expected = first.signatures["serving_default"](**feed)["output_0"].numpy()
    second = tf.saved_model.load(export_dir)
    del first
    np.testing.assert_array_equal(
        second.signatures["serving_default"](**feed)["output_0"].numpy(), expected
    )


def test_inspect_reports_what_the_served_table_takes_in_memory(tmp_path):
    model, user_layer, item_layer = two_table_model()
    for table in serving_table.SERVING_TABLES:
        export_dir = str(tmp_path / table)
        keras_mpe.export_saved_model(model, export_dir, serving_table=table)
        report = keras_mpe.inspect(export_dir)["item_table"]
        assert report["serving_table"] == table
        stored = report["stored_bytes"]
        # 300 ids x 8 values, plus the zero row; 3 non-zero widths + the 0-bit kind
        decoded = {"packed": 0, "int8": 301 * (8 + 1) + 2 * 4 * 8 * 4, "float32": 301 * 8 * 4}
        assert report["serving_bytes"] == stored + decoded[table]


def test_export_refuses_an_unknown_serving_table(tmp_path):
    model, _, _ = two_table_model()
    with pytest.raises(ValueError, match=r"`serving_table` must be one of .*'int4'"):
        keras_mpe.export_saved_model(model, str(tmp_path / "e"), serving_table="int4")
    assert not (tmp_path / "e").exists()


def test_metadata_refuses_an_unknown_serving_table(tmp_path):
    model, _, _ = two_table_model()
    export_dir = str(tmp_path / "export")
    keras_mpe.export_saved_model(model, export_dir)
    path = f"{export_dir}/{metadata.FILE}"
    contents = json.load(open(path))
    contents["serving_table"] = "int3"
    json.dump(contents, open(path, "w"))
    with pytest.raises(ValueError, match="'serving_table' must be one of"):
        keras_mpe.inspect(export_dir)
    del contents["serving_table"]  # an export written before the key existed
    json.dump(contents, open(path, "w"))
    assert keras_mpe.inspect(export_dir)["item_table"]["serving_table"] == "packed"


def test_the_load_time_decode_fills_the_table_a_chunk_at_a_time(tmp_path, monkeypatch):
    """Chunks of 5 rows (the last one short): the same outputs as the packed export."""
    model, _, _ = two_table_model()
    ids = random_ids(np.random.default_rng(6), 32)
    packed_dir = _exported(tmp_path, model, "packed")
    monkeypatch.setattr(serving_table, "CHUNK_BYTES", 40)  # int8 rows of 8 values
    int8_dir = _exported(tmp_path, model, "int8")
    served = [
        _served_in_a_fresh_process(d, ids)["serving_default"] for d in (packed_dir, int8_dir)
    ]
    np.testing.assert_array_equal(_bits(served[1]), _bits(served[0]))
