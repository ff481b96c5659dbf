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

`--end_to_end` times whole exported models instead, as a server runs them: 26 id
fields (one int32 `[batch, 26]` input) into one shared `V x D` table, flattened,
then an MLP 256-128-1. The float32 model (`keras.layers.Embedding`) is exported with
`model.export`; the MPE model (the same weights, its table frozen at the mix of 0..6
bits above) with `keras_mpe.export_saved_model`. Both are loaded with
`tf.saved_model.load` (the time each load takes is printed: a table decoded at load
is decoded then) and called through their signatures (`serving_default`, and the MPE
model's `serving_xla`), calls interleaved, medians of `--repeats`. The MPE model is
exported once per `--serving_tables` entry (`export_saved_model(...,
serving_table=...)`; default `packed`). It prints one line per (V, D, batch) and, with
`--plot`, draws throughput against batch size.

    python benchmarks/serving.py --end_to_end --input_dims 1e6 --dims 16 \
        --batches 64,512,4096 --repeats 30 --serving_tables packed,int8,float32 \
        --plot serving-e2e.png

To compare two versions of keras_mpe in one process, run the older one with
`--save_mpe DIR` (it keeps each MPE export, `DIR/V<V>_D<D>`), then the newer one with
`--baseline DIR`: the saved exports of the same models (same seed) are timed beside,
interleaved, as `baseline serving_default` and `baseline serving_xla`.
"""

import argparse
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

import keras_mpe
from keras_mpe.backend import IS_KERAS_3, keras


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


def export_float32(model, path: str) -> None:
    """`model.export(path)`, quietly where Keras can (tf-keras has no `verbose`)."""
    model.export(path, **({"verbose": False} if IS_KERAS_3 else {}))


def timed(function, batches, repeats: int) -> list[float]:
    times = []
    for step in range(repeats):
        ids = batches[step % len(batches)]
        start = time.perf_counter()
        out = function(ids)
        _ = out.numpy()  # wait for the result
        times.append(time.perf_counter() - start)
    return times


def mlp_model(embedding, fields: int):
    """`[batch, fields]` int32 ids -> `embedding` -> flatten -> MLP 256-128-1."""
    inputs = keras.Input(shape=(fields,), dtype="int32", name="ids")
    hidden = keras.layers.Flatten()(embedding(inputs))
    for units in (256, 128):
        hidden = keras.layers.Dense(units, activation="relu")(hidden)
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def end_to_end_signatures(
    table: np.ndarray,
    rng: np.random.Generator,
    fields: int,
    path: str,
    save_mpe: str | None = None,
    baseline: str | None = None,
    serving_tables: tuple[str, ...] = ("packed",),
):
    """The float32 model's `serving_default` and the MPE model's `serving_default`
    and `serving_xla`, each a function of an int32 `[batch, fields]` batch, and the
    packed table's memory report. One MPE export per entry of `serving_tables`
    (`export_saved_model(..., serving_table=...)`), named `mpe` for `"packed"`, else
    `mpe <serving_table>`. `save_mpe`: a directory to copy the packed MPE export to;
    `baseline`: a saved MPE export whose signatures are added."""
    input_dim, dim = table.shape
    layer = frozen_layer(table, rng, permuted=False)
    mpe = mlp_model(layer, fields)
    float_embedding = keras.layers.Embedding(input_dim, dim)
    float_model = mlp_model(float_embedding, fields)
    float_embedding.embeddings.assign(table)
    for source, target in zip(mpe.layers[2:], float_model.layers[2:], strict=True):
        target.set_weights(source.get_weights())  # the same MLP
    report = layer.memory_report()
    export_float32(float_model, f"{path}/float32")
    names = {table: "mpe" if table == "packed" else f"mpe {table}" for table in serving_tables}
    for table, name in names.items():
        keras_mpe.export_saved_model(mpe, f"{path}/{name}", serving_table=table)
    if save_mpe:
        shutil.copytree(f"{path}/mpe", save_mpe, dirs_exist_ok=True)
    del layer, mpe, float_embedding, float_model
    loaded = {}
    for name in ("float32", *names.values()):
        start = time.perf_counter()
        loaded[name] = tf.saved_model.load(f"{path}/{name}")
        print(f"  {name}: loaded in {time.perf_counter() - start:.1f} s")
    if baseline:
        loaded["baseline"] = tf.saved_model.load(baseline)

    def call(model, signature):
        function = loaded[model].signatures[signature]
        return lambda ids: next(iter(function(ids=ids).values()))

    functions = {"float32": call("float32", "serving_default")}
    for name in names.values():
        for signature in ("serving_default", "serving_xla"):
            functions[f"{name} {signature}"] = call(name, signature)
    if baseline:
        for signature in ("serving_default", "serving_xla"):
            functions[f"baseline {signature}"] = call("baseline", signature)
    return functions, report


def end_to_end(args: argparse.Namespace) -> None:
    """Times the exported float32 and MPE models over the grid of `args`."""
    print(
        f"end-to-end serving, TF {tf.__version__}, {args.fields} int32 id fields, one shared "
        f"table, MLP 256-128-1; median ms of {args.repeats} interleaved calls; ratio = MPE "
        "throughput / float32 throughput"
    )
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for input_dim in (int(float(v)) for v in args.input_dims.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            rng = np.random.default_rng(0)
            table = rng.normal(scale=0.003, size=(input_dim, dim)).astype(np.float32)
            case = f"V{input_dim}_D{dim}"
            with tempfile.TemporaryDirectory() as path:
                functions, report = end_to_end_signatures(
                    table,
                    rng,
                    args.fields,
                    path,
                    save_mpe=args.save_mpe and f"{args.save_mpe}/{case}",
                    baseline=args.baseline and f"{args.baseline}/{case}",
                    serving_tables=tuple(args.serving_tables.split(",")),
                )
                del table
                print(
                    f"\nV={input_dim:.0e} D={dim}: packed {report['average_bits']:.2f} average "
                    f"bits, {report['compression_ratio']:.1f}x smaller than float32"
                )
                others = [name for name in functions if name != "float32"]
                print(
                    f"  {'batch':>6s}"
                    + "".join(f"  {name:>20s}" for name in functions)
                    + "   ratio to float32: "
                    + ", ".join(others)
                )
                for batch in batches:
                    inputs = [
                        tf.constant(zipf_ids(rng, input_dim, (batch, args.fields)))
                        for _ in range(4)
                    ]
                    for function in functions.values():  # warm up / compile
                        timed(function, inputs, 3)
                    times = {name: [] for name in functions}
                    for _ in range(args.repeats):
                        for name, function in functions.items():
                            times[name] += timed(function, inputs, 1)
                    ms = {name: 1e3 * float(np.median(values)) for name, values in times.items()}
                    rows.append((input_dim, dim, batch, ms))
                    print(
                        f"  {batch:6d}"
                        + "".join(f"{ms[name]:20.3f}ms" for name in functions)
                        + "   "
                        + "  ".join(f"{ms['float32'] / ms[name]:.2f}x" for name in others)
                    )
    if args.plot:
        plot_end_to_end(rows, args.fields, args.plot)


def plot_end_to_end(rows: list, fields: int, path: str) -> None:
    """Examples per second against batch size, one panel per (V, D)."""
    from keras_mpe.plotting import pyplot

    plt = pyplot()
    cases = sorted({(v, d) for v, d, *_ in rows})
    figure, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.5), squeeze=False)
    for axis, (input_dim, dim) in zip(axes[0], cases, strict=True):
        mine = [row for row in rows if row[:2] == (input_dim, dim)]
        batches = [row[2] for row in mine]
        for name in mine[0][3]:
            axis.plot(
                batches,
                [b / row[3][name] * 1e3 for b, row in zip(batches, mine)],
                marker="o",
                label=name,
            )
        axis.set(
            xscale="log", yscale="log", xlabel="batch size", title=f"V={input_dim:.0e}, D={dim}"
        )
    axes[0][0].set_ylabel(f"examples / s ({fields} ids each)")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dims", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--permuted", action="store_true", help="ids not frequency-ordered")
    parser.add_argument("--end_to_end", action="store_true", help="whole exported models")
    parser.add_argument("--dims", default="16", help="--end_to_end: embedding dimensions")
    parser.add_argument("--batches", default="64,512,4096", help="--end_to_end: batch sizes")
    parser.add_argument("--plot", default=None, help="--end_to_end: a PNG path to draw")
    parser.add_argument(
        "--serving_tables",
        default="packed",
        help="--end_to_end: the MPE exports' `serving_table`s, e.g. packed,int8,float32",
    )
    parser.add_argument("--save_mpe", default=None, help="--end_to_end: keep MPE exports here")
    parser.add_argument(
        "--baseline", default=None, help="--end_to_end: time the MPE exports of --save_mpe DIR"
    )
    args = parser.parse_args()
    if args.end_to_end:
        end_to_end(args)
        return

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
        layer.packed_table()  # timed: what an export spends packing
        pack_seconds = time.perf_counter() - start
        exported = exported_signatures(layer, args.fields)
        report = layer.memory_report()
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
