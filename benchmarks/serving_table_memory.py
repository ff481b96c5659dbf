"""What loading an export costs for each `serving_table`: time, and memory held.

For each `--input_dims` x `--dims`, a `MixedPrecisionEmbedding` frozen at the mix of
0..6 bits of `benchmarks/serving.py` (about 1.5 average bits) is exported as a
one-layer model with `export_saved_model(..., serving_table=...)` for each of
`packed`, `int8` and `float32`, beside the float32 `keras.layers.Embedding` model
(`model.export`). Each export is then loaded in a fresh Python process
(`tf.saved_model.load`, then one call of `serving_default` on 4096 ids), which
reports its resident memory before the load, after the load and call, and at its
peak (`VmHWM`), and the seconds the load took. Printed, not asserted; the
memory `keras_mpe.inspect` predicts (`serving_bytes`) is printed beside.

    python benchmarks/serving_table_memory.py --input_dims 1e6,1e7 --dims 16,64
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import keras_mpe
from keras_mpe.backend import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import export_float32, frozen_layer  # noqa: E402

TABLES = ("packed", "int8", "float32")
MIB = 2**20

# run in a fresh process per export: resident memory before and after the load
LOAD = """
import json, sys, time
import numpy as np, tensorflow as tf

def status(key):  # kB in /proc/self/status: VmRSS now, VmHWM its peak since exec
    with open("/proc/self/status") as file:
        line = next(line for line in file if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024

def resident():
    return status("VmRSS")

before = resident()
start = time.perf_counter()
loaded = tf.saved_model.load(sys.argv[1])
seconds = time.perf_counter() - start
ids = tf.constant(np.arange(4096, dtype=np.int32)[:, None] % int(sys.argv[2]))
loaded.signatures["serving_default"](ids=ids)
peak = status("VmHWM")
print(json.dumps({"before": before, "after": resident(), "peak": peak, "seconds": seconds}))
"""


def load_in_a_fresh_process(export_dir: str, input_dim: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", LOAD, export_dir, str(input_dim)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dims", default="1000000")
    parser.add_argument("--dims", default="16")
    args = parser.parse_args()
    print(
        "export loaded in a fresh process: seconds to load; MiB resident added by the "
        "load and one call, peak MiB of the process; MiB inspect predicts (table only)"
    )
    print(
        f"{'V':>8} {'D':>3} {'export':>13} {'load s':>7} {'+MiB':>8} {'peak MiB':>9} "
        f"{'inspect':>8}"
    )
    for input_dim in (int(float(v)) for v in args.input_dims.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            rng = np.random.default_rng(0)
            table = rng.normal(scale=0.003, size=(input_dim, dim)).astype(np.float32)
            layer = frozen_layer(table, rng, permuted=False)
            inputs = keras.Input(shape=(1,), dtype="int32", name="ids")
            with tempfile.TemporaryDirectory() as path:
                float_layer = keras.layers.Embedding(input_dim, dim)
                float_model = keras.Model(inputs, float_layer(inputs))
                float_layer.embeddings.assign(table)
                export_float32(float_model, f"{path}/float32 model")
                del table, float_layer, float_model
                predicted = {"float32 model": input_dim * dim * 4}
                model = keras.Model(inputs, layer(inputs))
                for serving_table in TABLES:
                    export_dir = f"{path}/{serving_table}"
                    keras_mpe.export_saved_model(model, export_dir, serving_table=serving_table)
                    (report,) = keras_mpe.inspect(export_dir).values()
                    predicted[serving_table] = report["serving_bytes"]
                for name, expected in predicted.items():
                    measured = load_in_a_fresh_process(f"{path}/{name}", input_dim)
                    added = (measured["after"] - measured["before"]) / MIB
                    print(
                        f"{input_dim:>8.0e} {dim:>3} {name:>13} {measured['seconds']:>7.1f} "
                        f"{added:>8.0f} {measured['peak'] / MIB:>9.0f} {expected / MIB:>8.0f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
