"""Compression against accuracy: every method under one epoch budget, in one run.

Methods (each for every seed, all with the same model and the same total epochs):
- `fp32`: `keras.layers.Embedding`, trained for the whole budget.
- `fp32-rewind`: MPE's schedule without quantization: train half the budget, reset the
  table to its initial values (keeping the rest of the model), train the other half.
- `fp32-mpe-init`, `fp32-rewind-mpe-init`: the same two with MixedPrecisionEmbedding's
  initializer, N(0, 0.003), instead of Keras's U(-0.05, 0.05): an ablation of the init.
- `qat-Nbit`: `MixedPrecisionEmbedding(bit_widths=(N,))`, uniform quantization-aware
  training, two phases like MPE.
- `ptq-int8`, `ptq-int4` (Keras 3 only): the trained `fp32` model's table quantized after
  training with `Embedding.quantize(mode)`.
- `mpe-<penalty>`: MixedPrecisionEmbedding searched with that bit penalty by
  `PrecisionSearch` (which freezes, rewinds and resets the optimizer), then retrained.
- `mpe-target-<R>`: the same with `PrecisionSearch(target_compression=R)`.
- `mpe-expectation-<penalty>`, `mpe-expectation-target-<R>`: the same two with
  `search_forward="expectation"`, the paper's forward (the expectation over the
  widths), instead of sampled widths.
- `threshold-<R>`: no search, a frequency threshold: the rarest groups pruned (0 bits)
  until the table is R times smaller, the others at 4 bits (`fit_to_budget` from 4 bits
  everywhere), trained with the rewind schedule of `fp32-rewind`.
Each run is read at its best validation-AUC epoch (for two-phase methods, in the second
phase). Each also reports the size of its SavedModel (`keras_mpe.export_saved_model`
for MixedPrecisionEmbedding models, Keras's `model.export` for the others). Prints a
table and writes `benchmarks/results/compression.md` and a PNG of test
AUC against compression.

    python benchmarks/compression.py --data synthetic --seeds 1 --epochs 2   # quick
    python benchmarks/compression.py --data movielens-1m                     # full
"""

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

import keras_mpe
from keras_mpe.backend import IS_KERAS_3, keras
from keras_mpe.datasets import synthetic_ctr
from keras_mpe.precision import fit_to_budget

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def load(name: str):
    """`(train, validation, test, vocabulary_size, description)` of a data set."""
    if name == "synthetic":
        data = synthetic_ctr(rows=200_000, fields=8, ids_per_field=5_000).ranked_by_frequency()
        return data.train, data.validation, data.test, data.vocabulary_size, data.description
    from keras_mpe.datasets import load_movielens

    data = load_movielens(name.split("-")[1]).to_ctr_data().ranked_by_frequency()
    return data.train, data.validation, data.test, data.vocabulary_size, data.description


