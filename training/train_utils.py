"""Shared training plumbing: seeding, device choice, pickle-free checkpoints, progress, loss log.

Checkpoints are a safetensors file plus a JSON sidecar (`<path>.json`) holding the recipe, the
hyper-parameters, the library versions, the seed and the loss history, so a model can be rebuilt
and audited without unpickling anything a user hands us.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from monitor.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

SIDECAR_SUFFIX = ".json"
FORMAT = "sonitor-checkpoint/1"


# --------------------------------------------------------------------------- seeding, device


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the count.

    Why: on 2 shared cores, two OpenMP threads made SimCLR steps 4-8x slower whenever another
    process was busy (5 steps of 16 clips: 15.3 s vs 1.9 s on one thread), and small per-clip
    FFTs 7-11x slower (thread hand-off dominates tiny ops); on an idle machine the second
    thread can at best halve the time.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and pick deterministic kernels where that costs nothing.

    `torch.use_deterministic_algorithms` is left off: it makes some CUDA ops raise, and on the
    CPU the default kernels are already deterministic for a fixed thread count.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a device that exists, or say why not."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r} asked for CUDA, but this torch ({torch.__version__}) sees no "
                "CUDA GPU; use --device cpu or auto"
            )
        if text == "cuda":
            return torch.device("cuda")
        index = text.split(":", 1)[1]
        if not index.isdigit():
            raise ConfigError(f"device {spec!r}: the GPU index must be a number, e.g. cuda:0")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ConfigError(f"device {spec!r}: only {count} CUDA GPU(s) visible (0..{count - 1})")
        return torch.device(f"cuda:{int(index)}")
    raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


# --------------------------------------------------------------------------- checkpoints


def versions() -> dict[str, str]:
    """Library versions worth recording next to a trained model."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        sonitor = version("sonitor")
    except PackageNotFoundError:  # running from a source tree that is not installed
        sonitor = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sonitor": sonitor,
    }


def _json_default(obj: Any) -> Any:
    """Let numpy scalars/arrays, tensors and paths through json.dumps."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"checkpoint meta value of type {type(obj).__name__} is not JSON-serialisable")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and os.replace (no torn files)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """`model.safetensors` -> `model.safetensors.json`."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def save_checkpoint(
    path: str | os.PathLike[str], model_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Path:
    """Save tensors as safetensors and `meta` (+ versions, checksum) as `<path>.json`, atomically.

    Returns the path of the tensor file. Tensors are copied to contiguous CPU memory first because
    safetensors refuses shared or strided storage (e.g. tied weights, views).
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model_state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: state entry {key!r} is {type(value).__name__}, not a tensor"
            )
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    blob = st_save(tensors)
    full_meta: dict[str, Any] = {
        "format": FORMAT,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        **dict(meta),
        "tensor_file": path.name,
        "tensor_sha256": hashlib.sha256(blob).hexdigest(),
    }
    try:
        text = json.dumps(full_meta, indent=2, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{sidecar_path(path)}: meta cannot be written as JSON: {exc}"
        ) from exc
    _atomic_write(path, blob)
    _atomic_write(sidecar_path(path), (text + "\n").encode())
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (state, meta) written by `save_checkpoint`; no pickle is involved.

    Raises CheckpointError naming the file when either file is missing, unreadable, or when the
    sidecar's checksum says the tensor file is not the one it was written with.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not side.is_file():
        raise CheckpointError(
            f"{side}: checkpoint sidecar (meta JSON) not found next to {path.name}"
        )
    blob = path.read_bytes()
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{side}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side}: expected a JSON object, got {type(meta).__name__}")
    want = meta.get("tensor_sha256")
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise CheckpointError(
            f"{path}: checksum does not match {side.name} (key 'tensor_sha256'); the pair was "
            "mixed up or the file is damaged"
        )
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    return dict(state), meta


def load_state_strict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """`model.load_state_dict` that names the file and every missing/unexpected/misshapen key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:8]))
    if problems:
        raise CheckpointError(
            f"{source}: does not match {type(model).__name__}: " + ", ".join(problems)
        )
    model.load_state_dict(dict(state), strict=True)


# --------------------------------------------------------------------------- progress


class _QuietBar:
    """Stand-in for tqdm off a terminal: keeps the postfix, logs one line when the loop ends."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, report: bool) -> None:
        self._iterable = iterable
        self.desc = desc
        self.total = total
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._report = report

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix.update(dict(ordered_dict or {}), **kwargs)

    def __iter__(self) -> Iterator[T]:
        start = time.perf_counter()
        for item in self._iterable:
            self.n += 1
            yield item
        if self._report:
            post = ", ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
            log.info(
                "%s: %d steps in %.1f s%s",
                self.desc,
                self.n,
                time.perf_counter() - start,
                f", {post}" if post else "",
            )

    def close(self) -> None:
        """tqdm compatibility."""


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    *,
    enabled: bool = True,
    force_bar: bool = False,
) -> Any:
    """Wrap a loop: a tqdm bar on a terminal, one log line per loop otherwise.

    Call `.set_postfix(loss=...)` on the result either way. `enabled=False` silences it; a bar off
    a terminal (CI logs, systemd journals) is only drawn with `force_bar=True`, because redrawn
    bars turn into thousands of lines there.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled and (force_bar or sys.stderr.isatty()):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return _QuietBar(iterable, desc, total, report=enabled)


# --------------------------------------------------------------------------- loss history


class EpochLogger:
    """Per-epoch means of batch metrics, kept in a JSON-ready dict for the checkpoint meta."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._start = time.perf_counter()

    def update(self, n: int = 1, **metrics: float) -> None:
        """Add one batch's metrics, weighted by its size `n`."""
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value) * n
            self._counts[key] = self._counts.get(key, 0) + n

    def end_epoch(self, **extra: float) -> dict[str, float]:
        """Close the epoch: store each metric's mean plus `extra` (e.g. lr); return them."""
        row = {k: self._sums[k] / max(self._counts[k], 1) for k in self._sums}
        row.update({k: float(v) for k, v in extra.items()})
        row["seconds"] = time.perf_counter() - self._start
        for key, value in row.items():
            self.history.setdefault(key, []).append(float(value))
        self._sums.clear()
        self._counts.clear()
        self._start = time.perf_counter()
        return row

    @property
    def epochs(self) -> int:
        return len(self.history.get("seconds", []))
