"""The backup that makes a `PrecisionSearch` resumable: its file format, and the only
code that writes or reads it.

`backup_dir` holds two numpy `.npz` files:

- `precision_search_initial_tables.npz`: per layer `"<i>"` (in the order of the
  model's MixedPrecisionEmbedding layers), its float table as the search found it,
  which the retrain rewinds to. Written once, at the first backup.
- `precision_search_state.npz`: the best epoch so far. Per layer `"<i>/<variable>"`
  for each variable the search keeps from its best epoch (`precision_logits`,
  `log_step_sizes`, `relative_offset`); `best_value` (float64, the monitored value)
  and `best_epoch` (int64); and `model`, a JSON string that says what the backup
  belongs to: `{"layers": [{"layer": key, "shape": [V, D], "bit_widths": [...],
  "groups": sha256, "initial_table": sha256}, ...]}`, the sha256 of the layer's
  id-to-group map and of its initial table.

Each file is written beside itself as `<name>.partial`, flushed to disk, then renamed
over the old one, so a crash leaves the previous backup whole. `load` checks all of
it before the search takes its first step: both files present and readable, every
key, shape and value finite, and the backup this model's own.
"""

import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any, NoReturn

import numpy as np

STATE_FILE = "precision_search_state.npz"
INITIAL_TABLES_FILE = "precision_search_initial_tables.npz"
PARTIAL_SUFFIX = ".partial"
_LAYER_KEYS = ("layer", "shape", "bit_widths", "groups", "initial_table")


@dataclasses.dataclass
class SearchBackup:
    """What a resumed search takes from its backup.

    Attributes:
        best_value: the monitored value at the best epoch.
        best_epoch: the best epoch, counted from 0.
        best_states: per layer, the variables kept from the best epoch by name.
        initial_tables: per layer, the float table the retrain rewinds to.
        initial_fingerprints: per layer, the `fingerprint` of its initial table.
    """

    best_value: float
    best_epoch: int
    best_states: list[dict[str, np.ndarray]]
    initial_tables: list[np.ndarray]
    initial_fingerprints: list[str]


def fingerprint(array: np.ndarray) -> str:
    """sha256 of an array's bytes, read in place (no copy of a table).

    >>> fingerprint(np.zeros(2, np.float32))[:12]
    'af5570f5a181'
    """
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def identity(layers: list[dict[str, Any]]) -> dict:
    """The `model` record of a backup: `layers` are dicts with the keys `layer`,
    `shape`, `bit_widths`, `groups` and `initial_table` (see the module docstring)."""
    return {"layers": [{key: layer[key] for key in _LAYER_KEYS} for layer in layers]}


def save(backup_dir: str, model: dict, backup: SearchBackup) -> None:
    """Writes `backup` of the search of `model` (an `identity`) into `backup_dir`.

    The initial tables are written only if their file is not there yet.
    """
    os.makedirs(backup_dir, exist_ok=True)
    tables = os.path.join(backup_dir, INITIAL_TABLES_FILE)
    if not os.path.exists(tables):
        _save_npz(tables, {f"{i}": table for i, table in enumerate(backup.initial_tables)})
    arrays = {
        f"{i}/{name}": value
        for i, state in enumerate(backup.best_states)
        for name, value in state.items()
    }
    arrays["best_value"] = np.float64(backup.best_value)
    arrays["best_epoch"] = np.int64(backup.best_epoch)
    arrays["model"] = np.array(json.dumps(model))
    _save_npz(os.path.join(backup_dir, STATE_FILE), arrays)


