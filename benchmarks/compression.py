"""Compression against accuracy: every method under one epoch budget, in one run.

Methods (each for every seed, all with the same model and the same total epochs):
- `fp32`: `keras.layers.Embedding`, trained for the whole budget.
- `fp32-rewind`: MPE's schedule without quantization: train half the budget, reset the
  table to its initial values (keeping the rest of the model), train the other half.
- `fp32-mpe-init`, `fp32-rewind-mpe-init`: the same two with MixedPrecisionEmbedding's
  initializer, N(0, 0.003), instead of Keras's U(-0.05, 0.05): an ablation of the init.
- `fp32-fair`: the fair float32 baseline: MixedPrecisionEmbedding's initializer, early
  stopping on validation AUC (patience 2, best weights restored) within the budget,
  for each learning rate in `FAIR_LEARNING_RATES` and table L2 in `FAIR_TABLE_L2`;
  the setting with the best validation AUC is reported.
- `qat-Nbit`: `MixedPrecisionEmbedding(bit_widths=(N,))`, uniform quantization-aware
  training, two phases like MPE.
- `ptq-int8`, `ptq-int4` (Keras 3 only): the trained `fp32` model's table quantized after
  training with `Embedding.quantize(mode)`.
- `prune-int4-<R>`: the practitioners' baseline: the `fp32-fair` model's table
  (trained once per seed for all such rows) after
  `keras_mpe.demo.post_training_table`: int4 per row, only the most frequent ids kept,
  as many as fit `R`x compression (the others look up zeros; an int32 remap counted
  unless the kept ids are the first ids). No SavedModel is written for it.
- `paper-<penalty>`: the paper's recipe: the expectation over the widths as the
  search's forward, a fixed temperature (the
  layer's `final_temperature`, 3e-3), that fixed bit penalty, step sizes and offset
  learned as they are (`DirectQuantizerEmbedding`), best validation epoch, rewind.
  One difference remains: the groups are `floor(V / G)` ids each with a long last
  group, where the paper has `ceil(V / G)` with a short one (a group differs by one
  id, the last by up to G).
- `paper+<deviation>-<penalty>`: the paper's recipe with one of the defaults' choices
  switched on: `sample` (sampled widths as the search's forward), `anneal` (the
  temperature annealed from 1.0), `logsteps` (step sizes learned as `exp(10 u)`, the
  offset in units of the table's scale); `paper-target-<R>`: with `target_compression`
  steering the penalty and `fit_to_budget` ending the search. Deviations combine, e.g.
  `paper+sample+anneal-target-16` (the defaults with the paper's step sizes).
- `mpe-<penalty>`, `mpe-target-<R>`: the layer's and `PrecisionSearch`'s defaults (all
  four deviations on, and the search's quantizer-range floor, which the `paper` recipes
  leave off), with a fixed penalty or with `target_compression=R`.
Each run is read at its best validation-AUC epoch (for two-phase methods, in the second
phase). Each also reports the size of its SavedModel (`keras_mpe.export_saved_model`
for MixedPrecisionEmbedding models, Keras's `model.export` for the others). Prints a
table (each row's test AUC per seed too) and writes `benchmarks/results/compression-<data>.md`
(or `--results-name`) and a PNG of test AUC minus a float32 baseline against compression
(`fp32-fair` when it was run, else `fp32-rewind-mpe-init`).

    python benchmarks/compression.py --data synthetic --seeds 1 --epochs 2 --only mpe-target-8
    python benchmarks/compression.py --data instacart --only fp32-rewind-mpe-init,paper-1e-4

`--quantizer-range` sets the search's rule for the step sizes (`PrecisionSearch`'s
`quantizer_range`: `floor`, the default, `reset` or `none`) in the MPE and QAT runs;
`--retrain-range floor` (or `reset`) adds `keras_mpe.QuantizerRange` to their retrain.

On `long-tail-synthetic` each row also reports the share of the signal-carrying
lookups (see `keras_mpe.datasets.synthetic_long_tail`) that land on rows with bits.
"""

