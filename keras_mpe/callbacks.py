"""`PrecisionSearch`: the MPE search phase as a Keras callback."""

import importlib.util
import math
import os
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, precision, search_backup, table_files
from keras_mpe.backend import flatten_layers, keras
from keras_mpe.embedding import SEARCH, MixedPrecisionEmbedding, find_mixed_precision_layers
from keras_mpe.quantizer_range import RULES as RANGE_RULES
from keras_mpe.quantizer_range import QuantizerRange

# With `target_compression`, the bit penalty is updated this many times over a search
# (at least every step when the search is shorter) ...
PENALTY_UPDATES = 200
# ... by the factor (aim / compression), clipped to this range, where the compression of
# the bits selected at the final temperature is compared with the middle of the
# accepted window [R, 1.1 R].
PENALTY_FACTOR_RANGE = (0.8, 1.25)
# The penalty a target starts from when the layer's own `bit_penalty` is 0.
PENALTY_START = 1e-7


class PrecisionSearch(keras.callbacks.Callback):
    """Runs the MPE bit-width search during one `fit` and prepares the retrain.

    Pass it to the first `model.fit` (the search). It finds every
    `MixedPrecisionEmbedding` in the model, nested ones included, and:

    - anneals each layer's softmax temperature geometrically from
      `initial_temperature` down to the layer's own `final_temperature`, over the whole
      fit, so the precision distributions explore before they settle;
    - with `target_compression=R`, steers each layer's bit penalty so the table's
      compression ratio (with overhead) approaches `1.05 * R` (the rule is below);
    - every 50 steps raises each layer's step sizes to at least LSQ+'s initial value
      over its table as it is now (`quantizer_range`, see below);
    - at each epoch end adds `mpe_avg_bits` and `mpe_compression` (of the bits that
      would be selected if the search ended now, i.e. at the final temperature) to
      the logs, so they reach the progress bar, `History`
      and TensorBoard; with several layers also `mpe_avg_bits_<layer key>` and
      `mpe_compression_<layer key>`; and keeps the precision logits, step sizes and
      offset of the best epoch by `monitor`;
    - at the end restores those, selects one bit-width per group (the largest with
      probability >= 1/(2K) at the final temperature), freezes the precision,
      rewinds the tables to their initial values (`rewind=True`; during the
      search they wait in files under the temporary directory, `TMPDIR`, not in
      memory), replaces the
      model's optimizer by a fresh one built from its config (same class and
      settings, empty slots, iteration 0), clears the compiled train function so
      the next `fit` retraces with the new trainable variables, and prints a
      summary per layer.

    The second `model.fit` then retrains at the fixed bits with no bit penalty and
    no recompile. The rest of the model keeps the weights of the search's last
    epoch; only the precision logits, step sizes and offsets come from the best.

    **Temperature and learning rate.** The precision logits `g` only enter as
    `g / temperature`, so a learning-rate scale for the logits is the same thing as
    a temperature scale. An adaptive optimizer (Adam) moves each logit by about its
    learning rate per step whatever the gradient's size, so with the reference
    temperature 3e-3 and learning rate 1e-3 a distribution can be one-hot after a
    few dozen steps. The default schedule starts at `initial_temperature=1.0`: in
    the first third of a search the logits can move by about `lr * steps`, far
    less than the temperature. The step sizes and the offset are re-parameterised
    for the same reason (see `quantizer_learning_rate_scale` of the layer).

    **Quantizer range.** LSQ passes no gradient to a value beyond the clip, so a
    table whose rows outgrow their learned step sizes stops learning there. By
    default (`quantizer_range="floor"`) the search runs a
    `keras_mpe.QuantizerRange("floor")` (every 50 steps, each step size is raised to
    at least `layer.table_step_sizes()`, never lowered), so the range follows the
    table as it grows; `"reset"` sets the step sizes to that value instead, a
    `QuantizerRange` instance chooses the interval too, and `None` leaves the step
    sizes to the optimizer. The retrain starts from the best epoch's step sizes;
    pass a `QuantizerRange` to the retrain's `fit` to apply the rule there too.
    Without batch hooks (`ParameterServerStrategy`) the rule runs at each epoch's
    start.

    **Memory budget.** With `target_compression=R` the layers' `bit_penalty`
    variables are controlled: `PENALTY_UPDATES` times over the search, each is
    multiplied by `1.05 * R / r`, clipped to `[0.8, 1.25]`, where `r` is the
    compression ratio of the bits that would be selected now at the final
    temperature, where the search is heading (a penalty of 0 first becomes
    `PENALTY_START`). At the end, if the selected bits miss `[R, 1.1 * R]`, they are
    moved one candidate width at a time: down from the rarest group up while the
    ratio is below R, then up from the most frequent group down while it is above
    1.1 R and the next step keeps it >= R. The ratio is thus >= R, and within 10%
    of R unless one group's step is larger than that. Monitor a metric rather than
    a loss with a target: the loss includes the changing penalty. Known limit: to
    reach a high target the penalty comes to outweigh the task's gradient for most
    groups, and the allocation then follows the schedule more than the task.

    **Layer keys.** Reports, log entries and TensorBoard tags name each layer by its
    `name`. Layers that share a name (an `"embedding"` in each of several nested
    towers) are keyed by their path of layer names inside the model instead, e.g.
    `"tower_a/embedding"`, so none hides another; layers that share a path too (two
    attributes of a subclassed model given the same `name=`) are refused at the
    start of `fit` with a ValueError: give them distinct names.

    **Monitor.** A `monitor` the model does not log is an error, not a warning (as
    Keras' `EarlyStopping` gives): the best epoch decides the selected bits, and a
    silent fallback would change them. It is raised at the end of the first batch
    when the metric itself (`"auc"` for `"val_auc"`) is not logged, and at the end
    of the first epoch when its `val_` entry is missing: the search needs
    validation at every epoch (`validation_freq=1`) to monitor a `val_` entry.

    **Non-finite values.** When the loss is NaN or infinite at the end of a batch
    (or, at an epoch end, the monitored value or a layer's precision logits, step
    sizes or offset), the search stops at once with a RuntimeError, as
    `keras.callbacks.TerminateOnNaN(raise_error=True)` does: nothing is selected or
    frozen, the layers stay in the search state, the optimizer is kept, and a
    backup in `backup_dir` keeps the best epoch before the failure.

    **Checked backups.** Each backup file (see Interruption below) is written
    beside its target and renamed into place, so a crash leaves the previous
    backup whole. A backup records the layers it belongs to (keys, shapes,
    candidate bits, a fingerprint of the frequency groups) and a sha256 of each
    initial table; at the start of `fit`, before any step, it is refused with a
    ValueError when it is incomplete or unreadable, when its layers differ from
    the model's, or when its initial tables differ from the model's while the
    model is untrained (a new search over a leftover backup; a model restored by
    `BackupAndRestore` listed before PrecisionSearch has been trained, and
    resumes). The message says what was found and how to start afresh: delete the
    directory or pass another `backup_dir`.

    **Interruption.** Give `backup_dir` to make the search resumable, e.g. next to
    `keras.callbacks.BackupAndRestore` (which restores the model, its optimizer and
    the epoch): the initial tables and the best epoch's state are kept there and
    read back when the fit starts again, so the resumed search selects the same
    bits as an uninterrupted one. The files are deleted when the search ends.
    Under `MultiWorkerMirroredStrategy` every worker reads `backup_dir` and only the
    chief writes it, so it must be a directory all workers share (as for
    `BackupAndRestore`). Under `ParameterServerStrategy` (tf-keras), which runs no
    batch-level callbacks, the temperature anneals and the penalty is steered once
    per epoch: give `fit` more, shorter epochs (`steps_per_epoch`) for a finer schedule.

    Example:

    ```python
    search = keras_mpe.PrecisionSearch(monitor="val_auc")
    model.fit(x, y, validation_data=(vx, vy), epochs=3, callbacks=[search])
    model.fit(x, y, validation_data=(vx, vy), epochs=3)  # retrain at fixed bits
    print(search.reports["mpe"]["compression_ratio"])
    ```

    Args:
        monitor: the logged quantity that picks the best epoch.
        mode: `"min"`, `"max"` or `"auto"` (max for names containing "auc" or "acc",
            else min).
        rewind: whether to reset the tables to their values at the start of the
            search (MPE's retrain recipe).
        target_compression: optional compression ratio R > 1 (float32 bytes over
            packed bytes, overhead included) that every table must reach.
        initial_temperature: the temperature the search starts at, >= each layer's
            `final_temperature`; `None` keeps the layers' temperature constant.
        backup_dir: optional directory for the state that makes a search resumable.
        log_dir: optional TensorBoard log directory; per epoch, a histogram of each
            layer's per-group expected bits is written under `<log_dir>/mpe`.
        quantizer_range: the rule that keeps the step sizes on the tables during the
            search (see above): `"floor"` (default), `"reset"`, a
            `keras_mpe.QuantizerRange`, or `None` for none.
        verbose: 0 for silence, 1 to print the summary at the end.

    Attributes:
        reports: after the search, `{layer key: layer.memory_report()}` (the key is
            the layer's name unless several layers share it, see above).
        clipped_shares: `{layer key: [per-group clipped_shares() at each epoch end]}`;
            the share over all layers is logged as `mpe_clipped` (per layer as
            `mpe_clipped_<key>` when there are several).
        best_epoch: the epoch (0-based) whose state was restored.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        rewind: bool = True,
        target_compression: float | None = None,
        initial_temperature: float | None = 1.0,
        backup_dir: str | None = None,
        log_dir: str | None = None,
        quantizer_range: str | QuantizerRange | None = "floor",
        verbose: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a non-empty str. Received: monitor={monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if initial_temperature is not None and not (
            checks.is_number(initial_temperature) and initial_temperature > 0
        ):
            raise ValueError(
                "`initial_temperature` must be a number > 0 or None. "
                f"Received: initial_temperature={initial_temperature!r}"
            )
        if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "`log_dir` needs TensorBoard to write histograms, and it is not installed. "
                f"Install it with `pip install tensorboard`, or drop log_dir={log_dir!r}."
            )
        if mode == "auto":
            mode = "max" if ("auc" in monitor or "acc" in monitor) else "min"
        self.monitor = monitor
        self.mode = mode
        self.rewind = bool(rewind)
        self.target_compression = checks.target_compression(target_compression)
        self.initial_temperature = initial_temperature
        self.backup_dir = (
            None if backup_dir is None else checks.local_path("backup_dir", backup_dir)
        )
        self.log_dir = log_dir
        if not (
            quantizer_range is None
            or quantizer_range in RANGE_RULES
            or isinstance(quantizer_range, QuantizerRange)
        ):
            raise ValueError(
                f"`quantizer_range` must be one of {RANGE_RULES}, a "
                f"keras_mpe.QuantizerRange or None. Received: quantizer_range={quantizer_range!r}"
            )
        self.quantizer_range = (
            QuantizerRange(quantizer_range)
            if isinstance(quantizer_range, str)
            else quantizer_range
        )
        self.verbose = verbose
        self.reports: dict[str, dict] = {}
        self.clipped_shares: dict[str, list[np.ndarray]] = {}
        self.best_epoch: int | None = None

    # ------------------------------------------------------------------ start
    def on_train_begin(self, logs: dict | None = None) -> None:
        self._layers = find_mixed_precision_layers(self.model)
        if not self._layers:
            raise ValueError(
                "PrecisionSearch found no MixedPrecisionEmbedding in the model "
                f"{self.model.name!r}; it has nothing to search."
            )
        for layer in self._layers:
            self._check_layer(layer)
        self._epochs = self.params.get("epochs") or 1
        # without batch hooks (ParameterServerStrategy) the schedule moves per epoch
        self._steps = self.params.get("steps") if self._implements_train_batch_hooks() else None
        self._epoch = 0
        self._best_value = math.inf if self.mode == "min" else -math.inf
        self._best_states: list[dict] | None = None
        self._keys = _layer_keys(self.model, self._layers)
        self._monitor_checked = False
        # the initial tables wait in files for the rewind, not in memory
        self._table_directory = tempfile.TemporaryDirectory(prefix="precision_search_")
        self._initial_tables = [
            table_files.save_table(
                layer.embeddings, os.path.join(self._table_directory.name, f"{i}.npy")
            )
            for i, layer in enumerate(self._layers)
        ]
        if self.backup_dir is not None:
            self._restore_backup()
        if self.target_compression is not None:
            for layer in self._layers:
                if float(layer.bit_penalty.numpy()) == 0.0:
                    layer.set_bit_penalty(PENALTY_START)
        self._writer = (
            tf.summary.create_file_writer(os.path.join(self.log_dir, "mpe"))
            if self.log_dir
            else None
        )
        if self.quantizer_range is not None:
            self.quantizer_range.set_model(self.model)
            self.quantizer_range.on_train_begin()

    def _check_layer(self, layer: MixedPrecisionEmbedding) -> None:
        if not layer.built:  # a subclassed model builds its layers in the first step,
            layer.build()  # too late for the snapshot of the initial table
        if layer.state != SEARCH:
            raise ValueError(
                f"Layer '{layer.name}' is in the {layer.state} state; PrecisionSearch runs the "
                "search, so it needs layers in the search state. The retrain `fit` after "
                "the search needs no PrecisionSearch."
            )
        if self.initial_temperature is not None:
            if self.initial_temperature < layer.final_temperature:
                raise ValueError(
                    f"`initial_temperature` must be >= the final_temperature of layer "
                    f"'{layer.name}' ({layer.final_temperature}), the value the schedule "
                    f"ends at. Received: initial_temperature={self.initial_temperature!r}"
                )
        if self.target_compression is not None:
            precision.check_reachable(layer, self.target_compression)

    # ------------------------------------------------------------ during fit
    def _implements_train_batch_hooks(self) -> bool:
        # tf-keras refuses callbacks with batch hooks under ParameterServerStrategy
        # ("Batch-level `Callback`s are not supported"): there the temperature
        # anneals and the penalty is steered once per epoch instead
        return not isinstance(tf.distribute.get_strategy(), tf.distribute.ParameterServerStrategy)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        if not self._steps:
            self._set_temperature((epoch + 1) / self._epochs)
        if self.quantizer_range is not None and not self._implements_train_batch_hooks():
            self.quantizer_range.update()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._steps:
            step = self._epoch * self._steps + batch + 1
            self._set_temperature(step / (self._epochs * self._steps))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if "loss" in logs and not math.isfinite(float(logs["loss"])):
            self._stop_on_non_finite(f"the loss is {float(logs['loss'])} at batch {batch}")
        if not self._monitor_checked:
            self._check_monitor_is_logged(logs)
        if self.quantizer_range is not None:
            self.quantizer_range.on_train_batch_end(batch, logs)
        if self.target_compression is None:
            return
        total = self._epochs * self._steps if self._steps else PENALTY_UPDATES
        interval = max(1, total // PENALTY_UPDATES)
        if (batch + 1) % interval == 0:
            for layer in self._layers:
                self._steer_penalty(layer)

    def _set_temperature(self, progress: float) -> None:
        if self.initial_temperature is None:
            return
        progress = min(1.0, progress)
        for layer in self._layers:
            final = layer.final_temperature
            layer.set_temperature(
                self.initial_temperature * (final / self.initial_temperature) ** progress
            )

    def _steer_penalty(self, layer: MixedPrecisionEmbedding) -> None:
        ratio = layer.memory_report(_selection(layer))["compression_ratio"]
        aim = self.target_compression * (1 + precision.TARGET_TOLERANCE) / 2
        factor = float(np.clip(aim / ratio, *PENALTY_FACTOR_RANGE))
        layer.set_bit_penalty(float(layer.bit_penalty.numpy()) * factor)

    def _check_monitor_is_logged(self, logs: dict) -> None:
        """At the first batch: the monitor's metric must be logged (its `val_` twin is
        checked at the first epoch end). `mpe_` entries are added at epoch ends."""
        self._monitor_checked = True
        metric = self.monitor.removeprefix("val_")
        if metric not in logs and not self.monitor.startswith("mpe_"):
            raise ValueError(
                f"PrecisionSearch monitors {self.monitor!r}, but the model logs no "
                f"{metric!r}. Logged at each batch: {sorted(logs)}; at each epoch end "
                "PrecisionSearch adds 'mpe_avg_bits' and 'mpe_compression', and validation "
                "adds 'val_' entries. Choose `monitor` among these, e.g. "
                f"monitor='val_loss'. Received: monitor={self.monitor!r}"
            )

    def _stop_on_non_finite(self, what: str) -> None:
        backup = (
            f" The backup in backup_dir={self.backup_dir!r} keeps the best epoch before "
            "this one; delete it (or pass another backup_dir) to search afresh."
            if self.backup_dir is not None and self._best_states is not None
            else ""
        )
        raise RuntimeError(
            f"PrecisionSearch stopped the search in epoch {self._epoch + 1}: {what}. No "
            "precision was selected or frozen: the layers stay in the search state, with "
            "the values of the failed step. Lower the learning rate or `bit_penalty`, "
            "check the inputs for NaN, and run the search again from a fresh model." + backup
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        reports = {
            key: layer.memory_report(_selection(layer))
            for key, layer in zip(self._keys, self._layers, strict=True)
        }
        shares = [layer.clipped_shares() for layer in self._layers]  # one pass per table
        logs.update(_log_entries(self._layers, reports, shares))
        for key, layer_shares in zip(self._keys, shares, strict=True):
            self.clipped_shares.setdefault(key, []).append(layer_shares)
        if self.target_compression is not None and not self._implements_train_batch_hooks():
            for layer in self._layers:
                self._steer_penalty(layer)
        if self.monitor not in logs:
            raise ValueError(
                f"PrecisionSearch monitors {self.monitor!r}, which is not in the logs. "
                f"Available: {sorted(logs)}. Pass `validation_data` to `fit` for 'val_' "
                "entries, or choose `monitor` among these."
            )
        value = float(logs[self.monitor])
        states = [layer.search_state() for layer in self._layers]
        if not math.isfinite(value):
            self._stop_on_non_finite(f"{self.monitor} is {value}")
        for key, state in zip(self._keys, states, strict=True):
            for name, array in state.items():
                if not np.isfinite(array).all():
                    self._stop_on_non_finite(f"layer '{key}' has non-finite `{name}`")
        improved = value < self._best_value if self.mode == "min" else value > self._best_value
        if improved or self._best_states is None:
            self._best_value = value
            self.best_epoch = epoch
            self._best_states = states
        if self._writer is not None:
            with self._writer.as_default():
                for key, layer in zip(self._keys, self._layers, strict=True):
                    tf.summary.histogram(f"{key}/expected_bits", layer.expected_bits(), step=epoch)
            self._writer.flush()
        if self.backup_dir is not None and self._writes_files():
            self._save_backup()

    # ------------------------------------------------------------------- end
    def on_train_end(self, logs: dict | None = None) -> None:
        if self._best_states is None:
            raise RuntimeError(
                "PrecisionSearch saw no completed epoch, so it has no precision to select. "
                "Run the search `fit` for at least one epoch."
            )
        for key, layer, state, initial in zip(
            self._keys, self._layers, self._best_states, self._initial_tables, strict=True
        ):
            layer.set_search_state(state)
            layer.set_temperature(layer.final_temperature)
            bits = layer.select_group_bits()
            if self.target_compression is not None:
                bits = precision.fit_to_budget(
                    layer.memory_report(bits),
                    layer.bit_widths,
                    layer.group_masses.numpy(),
                    self.target_compression,
                )
            layer.freeze_precision(bits)
            if self.rewind:
                layer.rewind_table(initial)
            self.reports[key] = layer.memory_report()
        self._initial_tables = []
        self._table_directory.cleanup()
        self._reset_optimizer()
        if self.backup_dir is not None and self._writes_files():
            search_backup.remove(self.backup_dir)
        if self.verbose:
            print(self.summary())

    def _writes_files(self) -> bool:
        """False on the workers of a MultiWorkerMirroredStrategy other than the chief:
        every worker runs the callbacks and reads `backup_dir`, only the chief writes."""
        strategy = self.model.distribute_strategy
        return (
            not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            or strategy.extended.should_checkpoint
        )

    def _reset_optimizer(self) -> None:
        optimizer = self.model.optimizer
        if optimizer is not None:
            # under the model's tf.distribute strategy, as `compile` made the old one
            with self.model.distribute_strategy.scope():
                self.model.optimizer = type(optimizer).from_config(optimizer.get_config())
        self.model.train_function = None

    def summary(self) -> str:
        """A per-layer summary of the selected precision: bits histogram, average
        bits, compression ratio and bytes."""
        if not self.reports:
            return "PrecisionSearch: no search has finished yet."
        lines = []
        for key, layer in zip(self._keys, self._layers, strict=True):
            report = self.reports[key]
            lines.append(
                f"PrecisionSearch: layer '{key}' ({layer.input_dim} x "
                f"{layer.output_dim}), best epoch {self.best_epoch + 1} by "
                f"{self.monitor}={self._best_value:.5g}"
            )
            lines.append(f"  {'bits':>4} {'groups':>7} {'rows':>10}")
            bits, rows = report["group_bits"], report["rows_per_group"]
            for width in layer.bit_widths:
                chosen = bits == width
                lines.append(f"  {width:>4} {chosen.sum():>7} {rows[chosen].sum():>10}")
            lines.append(
                f"  average bits {report['average_bits']:.3f}; compression "
                f"{report['compression_ratio']:.1f}x with overhead "
                f"({report['payload_compression_ratio']:.1f}x payload only); "
                f"{report['total_bytes']:,} bytes packed vs {report['float32_bytes']:,} "
                "float32"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------ resumption
    def _backup_identity(self) -> dict:
        """What a backup belongs to (`keras_mpe.search_backup.identity`)."""
        return search_backup.identity(
            [
                {
                    "layer": key,
                    "shape": [int(layer.input_dim), int(layer.output_dim)],
                    "bit_widths": [int(b) for b in layer.bit_widths],
                    "groups": search_backup.fingerprint(layer.id_to_group.numpy()),
                    "initial_table": table,
                }
                for key, layer, table in zip(
                    self._keys, self._layers, self._table_fingerprints, strict=True
                )
            ]
        )

    def _save_backup(self) -> None:
        backup = search_backup.SearchBackup(
            self._best_value,
            self.best_epoch,
            self._best_states,
            self._initial_tables,
            self._table_fingerprints,
        )
        search_backup.save(self.backup_dir, self._backup_identity(), backup)

    def _restore_backup(self) -> None:
        """Resumes from the backup in `backup_dir`, if there is one and it is this
        search's own (`keras_mpe.search_backup.load` checks it all)."""
        self._table_fingerprints = [
            search_backup.fingerprint(table) for table in self._initial_tables
        ]
        backup = search_backup.load(
            self.backup_dir,
            self._backup_identity(),
            [
                {name: value.shape for name, value in layer.search_state().items()}
                for layer in self._layers
            ],
            trained=int(self.model.optimizer.iterations.numpy()) > 0,
        )
        if backup is None:
            return
        self._initial_tables = backup.initial_tables
        self._table_fingerprints = backup.initial_fingerprints
        self._best_value = backup.best_value
        self.best_epoch = backup.best_epoch
        self._best_states = backup.best_states


