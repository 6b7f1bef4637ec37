"""The sections of ``manifest.json`` (encoder, front-end, separator, machines, files, ...).

Each is a frozen dataclass with ``from_dict`` (checks, PackageError naming the file and key) and
``to_dict`` (the JSON written back). Keys a section does not model are kept in its ``extra``.
`monitor.model.package.manifest.Manifest` puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.errors import PackageError
from monitor.model.package.files import validate_machine_name

if TYPE_CHECKING:
    from monitor.model.package.bank import Bank

PRECISIONS = ("fp32", "int8")
SEPARATOR_KINDS = ("waveform", "frames")


# --------------------------------------------------------------------------- checking helpers


def required(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    """``d[key]``, which must exist and be of ``types`` (a bool is no int unless asked for)."""
    if key not in d:
        raise PackageError(f"{where}: missing key {key!r}")
    return _typed(d[key], key, types, where)


def optional(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    """``d[key]`` of ``types``, or None when the key is absent or null."""
    value = d.get(key)
    return None if value is None else _typed(value, key, types, where)


def _typed(value: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise PackageError(f"{where}: key {key!r} must be {types}, got {value!r}")
    if not isinstance(value, allowed):
        raise PackageError(f"{where}: key {key!r} has the wrong type: {value!r}")
    return value


def positive(d: Mapping[str, Any], key: str, where: str) -> float:
    value = required(d, key, (int, float), where)
    if not math.isfinite(value) or value <= 0:
        raise PackageError(f"{where}: key {key!r} must be a positive number, got {value!r}")
    return float(value)


def positive_int(d: Mapping[str, Any], key: str, where: str, label: str) -> int:
    value = required(d, key, int, where)
    if value <= 0:
        raise PackageError(f"{where}: {label} must be positive, got {value}")
    return int(value)


def unmodelled(d: Mapping[str, Any], known: Sequence[str]) -> dict[str, Any]:
    """The keys of ``d`` that a section does not model (kept and written back)."""
    return {k: v for k, v in d.items() if k not in known}


def without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class FileEntry:
    """One file of the package, as ``files[<relative path>]``."""

    sha256: str  # hex digest of the file's bytes
    bytes: int | None = None  # its size; checked before the (slower) checksum

    @classmethod
    def from_dict(cls, d: Any, rel: str, where: str) -> FileEntry:
        if not isinstance(d, Mapping) or not isinstance(d.get("sha256"), str):
            raise PackageError(f"{where}: files[{rel!r}] needs a 'sha256' string")
        size = d.get("bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise PackageError(f"{where}: files[{rel!r}].bytes must be an integer, got {size!r}")
        return cls(d["sha256"], size)

    def to_dict(self) -> dict[str, Any]:
        return without_none({"sha256": self.sha256, "bytes": self.bytes})


@dataclass(frozen=True)
class FrontendParams:
    """The log-mel framing the encoder was exported with (``frontend``).

    The daemon cuts windows on this frame grid, so that ``frontend.onnx`` runs once per hop
    of new audio; a package without split graphs records ``1, 1, 1`` (no framing).
    """

    n_fft: int
    hop_length: int  # samples between frames: windows and hops must be multiples of it
    n_mels: int
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. win_length, f_min, top_db

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> FrontendParams:
        at = f"{where}: frontend"
        values = {}
        for key in ("n_fft", "hop_length", "n_mels"):
            value = required(d, key, int, at)
            if value <= 0:
                raise PackageError(f"{where}: frontend.{key} must be positive, got {value}")
            values[key] = int(value)
        return cls(**values, extra=unmodelled(d, ("n_fft", "hop_length", "n_mels")))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
        }


@dataclass(frozen=True)
class Int8Encoder:
    """Dynamic-int8 variants of the encoder graphs (``encoder.int8``)."""

    full: str  # file of the quantised full graph
    backbone: str | None = None  # the quantised streaming backbone (the front-end stays fp32)
    drift: Mapping[str, Any] = field(default_factory=dict)  # measured against fp32 at export
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Int8Encoder:
        if not isinstance(d, Mapping) or not isinstance(d.get("full"), str):
            raise PackageError(f"{where}: encoder.int8 must be an object with a 'full' file")
        drift = d.get("drift") or {}
        if not isinstance(drift, Mapping):
            raise PackageError(f"{where}: encoder.int8.drift must be an object")
        return cls(
            d["full"], d.get("backbone"), dict(drift), unmodelled(d, ("full", "backbone", "drift"))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "full": self.full,
            "backbone": self.backbone,
            "drift": dict(self.drift),
        }


@dataclass(frozen=True)
class EncoderSpec:
    """The encoder graphs (``encoder``): file names inside the package and their precision."""

    full: str  # waveform [B, samples] -> embedding [B, D], front-end inside (mandatory)
    frontend: str | None = None  # streaming split: audio -> mel frames ...
    backbone: str | None = None  # ... and one window's frames -> embedding (both or neither)
    int8: Int8Encoder | None = None
    precision: str = "fp32"  # what the runtime uses unless told otherwise: "fp32" | "int8"
    arch: str | None = None  # informational, e.g. "ced-tiny"
    opset: int | None = None  # ONNX opset of the export
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. input/output descriptions

    _KEYS = ("full", "frontend", "backbone", "int8", "precision", "arch", "opset")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> EncoderSpec:
        full = required(d, "full", str, f"{where}: encoder")
        precision = d.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise PackageError(f"{where}: encoder.precision must be one of {PRECISIONS}")
        if precision == "int8" and not d.get("int8"):
            raise PackageError(f"{where}: encoder.precision is int8 but there is no encoder.int8")
        frontend, backbone = d.get("frontend"), d.get("backbone")
        if (frontend is None) != (backbone is None):
            raise PackageError(f"{where}: encoder.frontend and encoder.backbone come together")
        for key, value in (("frontend", frontend), ("backbone", backbone)):
            if value is not None and not isinstance(value, str):
                raise PackageError(f"{where}: encoder.{key} must be a file name, got {value!r}")
        int8 = Int8Encoder.from_dict(d["int8"], where) if d.get("int8") is not None else None
        return cls(
            full=full,
            frontend=frontend,
            backbone=backbone,
            int8=int8,
            precision=precision,
            arch=optional(d, "arch", str, f"{where}: encoder"),
            opset=optional(d, "opset", int, f"{where}: encoder"),
            extra=unmodelled(d, cls._KEYS),
        )

    def files(self) -> dict[str, str]:
        """Every graph file by its manifest key (``full``, ..., ``int8.backbone``)."""
        named = {"full": self.full, "frontend": self.frontend, "backbone": self.backbone}
        if self.int8 is not None:
            named |= {"int8.full": self.int8.full, "int8.backbone": self.int8.backbone}
        return {k: v for k, v in named.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        d = {
            **self.extra,
            "full": self.full,
            "frontend": self.frontend,
            "backbone": self.backbone,
            "int8": self.int8.to_dict() if self.int8 is not None else None,
            "precision": self.precision,
        }
        return d | without_none({"arch": self.arch, "opset": self.opset})


@dataclass(frozen=True)
class SeparatorSpec:
    """A source separator in front of the encoder (``separator``).

    ``input`` "waveform" (the older kind) runs per window before the full graph, so the split
    path is off. "frames" maps mel frames with ``context_frames`` of context on each side to
    masked centre frames, between ``frontend.onnx`` and ``backbone.onnx``; it is tied to the
    front-end it was trained for (``n_fft``, ``hop_length``, ``n_mels``, when recorded).
    """

    file: str
    input: str | None = None  # None: not stated (the runtime then asks the graph)
    output: str | None = None  # must equal ``input`` when given
    context_frames: int | None = None  # mandatory for "frames"
    n_fft: int | None = None
    hop_length: int | None = None
    n_mels: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. mask_mode, mask_floor

    _KEYS = ("file", "input", "output", "context_frames", "n_fft", "hop_length", "n_mels")

    @property
    def kind(self) -> str:
        """What the manifest says the separator consumes ("waveform" unless stated)."""
        return self.input or "waveform"

    @classmethod
    def from_dict(cls, d: Any, frontend: FrontendParams, where: str) -> SeparatorSpec:
        if not isinstance(d, Mapping) or not isinstance(d.get("file"), str):
            raise PackageError(f"{where}: 'separator' must be null or {{'file': ...}}")
        kind = d.get("input", "waveform")
        if kind not in SEPARATOR_KINDS or d.get("output", kind) != kind:
            raise PackageError(
                f"{where}: separator.input/output must both be 'waveform' or 'frames', got "
                f"{kind!r}/{d.get('output')!r}"
            )
        ctx = d.get("context_frames")
        if kind == "frames":
            if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 0:
                raise PackageError(f"{where}: separator.context_frames must be an integer >= 0")
            for key in ("n_mels", "hop_length", "n_fft"):
                if key in d and d[key] != getattr(frontend, key):
                    raise PackageError(
                        f"{where}: separator.{key} = {d[key]} but frontend.{key} = "
                        f"{getattr(frontend, key)}: the separator was trained for another "
                        "front-end"
                    )
        return cls(
            file=d["file"],
            input=d.get("input"),
            output=d.get("output"),
            context_frames=ctx,
            n_fft=d.get("n_fft"),
            hop_length=d.get("hop_length"),
            n_mels=d.get("n_mels"),
            extra=unmodelled(d, cls._KEYS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, **without_none({k: getattr(self, k) for k in self._KEYS})}


@dataclass(frozen=True)
class ScorerSpec:
    """The scorer a newly enrolled machine gets (``scorer``): a registry name and parameters."""

    name: str  # a name of `monitor.model.scoring.SCORER_NAMES`
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ScorerSpec:
        name = required(d, "name", str, f"{where}: scorer")
        params = optional(d, "params", dict, f"{where}: scorer") or {}
        return cls(name, dict(params))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


@dataclass(frozen=True)
class CalibrationDefaults:
    """How enrolment calibrates thresholds unless told otherwise (``calibration``).

    Thresholds are fitted per operating condition to a false-alarm budget
    (`monitor.model.conditions`). ``method``/``q`` describe the DCASE 0.9-quantile decision of
    offline files (kept for packages written before budgets; "gamma" there).
    """

    method: str = "conditions-lognormal"
    q: float = 0.9  # the quantile of offline DCASE decisions
    false_alarms_per_week: float = 1.0  # per machine, with the default alert rule
    burst_seconds: float = 2.0  # sounds up to this long never alarm (the persistence rule)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> CalibrationDefaults:
        at = f"{where}: calibration"
        method = optional(d, "method", str, at) or "gamma"
        q = optional(d, "q", (int, float), at)
        budget = optional(d, "false_alarms_per_week", (int, float), at)
        burst = optional(d, "burst_seconds", (int, float), at)
        if budget is not None and not budget > 0:
            raise PackageError(f"{at}: 'false_alarms_per_week' must be positive; got {budget}")
        if burst is not None and not burst >= 0:
            raise PackageError(f"{at}: 'burst_seconds' must be >= 0; got {burst}")
        return cls(
            method,
            0.9 if q is None else float(q),
            1.0 if budget is None else float(budget),
            2.0 if burst is None else float(burst),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "q": self.q,
            "false_alarms_per_week": self.false_alarms_per_week,
            "burst_seconds": self.burst_seconds,
        }


@dataclass(frozen=True)
class MachineEntry:
    """One machine type (``machines[<name>]``): its files and a summary of its bank.

    The bank and calibration file names are fixed by the machine name
    (``machines/<name>/bank.npz``, ``machines/<name>/calibration.json``).
    """

    bank: str  # the bank .npz (embeddings, domains, fitted scorer arrays)
    calibration: str  # the threshold calibration JSON
    scorer: str | None = None  # registry name of the fitted scorer (summary)
    n_bank: int | None = None  # bank size and its domains (summary)
    n_source: int | None = None
    n_target: int | None = None
    threshold: float | None = None  # the lowest calibrated threshold (summary)
    conditions: Mapping[str, int] | None = None  # operating condition -> bank rows (summary)
    history: tuple[Mapping[str, Any], ...] = ()  # export and enrolment events, oldest first
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = (
        "bank",
        "calibration",
        "scorer",
        "n_bank",
        "n_source",
        "n_target",
        "threshold",
        "conditions",
        "history",
    )

    @classmethod
    def describe(
        cls, name: str, bank: Bank, threshold: float, history: Sequence[Mapping[str, Any]]
    ) -> MachineEntry:
        """The entry of machine ``name`` with ``bank``, calibrated to ``threshold``."""
        doms = bank.domains.tolist()
        names, counts = np.unique(np.asarray(bank.conditions), return_counts=True)
        return cls(
            bank=f"machines/{name}/bank.npz",
            calibration=f"machines/{name}/calibration.json",
            scorer=bank.scorer_name,
            n_bank=len(doms),
            n_source=doms.count("source"),
            n_target=doms.count("target"),
            threshold=float(threshold),
            conditions={str(n): int(c) for n, c in zip(names, counts, strict=True)},
            history=tuple(history),
        )

    @classmethod
    def from_dict(cls, d: Any, name: str, where: str) -> MachineEntry:
        at = f"{where}: machines[{name!r}]"
        validate_machine_name(name)
        if not isinstance(d, Mapping):
            raise PackageError(f"{at} must be an object")
        history = d.get("history", [])
        if not isinstance(history, list) or not all(isinstance(e, Mapping) for e in history):
            raise PackageError(f"{at}: 'history' must be a list of objects")
        threshold = optional(d, "threshold", (int, float), at)
        conditions = optional(d, "conditions", Mapping, at)
        return cls(
            bank=required(d, "bank", str, at),
            calibration=required(d, "calibration", str, at),
            scorer=optional(d, "scorer", str, at),
            n_bank=optional(d, "n_bank", int, at),
            n_source=optional(d, "n_source", int, at),
            n_target=optional(d, "n_target", int, at),
            threshold=None if threshold is None else float(threshold),
            conditions=None if conditions is None else dict(conditions),
            history=tuple(dict(e) for e in history),
            extra=unmodelled(d, cls._KEYS),
        )

    def to_dict(self) -> dict[str, Any]:
        summary = {
            k: getattr(self, k)
            for k in ("scorer", "n_bank", "n_source", "n_target", "threshold", "conditions")
        }
        if summary["conditions"] is not None:
            summary["conditions"] = dict(summary["conditions"])
        return {
            **self.extra,
            "bank": self.bank,
            "calibration": self.calibration,
            **without_none(summary),
            "history": [dict(e) for e in self.history],
        }
