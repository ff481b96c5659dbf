"""Click-through prediction on MovieLens-1M with all eight fields: float32 against MPE.

A DNN CTR model (embeddings of the eight fields, concatenated, then an MLP) on
MovieLens-1M (label: rating >= 4; fields user, item, gender, age, occupation, zip code,
release year, first genre; fixed random 80/10/10 split; see
`keras_mpe.datasets.load_movielens`). It is trained twice: with a float32
`keras.layers.Embedding`, and with a `MixedPrecisionEmbedding` searched with
`PrecisionSearch` and retrained at the chosen bits. Prints test AUC and log loss of both
and the compression of the embedding table.

One shared table for all fields, not one table per field. MPE groups the features of
all fields by train frequency into one set of groups (as the paper's CTR models do), so
the search trades bits between fields: a rare zip code can be pruned while a frequent
movie keeps 6 bits, and the tiny fields (2 genders, 7 ages) cost a handful of rows in a
shared group instead of their own table with its own step sizes, offset and group
boundaries. The ids of the shared space are renumbered by descending train frequency
(`CTRData.ranked_by_frequency`), so every group is a contiguous id range and the
packed table stores no id permutation.

Runs under Keras 3 (the default `tf.keras`); it also runs under tf-keras.

    python examples/ctr_movielens.py           # 2 to 3 minutes on 2 CPU cores
    python examples/ctr_movielens.py --smoke   # well under a minute, for CI
"""

import argparse
import time

import numpy as np

import keras_mpe
from keras_mpe.backend import keras
from keras_mpe.datasets import load_movielens
from keras_mpe.demo import compile_ctr, ctr_model

EMBEDDING_DIM = 16
HIDDEN = (256, 128)


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test AUC and log loss of `model` on `(x, y)`."""
    figures = model.evaluate(x, y, batch_size=8192, verbose=0, return_dict=True)
    return float(figures["auc"]), float(figures["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for CI")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per MPE phase")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--target-compression",
        type=float,
        default=16.0,
        help="table compression ratio (with overhead) the search steers to",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    epochs = 1 if args.smoke else args.epochs

    movielens = load_movielens("1m")
    data = movielens.to_ctr_data()
    if args.smoke:  # slices of the splits; frequencies are counted on the train slice
        data.train = tuple(part[:20_000] for part in data.train)
        data.validation = tuple(part[:5_000] for part in data.validation)
        data.test = tuple(part[:5_000] for part in data.test)
        data.description += " (smoke run: 20000/5000/5000 rows of it)"
    data = data.ranked_by_frequency()
    (x_train, y_train), validation, (x_test, y_test) = data.train, data.validation, data.test
    fields = x_train.shape[1]
    print(f"data: {data.description}")
    print(
        f"  {len(x_train)} train / {len(x_test)} test rows; fields "
        f"{', '.join(movielens.field_names)}; one shared table of {data.vocabulary_size} ids"
    )

    def fit(model: keras.Model, epochs: int, callbacks: list | None = None) -> None:
        model.fit(
            x_train,
            y_train,
            batch_size=args.batch_size,
            epochs=epochs,
            validation_data=validation,
            callbacks=callbacks,
            verbose=2,
        )

    print(f"\n[1/3] float32 keras.layers.Embedding, {2 * epochs} epochs")
    keras.utils.set_random_seed(0)
    baseline = ctr_model(keras.layers.Embedding(data.vocabulary_size, EMBEDDING_DIM), fields)
    compile_ctr(baseline)
    fit(baseline, 2 * epochs)
    float_auc, float_logloss = evaluate(baseline, x_test, y_test)

    print(f"\n[2/3] MPE search ({epochs} epochs, target {args.target_compression:g}x)")
    keras.utils.set_random_seed(0)
    layer = keras_mpe.MixedPrecisionEmbedding(data.vocabulary_size, EMBEDDING_DIM, name="fields")
    layer.adapt(x_train)  # train frequencies -> frequency groups
    model = ctr_model(layer, fields, HIDDEN)
    compile_ctr(model)
    search = keras_mpe.PrecisionSearch(
        monitor="val_auc", target_compression=args.target_compression
    )
    fit(model, epochs, [search])

    print(f"\n[3/3] MPE retrain at the chosen bits, table rewound ({epochs} epochs)")
    fit(model, epochs)
    mpe_auc, mpe_logloss = evaluate(model, x_test, y_test)

    report = search.reports[layer.name]
    bits = np.bincount(report["group_bits"], minlength=max(layer.bit_widths) + 1)
    print(f"\nSummary: CTR on {data.description}")
    print(f"  {'model':<36} {'test AUC':>8} {'log loss':>9} {'table bytes':>12}")
    print(
        f"  {'float32 Embedding':<36} {float_auc:>8.4f} {float_logloss:>9.4f} "
        f"{report['float32_bytes']:>12,}"
    )
    print(
        f"  {'MixedPrecisionEmbedding (packed)':<36} {mpe_auc:>8.4f} {mpe_logloss:>9.4f} "
        f"{report['total_bytes']:>12,}"
    )
    print(f"  AUC difference (MPE - float32): {mpe_auc - float_auc:+.4f}")
    print(
        f"  compression: {report['compression_ratio']:.1f}x with overhead, "
        f"{report['payload_compression_ratio']:.1f}x payload only; "
        f"average bits {report['average_bits']:.3f}"
    )
    print("  groups per bit-width: " + ", ".join(f"{b}: {n}" for b, n in enumerate(bits) if n))
    print(f"  time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
