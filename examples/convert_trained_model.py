"""Compress a model that is already trained: `keras_mpe.convert`.

Trains an ordinary float32 click-through model (`keras.layers.Embedding`, MLP) on
MovieLens-100K (synthetic data when MovieLens cannot be loaded), then converts it
twice at the same compression target:

- `epochs=0`: no training, the bits of each frequency group allocated from the
  trained table alone (frequency-weighted quantization error at the byte budget);
- `epochs=1`: the same bits, then one epoch of fine-tuning on the training data
  (tables at their bits and the rest of the model, at 0.1 times the learning rate
  the model was compiled with).

Exports the second as a packed SavedModel, serves it, and prints test AUC before and
after and the compression of the table. The original model is left as it was.

    python examples/convert_trained_model.py            # about a minute on 2 cores
    python examples/convert_trained_model.py --smoke    # well under a minute, for CI
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

import keras_mpe
from keras_mpe.backend import keras
from keras_mpe.datasets import DatasetUnavailableError, load_movielens, synthetic_ctr


def load_data(smoke: bool):
    """MovieLens-100K click data (synthetic when unavailable), ids ranked by frequency."""
    try:
        data = load_movielens("100k").to_ctr_data()
    except DatasetUnavailableError as error:
        print(f"NOTE: MovieLens-100K is unavailable, so this runs on SYNTHETIC data: {error}")
        data = synthetic_ctr(rows=12_000 if smoke else 100_000, fields=8, ids_per_field=500)
    else:
        if smoke:  # slices of the splits; frequencies are counted on the train slice
            data.train = tuple(part[:8_000] for part in data.train)
            data.validation = tuple(part[:2_000] for part in data.validation)
            data.test = tuple(part[:2_000] for part in data.test)
            data.description += " (smoke run: 8000/2000/2000 rows of it)"
    return data.ranked_by_frequency()


def float_model(vocabulary_size: int, fields: int) -> keras.Model:
    """The model someone already has: a float32 Embedding and an MLP."""
    ids = keras.Input(shape=(fields,), dtype="int32", name="ids")
    table = keras.layers.Embedding(
        vocabulary_size,
        16,
        embeddings_initializer=keras.initializers.RandomNormal(0.0, 0.003),
        name="fields",
    )
    x = keras.layers.Flatten()(table(ids))
    for units in (256, 128):
        x = keras.layers.Dense(units, activation="relu")(x)
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="click")(x))
    model.compile(
        keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")]
    )
    return model


def test_auc(model: keras.Model, test) -> float:
    return float(model.evaluate(*test, batch_size=8192, verbose=0, return_dict=True)["auc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for CI")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the float model")
    parser.add_argument("--target-compression", type=float, default=16.0)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_data(args.smoke)
    train, validation, test = data.train, data.validation, data.test
    print(f"data: {data.description}")

    epochs = 1 if args.smoke else args.epochs
    print(f"\n[1/3] the trained float32 model ({epochs} epochs)")
    keras.utils.set_random_seed(0)
    model = float_model(data.vocabulary_size, train[0].shape[1])
    model.fit(
        *train, validation_data=validation, epochs=epochs, batch_size=args.batch_size, verbose=2
    )
    float_auc = test_auc(model, test)

    target = args.target_compression
    print(f"\n[2/3] keras_mpe.convert at {target:g}x: epochs=0 (no training) and epochs=1")
    options = dict(target_compression=target, num_groups=32 if args.smoke else 128)
    fast = keras_mpe.convert(model, train, epochs=0, **options)
    fast_auc = test_auc(fast, test)
    keras.utils.set_random_seed(0)
    tuned = keras_mpe.convert(
        model,
        train,
        epochs=1,
        validation_data=validation,
        monitor="val_auc",
        batch_size=args.batch_size,
        verbose=2,
        **options,
    )
    tuned_auc = test_auc(tuned, test)

    print("\n[3/3] export the converted model and serve it")
    with tempfile.TemporaryDirectory() as directory:
        export_dir = os.path.join(directory, "converted")
        keras_mpe.export_saved_model(tuned, export_dir)
        serve = tf.saved_model.load(export_dir).signatures["serving_default"]
        rows = test[0][:4096]
        served = serve(ids=tf.constant(rows))["output_0"].numpy()
        difference = float(np.abs(served - tuned.predict(rows, verbose=0)).max())

    print(f"\nSummary: {data.description}")
    print(f"  test AUC float32 model:     {float_auc:.4f}")
    for name, converted, auc in (("epochs=0", fast, fast_auc), ("epochs=1", tuned, tuned_auc)):
        report = converted.get_layer("fields").memory_report()
        print(
            f"  test AUC convert {name}: {auc:.4f} ({auc - float_auc:+.4f}), "
            f"{report['compression_ratio']:.1f}x with overhead, average bits "
            f"{report['average_bits']:.3f}"
        )
    print(f"  max |SavedModel - Keras| over {len(rows)} test rows: {difference:.2e}")
    print(f"  the original model still holds: {type(model.get_layer('fields')).__name__}")
    print(f"  time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
