"""`keras_mpe.convert` on a trained float32 model, against post-training int8/int4 and
MPE trained from scratch.

Per seed: a float32 model (`keras.layers.Embedding` with MPE's init N(0, 0.003), the
fair baseline of `compression.py`) is trained for `--epochs` epochs and restored to
its best validation-AUC epoch; then, from that trained model:

- `float32`: its test AUC (what every other row is compared with);
- `ptq-int8`, `ptq-int4` (Keras 3 only): a copy with `Embedding.quantize(mode)`;
- `convert-0ep-<R>`: `keras_mpe.convert(..., epochs=0, target_compression=R)`, the
  post-training allocation from the trained table alone;
- `convert-1ep-<R>`: `keras_mpe.convert(..., epochs=1, target_compression=R)` with its
  defaults: the bits of `epochs=0`, then one fine-tuning epoch on the training split
  (the rest of the model too) at 0.1 times the compiled learning rate (1e-4);
- `convert-1ep-search-<R>`: the same with `search=True, learning_rate=--search-lr`
  (1e-3, the rate the float model was trained at): one `PrecisionSearch` epoch (best
  epoch by validation AUC) and one retrain epoch;
- `scratch-<R>` (with `--scratch`): MPE trained from scratch as in `compression.py`,
  `--epochs / 2` search and `--epochs / 2` retrain epochs, read at its best
  validation-AUC retrain epoch.

Prints a table and writes `benchmarks/results/convert-<data>.md`. The data sets are
those of `compression.py`'s `load` ("instacart" and "long-tail-synthetic" need the
`compression.py` and `keras_mpe.datasets` of main after 2026-12-02).

    python benchmarks/convert.py --data movielens-100k --seeds 3 --scratch
    python benchmarks/convert.py --data movielens-1m --seeds 3
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compression import build, fit, load, saved_model_bytes  # noqa: E402

import keras_mpe  # noqa: E402
from keras_mpe.backend import IS_KERAS_3, keras  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DIM = 16


class KeepBest(keras.callbacks.Callback):
    """Restores the weights of the best validation-AUC epoch when `fit` ends."""

    def __init__(self):
        super().__init__()
        self.best, self.weights = -np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_auc"] > self.best:
            self.best, self.weights = logs["val_auc"], self.model.get_weights()

    def on_train_end(self, logs=None):
        self.model.set_weights(self.weights)


def test_scores(model, test) -> tuple[float, float]:
    scores = model.evaluate(*test, batch_size=8192, verbose=0, return_dict=True)
    return float(scores["auc"]), float(scores["loss"])


def run_seed(seed: int, data, args, targets: list[float]) -> dict[str, dict]:
    train, validation, test, vocabulary, _ = data
    fields = train[0].shape[1]
    keras.utils.set_random_seed(seed)
    initializer = keras.initializers.RandomNormal(0.0, 0.003)
    table = keras.layers.Embedding(vocabulary, DIM, embeddings_initializer=initializer)
    model = build(table, fields)
    start = time.time()
    fit(model, train, validation, test, args.epochs, args.batch, callbacks=[KeepBest()])
    auc, loss = test_scores(model, test)
    results = {"float32": {"auc": auc, "loss": loss, "ratio": 1.0, "seconds": time.time() - start}}
    print(f"seed {seed} float32 AUC {auc:.4f} [{time.time() - start:.0f}s]", flush=True)
    variants = [(f"convert-{e}ep", {"epochs": e}) for e in args.convert_epochs]
    if args.search_lr:
        options = {"epochs": 1, "search": True, "learning_rate": args.search_lr}
        variants.append(("convert-1ep-search", options))
    for prefix, variant in variants:
        for target in targets:
            keras.utils.set_random_seed(seed)
            start = time.time()
            converted = keras_mpe.convert(
                model,
                train,
                target_compression=target,
                validation_data=validation,
                monitor="val_auc",
                batch_size=args.batch,
                **variant,
            )
            seconds = time.time() - start
            layer = next(iter(keras_mpe.embedding.find_mixed_precision_layers(converted)))
            auc, loss = test_scores(converted, test)
            report = layer.memory_report()
            name = f"{prefix}-{target:g}"
            results[name] = {
                "auc": auc,
                "loss": loss,
                "ratio": report["compression_ratio"],
                "seconds": seconds,
                "saved_bytes": saved_model_bytes(converted, packed=True),
            }
            print(
                f"seed {seed} {name} AUC {auc:.4f} {report['compression_ratio']:.1f}x "
                f"[{seconds:.0f}s]",
                flush=True,
            )
    if IS_KERAS_3:
        for mode, bits in (("int8", 8), ("int4", 4)):
            copy = keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
            copy.compile_from_config(model.get_compile_config())
            next(la for la in copy.layers if isinstance(la, keras.layers.Embedding)).quantize(mode)
            auc, loss = test_scores(copy, test)
            size = vocabulary * DIM * bits // 8 + 4 * vocabulary  # codes + per-row scale
            results[f"ptq-{mode}"] = {
                "auc": auc,
                "loss": loss,
                "ratio": 4 * vocabulary * DIM / size,
                "seconds": 0.0,
            }
            print(f"seed {seed} ptq-{mode} AUC {auc:.4f}", flush=True)
    if args.scratch:
        half = args.epochs // 2
        for target in targets:
            keras.utils.set_random_seed(seed)
            start = time.time()
            layer = keras_mpe.MixedPrecisionEmbedding(vocabulary, DIM)
            layer.adapt(train[0])
            scratch = build(layer, fields)
            search = keras_mpe.PrecisionSearch(
                monitor="val_auc", target_compression=target, verbose=0
            )
            fit(scratch, train, validation, test, args.epochs - half, args.batch, [search])
            reader = fit(scratch, train, validation, test, half, args.batch, compile_model=False)
            auc, loss = reader.best()
            results[f"scratch-{target:g}"] = {
                "auc": auc,
                "loss": loss,
                "ratio": layer.memory_report()["compression_ratio"],
                "seconds": time.time() - start,
            }
            print(f"seed {seed} scratch-{target:g} AUC {auc:.4f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default="movielens-100k",
        choices=[
            "synthetic",
            "movielens-100k",
            "movielens-1m",
            "instacart",
            "long-tail-synthetic",
        ],
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the float model")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--targets", default="8,16,32")
    parser.add_argument("--convert-epochs", default="0,1", help="epochs of the convert runs")
    parser.add_argument("--scratch", action="store_true", help="also MPE from scratch")
    parser.add_argument(
        "--results-name", default="", help="file name of the results (default convert-DATA)"
    )
    parser.add_argument(
        "--search-lr",
        type=float,
        default=1e-3,
        help="also convert with search=True (1 search, 1 retrain epoch) at this learning "
        "rate (0: not)",
    )
    args = parser.parse_args()
    args.convert_epochs = [int(e) for e in args.convert_epochs.split(",")]
    targets = [float(r) for r in args.targets.split(",")]
    data = load(args.data)
    print(f"data: {data[4]}", flush=True)
    runs = []
    for seed in range(args.seeds):  # results rewritten after each seed
        runs.append(run_seed(seed, data, args, targets))
        write_results(runs, args, data[4])


def write_results(runs: list[dict], args, description: str) -> None:
    flavour = "Keras 3" if IS_KERAS_3 else "tf-keras"
    float_auc = np.array([run["float32"]["auc"] for run in runs])
    lines = [
        f"# keras_mpe.convert against post-training quantization ({args.data})",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} cores (shared), {flavour}; {description}; "
        f"float32 model {args.epochs} epochs (best validation AUC epoch), {len(runs)} "
        f"seeds{' (of ' + str(args.seeds) + ' planned)' if len(runs) < args.seeds else ''}, "
        f"batch {args.batch}. Command: `python benchmarks/convert.py "
        f"{shlex.join(sys.argv[1:])}`",
        "",
        "ΔAUC: the method's test AUC minus the float32 model's, per seed, then averaged.",
        "",
        "| method | test AUC | ΔAUC vs float32 | test logloss | compression (with overhead) "
        "| SavedModel bytes | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in runs[0]:
        auc = np.array([run[name]["auc"] for run in runs])
        delta = auc - float_auc
        loss = np.array([run[name]["loss"] for run in runs])
        ratio = np.mean([run[name]["ratio"] for run in runs])
        saved = [run[name].get("saved_bytes") for run in runs]
        saved = f"{np.mean(saved):,.0f}" if None not in saved else "n/a"
        seconds = np.mean([run[name]["seconds"] for run in runs])
        line = (
            f"| {name} | {auc.mean():.4f} ± {auc.std():.4f} | {delta.mean():+.4f} ± "
            f"{delta.std():.4f} | {loss.mean():.4f} | {ratio:.1f}x | {saved} | {seconds:.0f} |"
        )
        lines.append(line)
        print(line)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{args.results_name or 'convert-' + args.data}.md")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
