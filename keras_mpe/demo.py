"""The whole MPE path in one command, on MovieLens-100K click data.

`run_demo()` loads MovieLens-100K as a click-through task (label `rating >= 4`, eight
fields in one shared id space, ids ranked by train frequency), trains a float
`keras.layers.Embedding` baseline and measures what post-training quantization of its
table gives (int8 and int4 per row, and int4 with the rarest ids pruned: what
practitioners do without MPE), then the same model with a
`MixedPrecisionEmbedding` at a few compression targets: `adapt` (train frequencies),
the bit search with `PrecisionSearch`, the retrain at the chosen bits. It keeps the
largest compression that stays within 0.003 AUC of float32, exports it with
`export_saved_model`, reloads the SavedModel in a fresh Python process that does not
import keras_mpe, and plots the trade-off and the bits. It prints each step as it goes
and a summary at the end.

When MovieLens cannot be loaded (not cached and no network), it says so and runs on
`keras_mpe.datasets.synthetic_ctr` instead; every figure is then labelled synthetic.

    python -m keras_mpe.demo            # about 3 minutes on 2 CPU cores
    python -m keras_mpe.demo --smoke    # well under a minute, for CI
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import keras_mpe
from keras_mpe import checks
from keras_mpe.backend import keras
from keras_mpe.datasets import (
    CTRData,
    DatasetUnavailableError,
    load_movielens,
    synthetic_ctr,
)
from keras_mpe.plotting import pyplot

DATA_CHOICES = ("movielens-100k", "synthetic")

# The fresh process that serves the export: TensorFlow only, never keras_mpe.
_RELOAD_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
export_dir, ids_path, out_path = sys.argv[1:4]
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
ids = np.load(ids_path)
outputs = serve(ids=tf.constant(ids))["output_0"].numpy()
np.save(out_path, outputs)
print(json.dumps({"keras_mpe_imported": "keras_mpe" in sys.modules, "rows": len(outputs)}))
"""


def ctr_model(embedding: Any, fields: int, hidden: Sequence[int] = (256, 128)) -> Any:
    """A DNN click-through model: `fields` ids -> embedding -> MLP -> click probability.

    The input is named `ids` (int32 `[batch, fields]`), so the exported SavedModel's
    `serving_default` takes `ids=`.

    Args:
        embedding: the embedding layer (`keras.layers.Embedding` or
            `MixedPrecisionEmbedding`), shared id space over all fields.
        fields: the number of categorical fields per row.
        hidden: units of the hidden ReLU layers.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> from keras_mpe.backend import keras
    >>> ctr_model(keras.layers.Embedding(10, 4), fields=3).output_shape
    (None, 1)
    """
    inputs = keras.Input(shape=(fields,), dtype="int32", name="ids")
    x = keras.layers.Flatten()(embedding(inputs))
    for units in hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="click")(x)
    return keras.Model(inputs, outputs)