def load(
    backup_dir: str,
    model: dict,
    state_shapes: list[dict[str, tuple[int, ...]]],
    trained: bool,
) -> SearchBackup | None:
    """The backup in `backup_dir` of the search of `model` (an `identity`), or None if
    there is none.

    Args:
        backup_dir: the directory.
        model: the identity of the model resuming: its layers, with the
            fingerprints of their present tables.
        state_shapes: per layer, the shape of each variable kept from the best epoch.
        trained: whether the model has taken a step (restored by `BackupAndRestore`,
            say): then its tables may differ from the initial ones of the backup.

    Raises:
        ValueError: the backup is incomplete, unreadable, damaged or another search's;
            the message names what is wrong and how to start afresh.
    """
    state_path, tables_path = (
        os.path.join(backup_dir, name) for name in (STATE_FILE, INITIAL_TABLES_FILE)
    )
    present = [os.path.exists(path) for path in (state_path, tables_path)]
    if not any(present):
        return None
    if not all(present):
        found, missing = (STATE_FILE, INITIAL_TABLES_FILE)[:: 1 if present[0] else -1]
        _refuse(
            backup_dir,
            f"it holds {found} but not {missing}, so the backup is incomplete (a run "
            "stopped while writing it, or a file was removed)",
        )
    stored = _read_npz(backup_dir, state_path)
    found = _stored_identity(backup_dir, stored)
    if _without_tables(found) != _without_tables(model):
        _refuse(
            backup_dir,
            f"it holds the search of other layers: {_describe(found)}; this model "
            f"has {_describe(model)}",
        )
    tables = _read_npz(backup_dir, tables_path)
    initial_tables = []
    for index, layer in enumerate(model["layers"]):
        table = tables.get(f"{index}")
        if table is None or table.shape != tuple(layer["shape"]):
            _refuse(
                backup_dir,
                f"{INITIAL_TABLES_FILE} has no table {index} of shape {layer['shape']}",
            )
        initial_tables.append(table)
    fingerprints = [fingerprint(table) for table in initial_tables]
    if fingerprints != [layer["initial_table"] for layer in found["layers"]]:
        _refuse(
            backup_dir,
            f"{INITIAL_TABLES_FILE} does not hold the initial tables that {STATE_FILE} "
            "records (their fingerprints differ): the files come from different "
            "searches, or one is damaged",
        )
    if fingerprints != [layer["initial_table"] for layer in model["layers"]] and not trained:
        _refuse(
            backup_dir,
            "it was written by a search whose initial tables differ from this "
            "model's, and this model has not been trained yet (its optimizer has "
            "taken no step), so this is a new search. To resume instead, build the "
            "model as before (same seed), or list `BackupAndRestore` before "
            "PrecisionSearch in `callbacks` so that it restores the model first",
        )
    best_states = [
        {
            name: _finite_array(backup_dir, stored, f"{index}/{name}", shape)
            for name, shape in shapes.items()
        }
        for index, shapes in enumerate(state_shapes)
    ]
    best_value = _finite_array(backup_dir, stored, "best_value", ())
    best_epoch = _finite_array(backup_dir, stored, "best_epoch", ())
    if not np.issubdtype(best_epoch.dtype, np.integer) or best_epoch < 0:
        _refuse(backup_dir, f"{STATE_FILE} holds best_epoch={best_epoch}, not an epoch")
    return SearchBackup(
        float(best_value), int(best_epoch), best_states, initial_tables, fingerprints
    )


def remove(backup_dir: str) -> None:
    """Removes the backup's files (and any `.partial` one) from `backup_dir`."""
    for name in (STATE_FILE, INITIAL_TABLES_FILE):
        path = os.path.join(backup_dir, name)
        for leftover in (path, path + PARTIAL_SUFFIX):
            if os.path.exists(leftover):
                os.remove(leftover)


def _save_npz(path: str, arrays: dict) -> None:
    """Writes `arrays` to `path` atomically: to a file beside it, flushed to disk, then
    renamed over it (a crash leaves the old file and at most a `.partial` one)."""
    partial = path + PARTIAL_SUFFIX
    with open(partial, "wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _read_npz(backup_dir: str, path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as stored:  # allow_pickle=False: no object arrays
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        _refuse(
            backup_dir,
            f"{os.path.basename(path)} cannot be read ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}); it is truncated or damaged",
        )


def _stored_identity(backup_dir: str, stored: dict[str, np.ndarray]) -> dict:
    """The `model` record of a state file, checked to have the identity's form."""
    if "model" not in stored:
        _refuse(
            backup_dir,
            f"{STATE_FILE} does not say which model it belongs to (an older keras_mpe "
            "wrote it, or it was edited)",
        )
    try:
        found = json.loads(str(stored["model"]))
    except (ValueError, RecursionError) as error:
        _refuse(backup_dir, f"{STATE_FILE}'s model record is not valid JSON ({error})")
    layers = found.get("layers") if isinstance(found, dict) else None
    if not isinstance(layers, list) or not all(
        isinstance(layer, dict) and set(_LAYER_KEYS) <= set(layer) for layer in layers
    ):
        _refuse(
            backup_dir,
            f"{STATE_FILE}'s model record must list layers with the keys "
            f"{list(_LAYER_KEYS)}; it holds {str(stored['model'])[:200]}",
        )
    return found


def _finite_array(
    backup_dir: str, stored: dict[str, np.ndarray], key: str, shape: tuple[int, ...]
) -> np.ndarray:
    """`stored[key]`, checked to be a finite numeric array of `shape`."""
    array = stored.get(key)
    if array is None:
        _refuse(backup_dir, f"{STATE_FILE} lacks {key!r}")
    if array.shape != tuple(shape) or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        _refuse(
            backup_dir,
            f"{STATE_FILE} holds {key!r} as {array.dtype} of shape {array.shape}; this "
            f"model's is numeric of shape {tuple(shape)}",
        )
    if not np.isfinite(array).all():
        _refuse(backup_dir, f"{STATE_FILE} holds non-finite values in {key!r}")
    return array


def _without_tables(identity: dict) -> list[dict]:
    return [
        {key: value for key, value in layer.items() if key != "initial_table"}
        for layer in identity["layers"]
    ]


def _describe(identity: dict) -> str:
    return "; ".join(
        f"'{layer['layer']}' {layer['shape'][0]} x {layer['shape'][1]}, bits "
        f"{layer['bit_widths']}, groups {str(layer['groups'])[:12]}"
        if isinstance(layer["shape"], list) and len(layer["shape"]) == 2
        else f"'{layer['layer']}' of shape {layer['shape']}"
        for layer in identity["layers"]
    )


def _refuse(backup_dir: str, problem: str) -> NoReturn:
    raise ValueError(
        f"PrecisionSearch cannot resume from backup_dir={backup_dir!r}: {problem}. "
        f"To start a fresh search, delete {backup_dir} or pass another backup_dir."
    )