import argparse
import datetime
import functools
import os
import platform
import re
import shlex
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import keras_mpe
import keras_mpe.datasets
from keras_mpe.backend import IS_KERAS_3, keras
from keras_mpe.datasets import synthetic_ctr
from keras_mpe.demo import post_training_table
from keras_mpe.plotting import pyplot
from keras_mpe.precision import fit_to_budget

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# `--optimizer`: what every model trains with (set once by `main`), at a learning rate
OPTIMIZERS = {
    "adam": lambda rate: keras.optimizers.Adam(rate),
    "lazy_adam": lambda rate: keras_mpe.optimizers.LazyAdam(rate),
    "lazy_adam_catch_up": lambda rate: keras_mpe.optimizers.LazyAdam(rate, catch_up=True),
}
optimizer_name = "adam"

DATA = (
    "synthetic",
    "interactions",
    "movielens-100k",
    "movielens-1m",
    "instacart",
    "long-tail-synthetic",
)


@functools.cache
def planted_long_tail() -> keras_mpe.datasets.PlantedLongTail:
    return keras_mpe.datasets.synthetic_long_tail()


def load(name: str):
    """`(train, validation, test, vocabulary_size, description)` of a data set."""
    if name == "synthetic":
        data = synthetic_ctr(rows=200_000, fields=8, ids_per_field=5_000).ranked_by_frequency()
    elif name == "interactions":
        data = keras_mpe.datasets.synthetic_interactions()  # ranked by frequency already
    elif name == "long-tail-synthetic":
        data = planted_long_tail().data  # ids are ranked by train frequency already
    elif name == "instacart":
        data = keras_mpe.datasets.load_instacart().ranked_by_frequency()
    else:
        data = keras_mpe.datasets.load_movielens(name.split("-")[1]).to_ctr_data()
        data = data.ranked_by_frequency()
    return data.train, data.validation, data.test, data.vocabulary_size, data.description


class DirectQuantizerEmbedding(keras_mpe.MixedPrecisionEmbedding):
    """The paper's parameterisation of the quantizer: the variable `log_step_sizes`
    holds the step sizes themselves and `relative_offset` the offset itself, both
    learned as they are (the layer learns `log(alpha) / 10` and `beta / (10 * scale)`).
    The step sizes are used by magnitude: under Adam at 1e-3 some cross zero in the
    first epoch (a negative step mirrors the levels), and the packed format stores
    positive ones."""

    def _initial_log_step_sizes(self, shape, dtype=None):
        return tf.exp(super()._initial_log_step_sizes(shape) * self.quantizer_learning_rate_scale)

    @property
    def step_sizes(self):
        return tf.abs(self.log_step_sizes)

    @property
    def offset(self):
        return tf.convert_to_tensor(self.relative_offset)

    def _assign_step_sizes(self, step_sizes):
        self.log_step_sizes.assign(step_sizes)


class EpochReader(keras.callbacks.Callback):
    """Evaluates the test split at each epoch end, to read the best-validation epoch,
    and records each MixedPrecisionEmbedding's clipped share (`clipped`, per epoch)."""

    def __init__(self, test):
        super().__init__()
        self.test = test
        self.rows = []
        self.clipped = []

    def on_epoch_end(self, epoch, logs=None):
        test = self.model.evaluate(*self.test, batch_size=8192, verbose=0, return_dict=True)
        layers = keras_mpe.embedding.find_mixed_precision_layers(self.model)
        if layers:
            self.clipped.append(layers[0].clipped_share())
        clipped = self.clipped[-1] if layers else float("nan")
        self.rows.append((logs["val_auc"], test["auc"], test["loss"], clipped))
        if os.environ.get("MPE_BENCH_VERBOSE"):
            print(
                f"  epoch {epoch}: val_auc {logs['val_auc']:.4f} test_auc {test['auc']:.4f}"
                f" clipped {self.clipped[-1] if layers else float('nan'):.3f}"
                + (f" steps {layers[0].step_sizes.numpy()}" if layers else ""),
                flush=True,
            )

    def best(self):
        """`(test AUC, test logloss)` at the best validation-AUC epoch."""
        return max(self.rows)[1:3]

    def best_clipped(self):
        """The clipped share at the best validation-AUC epoch (NaN without MPE)."""
        return max(self.rows)[3]


