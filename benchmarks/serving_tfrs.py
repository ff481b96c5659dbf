"""Serving the TFRS ranking model of `examples/tfrs_basic_ranking.py`: packed against float32.

The example's `MovielensModel` (user id and movie title strings -> `StringLookup` ->
a 32-dim embedding each -> MLP 256-64-1), built twice on MovieLens-100K's vocabularies:
with float32 `tf.keras.layers.Embedding` towers, and with `MixedPrecisionEmbedding`
towers frozen at the bits `keras_mpe.precision.allocate_bits` gives for
`--target_compression` (no training: the timing does not depend on the weights). Both
are exported (the float32 model with `tf.saved_model.save`, the MPE model with
`keras_mpe.export_saved_model`, once per `--serving_tables` entry), loaded with
`tf.saved_model.load`, and their `serving_default` signatures called on batches of
test strings, calls interleaved, medians of `--repeats`. Printed: ms per call and the
MPE/float32 throughput ratio per batch size and serving table. TFRS needs tf-keras,
so this script sets `TF_USE_LEGACY_KERAS=1`.

    python benchmarks/serving_tfrs.py --batches 64,512,4096 --repeats 30
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from movielens_tfrs import load_tutorial_data  # noqa: E402
from tfrs_basic_ranking import MovielensModel  # noqa: E402

import keras_mpe  # noqa: E402
from keras_mpe import precision  # noqa: E402
from keras_mpe.embedding import find_mixed_precision_layers  # noqa: E402

STRINGS = tf.TensorSpec([None], tf.string)


def exported_signatures(data, target: float, directory: str, serving_tables: list) -> tuple:
    """`serving_default` of the float32 model, of the MPE model exported with each of
    `serving_tables` (by name), and how many times smaller the packed tables are."""
    sample = {"user_id": tf.constant(["1"]), "movie_title": tf.constant(["x"])}
    float_model, mpe_model = MovielensModel(data, False), MovielensModel(data, True)
    float_model(sample), mpe_model(sample)
    tables = find_mixed_precision_layers(mpe_model)
    for layer in tables:
        layer.freeze_precision(precision.allocate_bits(layer, target))

    @tf.function(input_signature=[STRINGS, STRINGS])
    def serve_float(user_id, movie_title):
        return {"output_0": float_model({"user_id": user_id, "movie_title": movie_title})}

    float_dir = os.path.join(directory, "float32")
    tf.saved_model.save(float_model, float_dir, signatures={"serving_default": serve_float})
    served = {}
    for table in serving_tables:
        mpe_dir = os.path.join(directory, f"mpe-{table}")
        keras_mpe.export_saved_model(
            mpe_model,
            mpe_dir,
            input_signature={"user_id": STRINGS, "movie_title": STRINGS},
            serving_table=table,
        )
        served[table] = tf.saved_model.load(mpe_dir).signatures["serving_default"]
    packed = sum(layer.memory_report()["total_bytes"] for layer in tables)
    floats = sum(layer.memory_report()["float32_bytes"] for layer in tables)
    return tf.saved_model.load(float_dir).signatures["serving_default"], served, floats / packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,512,4096")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--target_compression", type=float, default=8.0)
    parser.add_argument(
        "--serving_tables",
        default="packed,int8,float32",
        help="the MPE exports' `serving_table`s",
    )
    args = parser.parse_args()
    data = load_tutorial_data()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        serve_float, served, ratio = exported_signatures(
            data, args.target_compression, directory, args.serving_tables.split(",")
        )
        serving = {"float32": serve_float, **{f"mpe {t}": f for t, f in served.items()}}
        print(
            f"TFRS basic ranking, {data.description}; tables {ratio:.1f}x smaller packed; "
            f"median ms of {args.repeats} interleaved calls of serving_default; "
            "ratio = MPE throughput / float32 throughput"
        )
        print(f"{'batch':>6}" + "".join(f"{name:>14}" for name in serving) + "   ratios")
        users, titles = data.user_vocabulary, data.movie_vocabulary
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = {
                "user_id": tf.constant(rng.choice(users, batch)),
                "movie_title": tf.constant(rng.choice(titles, batch)),
            }
            times = {name: [] for name in serving}
            for _ in range(3):  # warm-up
                for serve in serving.values():
                    serve(**inputs)
            for _ in range(args.repeats):
                for name, serve in serving.items():
                    start = time.perf_counter()
                    serve(**inputs)["output_0"].numpy()
                    times[name].append(time.perf_counter() - start)
            ms = {name: 1e3 * np.median(values) for name, values in times.items()}
            ratios = [f"{ms['float32'] / ms[name]:.2f}x" for name in serving if name != "float32"]
            print(
                f"{batch:>6}"
                + "".join(f"{ms[name]:>12.3f}ms" for name in serving)
                + "   "
                + " ".join(ratios)
            )


if __name__ == "__main__":
    main()
