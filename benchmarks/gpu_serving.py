"""GPU serving check: where a packed export's ops run, and how fast, on a machine with a GPU.

Loads a SavedModel written by `keras_mpe.export_saved_model` (by default it writes one
first: a one-layer model over a 1e6 x 16 table frozen at a mix of 0..6 bits), logs the
device each op of `serving_default` and `serving_xla` is placed on (TensorFlow's
`set_log_device_placement`, to stderr) for one call, then times both signatures
against a float32 `tf.gather` on the GPU, in millions of lookups per second (medians
over `--repeats` calls, batches of 4096 x 26 Zipf ids). On a machine without a GPU it
prints "no GPU found" and exits 0: no GPU has been available where this package is
developed, so placement is checked there against TensorFlow's kernel registry
instead (tests/test_gpu_placement.py).

    python benchmarks/gpu_serving.py
    python benchmarks/gpu_serving.py --export_dir export/1 --input_name ids --input_dim 1000000
"""

import argparse
import sys

import numpy as np
import tensorflow as tf
from serving import exported_signatures, frozen_layer, timed, zipf_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", help="an existing export (default: write one)")
    parser.add_argument("--input_name", default="ids", help="the signature's id input")
    parser.add_argument("--input_dim", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16, help="D of the float32 reference")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("no GPU found")
        return 0
    rng = np.random.default_rng(0)
    table = rng.normal(scale=0.003, size=(args.input_dim, args.dim)).astype(np.float32)
    if args.export_dir:
        loaded = tf.saved_model.load(args.export_dir)
        signatures = {
            mode: lambda ids, name=name: loaded.signatures[name](**{args.input_name: ids})
            for mode, name in (("graph", "serving_default"), ("xla", "serving_xla"))
            if name in loaded.signatures
        }
    else:
        signatures = exported_signatures(frozen_layer(table, rng, False), args.fields)
    batches = [
        tf.constant(zipf_ids(rng, args.input_dim, (args.batch, args.fields))) for _ in range(4)
    ]
    with tf.device("/GPU:0"):
        table_var = tf.Variable(table)
    float_gather = tf.function(lambda ids: tf.gather(table_var, ids))

    print(f"GPUs: {[gpu.name for gpu in gpus]}; device placement of one call (stderr):")
    tf.debugging.set_log_device_placement(True)
    for mode, function in signatures.items():
        print(f"--- {mode}", file=sys.stderr)
        tf.nest.flatten(function(batches[0]))[0].numpy()
    tf.debugging.set_log_device_placement(False)

    lookups = args.batch * args.fields
    functions = {**signatures, "float gather": float_gather}
    for function in functions.values():
        timed(lambda ids, f=function: tf.nest.flatten(f(ids))[0], batches, 2)
    times = {name: [] for name in functions}
    for _ in range(args.repeats):
        for name, function in functions.items():
            times[name] += timed(lambda ids, f=function: tf.nest.flatten(f(ids))[0], batches, 1)
    speed = {name: lookups / np.median(values) / 1e6 for name, values in times.items()}
    for name, value in speed.items():
        ratio = value / speed["float gather"]
        print(f"  {name:14s} {value:8.1f} M lookups/s  ({ratio:.2f}x the float32 gather)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