def compile_ctr(model: Any, learning_rate: float = 1e-3) -> None:
    """Compiles `model` with Adam, binary cross-entropy and an `auc` metric."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )


def directory_bytes(path: str) -> int:
    """Total size of the files under `path`, in bytes."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def post_training_table(
    table: np.ndarray,
    bits: int,
    frequencies: np.ndarray | None = None,
    keep_rows: int | None = None,
) -> tuple[np.ndarray, int]:
    """What a practitioner does without MPE: post-training integers per row, and
    optionally only the most frequent ids kept (frequency pruning).

    Each row is quantized to signed `bits`-bit codes with its own scale, its largest
    |value| over `2**(bits-1) - 1` (the rule of Keras 3's `Embedding.quantize`). With
    `keep_rows`, only the `keep_rows` ids with the highest `frequencies` keep a row;
    the others look up zeros. Stored: the codes and one float32 scale per kept row,
    plus an int32 id-to-row remap of every id unless the kept ids are the first
    `keep_rows` ids (ids ranked by frequency need none).

    Args:
        table: the trained float `[V, D]` table.
        bits: bits per code, 2 to 8.
        frequencies: `[V]` id counts; needed with `keep_rows`.
        keep_rows: how many ids keep a row; default all.

    Returns:
        `(table, stored_bytes)`: the float table the model then sees, and the bytes
        it takes.

    Example:

    >>> table = np.array([[0.7, -0.3], [0.1, 0.0], [1.0, 0.5]], np.float32)
    >>> seen, size = post_training_table(table, 4, np.array([9, 1, 5]), keep_rows=2)
    >>> seen.astype(float).round(3).tolist()  # id 1 pruned; id 2's scale is 1/7
    [[0.7, -0.3], [0.0, 0.0], [1.0, 0.429]]
    >>> size  # 2 rows of 2 4-bit codes, 2 scales, a remap of 3 ids (ids 0, 2 kept)
    22
    """
    table = np.asarray(table, np.float32)
    rows, dim = table.shape
    largest = 2 ** (bits - 1) - 1
    scales = np.abs(table).max(axis=1, keepdims=True) / largest
    safe = np.where(scales > 0, scales, 1.0)
    codes = np.clip(np.round(table / safe), -largest - 1, largest)
    seen = (codes * scales).astype(np.float32)
    kept, remap = rows, 0
    if keep_rows is not None:
        kept = min(int(keep_rows), rows)
        order = np.argsort(-np.asarray(frequencies), kind="stable")
        seen[order[kept:]] = 0.0
        remap = 0 if np.all(np.sort(order[:kept]) == np.arange(kept)) else 4 * rows
    return seen, (kept * dim * bits + 7) // 8 + 4 * kept + remap


def reload_in_fresh_process(export_dir: str, ids: np.ndarray, work_dir: str) -> np.ndarray:
    """Serves `ids` from the SavedModel in a new Python process without keras_mpe.

    The child process imports TensorFlow only, loads `export_dir` with
    `tf.saved_model.load` and runs its `serving_default` signature, as a serving
    system would.

    Returns:
        The served outputs, `[rows, 1]`.

    Raises:
        RuntimeError: the child failed, or it had keras_mpe imported.
    """
    ids_path = os.path.join(work_dir, "reload_ids.npy")
    out_path = os.path.join(work_dir, "reload_outputs.npy")
    np.save(ids_path, ids)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, export_dir, ids_path, out_path],
        capture_output=True,
        text=True,
        env=env,
        cwd=work_dir,  # no keras_mpe source tree on the child's path
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"The fresh process could not serve the SavedModel in {export_dir} "
            f"(exit code {result.returncode}):\n{result.stderr[-2000:]}"
        )
    status = json.loads(result.stdout.strip().splitlines()[-1])
    if status["keras_mpe_imported"]:
        raise RuntimeError("The fresh process imported keras_mpe; the check would be void.")
    return np.load(out_path)


def _load_data(data: str, smoke: bool, say: Callable[[str], None]) -> tuple[CTRData, bool]:
    """The demo's click data with ids ranked by train frequency: `(data, synthetic)`."""
    if data == "movielens-100k":
        try:
            ctr = load_movielens("100k").to_ctr_data()
        except DatasetUnavailableError as error:
            say(
                "NOTE: MovieLens-100K is unavailable, so this demo runs on SYNTHETIC data "
                f"instead (keras_mpe.datasets.synthetic_ctr). Reason: {error}"
            )
            data = "synthetic"
        else:
            if smoke:  # a slice of each split keeps CI fast; frequencies from its train part
                ctr.train = tuple(part[:8_000] for part in ctr.train)
                ctr.validation = tuple(part[:2_000] for part in ctr.validation)
                ctr.test = tuple(part[:2_000] for part in ctr.test)
                ctr.description += " (smoke run: 8000/2000/2000 rows of it)"
    if data == "synthetic":
        rows = 12_000 if smoke else 100_000
        ctr = synthetic_ctr(rows=rows, fields=8, ids_per_field=500, seed=0)
    # Ids numbered by train frequency make every frequency group a contiguous id range,
    # so the packed table needs no id permutation.
    return ctr.ranked_by_frequency(), data == "synthetic"


