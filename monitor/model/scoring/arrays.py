"""Reading a scorer's persisted arrays back (the pickle-free side of ``to_arrays()``).

Scorer state is stored as plain numeric and unicode arrays inside a bank ``.npz`` loaded with
``allow_pickle=False``. Every reader raises PackageError naming the key that is missing or
malformed, so a damaged package is reported as such and not as a crash in numpy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from monitor.errors import PackageError
from monitor.model.scoring.inputs import as_matrix

# Version of the layout written by ``Scorer.to_arrays()``; ``scorer_from_arrays`` refuses others.
FORMAT_VERSION = 1


def read_array(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in arrays:
        raise PackageError(f"scorer arrays lack the key {key!r}")
    value = np.asarray(arrays[key])
    if value.dtype.kind == "O":
        raise PackageError(f"scorer array {key!r} is an object array; refusing it")
    return value


def read_str(arrays: Mapping[str, np.ndarray], key: str) -> str:
    value = read_array(arrays, key)
    if value.ndim == 0 and value.dtype.kind == "U":
        return str(value[()])
    if value.ndim == 1 and value.dtype == np.uint8:  # JSON string stored as bytes
        try:
            text = json.loads(value.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            text = None
        if isinstance(text, str):
            return text
    raise PackageError(f"scorer array {key!r} must be a 0-d unicode string; got {value.dtype}")


def read_scalar(arrays: Mapping[str, np.ndarray], key: str, kinds: str) -> Any:
    value = read_array(arrays, key)
    if value.ndim != 0 or value.dtype.kind not in kinds:
        raise PackageError(
            f"scorer array {key!r} must be a 0-d array of kind {kinds!r}; "
            f"got shape {value.shape} dtype {value.dtype}"
        )
    return value[()]


def read_int(arrays: Mapping[str, np.ndarray], key: str) -> int:
    return int(read_scalar(arrays, key, "iu"))


def read_float(arrays: Mapping[str, np.ndarray], key: str) -> float:
    return float(read_scalar(arrays, key, "iuf"))


def read_bool(arrays: Mapping[str, np.ndarray], key: str) -> bool:
    return bool(read_scalar(arrays, key, "biu"))


def read_matrix(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    value = read_array(arrays, key)
    try:
        return as_matrix(value, name=f"scorer array {key!r}")
    except ValueError as exc:
        raise PackageError(str(exc)) from None


def read_vector(
    arrays: Mapping[str, np.ndarray], key: str, length: int, kinds: str = "iuf"
) -> np.ndarray:
    value = read_array(arrays, key)
    if value.shape != (length,) or value.dtype.kind not in kinds:
        raise PackageError(
            f"scorer array {key!r} must have shape ({length},) and kind {kinds!r}; "
            f"got shape {value.shape} dtype {value.dtype}"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise PackageError(f"scorer array {key!r} has non-finite values")
    return value.astype(np.float64) if kinds == "iuf" else value


def read_square(arrays: Mapping[str, np.ndarray], key: str, size: int) -> np.ndarray:
    value = read_matrix(arrays, key)
    if value.shape != (size, size):
        raise PackageError(f"scorer array {key!r} must be {size}x{size}; got {value.shape}")
    return value
