"""A machine's bank file (``machines/<name>/bank.npz``): embeddings, domains, conditions,
scorer arrays.

Pickle-free: every array is numeric or unicode and is read with ``allow_pickle=False``, so a
package from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import PackageError
from monitor.model.conditions import validate_condition_name
from monitor.model.levels import LevelReference, level_reference

_SCORER_PREFIX = "scorer__"  # scorer arrays are stored under this prefix beside the bank's own
_DOMAINS = ("source", "target", "")  # "" = unknown


@dataclass
class Bank:
    """A machine's normal memory: the embeddings, their domains and the fitted scorer's arrays.

    The raw embeddings are kept (not only the scorer's derived arrays) so that enrolment can
    extend, subsample and refit the bank without the original audio.
    """

    embeddings: np.ndarray  # [N, D] float32
    domains: np.ndarray  # [N] str: "source" | "target" | "" (unknown)
    scorer_name: str
    scorer_params: dict[str, Any]
    scorer_arrays: dict[str, np.ndarray]
    calibration_scores: np.ndarray  # the leave-one-out scores the threshold was fitted on
    # [N] operating condition of each embedding (`monitor.model.conditions`); a bank written
    # before conditions existed has its domains ('' = source) as conditions
    conditions: np.ndarray | None = None
    # [N] the condition each calibration score was matched to (its nearest other reference)
    matched: np.ndarray | None = None
    # [N] RMS level (dBFS) of each embedding's window, NaN where unknown: the enrolled level of
    # each condition, against which the daemon's level-shift rule measures
    levels: np.ndarray | None = None
    # [N] the recording each embedding came from (calibration holds whole recordings out);
    # a bank written before groups were stored counts every embedding as its own recording
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.conditions is None:
            self.conditions = condition_names(self.domains)
        if self.matched is None:
            self.matched = np.asarray(self.conditions)
        if self.levels is None:
            self.levels = np.full(len(self.embeddings), np.nan)
        if self.groups is None:
            self.groups = np.arange(len(self.embeddings), dtype=np.int64)

    def level_references(self) -> dict[str, LevelReference]:
        """Condition -> its enrolled level and natural variation (`monitor.model.levels`);
        conditions without known levels are left out (a package from before levels were stored)."""
        out = {}
        conds = np.asarray(self.conditions)
        for c in np.unique(conds).tolist():
            m = conds == c
            ref = level_reference(np.asarray(self.levels)[m], np.asarray(self.groups)[m])
            if ref is not None:
                out[str(c)] = ref
        return out

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def domain_list(self) -> list[str | None]:
        return [d if d else None for d in self.domains.tolist()]

    def save(self, path: str | Path) -> None:
        """Write this bank with `save_bank`."""
        save_bank(
            path,
            self.embeddings,
            self.domain_list(),
            self.scorer_name,
            self.scorer_params,
            self.scorer_arrays,
            self.calibration_scores,
            conditions=self.conditions,
            matched=self.matched,
            levels=self.levels,
            groups=self.groups,
        )


def condition_names(domains: np.ndarray) -> np.ndarray:
    """Conditions of a bank from before conditions: its DCASE domains ('' -> 'source')."""
    return np.asarray([d if d else "source" for d in np.asarray(domains).tolist()], dtype=str)


def save_bank(
    path: str | Path,
    embeddings: np.ndarray,
    domains: list[str | None] | np.ndarray | None,
    scorer_name: str,
    scorer_params: Mapping[str, Any],
    scorer: Any,
    calibration_scores: np.ndarray,
    *,
    conditions: Any = None,
    matched: Any = None,
    levels: Any = None,
    groups: Any = None,
) -> None:
    """Write a bank as a pickle-free ``.npz``.

    ``scorer`` is a fitted scorer (its ``to_arrays()`` is stored) or those arrays already.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"bank embeddings must be [N, D], got shape {x.shape}")
    doms = np.asarray(["" if d is None else str(d) for d in (domains or [None] * len(x))])
    if len(doms) != len(x):
        raise ValueError(f"{len(doms)} domains for {len(x)} embeddings")
    arrays: dict[str, Any] = {
        "embeddings": x,
        "domains": doms.astype("<U6"),
        "scorer_name": np.asarray(scorer_name),
        "scorer_params": np.asarray(json.dumps(dict(scorer_params), sort_keys=True)),
        "calibration_scores": np.asarray(calibration_scores, dtype=np.float64),
    }
    for key, value in (("conditions", conditions), ("matched", matched)):
        if value is not None:
            arr = np.asarray([str(v) for v in value])
            if arr.shape != (len(x),):
                raise ValueError(f"{len(arr)} {key} for {len(x)} embeddings")
            arrays[key] = arr
    if groups is not None:
        gr = np.asarray(groups, dtype=np.int64)
        if gr.shape != (len(x),):
            raise ValueError(f"{len(gr)} recording ids for {len(x)} embeddings")
        arrays["groups"] = gr
    if levels is not None:
        lv = np.asarray(levels, dtype=np.float64)
        if lv.shape != (len(x),):
            raise ValueError(f"{len(lv)} levels for {len(x)} embeddings")
        arrays["levels"] = lv
    scorer_arrays = scorer if isinstance(scorer, Mapping) else scorer.to_arrays()
    for key, value in scorer_arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise ValueError(f"scorer array {key!r} has dtype object, which needs pickle")
        arrays[_SCORER_PREFIX + key] = arr
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_bank(path: str | Path, where: str = "") -> Bank:
    """Read a bank written by `save_bank`; every problem is a PackageError naming the file."""
    name = where or str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise PackageError(f"{name}: bank file is missing") from None
    except (ValueError, OSError, EOFError) as exc:
        raise PackageError(f"{name}: not a readable pickle-free .npz bank ({exc})") from None
    for key in ("embeddings", "domains", "scorer_name", "scorer_params", "calibration_scores"):
        if key not in data:
            raise PackageError(f"{name}: bank lacks the array {key!r}")
    x = data["embeddings"]
    if x.ndim != 2 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.floating):
        raise PackageError(f"{name}: 'embeddings' must be a non-empty float [N, D] array")
    if not np.all(np.isfinite(x)):
        raise PackageError(f"{name}: 'embeddings' contains NaN or inf")
    doms = data["domains"]
    if doms.shape != (x.shape[0],) or not set(doms.tolist()) <= set(_DOMAINS):
        raise PackageError(
            f"{name}: 'domains' must hold one of 'source', 'target' or '' per embedding"
        )
    try:
        params = json.loads(str(data["scorer_params"]))
    except json.JSONDecodeError as exc:
        raise PackageError(f"{name}: 'scorer_params' is not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise PackageError(f"{name}: 'scorer_params' must be a JSON object")
    conds = {}
    for key in ("conditions", "matched"):
        if key in data:
            arr = data[key]
            if arr.shape != (x.shape[0],) or arr.dtype.kind != "U":
                raise PackageError(f"{name}: {key!r} must hold one condition name per embedding")
            try:
                for c in set(arr.tolist()):
                    validate_condition_name(c)
            except ValueError as exc:
                raise PackageError(f"{name}: {key!r}: {exc}") from None
            conds[key] = arr.astype(str)
    groups = None
    if "groups" in data:
        groups = data["groups"]
        if groups.shape != (x.shape[0],) or groups.dtype.kind not in "iu":
            raise PackageError(f"{name}: 'groups' must hold one recording id per embedding")
    levels = None
    if "levels" in data:
        levels = data["levels"]
        if levels.shape != (x.shape[0],) or levels.dtype.kind != "f":
            raise PackageError(f"{name}: 'levels' must hold one float (dBFS or NaN) per embedding")
    return Bank(
        embeddings=x.astype(np.float32, copy=False),
        domains=doms.astype(str),
        scorer_name=str(data["scorer_name"]),
        scorer_params=params,
        scorer_arrays={
            k[len(_SCORER_PREFIX) :]: v for k, v in data.items() if k.startswith(_SCORER_PREFIX)
        },
        calibration_scores=np.asarray(data["calibration_scores"], dtype=np.float64),
        conditions=conds.get("conditions"),
        matched=conds.get("matched"),
        levels=None if levels is None else levels.astype(np.float64),
        groups=None if groups is None else groups.astype(np.int64),
    )
