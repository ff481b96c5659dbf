"""Train-step time of MixedPrecisionEmbedding (search and retrain) against Embedding.

One CTR-style model (fields -> embedding -> MLP with BatchNorm -> logit), built three
times with the same shapes and the same synthetic Zipf-distributed ids: with
`keras.layers.Embedding`, with `MixedPrecisionEmbedding` in the search state and in
the retrain state. Each model is compiled once; steps are timed in an interleaved
round robin so that machine noise hits all three alike. Prints the median step time
and the ratios to the plain Embedding step.

    python benchmarks/train_step.py                 # input_dim 100,000, D=16, 26 fields
    python benchmarks/train_step.py --steps 5 --input_dim 1000 --batch 256   # quick
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import keras_mpe
from keras_mpe.backend import IS_KERAS_3, keras


def build_model(embedding, fields: int, hidden: list[int], jit: bool):
    inputs = keras.Input(shape=(fields,), dtype="int32")
    x = keras.layers.Flatten()(embedding(inputs))
    for units in hidden:
        x = keras.layers.Dense(units)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dim", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--hidden", default="1024,512,256")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--jit", action="store_true", help="compile with XLA")
    args = parser.parse_args()
    hidden = [int(units) for units in args.hidden.split(",") if units]

    rng = np.random.default_rng(0)
    ids = (rng.zipf(1.2, size=(args.batch * 8, args.fields)) - 1) % args.input_dim
    labels = rng.integers(0, 2, size=(args.batch * 8, 1)).astype("float32")
    batches = [
        (
            tf.constant(ids[i : i + args.batch], tf.int32),
            tf.constant(labels[i : i + args.batch]),
        )
        for i in range(0, len(ids), args.batch)
    ]

    plain = keras.layers.Embedding(args.input_dim, args.dim)
    search = keras_mpe.MixedPrecisionEmbedding(args.input_dim, args.dim, bit_penalty=1e-6)
    retrain = keras_mpe.MixedPrecisionEmbedding(args.input_dim, args.dim)
    for layer in (search, retrain):
        layer.adapt(ids)
    retrain.freeze_precision()
    models = {
        name: build_model(layer, args.fields, hidden, args.jit)
        for name, layer in (
            ("embedding", plain),
            ("search", search),
            ("retrain", retrain),
        )
    }
    times = {name: [] for name in models}
    for model in models.values():  # trace and warm up
        for x, y in batches[:2]:
            model.train_on_batch(x, y)
    for step in range(args.steps):
        x, y = batches[step % len(batches)]
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)

    flavour = "Keras 3" if IS_KERAS_3 else "tf-keras"
    print(
        f"train step, {flavour}, input_dim={args.input_dim} D={args.dim} "
        f"fields={args.fields} batch={args.batch} MLP={hidden} jit={args.jit} "
        f"steps={args.steps}"
    )
    base = np.median(times["embedding"])
    for name, values in times.items():
        median = np.median(values)
        print(f"  {name:10s} {1000 * median:8.1f} ms  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