def saved_model_bytes(model, packed: bool) -> int:
    """Bytes on disk of the model's SavedModel: `keras_mpe.export_saved_model` for
    MixedPrecisionEmbedding models (`packed`), Keras's own `model.export` otherwise."""
    with tempfile.TemporaryDirectory() as directory:
        if packed:
            keras_mpe.export_saved_model(model, directory, overwrite=True)
        else:
            model.export(directory, verbose=False) if IS_KERAS_3 else model.export(directory)
        return sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(directory)
            for name in names
        )


def build(embedding, fields: int):
    inputs = keras.Input(shape=(fields,), dtype="int32")
    x = keras.layers.Flatten()(embedding(inputs))
    for units in (256, 128):
        x = keras.layers.Dense(units)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    return model


def fit(
    model,
    train,
    validation,
    test,
    epochs: int,
    batch: int,
    callbacks=(),
    compile_model=True,
    learning_rate: float = 1e-3,
) -> EpochReader:
    if compile_model:
        model.compile(
            OPTIMIZERS[optimizer_name](learning_rate),
            "binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc")],
        )
    reader = EpochReader(test)
    model.fit(
        *train,
        validation_data=validation,
        epochs=epochs,
        batch_size=batch,
        verbose=0,
        callbacks=[*callbacks, reader],
    )
    return reader