def _selection(layer: MixedPrecisionEmbedding) -> np.ndarray:
    """The bits that would be selected if the search ended now: at the layer's final
    temperature, where the search is heading at any point of the schedule."""
    return layer.select_group_bits(layer.final_temperature)


def _log_entries(
    layers: list[MixedPrecisionEmbedding], reports: dict[str, dict], shares: list[np.ndarray]
) -> dict:
    """`mpe_avg_bits`, `mpe_compression` and `mpe_clipped` over all tables, and per layer
    if several (`reports` maps each layer's key to its memory report, in the order of
    `layers`; `shares` holds each layer's `clipped_shares()`)."""
    lookups = [layer.group_lookups() for layer in layers]
    clipped = [_clipped_share(s, n) for s, n in zip(shares, lookups, strict=True)]
    values = sum(layer.input_dim * layer.output_dim for layer in layers)
    float32_bytes = sum(r["float32_bytes"] for r in reports.values())
    entries = {
        "mpe_avg_bits": sum(
            r["average_bits"] * layer.input_dim * layer.output_dim
            for layer, r in zip(layers, reports.values(), strict=True)
        )
        / values,
        "mpe_compression": float32_bytes / sum(r["total_bytes"] for r in reports.values()),
        "mpe_clipped": _overall_clipped_share(layers, clipped, lookups),
    }
    if len(layers) > 1:
        for (key, report), share in zip(reports.items(), clipped, strict=True):
            entries[f"mpe_avg_bits_{key}"] = report["average_bits"]
            entries[f"mpe_compression_{key}"] = report["compression_ratio"]
            entries[f"mpe_clipped_{key}"] = share
    return entries


