"""Serving lookups per second: packed MPE table vs float `tf.gather` vs Keras int4.

For each `input_dim` (default 1e5 and 1e6), D=16, batches of 4096 x 26 ids drawn
from a Zipf-like distribution, it times, side by side in one run:

- `packed`: `keras_mpe.packing.lookup_packed` over the packed arrays held in
  `tf.Variable`s (128 frequency-ordered groups at a mix of 0..6 bits, no
  permutation; `--permuted` shuffles the ids so a packed permutation is needed);
- `float gather`: `tf.gather` on the float32 table variable;
- `keras int4`: Keras 3 `keras.layers.Embedding(...).quantize("int4")` (skipped
  under tf-keras, which has no such method);

each run op by op (`eager`), as a `tf.function` graph (`graph`, what TF Serving
runs) and compiled with XLA (`xla`). The packed lookup picks its op mix by itself (the
one for XLA only under `jit_compile=True`, as an exported `serving_xla` does); the
`other mix` column forces the other one, to show what the choice is worth. Timings are
medians over `--repeats` calls after warm-up, interleaved across methods. Printed, not
asserted.

    python benchmarks/serving.py
    python benchmarks/serving.py --input_dims 100000 --repeats 5      # quick
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from keras_mpe import packing


def zipf_ids(rng: np.random.Generator, input_dim: int, shape: tuple[int, ...]) -> np.ndarray:
    """Ids ranked by frequency (id 0 the most frequent), heavy-tailed."""
    return ((rng.zipf(1.2, size=shape) - 1) % input_dim).astype(np.int32)


def mpe_bits(rng: np.random.Generator, groups: int) -> np.ndarray:
    """Bits per group (0 = rarest): mostly pruned or few bits, frequent groups more."""
    rank = np.arange(groups) / groups
    bits = np.round(6 * rank**3 + rng.normal(scale=0.5, size=groups))
    return np.clip(bits, 0, 6).astype(np.int32)


def build_packed(table: np.ndarray, rng: np.random.Generator, permuted: bool):
    input_dim = table.shape[0]
    groups = 128
    sizes = np.full(groups, input_dim // groups)
    sizes[-1] += input_dim % groups
    id_to_group = np.repeat(np.arange(groups), sizes)[::-1].copy()  # id 0 most frequent
    if permuted:
        id_to_group = rng.permutation(id_to_group)
    candidates = (0, 1, 2, 3, 4, 5, 6)
    mean_abs = np.abs(table).mean()
    steps = (2 * mean_abs / np.sqrt(2.0 ** (np.arange(1, 7) - 1))).astype(np.float32)
    bits = mpe_bits(rng, groups)
    start = time.perf_counter()
    packed = packing.pack_table(
        table, steps, np.zeros(table.shape[1]), candidates, id_to_group, bits
    )
    seconds = time.perf_counter() - start
    return packed, seconds


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

    try:
        import keras

        has_int4 = hasattr(keras.layers.Embedding, "quantize") and keras.__version__ >= "3"
    except ImportError:  # pragma: no cover
        has_int4 = False
    lookups = args.batch * args.fields
    print(
        f"serving lookups/s, TF {tf.__version__}, D={args.dim}, batch {args.batch}x{args.fields}"
        f" ids, {'permuted' if args.permuted else 'frequency-ordered'} ids, "
        f"median of {args.repeats} calls"
    )
    for input_dim in (int(float(v)) for v in args.input_dims.split(",")):
        rng = np.random.default_rng(0)
        table = rng.normal(scale=0.003, size=(input_dim, args.dim)).astype(np.float32)
        packed, pack_seconds = build_packed(table, rng, args.permuted)
        report = packed.memory_report()
        packed_vars = {name: tf.Variable(a) for name, a in packed.arrays().items()}
        static = {
            "input_dim": packed.input_dim,
            "step_bit_widths": packed.step_bit_widths,
            "max_bits": packed.max_bits,
        }
        table_var = tf.Variable(table)
        batches = [
            tf.constant(zipf_ids(rng, input_dim, (args.batch, args.fields))) for _ in range(4)
        ]

        def packed_lookup(ids, packed_vars=packed_vars, static=static, xla=None):
            return packing.lookup_packed(ids, **packed_vars, **static, xla=xla)

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
            other_mix = mode != "xla"
            wrapped["other mix"] = wrap(lambda ids, xla=other_mix: packed_lookup(ids, xla=xla))
            for function in wrapped.values():  # warm up / compile
                timed(function, batches, 2)
            times = {name: [] for name in wrapped}
            for _ in range(args.repeats):
                for name, function in wrapped.items():
                    times[name] += timed(function, batches, 1)
            for name, values in times.items():
                results[(mode, name)] = lookups / np.median(values)
        names = list(functions) + ["other mix"]
        print(f"  {'mode':6s}" + "".join(f"{name:>16s}" for name in names) + "   packed/float")
        for mode in modes:
            row = "".join(f"{results[(mode, name)]:16.3g}" for name in names)
            ratio = results[(mode, "packed")] / results[(mode, "float gather")]
            extra = ""
            if has_int4:
                versus_int4 = results[(mode, "packed")] / results[(mode, "keras int4")]
                extra = f"   packed/int4 {versus_int4:.1f}x"
            print(f"  {mode:6s}{row}   {ratio:10.2f}x{extra}")


if __name__ == "__main__":
    main()
