"""Two-tower retrieval (TFRS) on MovieLens-100K: float32 towers against MPE towers.

Follows the structure of TensorFlow Recommenders' "Recommending movies: retrieval"
tutorial: a query tower (user id) and a candidate tower (movie title), each a
`StringLookup` and an embedding, trained with `tfrs.tasks.Retrieval` (in-batch softmax)
and evaluated with `tfrs.metrics.FactorizedTopK` over all movies. Data: MovieLens-100K
(each rating is a (user, movie) interaction) from `keras_mpe.datasets.load_movielens`
with its fixed random 80/10/10 split; vocabularies ordered by train frequency.

The same model is trained with float32 `tf.keras.layers.Embedding` towers and with
`MixedPrecisionEmbedding` towers (searched with `keras_mpe.PrecisionSearch` on
validation top-100 accuracy, then retrained at the chosen bits), and the test top-k
accuracies are printed side by side with the tables' compression. Both models are
read at their best validation epoch (the towers overfit within a few epochs): the float
model over its `2 * epochs` epochs, the MPE model over its retrain epochs.

A user whose group the search pruned (0 bits) has an all-zero embedding and scores 0
against every movie; ties go to the lower id, and ids follow train popularity, so such
a user is served the most popular movies. The summary says how many test queries that is.

TFRS needs tf-keras, so this script sets `TF_USE_LEGACY_KERAS=1` before importing
TensorFlow.

    python examples/tfrs_retrieval.py           # 3 to 4 minutes on 2 busy CPU cores
    python examples/tfrs_retrieval.py --smoke   # well under a minute, for CI
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402
from movielens_tfrs import TutorialData, describe_reports, load_tutorial_data, lookup_tower  # noqa: E402

import keras_mpe  # noqa: E402

EMBEDDING_DIM = 32
TOP_K = (1, 10, 50, 100)
MONITOR = "val_factorized_top_k/top_100_categorical_accuracy"


class MovielensModel(tfrs.models.Model):
    """A user tower and a movie tower scored by their dot product."""

    def __init__(self, data: TutorialData, mixed_precision: bool) -> None:
        super().__init__()
        self.user_model = lookup_tower(
            data.user_vocabulary, data.user_counts, EMBEDDING_DIM, mixed_precision, "user"
        )
        self.movie_model = lookup_tower(
            data.movie_vocabulary, data.movie_counts, EMBEDDING_DIM, mixed_precision, "movie"
        )
        # Candidates come with their titles, and the task gets the true titles: top-k
        # is then judged by id. Judged by score (the tutorial's default), a tie counts
        # as a hit, and MPE's pruned (0-bit) rows are all-zero vectors that tie: a
        # pruned user scores 0 against every movie and would hit at any k.
        candidates = data.movies.batch(512).map(lambda title: (title, self.movie_model(title)))
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(candidates=candidates, ks=TOP_K)
        )

    def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.task(
            self.user_model(features["user_id"]),
            self.movie_model(features["movie_title"]),
            candidate_ids=features["movie_title"],
            compute_metrics=not training,  # top-k over all movies only when evaluating
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for CI")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per MPE phase")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument(
        "--target-compression",
        type=float,
        default=8.0,
        help="compression ratio (with overhead) the search steers each table to",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    epochs = 1 if args.smoke else args.epochs
    data = load_tutorial_data(smoke=args.smoke)
    print(f"data: {data.description}")
    train, validation, test = data.batched(args.batch_size, 4096)

    def make_model(mixed_precision: bool) -> MovielensModel:
        tf.keras.utils.set_random_seed(0)
        model = MovielensModel(data, mixed_precision)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))
        return model

    def best_epoch() -> tf.keras.callbacks.Callback:
        """Keeps the weights of the best validation epoch (never stops early)."""
        return tf.keras.callbacks.EarlyStopping(
            MONITOR, mode="max", patience=2 * epochs, restore_best_weights=True
        )

    print(f"\n[1/3] float32 towers (tf.keras.layers.Embedding), {2 * epochs} epochs")
    baseline = make_model(mixed_precision=False)
    baseline.fit(
        train, validation_data=validation, epochs=2 * epochs, callbacks=[best_epoch()], verbose=2
    )
    float_metrics = baseline.evaluate(test, return_dict=True, verbose=0)

    print(f"\n[2/3] MPE towers: PrecisionSearch on validation top-100 accuracy ({epochs} epochs)")
    model = make_model(mixed_precision=True)
    search = keras_mpe.PrecisionSearch(monitor=MONITOR, target_compression=args.target_compression)
    model.fit(train, validation_data=validation, epochs=epochs, callbacks=[search], verbose=2)

    print(f"\n[3/3] MPE retrain at the chosen bits, tables rewound ({epochs} epochs)")
    model.fit(
        train, validation_data=validation, epochs=epochs, callbacks=[best_epoch()], verbose=2
    )
    mpe_metrics = model.evaluate(test, return_dict=True, verbose=0)
    test_users = np.concatenate([batch["user_id"].numpy() for batch in test])
    pruned = float(np.mean(~model.user_model(test_users).numpy().any(axis=1)))

    print(f"\nSummary: TFRS two-tower retrieval on {data.description}")
    print(f"  test top-k accuracy over all {len(data.movie_vocabulary)} movies:")
    print(f"  {'k':>5} {'float32 towers':>15} {'MPE towers':>11}")
    for k in TOP_K:
        name = f"factorized_top_k/top_{k}_categorical_accuracy"
        print(f"  {k:>5} {float_metrics[name]:>15.4f} {mpe_metrics[name]:>11.4f}")
    name = "factorized_top_k/top_100_categorical_accuracy"
    print(
        f"  top-100 accuracy: float32 {float_metrics[name]:.4f}, MPE {mpe_metrics[name]:.4f} "
        f"({mpe_metrics[name] - float_metrics[name]:+.4f})"
    )
    print(
        f"  test queries whose user embedding is pruned (0 bits, served the most popular "
        f"movies): {pruned:.1%}"
    )
    print("  embedding tables after the search:")
    for line in describe_reports(search.reports):
        print(line)
    print(f"  time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
