"""The export through what TF Serving uses: TensorFlow's C API session loader, and
`tensorflow_serving.apis` PredictRequest protos."""

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from export_models import random_ids, two_table_model
from tensorflow.core.protobuf import saved_model_pb2

import keras_mpe

C_SOURCE = os.path.join(os.path.dirname(__file__), "c_api_predict.c")
# the session functions the program calls; TF Serving's SavedModel loader uses the same
C_API_SYMBOLS = ("TF_LoadSessionFromSavedModel", "TF_SessionRun", "TF_GraphOperationByName")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, _, _ = two_table_model()
    ids = random_ids(np.random.default_rng(1), 32)
    expected = model.predict([ids["user"], ids["items"]], verbose=0)
    export_dir = str(tmp_path_factory.mktemp("serving") / "export")
    keras_mpe.export_saved_model(model, export_dir)
    return export_dir, ids, expected


def _signature(export_dir: str, name: str = "serving_default"):
    """The SignatureDef as a TF1 loader reads it from saved_model.pb."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as file:
        saved.ParseFromString(file.read())
    (graph,) = saved.meta_graphs
    assert list(graph.meta_info_def.tags) == ["serve"]
    return graph.signature_def[name]


def _c_api_library() -> str:
    """The shared library of the tensorflow wheel that defines the C API."""
    lib_dir = tf.sysconfig.get_lib()
    candidates = [
        "libtensorflow_cc.so.2",
        os.path.join("python", "_pywrap_tensorflow_internal.so"),
    ]
    for candidate in candidates:
        path = os.path.join(lib_dir, candidate)
        if os.path.exists(path) and all(hasattr(ctypes.CDLL(path), s) for s in C_API_SYMBOLS):
            return path
    pytest.fail(f"None of {candidates} in {lib_dir} defines {C_API_SYMBOLS}.")


@pytest.fixture(scope="module")
def c_program(tmp_path_factory) -> str:
    """tests/c_api_predict.c built against the tensorflow wheel's headers and library."""
    compiler = shutil.which(os.environ.get("CC") or "gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("No C compiler (gcc, cc or $CC) on PATH to build tests/c_api_predict.c.")
    library = _c_api_library()
    executable = str(tmp_path_factory.mktemp("c_api") / "c_api_predict")
    command = [
        compiler,
        "-std=c11",
        "-Wall",
        "-O1",
        C_SOURCE,
        f"-I{tf.sysconfig.get_include()}",
        library,
        *tf.sysconfig.get_link_flags(),
        f"-Wl,-rpath,{os.path.dirname(library)},-rpath,{tf.sysconfig.get_lib()}",
        "-o",
        executable,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-3000:]}"
    return executable


def _served_by_the_c_program(c_program: str, export_dir: str, ids: dict) -> np.ndarray:
    """`output_0` of `serving_default`, from the C API session loader."""
    signature = _signature(export_dir)
    assert set(signature.inputs) == set(ids)
    arguments = [c_program, export_dir, "serve", signature.outputs["output_0"].name]
    feed = []
    for key, values in ids.items():
        arguments += [signature.inputs[key].name, *map(str, values.shape)]
        feed += values.reshape(-1).tolist()
    result = subprocess.run(
        arguments,
        input=" ".join(map(str, feed)),
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shape_line, *values = result.stdout.split("\n")
    shape = [int(size) for size in shape_line.split()[1:]]
    return np.array([float(v) for v in values if v]).reshape(shape)


def test_the_c_api_session_loader_serves_the_model_outputs(exported, c_program):
    export_dir, ids, expected = exported
    served = _served_by_the_c_program(c_program, export_dir, ids)
    assert served.shape == expected.shape
    scale = np.abs(expected).max()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("serving_table", ["int8", "float32"])
def test_the_c_api_session_loader_decodes_the_table_at_load(tmp_path, c_program, serving_table):
    """The session loader runs the init op that decodes the table, then the signature."""
    model, _, _ = two_table_model()
    ids = random_ids(np.random.default_rng(1), 32)
    packed_dir, decoded_dir = str(tmp_path / "packed"), str(tmp_path / serving_table)
    keras_mpe.export_saved_model(model, packed_dir)
    keras_mpe.export_saved_model(model, decoded_dir, serving_table=serving_table)
    np.testing.assert_array_equal(
        _served_by_the_c_program(c_program, decoded_dir, ids),
        _served_by_the_c_program(c_program, packed_dir, ids),
    )


def test_the_c_program_reports_a_missing_tensor(exported, c_program):
    export_dir, _, _ = exported
    result = subprocess.run(
        [c_program, export_dir, "serve", "no_such_op:0", "serving_default_user:0", "1", "1"],
        input="0",
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 1
    assert "no tensor no_such_op:0 in the graph" in result.stderr


def test_a_decoded_predict_request_fed_through_the_signature_gives_the_model_outputs(exported):
    predict_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.predict_pb2",
        reason="tensorflow-serving-api is not installed (it is in the `test` extra)",
    )
    export_dir, ids, expected = exported
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mpe"
    request.model_spec.signature_name = "serving_default"
    for key, values in ids.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(values))
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())

    # what the server checks: the request's keys and dtypes are the signature's
    signature_def = _signature(export_dir, received.model_spec.signature_name)
    assert set(received.inputs) == set(signature_def.inputs)
    for key, proto in received.inputs.items():
        assert proto.dtype == signature_def.inputs[key].dtype == tf.int32.as_datatype_enum
    signature = tf.saved_model.load(export_dir).signatures[received.model_spec.signature_name]
    feeds = {key: tf.make_ndarray(proto) for key, proto in received.inputs.items()}
    for key, values in feeds.items():
        np.testing.assert_array_equal(values, ids[key])
    outputs = signature(**{key: tf.constant(values) for key, values in feeds.items()})

    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(received.model_spec)
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    answer = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    assert set(answer.outputs) == set(signature_def.outputs) == {"output_0"}
    served = tf.make_ndarray(answer.outputs["output_0"])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6 * scale)