def _clipped_share(shares: np.ndarray, lookups: np.ndarray) -> float:
    """A layer's `clipped_share()` from its `clipped_shares()`: the groups with a
    share (not NaN) weighted by their `lookups`; 0.0 when no group has one."""
    kept = ~np.isnan(shares)
    return float(np.dot(shares[kept], lookups[kept]) / lookups[kept].sum()) if kept.any() else 0.0


def _overall_clipped_share(
    layers: list[MixedPrecisionEmbedding], clipped: list[float], lookups: list[np.ndarray]
) -> float:
    """The share of the looked-up values beyond the clip over all `layers`: each
    layer's share weighted by its lookups times its `output_dim`."""
    weights = [float(n.sum()) * layer.output_dim for layer, n in zip(layers, lookups, strict=True)]
    return float(np.dot(clipped, weights) / sum(weights))


def _layer_keys(model: Any, layers: list[MixedPrecisionEmbedding]) -> list[str]:
    """The key of each layer in reports and logs: its name, or, for layers that share
    a name (one per nested model, say), its path of layer names inside `model`,
    e.g. `"tower_a/embedding"`."""
    paths: dict[int, str] = {}

    def walk(parent: Any, prefix: str) -> None:
        for child in flatten_layers(parent, include_self=False, recursive=False):
            paths.setdefault(id(child), prefix + child.name)
            walk(child, prefix + child.name + "/")

    walk(model, "")
    names = [layer.name for layer in layers]
    keys = [paths[id(layer)] if names.count(layer.name) > 1 else layer.name for layer in layers]
    shared = sorted({key for key in keys if keys.count(key) > 1})
    if shared:
        raise ValueError(
            f"Several MixedPrecisionEmbedding layers sit at {shared} in model "
            f"{model.name!r}; PrecisionSearch reports and logs each layer by its name, or "
            "by its path of names when names repeat. Give these layers distinct `name=`."
        )
    return keys