def fit_with_rewind(model, layer, train, validation, test, epochs: int, batch: int):
    """MPE's schedule without a search: train `epochs - epochs // 2` epochs, reset
    `layer`'s table to its initial values (keeping the rest of the model), train the
    other `epochs // 2` (with a fresh optimizer, as `fit` recompiles)."""
    initial = layer.embeddings.numpy()
    fit(model, train, validation, test, epochs - epochs // 2, batch)
    layer.embeddings.assign(initial)
    return fit(model, train, validation, test, epochs // 2, batch)


# The fair float32 baseline's sweep (see the module docstring).
FAIR_LEARNING_RATES = (1e-3, 3e-3)
FAIR_TABLE_L2 = (0.0, 1e-5)


_FAIR_MODELS: dict = {}  # (seed, epochs, batch, id(data)) -> (reader, model, embedding)


def fair_float32_model(seed: int, data, epochs: int, batch: int) -> tuple:
    """The `fp32-fair` sweep's best setting by validation AUC, trained once per seed
    and data in a process: `(reader, model, embedding)`, the model at its restored
    best weights."""
    key = (seed, epochs, batch, id(data))
    if key in _FAIR_MODELS:
        return _FAIR_MODELS[key]
    train, validation, test, vocabulary, _ = data
    fields = train[0].shape[1]
    initializer = keras_mpe.MixedPrecisionEmbedding(1, 1).embeddings_initializer
    best = None
    for learning_rate in FAIR_LEARNING_RATES:
        for l2 in FAIR_TABLE_L2:
            keras.utils.set_random_seed(seed)
            layer = keras.layers.Embedding(
                vocabulary,
                16,
                embeddings_initializer=initializer,
                embeddings_regularizer=keras.regularizers.L2(l2) if l2 else None,
            )
            model = build(layer, fields)
            stop = keras.callbacks.EarlyStopping(
                "val_auc", patience=2, mode="max", restore_best_weights=True
            )
            reader = fit(
                model, train, validation, test, epochs, batch, [stop], learning_rate=learning_rate
            )
            if os.environ.get("MPE_BENCH_VERBOSE"):
                print(f"  fp32-fair lr {learning_rate} l2 {l2}: {max(reader.rows)[:2]}")
            if best is None or max(reader.rows) > max(best[0].rows):
                best = (reader, model, layer)
    _FAIR_MODELS[key] = best
    return best


def fair_float32(seed: int, data, epochs: int, batch: int) -> dict:
    """The `fp32-fair` run: the sweep's setting with the best validation AUC."""
    reader, model, _ = fair_float32_model(seed, data, epochs, batch)
    auc, loss = reader.best()
    return {
        "auc": auc,
        "loss": loss,
        "bits": 32.0,
        "ratio": 1.0,
        "payload_ratio": 1.0,
        "bytes": 4 * data[3] * 16,
        "signal_kept": np.nan,
        "saved_bytes": saved_model_bytes(model, packed=False),
        "clipped": np.nan,
    }


def pruned_int4(target: float, seed: int, data, epochs: int, batch: int, planted=None) -> dict:
    """The `prune-int4-<R>` run: the `fp32-fair` model's table after
    `post_training_table` at int4 with as many of the most frequent ids kept as fit
    `target`x; the model's table is restored afterwards."""
    train, _, test, vocabulary, _ = data
    _, model, layer = fair_float32_model(seed, data, epochs, batch)
    trained = layer.get_weights()[0]
    dim = trained.shape[1]
    keep = min(vocabulary, int(4 * vocabulary * dim / target // (dim * 4 / 8 + 4)))
    frequencies = np.bincount(train[0].reshape(-1), minlength=vocabulary)
    table, size = post_training_table(trained, 4, frequencies, keep)
    layer.set_weights([table])
    model.test_function = None  # a cached one may hold the float table
    scores = model.evaluate(*test, batch_size=8192, verbose=0, return_dict=True)
    layer.set_weights([trained])
    model.test_function = None
    kept = np.nan if planted is None else planted.signal_mass_kept(np.any(table != 0, axis=1))
    return {
        "auc": scores["auc"],
        "loss": scores["loss"],
        "bits": 8 * size / (vocabulary * dim),
        "ratio": 4 * vocabulary * dim / size,
        "payload_ratio": 4 * vocabulary * dim / size,
        "bytes": size,
        "signal_kept": kept,
        "saved_bytes": np.nan,
        "clipped": np.nan,
    }


def run_method(
    method: str,
    seed: int,
    data,
    epochs: int,
    batch: int,
    mpe_bits: tuple[int, ...],
    planted=None,
    quantizer_scale: float | None = None,
    quantizer_range: str | None = "floor",
    retrain_range: str | None = None,
) -> dict:
    train, validation, test, vocabulary, _ = data
    fields, dim = train[0].shape[1], 16
    keras.utils.set_random_seed(seed)
    half = epochs // 2
    if method == "fp32-fair":
        return fair_float32(seed, data, epochs, batch)
    if method.startswith("prune-int4-"):
        return pruned_int4(float(method.split("-")[2]), seed, data, epochs, batch, planted)
    if method.startswith(("fp32", "ptq")):
        initializer = "uniform"  # keras.layers.Embedding's default, U(-0.05, 0.05)
        if method.endswith("mpe-init"):
            initializer = keras_mpe.MixedPrecisionEmbedding(1, 1).embeddings_initializer
        layer = keras.layers.Embedding(vocabulary, dim, embeddings_initializer=initializer)
        model = build(layer, fields)
        model.build((None, fields))
        if method.startswith("fp32-rewind"):
            reader = fit_with_rewind(model, layer, train, validation, test, epochs, batch)
        else:
            reader = fit(model, train, validation, test, epochs, batch)
        auc, loss = reader.best()
        size = 4 * vocabulary * dim
        result = {
            "auc": auc,
            "loss": loss,
            "bits": 32.0,
            "ratio": 1.0,
            "payload_ratio": 1.0,
            "bytes": size,
        }
        if method.startswith("ptq"):
            mode = method.split("-")[1]
            layer.quantize(mode)
            model.test_function = None  # the cached one still reads the float table
            scores = model.evaluate(*test, batch_size=8192, verbose=0, return_dict=True)
            bits = {"int8": 8, "int4": 4}[mode]
            size = vocabulary * dim * bits // 8 + 4 * vocabulary  # codes + per-row scale
            result = {
                "auc": scores["auc"],
                "loss": scores["loss"],
                "bits": bits,
                "ratio": 4 * vocabulary * dim / size,
                "payload_ratio": 32 / bits,
                "bytes": size,
            }
        kept = np.nan if planted is None else 1.0
        return {
            **result,
            "clipped": np.nan,
            "signal_kept": kept,
            "saved_bytes": saved_model_bytes(model, packed=False),
        }
    if method.startswith("threshold"):
        layer = keras_mpe.MixedPrecisionEmbedding(vocabulary, dim, bit_widths=(0, 4))
        layer.adapt(train[0])
        model = build(layer, fields)
        model.build((None, fields))
        all_four = np.full(layer.num_groups, 4)
        target = float(method.split("-")[1])
        report = layer.memory_report(all_four)
        bits = fit_to_budget(report, layer.bit_widths, layer.group_masses.numpy(), target)
        layer.freeze_precision(bits)
        reader = fit_with_rewind(model, layer, train, validation, test, epochs, batch)
        return mpe_result(model, layer, reader, planted)
    if method.startswith("qat"):
        bits = int(method.split("-")[1].rstrip("bit"))
        layer_class, options, search = (
            keras_mpe.MixedPrecisionEmbedding,
            {"bit_widths": (bits,)},
            {},
        )
    else:
        layer_class, options, search = mpe_recipe(method, mpe_bits)
    if quantizer_scale is not None and layer_class is keras_mpe.MixedPrecisionEmbedding:
        options["quantizer_learning_rate_scale"] = quantizer_scale
    search = {"quantizer_range": quantizer_range, **search}  # the paper's recipe has none
    retrain = [keras_mpe.QuantizerRange(retrain_range)] if retrain_range else []
    layer = layer_class(vocabulary, dim, **options)
    layer.adapt(train[0])
    model = build(layer, fields)
    fit(
        model,
        train,
        validation,
        test,
        epochs - half,
        batch,
        [keras_mpe.PrecisionSearch(monitor="val_auc", verbose=0, **search)],
    )
    reader = fit(model, train, validation, test, half, batch, retrain, compile_model=False)
    return mpe_result(model, layer, reader, planted)


# The paper's recipe, and the choices of the layer's and PrecisionSearch's defaults
# that differ from it, each as (layer class, layer options, search options).
PAPER = (
    DirectQuantizerEmbedding,
    {"search_forward": "expectation"},
    {"initial_temperature": None, "quantizer_range": None},
)
DEVIATIONS = {
    "sample": (None, {"search_forward": "sample"}, {}),
    "anneal": (None, {}, {"initial_temperature": 1.0}),
    "logsteps": (keras_mpe.MixedPrecisionEmbedding, {}, {}),
}


def is_recipe(method: str) -> bool:
    """Whether `method` names the paper's recipe with known deviations and a budget,
    e.g. `paper+sample+logsteps-target-16`."""
    recipe, _, budget = method.partition("-")
    deviations = recipe.split("+")
    try:
        float(budget.removeprefix("target-"))
    except ValueError:
        return False
    return deviations[0] == "paper" and set(deviations[1:]) <= set(DEVIATIONS)


def mpe_recipe(method: str, mpe_bits: tuple[int, ...]):
    """`(layer class, layer options, PrecisionSearch options)` of an MPE method:
    `mpe-<penalty>`, `mpe-target-<R>`, `paper[+deviation...]-<penalty>` or
    `paper[+deviation...]-target-<R>` (`target` is itself the fourth deviation)."""
    recipe, budget = method.split("-", 1)
    layer_class, options, search = keras_mpe.MixedPrecisionEmbedding, {}, {}
    if recipe.startswith("paper"):
        layer_class, options, search = PAPER[0], dict(PAPER[1]), dict(PAPER[2])
        for deviation in recipe.split("+")[1:]:
            layer_class = DEVIATIONS[deviation][0] or layer_class
            options.update(DEVIATIONS[deviation][1])
            search.update(DEVIATIONS[deviation][2])
    options["bit_widths"] = mpe_bits
    if budget.startswith("target-"):
        search["target_compression"] = float(budget.removeprefix("target-"))
    else:
        options["bit_penalty"] = float(budget)
    return layer_class, options, search


def mpe_result(model, layer, reader: EpochReader, planted=None) -> dict:
    """The figures of a trained MixedPrecisionEmbedding model; with `planted` (the
    long-tail synthetic set's answer), also the share of its signal that the rows
    with bits keep."""
    auc, loss = reader.best()
    report = layer.memory_report()
    kept = np.nan
    if planted is not None:
        row_bits = layer.group_bits.numpy()[layer.id_to_group.numpy()]
        kept = planted.signal_mass_kept(row_bits > 0)
    return {
        "signal_kept": kept,
        "clipped": reader.best_clipped(),
        "auc": auc,
        "loss": loss,
        "bits": report["average_bits"],
        "ratio": report["compression_ratio"],
        "payload_ratio": report["payload_compression_ratio"],
        "bytes": report["total_bytes"],
        "saved_bytes": saved_model_bytes(model, packed=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", choices=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="total epochs per method")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--penalties", default="1e-5,1e-4", help="bit penalties to sweep")
    parser.add_argument("--targets", default="8,16,32", help="target compression ratios")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated methods to run (default all); with --merge, the rows to keep",
    )
    parser.add_argument(
        "--results-name", default="", help="file name of the results (default compression-DATA)"
    )
    parser.add_argument(
        "--quantizer-scale",
        type=float,
        default=None,
        help="the layer's quantizer_learning_rate_scale in the runs that learn log step sizes",
    )
    parser.add_argument(
        "--quantizer-range",
        choices=[*keras_mpe.quantizer_range.RULES, "none"],
        default="floor",
        help="PrecisionSearch's quantizer_range in the MPE and QAT runs (none: off)",
    )
    parser.add_argument(
        "--retrain-range",
        choices=keras_mpe.quantizer_range.RULES,
        default=None,
        help="add keras_mpe.QuantizerRange with this rule to the retrain of the MPE and QAT runs",
    )
    parser.add_argument(
        "--mpe-bits", default="0,1,2,3,4,5,6", help="candidate bit-widths of the MPE runs"
    )
    parser.add_argument(
        "--merge",
        default="",
        help="comma-separated results files of earlier runs (parts run with --only) to "
        "write as one table and picture under --results-name, without training",
    )
    parser.add_argument(
        "--optimizer", default="adam", choices=sorted(OPTIMIZERS), help="every model's, lr 1e-3"
    )
    args = parser.parse_args()
    global optimizer_name
    optimizer_name = args.optimizer
    name = args.results_name or f"compression-{args.data}"
    if args.merge:
        parts = [read_results(path) for path in args.merge.split(",")]
        runs = [run for part_runs, _ in parts for run in part_runs]
        rows = [row for _, part_rows in parts for row in part_rows]
        if args.only:  # keep only these rows of the merged files
            rows = [row for row in rows if row["method"] in args.only.split(",")]
        write_results(rows, name, args.data, runs, description=args.data)
        return
    data = load(args.data)
    planted = planted_long_tail() if args.data == "long-tail-synthetic" else None
    mpe_bits = tuple(int(b) for b in args.mpe_bits.split(","))
    methods = ["fp32", "fp32-rewind", "fp32-mpe-init", "fp32-rewind-mpe-init", "fp32-fair"]
    methods += ["qat-8bit", "qat-4bit", "qat-2bit"]
    if IS_KERAS_3:
        methods += ["ptq-int8", "ptq-int4"]
    penalties = [p for p in args.penalties.split(",") if p]
    targets = [r for r in args.targets.split(",") if r]
    for recipe in ["mpe", "paper", *(f"paper+{d}" for d in DEVIATIONS)]:
        methods += [f"{recipe}-{p}" for p in penalties]
    methods += [f"{recipe}-target-{r}" for recipe in ("mpe", "paper") for r in targets]
    methods += [f"threshold-{r}" for r in targets]
    methods += [f"prune-int4-{r}" for r in targets]
    if args.only:
        unknown = [
            m
            for m in args.only.split(",")
            if m not in methods and not is_recipe(m) and not re.fullmatch(r"qat-[1-8]bit", m)
        ]
        if unknown:
            parser.error(
                f"--only names unknown methods {unknown}; known: {methods}, and "
                "paper+<deviation>+...-<penalty> or -target-<R> with any deviations"
            )
        methods = args.only.split(",")
    print(f"data: {data[4]}; {args.epochs} epochs per method, seeds {args.seeds}")
    rows = []
    for method in methods:
        start = time.time()
        results = [
            run_method(
                method,
                seed,
                data,
                args.epochs,
                args.batch,
                mpe_bits,
                planted,
                args.quantizer_scale,
                None if args.quantizer_range == "none" else args.quantizer_range,
                args.retrain_range,
            )
            for seed in range(args.seeds)
        ]
        auc = np.array([r["auc"] for r in results])
        loss = np.array([r["loss"] for r in results])
        row = {
            "method": method,
            "auc": auc.mean(),
            "auc_std": auc.std(),
            "loss": loss.mean(),
            "loss_std": loss.std(),
            "seed_aucs": auc.tolist(),
            **{
                k: np.mean([r[k] for r in results])
                for k in ("bits", "ratio", "payload_ratio", "bytes", "saved_bytes", "signal_kept")
            },
        }
        rows.append(row)
        print(
            f"{method:14s} AUC {row['auc']:.4f}±{row['auc_std']:.4f} "
            f"logloss {row['loss']:.4f}±{row['loss_std']:.4f} bits {row['bits']:.2f} "
            f"{row['ratio']:.1f}x ({row['payload_ratio']:.1f}x payload) "
            f"{row['bytes']:,.0f} B, SavedModel {row['saved_bytes']:,.0f} B, "
            f"signal kept {row['signal_kept']:.3f}, per seed {seed_cell(row)}  "
            f"[{time.time() - start:.0f}s]",
            flush=True,
        )
        # after every method, so that a run stopped early keeps what it finished
        write_results(rows, name, args.data, [run_line(args, data[4])], data[4])


def run_line(args, description: str) -> str:
    """The results file's line on one run: when, where, what data, which command."""
    flavour = "Keras 3" if IS_KERAS_3 else "tf-keras"
    return (
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, {flavour}; "
        f"{description}; {args.epochs} epochs per method, {args.seeds} seeds, batch "
        f"{args.batch}, {args.optimizer}. "
        f"Command: `python benchmarks/compression.py {shlex.join(sys.argv[1:])}`"
    )


def read_results(path: str) -> tuple[list[str], list[dict]]:
    """The run lines and method rows of a results file this script wrote."""
    with open(path) as file:
        lines = file.read().splitlines()
    runs = [line.removeprefix("- ") for line in lines if "Command: `" in line]
    rows = []
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if not line.startswith("| ") or "±" not in line:
            continue
        (auc, auc_std), (loss, loss_std) = (map(float, c.split("±")) for c in cells[1:3])
        saved = cells[7].replace(",", "") if len(cells) > 7 else "nan"
        kept = cells[8] if len(cells) > 8 else "n/a"
        seeds = cells[9] if len(cells) > 9 else "n/a"
        rows.append(
            {
                "method": cells[0],
                **{"auc": auc, "auc_std": auc_std, "loss": loss, "loss_std": loss_std},
                "bits": float(cells[3]),
                "ratio": float(cells[4].rstrip("x")),
                "payload_ratio": float(cells[5].rstrip("x")),
                "bytes": float(cells[6].replace(",", "")),
                "saved_bytes": float("nan" if saved == "n/a" else saved),
                "signal_kept": float("nan" if kept == "n/a" else kept),
                "seed_aucs": [] if seeds == "n/a" else [float(a) for a in seeds.split(", ")],
            }
        )
    return runs, rows


def cell(value: float, form: str) -> str:
    return "n/a" if np.isnan(value) else format(value, form)


def seed_cell(row: dict) -> str:
    """A row's test AUC per seed, in seed order (`n/a` for rows of older files)."""
    return ", ".join(f"{auc:.4f}" for auc in row.get("seed_aucs", [])) or "n/a"


def write_results(rows, name: str, data: str, runs: list[str], description: str) -> None:
    """Writes the table of `rows` and the picture of their curves under `name`."""
    os.makedirs(RESULTS, exist_ok=True)
    lines = [
        f"# Compression against accuracy ({data})",
        "",
        *[f"- {run}" if len(runs) > 1 else run for run in runs],
        "",
        "| method | test AUC | test logloss | avg bits | compression (with overhead) "
        "| compression (payload) | table bytes | SavedModel bytes | signal kept "
        "| test AUC per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['auc']:.4f} ± {r['auc_std']:.4f} | {r['loss']:.4f} ± "
            f"{r['loss_std']:.4f} | {r['bits']:.2f} | {r['ratio']:.1f}x | "
            f"{r['payload_ratio']:.1f}x | {r['bytes']:,.0f} | {cell(r['saved_bytes'], ',.0f')} | "
            f"{cell(r.get('signal_kept', np.nan), '.3f')} | {seed_cell(r)} |"
        )
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
    methods = {r["method"] for r in rows}
    baseline = "fp32-fair" if "fp32-fair" in methods else "fp32-rewind-mpe-init"
    plot_curves(rows, os.path.join(RESULTS, f"{name}.png"), description, baseline)


def curve_name(method: str) -> str:
    """The line a method's point belongs to: its name without the budget
    (`paper+sample-1e-4` -> `paper+sample`, `mpe-target-16` -> `mpe-target`)."""
    recipe, _, budget = method.partition("-")
    if recipe in ("fp32", "ptq", "qat", "prune"):
        return recipe
    return f"{recipe}-target" if budget.startswith("target-") else recipe


def plot_curves(rows, path: str, description: str, baseline: str = "fp32-rewind-mpe-init") -> None:
    """AUC minus the `baseline` row's AUC against compression, one line per method
    across its budgets, zoomed to where the lines are; points below the view are
    drawn on its lower edge as triangles with their value."""
    try:
        plt = pyplot()
    except ImportError as error:
        print(f"no plot: {error}")
        return
    reference = {r["method"]: r["auc"] for r in rows}.get(baseline)
    if reference is None:
        print(f"no {baseline} row: no plot")
        return
    lines: dict[str, list] = {}
    for r in rows:
        if r["method"] != baseline and not r["method"].startswith("fp32"):
            lines.setdefault(curve_name(r["method"]), []).append(r)
    deltas = np.array([r["auc"] - reference for line in lines.values() for r in line])
    floor = max(np.percentile(deltas, 10) - 0.002, -0.03) if deltas.size else -0.01
    top = max(deltas.max(initial=0.0), 0.0) + 0.002
    figure, axes = plt.subplots(figsize=(10, 5))
    axes.axhline(0.0, color="black", linewidth=0.8, label=f"{baseline} (0 = {reference:.4f})")
    for index, (name, points) in enumerate(sorted(lines.items())):
        points = sorted(points, key=lambda r: r["ratio"])
        x = np.array([r["ratio"] for r in points])
        y = np.array([r["auc"] - reference for r in points])
        std = np.array([r["auc_std"] for r in points])
        color = plt.cm.tab20(index % 20)
        style = "-" if name.startswith(("mpe", "paper")) else ":"
        shown = np.maximum(y, floor)
        # error bars clipped to the view, so a collapsed seed does not fill the picture
        inside = y >= floor  # points below the view get no bar
        yerr = [np.minimum(std, shown - floor), np.where(inside, np.minimum(std, top - shown), 0)]
        axes.errorbar(x, shown, yerr=yerr, fmt="o" + style, color=color,
                      capsize=2, markersize=4, label=name)  # fmt: skip
        for xi, yi in zip(x[y < floor], y[y < floor]):
            axes.plot(xi, floor, "v", color=color, markersize=9)
            axes.annotate(f"{yi:+.3f}", (xi, floor), textcoords="offset points",
                          xytext=(4, 4), fontsize=7, color=color)  # fmt: skip
    axes.set_xscale("log")
    axes.set_ylim(floor - 0.001, top)
    axes.set_xlabel("compression of the embedding table (with overhead)")
    axes.set_ylabel(f"test AUC - {baseline}")
    axes.set_title(description, fontsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