class EpochReader(keras.callbacks.Callback):
    """Evaluates the test split at each epoch end, to read the best-validation epoch."""

    def __init__(self, test):
        super().__init__()
        self.test = test
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        test = self.model.evaluate(*self.test, batch_size=8192, verbose=0, return_dict=True)
        self.rows.append((logs["val_auc"], test["auc"], test["loss"]))

    def best(self):
        return max(self.rows)[1:]


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
    model, train, validation, test, epochs: int, batch: int, callbacks=(), compile_model=True
) -> EpochReader:
    if compile_model:
        model.compile(
            keras.optimizers.Adam(1e-3),
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


def run_method(
    method: str, seed: int, data, epochs: int, batch: int, mpe_bits: tuple[int, ...]
) -> dict:
    train, validation, test, vocabulary, _ = data
    fields, dim = train[0].shape[1], 16
    keras.utils.set_random_seed(seed)
    half = epochs // 2
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
        return {**result, "saved_bytes": saved_model_bytes(model, packed=False)}
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
        return mpe_result(model, layer, reader)
    search = {"monitor": "val_auc", "verbose": 0}
    expectation = method.startswith("mpe-expectation-")
    method = method.replace("mpe-expectation-", "mpe-")
    if method.startswith("qat"):
        options = {"bit_widths": (int(method.split("-")[1].rstrip("bit")),)}
    elif method.startswith("mpe-target"):
        options = {}
        search["target_compression"] = float(method.split("-")[2])
    else:
        options = {"bit_penalty": float(method.split("-", 1)[1])}
    if method.startswith("mpe"):
        options["bit_widths"] = mpe_bits
    if expectation:
        options["search_forward"] = "expectation"
    layer = keras_mpe.MixedPrecisionEmbedding(vocabulary, dim, **options)
    layer.adapt(train[0])
    model = build(layer, fields)
    fit(
        model, train, validation, test, epochs - half, batch, [keras_mpe.PrecisionSearch(**search)]
    )
    reader = fit(model, train, validation, test, half, batch, compile_model=False)
    return mpe_result(model, layer, reader)


def mpe_result(model, layer, reader: EpochReader) -> dict:
    auc, loss = reader.best()
    report = layer.memory_report()
    return {
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
    parser.add_argument(
        "--data", default="synthetic", choices=["synthetic", "movielens-100k", "movielens-1m"]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="total epochs per method")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--penalties", default="0,1e-6,1e-5")
    parser.add_argument("--targets", default="8,16,32", help="target compression ratios")
    parser.add_argument("--only", default="", help="comma-separated methods to run (default all)")
    parser.add_argument(
        "--results-name", default="", help="file name of the results (default compression-DATA)"
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
    args = parser.parse_args()
    name = args.results_name or f"compression-{args.data}"
    if args.merge:
        parts = [read_results(path) for path in args.merge.split(",")]
        runs = [run for part_runs, _ in parts for run in part_runs]
        rows = [row for _, part_rows in parts for row in part_rows]
        write_results(rows, name, args.data, runs, description=args.data)
        return
    data = load(args.data)
    mpe_bits = tuple(int(b) for b in args.mpe_bits.split(","))
    methods = ["fp32", "fp32-rewind", "fp32-mpe-init", "fp32-rewind-mpe-init"]
    methods += ["qat-8bit", "qat-4bit", "qat-2bit"]
    if IS_KERAS_3:
        methods += ["ptq-int8", "ptq-int4"]
    methods += [f"mpe-{p}" for p in args.penalties.split(",") if p]
    methods += [f"mpe-target-{r}" for r in args.targets.split(",") if r]
    methods += [f"mpe-expectation-{p}" for p in args.penalties.split(",") if p]
    methods += [f"mpe-expectation-target-{r}" for r in args.targets.split(",") if r]
    methods += [f"threshold-{r}" for r in args.targets.split(",") if r]
    if args.only:
        unknown = set(args.only.split(",")) - set(methods)
        if unknown:
            parser.error(f"--only names unknown methods {sorted(unknown)}; known: {methods}")
        methods = [m for m in methods if m in args.only.split(",")]
    print(f"data: {data[4]}; {args.epochs} epochs per method, seeds {args.seeds}")
    rows = []
    for method in methods:
        start = time.time()
        results = [
            run_method(method, seed, data, args.epochs, args.batch, mpe_bits)
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
            **{
                k: np.mean([r[k] for r in results])
                for k in ("bits", "ratio", "payload_ratio", "bytes", "saved_bytes")
            },
        }
        rows.append(row)
        print(
            f"{method:14s} AUC {row['auc']:.4f}±{row['auc_std']:.4f} "
            f"logloss {row['loss']:.4f}±{row['loss_std']:.4f} bits {row['bits']:.2f} "
            f"{row['ratio']:.1f}x ({row['payload_ratio']:.1f}x payload) "
            f"{row['bytes']:,.0f} B, SavedModel {row['saved_bytes']:,.0f} B  "
            f"[{time.time() - start:.0f}s]",
            flush=True,
        )
    write_results(rows, name, args.data, [run_line(args, data[4])], data[4])


def run_line(args, description: str) -> str:
    """The results file's line on one run: when, where, what data, which command."""
    flavour = "Keras 3" if IS_KERAS_3 else "tf-keras"
    return (
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, {flavour}; "
        f"{description}; {args.epochs} epochs per method, {args.seeds} seeds, batch "
        f"{args.batch}. Command: `python benchmarks/compression.py {shlex.join(sys.argv[1:])}`"
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
        rows.append(
            {
                "method": cells[0],
                **{"auc": auc, "auc_std": auc_std, "loss": loss, "loss_std": loss_std},
                "bits": float(cells[3]),
                "ratio": float(cells[4].rstrip("x")),
                "payload_ratio": float(cells[5].rstrip("x")),
                "bytes": float(cells[6].replace(",", "")),
                "saved_bytes": float("nan" if saved == "n/a" else saved),
            }
        )
    return runs, rows


def write_results(rows, name: str, data: str, runs: list[str], description: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    lines = [
        f"# Compression against accuracy ({data})",
        "",
        *[f"- {run}" if len(runs) > 1 else run for run in runs],
        "",
        "| method | test AUC | test logloss | avg bits | compression (with overhead) "
        "| compression (payload) | table bytes | SavedModel bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['auc']:.4f} ± {r['auc_std']:.4f} | {r['loss']:.4f} ± "
            f"{r['loss_std']:.4f} | {r['bits']:.2f} | {r['ratio']:.1f}x | "
            f"{r['payload_ratio']:.1f}x | {r['bytes']:,.0f} | "
            + ("n/a |" if np.isnan(r["saved_bytes"]) else f"{r['saved_bytes']:,.0f} |")
        )
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    markers = {"fp32": "o", "ptq": "v", "qat": "s", "mpe": "^", "threshold": "D"}
    for index, r in enumerate(rows):
        axes.errorbar(
            r["ratio"],
            r["auc"],
            yerr=r["auc_std"],
            fmt=markers.get(r["method"].split("-")[0], "o"),
            color=plt.cm.tab20(index % 20),
            capsize=3,
            label=r["method"],
        )
    axes.set_xscale("log")
    axes.set_xlabel("compression of the embedding table (with overhead)")
    axes.set_ylabel("test AUC")
    axes.set_title(description, fontsize=7)
    axes.legend(fontsize=7, loc="lower left", ncol=2)
    figure.tight_layout()
    figure.savefig(os.path.join(RESULTS, f"{name}.png"), dpi=120)


if __name__ == "__main__":
    main()
