"""The TFRS basic ranking tutorial on MovieLens-100K, with MixedPrecisionEmbedding towers.

Follows the structure of TensorFlow Recommenders' "Recommending movies: ranking"
tutorial: a user tower and a movie tower (`StringLookup` then an embedding), their
embeddings concatenated into an MLP that predicts the rating, trained with a
`tfrs.tasks.Ranking` task (mean squared error, RMSE metric). Data: MovieLens-100K
(user id, movie title, rating) from `keras_mpe.datasets.load_movielens("100k")` with its
fixed random 80/10/10 split; vocabularies ordered by train frequency.

The model is trained twice: with float32 `tf.keras.layers.Embedding` towers, and with
`MixedPrecisionEmbedding` towers (train frequencies) searched with
`keras_mpe.PrecisionSearch` and retrained at the chosen bits. Then the MPE model is
exported with `keras_mpe.export_saved_model` and the test set is scored from the
SavedModel: the `tfrs.models.Model` itself, given the `input_signature` of its
`call` (user id and movie title strings in, rating out; the `StringLookup`s stay in the
serving graph).

TFRS needs tf-keras, so this script sets `TF_USE_LEGACY_KERAS=1` before importing
TensorFlow.

    python examples/tfrs_basic_ranking.py           # about a minute on 2 CPU cores
    python examples/tfrs_basic_ranking.py --smoke   # well under a minute, for CI
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402
from movielens_tfrs import TutorialData, describe_reports, load_tutorial_data, lookup_tower  # noqa: E402

import keras_mpe  # noqa: E402

EMBEDDING_DIM = 32


class RankingModel(tf.keras.Model):
    """User and movie towers whose embeddings feed an MLP that predicts the rating."""

    def __init__(self, data: TutorialData, mixed_precision: bool) -> None:
        super().__init__()
        self.user_tower = lookup_tower(
            data.user_vocabulary, data.user_counts, EMBEDDING_DIM, mixed_precision, "user"
        )
        self.movie_tower = lookup_tower(
            data.movie_vocabulary, data.movie_counts, EMBEDDING_DIM, mixed_precision, "movie"
        )
        self.rating_mlp = tf.keras.Sequential(
            [
                tf.keras.layers.Dense(256, activation="relu"),
                tf.keras.layers.Dense(64, activation="relu"),
                tf.keras.layers.Dense(1),
            ],
            name="rating_mlp",
        )

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        user_id, movie_title = inputs
        embeddings = tf.concat([self.user_tower(user_id), self.movie_tower(movie_title)], axis=1)
        return self.rating_mlp(embeddings)


class MovielensModel(tfrs.models.Model):
    """The ranking model with its `tfrs.tasks.Ranking` task."""

    def __init__(self, data: TutorialData, mixed_precision: bool) -> None:
        super().__init__()
        self.ranking_model = RankingModel(data, mixed_precision)
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")],
        )

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.ranking_model((features["user_id"], features["movie_title"]))

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.task(labels=features["user_rating"], predictions=self(features))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for CI")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per MPE phase")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument(
        "--target-compression",
        type=float,
        default=8.0,
        help="compression ratio (with overhead) the search steers each table to",
    )
    parser.add_argument("--export-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    start = time.perf_counter()
    epochs = 1 if args.smoke else args.epochs
    data = load_tutorial_data(smoke=args.smoke)
    print(f"data: {data.description}")
    train, validation, test = data.batched(args.batch_size, 8192)

    def make_model(mixed_precision: bool) -> MovielensModel:
        tf.keras.utils.set_random_seed(0)
        model = MovielensModel(data, mixed_precision)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))
        return model

    print(f"\n[1/4] float32 towers (tf.keras.layers.Embedding), {2 * epochs} epochs")
    baseline = make_model(mixed_precision=False)
    baseline.fit(train, validation_data=validation, epochs=2 * epochs, verbose=2)
    float_rmse = baseline.evaluate(test, return_dict=True, verbose=0)["rmse"]

    print(f"\n[2/4] MPE towers: PrecisionSearch ({epochs} epochs)")
    model = make_model(mixed_precision=True)
    search = keras_mpe.PrecisionSearch(
        monitor="val_rmse", target_compression=args.target_compression
    )
    model.fit(train, validation_data=validation, epochs=epochs, callbacks=[search], verbose=2)

    print(f"\n[3/4] MPE retrain at the chosen bits, tables rewound ({epochs} epochs)")
    model.fit(train, validation_data=validation, epochs=epochs, verbose=2)
    mpe_rmse = model.evaluate(test, return_dict=True, verbose=0)["rmse"]

    print("\n[4/4] export the tfrs.Model as a SavedModel (strings in, rating out)")
    scratch = tempfile.TemporaryDirectory()
    export_dir = args.export_dir or os.path.join(scratch.name, "ranking")
    strings = tf.TensorSpec([None], tf.string)
    keras_mpe.export_saved_model(
        model,
        export_dir,
        overwrite=True,
        input_signature={"user_id": strings, "movie_title": strings},
    )
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]

    def served_rating(user_id: tf.Tensor, movie_title: tf.Tensor) -> np.ndarray:
        """Ratings from the SavedModel's `serving_default` signature."""
        return serve(user_id=user_id, movie_title=movie_title)["output_0"].numpy()[:, 0]

    served, keras_scores, ratings = [], [], []
    for batch in test:
        served.append(served_rating(batch["user_id"], batch["movie_title"]))
        keras_scores.append(model(batch).numpy()[:, 0])
        ratings.append(batch["user_rating"].numpy())
    served, ratings = np.concatenate(served), np.concatenate(ratings)
    served_rmse = float(np.sqrt(np.mean((served - ratings) ** 2)))
    served_diff = float(np.abs(served - np.concatenate(keras_scores)).max())
    saved_bytes = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(export_dir)
        for name in names
    )
    example_rating = served_rating(tf.constant(["42"]), tf.constant(["Star Wars (1977)"]))[0]

    print(f"\nSummary: TFRS basic ranking on {data.description}")
    print(f"  test RMSE float32 towers:               {float_rmse:.4f}")
    print(f"  test RMSE MPE towers:                   {mpe_rmse:.4f}")
    print(f"  test RMSE served from the SavedModel:   {served_rmse:.4f}")
    print(f"  max |SavedModel - Keras| over the test set: {served_diff:.2e}")
    print("  embedding tables after the search:")
    for line in describe_reports(search.reports):
        print(line)
    kept = "" if args.export_dir else "; a temporary directory, pass --export-dir to keep it"
    print(f"  SavedModel: {export_dir} ({saved_bytes:,} bytes on disk{kept})")
    print(f"  user 42 would rate 'Star Wars (1977)': {example_rating:.2f}")
    print(f"  time: {time.perf_counter() - start:.0f} s")
    scratch.cleanup()


if __name__ == "__main__":
    main()
