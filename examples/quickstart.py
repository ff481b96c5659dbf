"""End to end on built-in synthetic click data: float Embedding against MPE.

Trains a small CTR model twice on the same data: once with `keras.layers.Embedding`,
once with `MixedPrecisionEmbedding` through MPE's two phases (search the per-group
bit-widths, then freeze them, rewind the table to its initial values and retrain).
Prints test AUC, the chosen bits and the compression of the embedding table.

    python examples/quickstart.py            # about a minute on 2 cores
    python examples/quickstart.py --smoke    # a few seconds, for CI
"""

import argparse

import numpy as np

import keras_mpe
from keras_mpe.backend import keras
from keras_mpe.datasets import synthetic_ctr


def build_model(embedding, fields: int):
    inputs = keras.Input(shape=(fields,), dtype="int32")
    x = keras.layers.Flatten()(embedding(inputs))
    for units in (64, 32):
        x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def compile_model(model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per phase")
    parser.add_argument("--bit_penalty", type=float, default=2e-5)
    args = parser.parse_args()
    rows, epochs = (4_000, 1) if args.smoke else (100_000, args.epochs)
    data = synthetic_ctr(rows=rows, fields=8, ids_per_field=2_000)
    (x_train, y_train), validation, (x_test, y_test) = data.train, data.validation, data.test
    fields, dim, batch = x_train.shape[1], 16, 512
    print(f"data: {data.description}")

    print("[1/3] float32 baseline: keras.layers.Embedding")
    keras.utils.set_random_seed(0)
    baseline = build_model(keras.layers.Embedding(data.vocabulary_size, dim), fields)
    compile_model(baseline, 1e-3)
    baseline.fit(
        x_train,
        y_train,
        batch_size=batch,
        epochs=2 * epochs,
        verbose=2,
        validation_data=validation,
    )
    float_auc = baseline.evaluate(x_test, y_test, verbose=0, return_dict=True)["auc"]

    print("[2/3] MPE search (PrecisionSearch): per-group bit-widths learned with a penalty")
    keras.utils.set_random_seed(0)
    layer = keras_mpe.MixedPrecisionEmbedding(
        data.vocabulary_size, dim, num_groups=64, bit_penalty=args.bit_penalty
    )
    layer.adapt(x_train)
    model = build_model(layer, fields)
    compile_model(model, 1e-3)
    search = keras_mpe.PrecisionSearch(monitor="val_auc")
    model.fit(
        x_train,
        y_train,
        batch_size=batch,
        epochs=epochs,
        verbose=2,
        validation_data=validation,
        callbacks=[search],
    )

    print("[3/3] MPE retrain: bits frozen, table rewound to its initial values")
    model.fit(
        x_train, y_train, batch_size=batch, epochs=epochs, verbose=2, validation_data=validation
    )
    mpe_auc = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["auc"]

    report = layer.memory_report()
    histogram = np.bincount(report["group_bits"], minlength=max(layer.bit_widths) + 1)
    print(f"\nresults on {data.description}")
    print(f"  test AUC  float32 Embedding:        {float_auc:.4f}")
    print(f"  test AUC  MixedPrecisionEmbedding:  {mpe_auc:.4f}")
    print(
        "  groups per bit-width:  "
        + ", ".join(f"{b} bits: {n}" for b, n in enumerate(histogram) if n)
    )
    print(f"  average bits per value: {report['average_bits']:.3f}")
    print(
        f"  table bytes: {report['float32_bytes']:,} as float32 -> "
        f"{report['total_bytes']:,} packed ({report['payload_bytes']:,} payload + "
        f"{report['overhead_bytes']:,} overhead)"
    )
    print(
        f"  compression: {report['compression_ratio']:.1f}x with overhead, "
        f"{report['payload_compression_ratio']:.1f}x payload only"
    )


if __name__ == "__main__":
    main()