def _train_mpe(
    ctr: CTRData, target: float, epochs: int, embedding_dim: int, batch_size: int, seed: int
) -> tuple[Any, Any]:
    """Searches the bits at `target` compression and retrains: `(model, layer)`."""
    keras.utils.set_random_seed(seed)
    layer = keras_mpe.MixedPrecisionEmbedding(
        ctr.vocabulary_size, embedding_dim, name="mpe_embedding"
    )
    layer.adapt(ctr.train[0])  # train frequencies -> frequency groups
    model = ctr_model(layer, ctr.train[0].shape[1])
    compile_ctr(model)
    search = keras_mpe.PrecisionSearch(monitor="val_auc", target_compression=target, verbose=0)
    for callbacks in ([search], []):  # the search, then the retrain at the chosen bits
        model.fit(
            *ctr.train,
            batch_size=batch_size,
            epochs=epochs,
            validation_data=ctr.validation,
            callbacks=callbacks,
            verbose=0,
        )
    return model, layer


def _plot_tradeoff(
    sweep: list[dict], baselines: list[dict], float_auc: float, tolerance: float, path: str
) -> None:
    """Writes a PNG of test AUC against compression: MPE, the post-training
    baselines, the float32 line and the tolerance band below it."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6), layout="constrained")
    axis.axhline(float_auc, color="black", linewidth=0.8, label="float32")
    axis.axhspan(float_auc - tolerance, float_auc, color="green", alpha=0.15,
                 label=f"within {tolerance:g} of float32")  # fmt: skip
    ratios = [run["compression_ratio"] for run in sweep]
    axis.plot(ratios, [run["auc"] for run in sweep], "o-", label="MPE")
    for run in sweep:
        axis.annotate(f"target {run['target']:g}x", (run["compression_ratio"], run["auc"]),
                      textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
    for marker, kind in (("s", "int8"), ("^", "int4"), ("v", "int4 + pruning")):
        runs = [run for run in baselines if run["kind"] == kind]
        if runs:
            axis.plot([run["compression_ratio"] for run in runs], [run["auc"] for run in runs],
                      marker, label=f"{kind} (post-training)")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("compression of the embedding table (with overhead)")
    axis.set_ylabel("test AUC")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_demo(
    data: str = "movielens-100k",
    smoke: bool = False,
    output_dir: str = "keras_mpe_demo",
    epochs: int | None = None,
    targets: Sequence[float] = (4.0, 8.0, 16.0, 32.0),
    tolerance: float = 0.003,
    embedding_dim: int = 16,
    batch_size: int = 1024,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> dict:
    """Runs the whole MPE path over a few compression targets and prints the trade-off.

    Steps: load the data (MovieLens-100K CTR, or synthetic when asked or when
    MovieLens is unavailable); train a float32 `keras.layers.Embedding` baseline,
    with the initializer `MixedPrecisionEmbedding` uses, for `2 * epochs` epochs;
    then, for each of `targets`, an MPE model: `adapt` to the train frequencies,
    search the bits with `PrecisionSearch(target_compression=target)` for `epochs`
    epochs and retrain at the chosen bits for `epochs` epochs (the baseline's
    budget). Beside them, the float table after `post_training_table` (int8, int4,
    and int4 with the rarest ids pruned to each target int4 alone does not reach). It
    keeps the largest MPE compression whose test AUC is within `tolerance`
    of the baseline's (or, if none is, the most accurate), exports it with
    `export_saved_model`, reloads it in a fresh process without keras_mpe, checks
    that it serves the model's outputs, and writes two plots: the trade-off
    (`tradeoff.png`) and the kept model's bits per group (`precision.png`).

    Args:
        data: `"movielens-100k"` or `"synthetic"`.
        smoke: a tiny, quick run (slices of the data, one epoch per phase).
        output_dir: where the SavedModel (`saved_model/`) and the plots go.
        epochs: epochs of each MPE phase; default 3 (1 with `smoke`).
        targets: the compression ratios (with overhead) to search for, each > 1.
        tolerance: the AUC loss against float32 that counts as keeping accuracy.
        embedding_dim: the embedding dimension.
        batch_size: the training batch size.
        seed: the random seed of every model.
        say: where progress lines go (default `print`).

    Returns:
        A dict of the figures: `data`, `synthetic`, `float_auc`, `sweep` (per
        target: `target`, `auc`, `compression_ratio`), `baselines` (per
        post-training baseline: `kind`, `name`, `auc`, `compression_ratio`), `kept_target`,
        `within_tolerance` and, for the kept model, `mpe_auc`, `compression_ratio`,
        `payload_compression_ratio`, `average_bits`, `saved_model_bytes`,
        `float32_table_bytes`, `packed_table_bytes`, `reload_max_abs_diff`,
        `reload_ok`, `export_dir`, `plots`, `seconds`.

    Example:

    ```python
    from keras_mpe.demo import run_demo
    figures = run_demo(smoke=True, targets=(8, 16), output_dir="/tmp/mpe_demo")
    print(figures["mpe_auc"], figures["compression_ratio"])
    ```
    """
    if data not in DATA_CHOICES:
        raise ValueError(f"`data` must be one of {DATA_CHOICES}. Received: data={data!r}")
    if not targets or not all(isinstance(t, int | float) and t > 1 for t in targets):
        raise ValueError(
            f"`targets` must be compression ratios, each > 1. Received: targets={targets!r}"
        )
    checks.positive_float("tolerance", tolerance, allow_zero=True)
    output_dir = checks.local_path("output_dir", output_dir)
    start = time.perf_counter()
    epochs = epochs if epochs is not None else (1 if smoke else 3)

    def step(text: str) -> None:
        say(f"[{time.perf_counter() - start:6.1f}s] {text}")

    step(f"loading data ({data})")
    ctr, synthetic = _load_data(data, smoke, say)
    (x_train, y_train), validation = ctr.train, ctr.validation
    say(f"  data: {ctr.description}")
    say(
        f"  {len(x_train)} train / {len(validation[0])} validation / {len(ctr.test[0])} test "
        f"rows, {x_train.shape[1]} fields, {ctr.vocabulary_size} ids, click rate "
        f"{y_train.mean():.3f}"
    )
    step(f"[1/5] float32 baseline (keras.layers.Embedding), {2 * epochs} epochs")
    baseline, embedding = _float_baseline(ctr, 2 * epochs, embedding_dim, batch_size, seed)
    float_auc = _test_auc(baseline, ctr)
    step(f"  float32 test AUC {float_auc:.4f}")
    baselines = _post_training_baselines(baseline, embedding, ctr, targets)
    for run in baselines:
        step(f"  {run['name']} (post-training): {run['compression_ratio']:.1f}x, test AUC "
             f"{run['auc']:.4f} ({run['auc'] - float_auc:+.4f})")  # fmt: skip

    step(f"[2/5] MPE at targets {', '.join(f'{t:g}x' for t in targets)}: search and retrain, "
         f"{epochs} + {epochs} epochs each")  # fmt: skip
    sweep, models = [], []
    for target in targets:
        model, layer = _train_mpe(ctr, target, epochs, embedding_dim, batch_size, seed)
        auc = _test_auc(model, ctr)
        ratio = layer.memory_report()["compression_ratio"]
        sweep.append({"target": float(target), "auc": auc, "compression_ratio": ratio})
        models.append((model, layer))
        step(f"  target {target:g}x: {ratio:.1f}x, test AUC {auc:.4f} ({auc - float_auc:+.4f})")
    kept, within = _kept_run(sweep, float_auc, tolerance)
    model, layer = models[kept]
    report = layer.memory_report()

    os.makedirs(output_dir, exist_ok=True)
    export_dir = os.path.join(output_dir, "saved_model")
    step(
        f"[3/5] export_saved_model of the {report['compression_ratio']:.1f}x model -> {export_dir}"
    )
    keras_mpe.export_saved_model(model, export_dir, overwrite=True)

    step("[4/5] reloading the SavedModel in a fresh Python process (TensorFlow only)")
    max_diff = _served_difference(model, export_dir, ctr.test[0])
    reload_ok = max_diff <= 1e-5
    step(
        f"  served {len(ctr.test[0])} test rows; max |served - model| = {max_diff:.2e}: "
        + ("OK" if reload_ok else "MISMATCH")
    )

    plots = [os.path.join(output_dir, name) for name in ("tradeoff.png", "precision.png")]
    step(f"[5/5] plots -> {', '.join(plots)}")
    _plot_tradeoff(sweep, baselines, float_auc, tolerance, plots[0])
    keras_mpe.plot_precision(layer, plots[1])

    figures = {
        "data": data,
        "synthetic": synthetic,
        "float_auc": float_auc,
        "sweep": sweep,
        "baselines": baselines,
        "kept_target": sweep[kept]["target"],
        "within_tolerance": within,
        "mpe_auc": sweep[kept]["auc"],
        "compression_ratio": report["compression_ratio"],
        "payload_compression_ratio": report["payload_compression_ratio"],
        "average_bits": report["average_bits"],
        "saved_model_bytes": directory_bytes(export_dir),
        "float32_table_bytes": report["float32_bytes"],
        "packed_table_bytes": report["total_bytes"],
        "reload_max_abs_diff": max_diff,
        "reload_ok": reload_ok,
        "export_dir": export_dir,
        "plots": plots,
        "seconds": time.perf_counter() - start,
    }
    _print_summary(figures, ctr, report, epochs, tolerance, say)
    return figures


def _float_baseline(
    ctr: CTRData, epochs: int, embedding_dim: int, batch_size: int, seed: int
) -> tuple[Any, Any]:
    """The float32 model (`keras.layers.Embedding` with the initializer
    `MixedPrecisionEmbedding` uses) trained for `epochs` epochs: `(model, embedding)`."""
    keras.utils.set_random_seed(seed)
    initializer = keras_mpe.MixedPrecisionEmbedding(1, 1).embeddings_initializer
    embedding = keras.layers.Embedding(
        ctr.vocabulary_size, embedding_dim, embeddings_initializer=initializer
    )
    baseline = ctr_model(embedding, ctr.train[0].shape[1])
    compile_ctr(baseline)
    baseline.fit(
        *ctr.train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=ctr.validation,
        verbose=0,
    )
    return baseline, embedding


def _post_training_baselines(
    model: Any, embedding: Any, ctr: CTRData, targets: Sequence[float]
) -> list[dict]:
    """Test AUC and compression of the trained float model's table after
    `post_training_table`: int8 and int4 per row, and int4 with the rarest ids pruned
    to meet each target that int4 alone does not. The model is left as it was."""
    trained = embedding.get_weights()[0]
    rows, dim = trained.shape
    frequencies = np.bincount(ctr.train[0].reshape(-1), minlength=rows)
    float_bytes = 4 * rows * dim
    settings = [("int8", "int8", 8, None), ("int4", "int4", 4, None)]
    for target in targets:
        keep = int(float_bytes / target // (dim * 4 / 8 + 4))
        if keep < rows:
            settings.append(("int4 + pruning", f"int4 + pruning {target:g}x", 4, keep))
    results = []
    for kind, name, bits, keep in settings:
        table, stored = post_training_table(trained, bits, frequencies, keep)
        embedding.set_weights([table])
        auc = _test_auc(model, ctr)
        results.append(
            {"kind": kind, "name": name, "auc": auc, "compression_ratio": float_bytes / stored}
        )
    embedding.set_weights([trained])
    return results


def _test_auc(model: Any, ctr: CTRData) -> float:
    return float(model.evaluate(*ctr.test, verbose=0, return_dict=True)["auc"])


def _kept_run(sweep: list[dict], float_auc: float, tolerance: float) -> tuple[int, bool]:
    """The run to keep: the most compressed within `tolerance` of `float_auc`, else
    the most accurate; and whether one was within."""
    within = [i for i, run in enumerate(sweep) if run["auc"] >= float_auc - tolerance]
    if within:
        return max(within, key=lambda i: sweep[i]["compression_ratio"]), True
    return max(range(len(sweep)), key=lambda i: sweep[i]["auc"]), False


def _served_difference(model: Any, export_dir: str, ids: np.ndarray) -> float:
    """max |SavedModel - model| over `ids`, the SavedModel served in a fresh process
    (infinite if it served another shape)."""
    expected = model.predict(ids, batch_size=4096, verbose=0)
    with tempfile.TemporaryDirectory() as work_dir:
        served = reload_in_fresh_process(os.path.abspath(export_dir), ids, work_dir)
    if served.shape != expected.shape:
        return float("inf")
    return float(np.abs(served - expected).max())


def _print_summary(
    figures: dict,
    ctr: CTRData,
    report: dict,
    epochs: int,
    tolerance: float,
    say: Callable[[str], None],
) -> None:
    float_auc, mpe_auc = figures["float_auc"], figures["mpe_auc"]
    bits = np.bincount(report["group_bits"])
    say("")
    label = "SYNTHETIC data" if figures["synthetic"] else "MovieLens-100K"
    say(f"=== keras-mpe demo summary ({label}) ===")
    say(f"data:                  {ctr.description}")
    say(f"test AUC float32:      {float_auc:.4f}  (keras.layers.Embedding, {2 * epochs} epochs)")
    for run in figures["baselines"]:
        say(
            f"  {run['name'] + ':':<20} {run['auc']:.4f} at {run['compression_ratio']:.1f}x "
            f"({run['auc'] - float_auc:+.4f}, post-training)"
        )
    for run in figures["sweep"]:
        say(
            f"  MPE target {run['target']:>4g}x:    {run['auc']:.4f} at "
            f"{run['compression_ratio']:.1f}x ({run['auc'] - float_auc:+.4f})"
        )
    if figures["within_tolerance"]:
        say(f"largest compression within {tolerance:g} AUC of float32: "
            f"{report['compression_ratio']:.1f}x (kept and exported)")  # fmt: skip
    else:
        say(f"no target kept the AUC within {tolerance:g} of float32; kept the most accurate")
    say(f"test AUC MPE:          {mpe_auc:.4f}  ({epochs} search + {epochs} retrain epochs)")
    say(f"AUC difference:        {mpe_auc - float_auc:+.4f}  (MPE - float32)")
    say("groups per bit-width:  " + ", ".join(f"{b} bits: {n}" for b, n in enumerate(bits) if n))
    say(f"average bits:          {report['average_bits']:.3f}")
    say(
        f"compression ratio:     {report['compression_ratio']:.1f}x with overhead "
        f"({report['payload_compression_ratio']:.1f}x payload only); table "
        f"{report['float32_bytes']:,} B float32 -> {report['total_bytes']:,} B packed"
    )
    say(f"SavedModel size:       {figures['saved_model_bytes']:,} bytes on disk "
        f"({figures['export_dir']})")  # fmt: skip
    say(
        f"reload check:          {'passed' if figures['reload_ok'] else 'FAILED'} (fresh "
        f"process without keras_mpe, max abs diff {figures['reload_max_abs_diff']:.2e})"
    )
    say(f"plots:                 {', '.join(figures['plots'])}")
    say(f"total time:            {figures['seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of the demo; returns the exit code (0 when the
    SavedModel served the model's outputs in the fresh process)."""
    parser = argparse.ArgumentParser(
        prog="keras-mpe demo",
        description="Mixed-Precision Embeddings end to end on MovieLens-100K click data: "
        "float baseline, bit search, retrain, SavedModel export and reload, precision plot.",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run (under a minute)")
    parser.add_argument(
        "--data",
        choices=DATA_CHOICES,
        default="movielens-100k",
        help="MovieLens-100K (falls back to synthetic when unavailable) or synthetic data",
    )
    parser.add_argument(
        "--output-dir",
        default="keras_mpe_demo",
        help="where the SavedModel and precision.png are written (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per MPE phase")
    parser.add_argument(
        "--targets",
        default="4,8,16,32",
        help="comma-separated compression ratios to search for (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.003,
        help="AUC loss against float32 that counts as keeping accuracy (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    figures = run_demo(
        data=args.data,
        smoke=args.smoke,
        output_dir=args.output_dir,
        epochs=args.epochs,
        targets=[float(t) for t in args.targets.split(",") if t],
        tolerance=args.tolerance,
    )
    return 0 if figures["reload_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
