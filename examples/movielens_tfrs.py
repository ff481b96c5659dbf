"""MovieLens-100K in the shape of the TensorFlow Recommenders tutorials, for MPE towers.

Shared by `tfrs_basic_ranking.py` and `tfrs_retrieval.py`. The data are the tutorials'
features (user id, movie title, rating) from `keras_mpe.datasets.load_movielens("100k")`
with its fixed random 80/10/10 split. Both vocabularies hold every user and every title,
ordered by descending *train* count (ties by value), so the ids a `StringLookup` gives
are ranked by frequency and every frequency group of a `MixedPrecisionEmbedding` is a
contiguous id range (the packed table then needs no id permutation).

Import this module after setting `TF_USE_LEGACY_KERAS=1`: TFRS needs tf-keras.
"""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

import keras_mpe
from keras_mpe.datasets import load_movielens


@dataclass
class TutorialData:
    """The tutorials' view of MovieLens-100K.

    Attributes:
        train, validation, test: unbatched `tf.data.Dataset`s of dicts with
            `user_id` (string), `movie_title` (string) and `user_rating` (float32).
        movies: an unbatched dataset of every movie title (the retrieval candidates).
        user_vocabulary, movie_vocabulary: str arrays by descending train count.
        user_counts, movie_counts: int64 train counts per lookup id; entry 0 is the
            lookup's OOV id (see `lookup_counts`).
        description: what the data is, to print beside any figure.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    movies: tf.data.Dataset
    user_vocabulary: np.ndarray
    movie_vocabulary: np.ndarray
    user_counts: np.ndarray
    movie_counts: np.ndarray
    description: str

    def batched(
        self, batch_size: int, evaluation_batch_size: int
    ) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
        """Train (shuffled each epoch), validation and test splits, batched and cached."""
        train = self.train.shuffle(100_000, seed=0, reshuffle_each_iteration=True)
        return (
            train.batch(batch_size).cache(),
            self.validation.batch(evaluation_batch_size).cache(),
            self.test.batch(evaluation_batch_size).cache(),
        )


def vocabulary_by_frequency(values: np.ndarray, train_values: np.ndarray) -> np.ndarray:
    """Every distinct value in `values`, ordered by descending count in
    `train_values` (ties by value; values absent from the train split come last)."""
    vocabulary = np.unique(values)
    counts = np.zeros(len(vocabulary), np.int64)
    present, counted = np.unique(train_values, return_counts=True)
    counts[np.searchsorted(vocabulary, present)] = counted
    return vocabulary[np.lexsort((np.arange(len(vocabulary)), -counts))]


def lookup_counts(vocabulary: np.ndarray, train_values: np.ndarray) -> np.ndarray:
    """Train counts per id of `StringLookup(vocabulary=..., mask_token=None)`.

    Id 0 is the lookup's OOV id and ids `1..` follow `vocabulary`. The OOV id never
    occurs in training (every value is in the vocabulary); it is given the count of
    id 1 so that it ranks as the most frequent id: it then shares the most frequent
    group and its bits, and the groups stay contiguous id ranges.
    """
    position = {value: index + 1 for index, value in enumerate(vocabulary.tolist())}
    counts = np.bincount(
        [position[value] for value in train_values.tolist()], minlength=len(vocabulary) + 1
    ).astype(np.int64)
    counts[0] = counts[1]
    return counts


def load_tutorial_data(smoke: bool = False, smoke_rows: int = 12_000) -> TutorialData:
    """Loads MovieLens-100K as the TFRS tutorials use it (cached after the first call).

    Args:
        smoke: keep only the first `smoke_rows` train rows and a tenth as many
            validation and test rows, for a quick run.
        smoke_rows: train rows of a smoke run.
    """
    movielens = load_movielens("100k")
    parts = list(movielens.split_indices)
    if smoke:
        parts = [parts[0][:smoke_rows]] + [part[: smoke_rows // 10] for part in parts[1:]]
    train_rows = parts[0]
    users, titles = movielens.user_id, movielens.movie_title
    user_vocabulary = vocabulary_by_frequency(users, users[train_rows])
    movie_vocabulary = vocabulary_by_frequency(titles, titles[train_rows])

    def dataset(rows: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            {
                "user_id": users[rows],
                "movie_title": titles[rows],
                "user_rating": movielens.rating[rows],
            }
        )

    description = movielens.description.split(":")[0] + (
        f": {len(parts[0])}/{len(parts[1])}/{len(parts[2])} train/validation/test ratings "
        f"(fixed random split), {len(user_vocabulary)} users, {len(movie_vocabulary)} movies"
        + (", smoke run on a slice" if smoke else "")
    )
    return TutorialData(
        train=dataset(parts[0]),
        validation=dataset(parts[1]),
        test=dataset(parts[2]),
        movies=tf.data.Dataset.from_tensor_slices(movie_vocabulary),
        user_vocabulary=user_vocabulary,
        movie_vocabulary=movie_vocabulary,
        user_counts=lookup_counts(user_vocabulary, users[train_rows]),
        movie_counts=lookup_counts(movie_vocabulary, titles[train_rows]),
        description=description,
    )


def lookup_tower(
    vocabulary: np.ndarray,
    counts: np.ndarray,
    embedding_dim: int,
    mixed_precision: bool,
    name: str,
) -> tf.keras.Sequential:
    """`StringLookup` then an embedding: `MixedPrecisionEmbedding` (with the train
    `counts` as frequencies) or, for the float baseline, `tf.keras.layers.Embedding`.

    The embedding layer is named `<name>_embedding`.
    """
    size = len(vocabulary) + 1  # + the OOV id 0
    if mixed_precision:
        embedding = keras_mpe.MixedPrecisionEmbedding(
            size, embedding_dim, frequencies=counts, name=f"{name}_embedding"
        )
    else:
        embedding = tf.keras.layers.Embedding(size, embedding_dim, name=f"{name}_embedding")
    lookup = tf.keras.layers.StringLookup(vocabulary=vocabulary.tolist(), mask_token=None)
    return tf.keras.Sequential([lookup, embedding], name=name)


def describe_reports(reports: dict) -> list[str]:
    """One line per table of a `PrecisionSearch.reports` dict."""
    lines = []
    for name, report in reports.items():
        bits = np.bincount(report["group_bits"], minlength=7)
        lines.append(
            f"  {name}: {report['compression_ratio']:.1f}x with overhead "
            f"({report['payload_compression_ratio']:.1f}x payload only), average bits "
            f"{report['average_bits']:.2f}, {report['float32_bytes']:,} -> "
            f"{report['total_bytes']:,} bytes; groups per bit-width "
            + ", ".join(f"{b}: {n}" for b, n in enumerate(bits) if n)
        )
    return lines
