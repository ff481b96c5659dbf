"""Serving lookups per second: packed MPE table vs float `tf.gather` vs Keras int4.

For each `input_dim` (default 1e5 and 1e6), D=16, batches of 4096 x 26 ids drawn
from a Zipf-like distribution, it times, side by side in one run:

- `packed`: a `keras_mpe.PackedEmbedding` made from a `MixedPrecisionEmbedding`
  frozen at a mix of 0..6 bits over its 128 groups, frequency-ordered (no
  permutation; `--permuted` shuffles the ids so a packed permutation is needed);
- `float gather`: `tf.gather` on the float32 table variable;
- `keras int4`: Keras 3 `keras.layers.Embedding(...).quantize("int4")` (skipped
  under tf-keras, which has no such method);
- `exported`: the layer as a one-layer Keras model, exported with
  `keras_mpe.export_saved_model` and loaded with `tf.saved_model.load`; its
  `serving_default` in the `graph` row, its `serving_xla` in the `xla` row;

each run op by op (`eager`), as a `tf.function` graph (`graph`, what TF Serving
runs) and compiled with XLA (`xla`, what `serving_xla` runs; the packed lookup then
takes its op mix for XLA). Timings are medians over `--repeats` calls after warm-up,
interleaved across methods. Printed, not asserted.

    python benchmarks/serving.py
    python benchmarks/serving.py --input_dims 100000 --repeats 5      # quick
"""

import argparse
import tempfile
import time

import numpy as np
import tensorflow as tf

import keras_mpe
from keras_mpe.backend import keras


def zipf_ids(rng: np.random.Generator, input_dim: int, shape: tuple[int, ...]) -> np.ndarray:
    """Ids ranked by frequency (id 0 the most frequent), heavy-tailed."""
    return ((rng.zipf(1.2, size=shape) - 1) % input_dim).astype(np.int32)


def mpe_bits(rng: np.random.Generator, groups: int) -> np.ndarray:
    """Bits per group (0 = rarest): mostly pruned or few bits, frequent groups more."""
    rank = np.arange(groups) / groups
    bits = np.round(6 * rank**3 + rng.normal(scale=0.5, size=groups))
    return np.clip(bits, 0, 6).astype(np.int32)


def frozen_layer(
    table: np.ndarray, rng: np.random.Generator, permuted: bool
) -> keras_mpe.MixedPrecisionEmbedding:
    """A retrain-state layer holding `table`, its 128 groups at `mpe_bits`."""
    input_dim, dim = table.shape
    frequencies = rng.permutation(input_dim) if permuted else None  # None: id 0 most frequent
    layer = keras_mpe.MixedPrecisionEmbedding(input_dim, dim, frequencies=frequencies)
    layer.build()
    layer.embeddings.assign(table)
    layer.freeze_precision(mpe_bits(rng, layer.groups))
    return layer


def exported_signatures(layer: keras_mpe.MixedPrecisionEmbedding, fields: int):
    """`serving_default` and `serving_xla` of `layer` as an exported one-layer model."""
    inputs = keras.Input(shape=(fields,), dtype="int32", name="ids")
    with tempfile.TemporaryDirectory() as path:
        keras_mpe.export_saved_model(keras.Model(inputs, layer(inputs)), path)
        loaded = tf.saved_model.load(path)
    # the signatures hold their variables weakly: each call keeps `loaded` alive
    return {
        mode: lambda ids, name=name, loaded=loaded: loaded.signatures[name](ids=ids)["output_0"]
        for mode, name in (("graph", "serving_default"), ("xla", "serving_xla"))
    }


def timed(function, batches, repeats: int) -> list[float]:
    times = []
    for step in range(repeats):
        ids = batches[step % len(batches)]
        start = time.perf_counter()
        out = function(ids)
        _ = out.numpy()  # wait for the result
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dims", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--permuted", action="store_true", help="ids not frequency-ordered")
    args = parser.parse_args()

    has_int4 = hasattr(keras.layers.Embedding, "quantize") and keras.__version__ >= "3"
    lookups = args.batch * args.fields
    print(
        f"serving lookups/s, TF {tf.__version__}, D={args.dim}, batch {args.batch}x{args.fields}"
        f" ids, {'permuted' if args.permuted else 'frequency-ordered'} ids, "
        f"median of {args.repeats} calls"
    )
    for input_dim in (int(float(v)) for v in args.input_dims.split(",")):
        rng = np.random.default_rng(0)
        table = rng.normal(scale=0.003, size=(input_dim, args.dim)).astype(np.float32)
        layer = frozen_layer(table, rng, args.permuted)
        start = time.perf_counter()
        packed = layer.packed_table()
        pack_seconds = time.perf_counter() - start
        exported = exported_signatures(layer, args.fields)
        report = packed.memory_report()
        twin = keras_mpe.PackedEmbedding.from_layer(layer)
        table_var = tf.Variable(table)
        batches = [
            tf.constant(zipf_ids(rng, input_dim, (args.batch, args.fields))) for _ in range(4)
        ]

        def packed_lookup(ids, twin=twin):
            return twin(ids)

        def float_gather(ids, table_var=table_var):
            return tf.gather(table_var, ids)

        functions = {"packed": packed_lookup, "float gather": float_gather}
        if has_int4:
            int4 = keras.layers.Embedding(input_dim, args.dim)
            int4.build((None,))
            int4.embeddings.assign(table)
            int4.quantize("int4")
            functions["keras int4"] = lambda ids, layer=int4: layer(ids)

        print(
            f"\ninput_dim={input_dim}: packed {report['total_bytes'] / 2**20:.2f} MiB "
            f"(average {report['average_bits']:.2f} bits, {report['compression_ratio']:.0f}x "
            f"smaller than float32 {report['float32_bytes'] / 2**20:.1f} MiB), "
            f"pack_table took {pack_seconds:.1f} s"
        )
        modes = {
            "eager": lambda f: f,
            "graph": lambda f: tf.function(f),
            "xla": lambda f: tf.function(f, jit_compile=True),
        }
        results = {}
        for mode, wrap in modes.items():
            wrapped = {name: wrap(f) for name, f in functions.items()}
            if mode in exported:
                wrapped["exported"] = exported[mode]
            for function in wrapped.values():  # warm up / compile
                timed(function, batches, 2)
            times = {name: [] for name in wrapped}
            for _ in range(args.repeats):
                for name, function in wrapped.items():
                    times[name] += timed(function, batches, 1)
            for name, values in times.items():
                results[(mode, name)] = lookups / np.median(values)
        names = list(functions) + ["exported"]
        print(f"  {'mode':6s}" + "".join(f"{name:>14s}" for name in names) + "   ratios")
        for mode in modes:
            row = "".join(
                f"{results[(mode, name)]:14.3g}" if (mode, name) in results else f"{'-':>14s}"
                for name in names
            )
            ratios = [("packed/float", "packed", "float gather")]
            if has_int4:
                ratios.append(("packed/int4", "packed", "keras int4"))
            if mode in exported:
                ratios.append(("exported/float", "exported", "float gather"))
            text = ", ".join(
                f"{label} {results[(mode, a)] / results[(mode, b)]:.2f}x" for label, a, b in ratios
            )
            print(f"  {mode:6s}{row}   {text}")


if __name__ == "__main__":
    main()
