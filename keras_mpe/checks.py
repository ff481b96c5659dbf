"""Argument checks shared by the package, with Keras-style messages.

Each check raises with the argument's name, the value received and what is expected,
and returns the value in the form the caller stores.
"""

import os
import re
from typing import Any

import numpy as np
import tensorflow as tf

MAX_BITS = 8  # the widest code the packed layout stores (codes are held in uint8)


def is_int(value: Any) -> bool:
    """Whether `value` is a Python or numpy integer (not a bool).

    >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
    (True, True, False, False)
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a finite real number (not a bool).

    >>> is_number(0.5), is_number(float("nan")), is_number(False)
    (True, False, False)
    """
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not isinstance(value, bool) and bool(np.isfinite(value))


def boolean(name: str, value: Any) -> bool:
    """`value` if it is a bool.

    >>> boolean("mask_zero", 1)
    Traceback (most recent call last):
    ...
    ValueError: `mask_zero` must be a bool. Received: mask_zero=1
    """
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    """`value` as an int if it is an integer >= 1 (>= 0 with `allow_zero`).

    >>> positive_int("input_dim", 0)
    Traceback (most recent call last):
    ...
    ValueError: `input_dim` must be a positive integer. Received: input_dim=0 (of type int)
    >>> positive_int("epochs", -1, allow_zero=True)
    Traceback (most recent call last):
    ...
    ValueError: `epochs` must be an integer >= 0. Received: epochs=-1 (of type int)
    """
    if not is_int(value) or value < (0 if allow_zero else 1):
        expected = "an integer >= 0" if allow_zero else "a positive integer"
        raise ValueError(
            f"`{name}` must be {expected}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    return int(value)


def positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """`value` as a float if it is a finite number > 0 (>= 0 with `allow_zero`).

    >>> positive_float("bit_penalty", -1.0, allow_zero=True)
    Traceback (most recent call last):
    ...
    ValueError: `bit_penalty` must be a finite number >= 0. Received: bit_penalty=-1.0
    """
    if not is_number(value) or not (value >= 0 if allow_zero else value > 0):
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return float(value)


def target_compression(value: Any) -> float | None:
    """`value` as a float if it is a compression ratio > 1, or None.

    >>> target_compression(1)
    Traceback (most recent call last):
    ...
    ValueError: `target_compression` must be a number > 1 (float32 bytes over packed bytes) \
or None. Received: target_compression=1
    """
    if value is None:
        return None
    if not is_number(value) or not value > 1:
        raise ValueError(
            "`target_compression` must be a number > 1 (float32 bytes over packed bytes) "
            f"or None. Received: target_compression={value!r}"
        )
    return float(value)


def bit_widths(value: Any) -> tuple[int, ...]:
    """Candidate bit-widths: a non-empty, strictly increasing sequence of integers in
    `[0, MAX_BITS]`, returned as a tuple of ints.

    >>> bit_widths([0, 2, 4])
    (0, 2, 4)
    """
    try:
        values = tuple(value)
    except TypeError:
        values = None
    if (
        not values
        or not all(is_int(b) for b in values)
        or any(b < 0 or b > MAX_BITS for b in values)
        or any(a >= b for a, b in zip(values, values[1:]))
    ):
        raise ValueError(
            "`bit_widths` must be a non-empty, strictly increasing sequence of integers "
            f"in [0, {MAX_BITS}]. Received: bit_widths={value!r}"
        )
    return tuple(int(b) for b in values)


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if isinstance(value, tf.Variable | tf.Tensor) else value)


def float_array(name: str, value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """`value` as a finite float32 array of `shape` (`what` says what the shape is).

    >>> float_array("offset", [0.0, float("inf")], (2,), "[output_dim]")
    Traceback (most recent call last):
    ...
    ValueError: `offset` must be finite. Received offset[1]=inf.
    """
    array = _numpy(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold numbers. Received an array of dtype {array.dtype}.")
    if array.shape != shape:
        raise ValueError(
            f"`{name}` must have shape {shape} ({what}). Received shape {array.shape}."
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        index = np.unravel_index(np.argmax(~np.isfinite(array)), array.shape)
        raise ValueError(
            f"`{name}` must be finite. Received {name}[{', '.join(map(str, index))}]="
            f"{array[index]}."
        )
    return array


def int_array(name: str, value: Any, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
    """`value` as an int64 array of `shape` with every entry in `[low, high]`.

    >>> int_array("group_bits", [0, 9], (2,), 0, 8)
    Traceback (most recent call last):
    ...
    ValueError: `group_bits` values must be in [0, 8]. Received group_bits[1]=9.
    """
    array = _numpy(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers. Received an array of dtype {array.dtype}.")
    if array.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}. Received shape {array.shape}.")
    bad = (array < low) | (array > high)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"`{name}` values must be in [{low}, {high}]. Received {name}[{index}]={array[index]}."
        )
    return array.astype(np.int64, copy=False)


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(name: str, value: Any) -> str:
    """`value` as an absolute local path, symlinks followed, for a writer.

    Every keras_mpe writer (the export, the search's backup, plots, the demo) takes
    its path through this check. An empty path would stand for the working
    directory, and a remote URL (`gs://...`) would be written on the local disk as
    `./gs:/...`: both are refused by name. A symlink is followed, so what is
    written replaces the target's contents and the link stays a link.

    >>> local_path("export_dir", "")
    Traceback (most recent call last):
    ...
    ValueError: `export_dir` must be a non-empty local path. Received: export_dir=''
    >>> local_path("export_dir", "gs://bucket/model")
    Traceback (most recent call last):
    ...
    ValueError: `export_dir` must be a local path; remote URLs are not written to. \
Received: export_dir='gs://bucket/model'. Write locally, then copy the directory.
    """
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"`{name}` must be a path (str or os.PathLike). "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    path = os.fspath(value)
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise ValueError(f"`{name}` must be a non-empty local path. Received: {name}={value!r}")
    if _URL_SCHEME.match(path):
        raise ValueError(
            f"`{name}` must be a local path; remote URLs are not written to. "
            f"Received: {name}={value!r}. Write locally, then copy the directory."
        )
    return os.path.realpath(path)
