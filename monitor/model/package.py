"""The model package: what `sonitor export` and `sonitor enroll` write and the daemon loads.

A package is a directory (a single-file ``.tar`` archive of it serves distribution)::

    manifest.json                  format, audio and window parameters, recipe, sha256 of every file
    encoder.onnx                   waveform [B, samples] -> embedding [B, D], front-end inside
    frontend.onnx, backbone.onnx   the same graph split for streaming (optional, see runtime.py)
    encoder.int8.onnx, ...         dynamic-int8 variants (optional)
    separator.onnx                 mel frames -> masked frames, or waveform -> waveform (optional)
    machines/<name>/bank.npz       normal-memory bank + fitted scorer arrays (no pickle)
    machines/<name>/calibration.json   threshold fit on leave-one-out scores

Loading validates everything up front (missing files, checksums, format version, embedding size,
scorer and calibration) so a daemon never discovers a broken package halfway through a night.
Writes are atomic: a complete new version is staged beside the old one, fsynced, then swapped in
with one ``renameat2(RENAME_EXCHANGE)``, so an interrupted write leaves the old package intact.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor import __version__
from monitor.errors import PackageError

FORMAT_NAME = "sonitor-model-package"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
ARCHIVE_SUFFIXES = (".tar", ".sonitor")
PRECISIONS = ("fp32", "int8")
_MACHINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCORER_PREFIX = "scorer__"
_DOMAINS = ("source", "target", "")


# --------------------------------------------------------------------------- small helpers


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def validate_machine_name(name: str) -> str:
    """Machine names become folder names and MQTT topic levels: keep them plain."""
    if not isinstance(name, str) or not _MACHINE_RE.match(name):
        raise PackageError(
            f"invalid machine name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _safe_relpath(rel: str, where: str) -> str:
    """Reject absolute paths and '..' so a manifest can never point outside its package."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise PackageError(f"{where}: unsafe file path {rel!r} in the manifest")
    return p.as_posix()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- banks


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
        )


def save_bank(
    path: str | Path,
    embeddings: np.ndarray,
    domains: list[str | None] | np.ndarray | None,
    scorer_name: str,
    scorer_params: Mapping[str, Any],
    scorer: Any,
    calibration_scores: np.ndarray,
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
    arrays: dict[str, np.ndarray] = {
        "embeddings": x,
        "domains": doms.astype("<U6"),
        "scorer_name": np.asarray(scorer_name),
        "scorer_params": np.asarray(json.dumps(dict(scorer_params), sort_keys=True)),
        "calibration_scores": np.asarray(calibration_scores, dtype=np.float64),
    }
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
    return Bank(
        embeddings=x.astype(np.float32, copy=False),
        domains=doms.astype(str),
        scorer_name=str(data["scorer_name"]),
        scorer_params=params,
        scorer_arrays={
            k[len(_SCORER_PREFIX) :]: v for k, v in data.items() if k.startswith(_SCORER_PREFIX)
        },
        calibration_scores=np.asarray(data["calibration_scores"], dtype=np.float64),
    )


# --------------------------------------------------------------------------- loaded package


@dataclass
class MachineModel:
    """One machine type: its scorer (fitted on the bank) and its threshold calibration."""

    name: str
    scorer: Any
    calibration: Any  # monitor.model.thresholds.Calibration
    bank: Bank
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.calibration.threshold)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Anomaly scores (higher = more anomalous) for ``[N, D]`` embeddings."""
        return np.asarray(self.scorer.score_samples(embeddings), dtype=np.float64)


def _req(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise PackageError(f"{where}: missing key {key!r}")
    value = d[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PackageError(f"{where}: key {key!r} must be {types}, got {value!r}")
    if not isinstance(value, types):
        raise PackageError(f"{where}: key {key!r} has the wrong type: {value!r}")
    return value


def _positive(d: Mapping[str, Any], key: str, where: str) -> float:
    value = _req(d, key, (int, float), where)
    if not math.isfinite(value) or value <= 0:
        raise PackageError(f"{where}: key {key!r} must be a positive number, got {value!r}")
    return value


class ModelPackage:
    """A validated, loaded model package. Use `ModelPackage.load(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any], manifest_sha256: str) -> None:
        self.path = path
        self.manifest = manifest
        self.model_version: str = manifest_sha256[:12]
        self.sample_rate: int = manifest["sample_rate"]
        self.window_seconds: float = float(manifest["window_seconds"])
        self.hop_seconds: float = float(manifest["hop_seconds"])
        self.embedding_dim: int = manifest["embedding_dim"]
        self.recipe: str = manifest["recipe"]
        self._machines: dict[str, MachineModel] = {}
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.archive: Path | None = None

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(
        cls, path: str | Path, *, verify_checksums: bool = True, check_encoder: bool = True
    ) -> ModelPackage:
        """Load and validate a package directory or archive; PackageError names what is wrong."""
        path = Path(path)
        if path.is_file():
            return cls._load_archive(path, verify_checksums, check_encoder)
        if not path.is_dir():
            raise PackageError(_missing_message(path))
        manifest, digest = read_manifest(path)
        pkg = cls(path, manifest, digest)
        pkg._validate(verify_checksums, check_encoder)
        return pkg

    @classmethod
    def _load_archive(cls, path: Path, verify: bool, check_encoder: bool) -> ModelPackage:
        tmp = tempfile.TemporaryDirectory(prefix="sonitor-pkg-")
        try:
            root = unpack_archive(path, Path(tmp.name) / "package")
            pkg = cls.load(root, verify_checksums=verify, check_encoder=check_encoder)
        except BaseException:
            tmp.cleanup()
            raise
        pkg._tmpdir = tmp  # removed when the package object goes away
        pkg.archive = path
        weakref.finalize(pkg, tmp.cleanup)
        return pkg

    def _validate(self, verify_checksums: bool, check_encoder: bool) -> None:
        m = self.manifest
        where = str(self.path / MANIFEST)
        files = _req(m, "files", dict, where)
        for rel, entry in files.items():
            rel = _safe_relpath(rel, where)
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise PackageError(f"{where}: files[{rel!r}] needs a 'sha256' string")
            fpath = self.path / rel
            if not fpath.is_file():
                raise PackageError(f"{fpath}: file listed in the manifest is missing")
            size = entry.get("bytes")
            if size is not None and fpath.stat().st_size != size:
                raise PackageError(
                    f"{fpath}: size {fpath.stat().st_size} bytes, manifest says {size} "
                    "(truncated or replaced file)"
                )
            if verify_checksums:
                actual = sha256_file(fpath)
                if actual != entry["sha256"]:
                    raise PackageError(
                        f"{fpath}: checksum mismatch (sha256 {actual[:16]}..., manifest says "
                        f"{entry['sha256'][:16]}...): the file was changed or corrupted"
                    )
        enc = self._encoder_section()
        for key in ("full", "frontend", "backbone"):
            if enc.get(key) is not None:
                self._listed(enc[key], f"encoder.{key}")
        if (enc.get("frontend") is None) != (enc.get("backbone") is None):
            raise PackageError(f"{where}: encoder.frontend and encoder.backbone come together")
        if enc.get("frontend") is not None:  # streamed windows must start on STFT frames
            fh = m["frontend"]["hop_length"]
            for key, n in (
                ("window_seconds", self.window_samples),
                ("hop_seconds", self.hop_samples),
            ):
                if n % fh:
                    raise PackageError(
                        f"{where}: {key} = {m[key]} ({n} samples) is not a multiple of the frame "
                        f"hop of {fh} samples"
                    )
        int8 = enc.get("int8")
        if int8 is not None:
            if not isinstance(int8, dict) or not isinstance(int8.get("full"), str):
                raise PackageError(f"{where}: encoder.int8 must be an object with a 'full' file")
            for key in ("full", "backbone"):
                if int8.get(key) is not None:
                    self._listed(int8[key], f"encoder.int8.{key}")
        sep = m.get("separator")
        if sep is not None:
            if not isinstance(sep, dict) or not isinstance(sep.get("file"), str):
                raise PackageError(f"{where}: 'separator' must be null or {{'file': ...}}")
            self._listed(sep["file"], "separator.file")
            self._check_separator(sep, where)
        machines = _req(m, "machines", dict, where)
        for name in machines:
            self._machines[name] = self._load_machine(name)
        if check_encoder:
            self._check_onnx_outputs()

    def _check_separator(self, sep: dict[str, Any], where: str) -> None:
        """``input`` "waveform" (default, the older kind: runs per window before the full graph)
        or "frames" (mel frames -> masked frames between frontend.onnx and backbone.onnx, with
        ``context_frames`` of context; tied to the package's front-end)."""
        kind = sep.get("input", "waveform")
        if kind not in ("waveform", "frames") or sep.get("output", kind) != kind:
            raise PackageError(
                f"{where}: separator.input/output must both be 'waveform' or 'frames', got "
                f"{kind!r}/{sep.get('output')!r}"
            )
        if kind == "waveform":
            return
        ctx = sep.get("context_frames")
        if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 0:
            raise PackageError(f"{where}: separator.context_frames must be an integer >= 0")
        fe = self.manifest["frontend"]
        for key in ("n_mels", "hop_length", "n_fft"):
            if key in sep and sep[key] != fe.get(key):
                raise PackageError(
                    f"{where}: separator.{key} = {sep[key]} but frontend.{key} = {fe.get(key)}: "
                    "the separator was trained for another front-end"
                )

    @property
    def separator_info(self) -> dict[str, Any] | None:
        sep = self.manifest.get("separator")
        return dict(sep) if sep else None

    def _encoder_section(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    def _listed(self, rel: Any, key: str) -> Path:
        where = str(self.path / MANIFEST)
        if not isinstance(rel, str):
            raise PackageError(f"{where}: {key} must be a file name, got {rel!r}")
        rel = _safe_relpath(rel, where)
        if rel not in self.manifest["files"]:
            raise PackageError(f"{where}: {key} = {rel!r} is not listed (with a checksum) in files")
        return self.path / rel

    def _load_machine(self, name: str) -> MachineModel:
        from monitor.model.scoring import scorer_from_arrays
        from monitor.model.thresholds import Calibration

        where = f"{self.path / MANIFEST}: machines[{name!r}]"
        validate_machine_name(name)
        info = self.manifest["machines"][name]
        if not isinstance(info, dict):
            raise PackageError(f"{where} must be an object")
        bank_path = self._listed(_req(info, "bank", str, where), f"machines[{name!r}].bank")
        cal_path = self._listed(
            _req(info, "calibration", str, where), f"machines[{name!r}].calibration"
        )
        bank = load_bank(bank_path, where=f"{bank_path} (machine {name!r})")
        if bank.dim != self.embedding_dim:
            raise PackageError(
                f"{bank_path} (machine {name!r}): wrong embedding size {bank.dim}, the package "
                f"encoder gives {self.embedding_dim}"
            )
        try:
            scorer = scorer_from_arrays(bank.scorer_arrays)
        except (PackageError, KeyError, ValueError, TypeError) as exc:
            raise PackageError(
                f"{bank_path} (machine {name!r}): bad scorer arrays ({exc})"
            ) from None
        try:
            probe = np.asarray(scorer.score_samples(bank.embeddings[:1]), dtype=np.float64)
        except ValueError as exc:
            raise PackageError(
                f"{bank_path} (machine {name!r}): the scorer does not accept {self.embedding_dim}"
                f"-d embeddings ({exc})"
            ) from None
        if probe.shape != (1,) or not np.all(np.isfinite(probe)):
            raise PackageError(f"{bank_path} (machine {name!r}): the scorer gives no finite score")
        try:
            cal_dict = json.loads(cal_path.read_text())
            calibration = Calibration.from_dict(cal_dict)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{cal_path}: not valid JSON ({exc})") from None
        except (PackageError, KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{cal_path}: not a threshold calibration ({exc})") from None
        thr = float(calibration.threshold)
        if not math.isfinite(thr) or thr <= 0:
            raise PackageError(f"{cal_path}: threshold must be a positive number, got {thr!r}")
        return MachineModel(name, scorer, calibration, bank, dict(info))

    def _check_onnx_outputs(self) -> None:
        """The encoder graphs must give embeddings of the manifest's size."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        for path in self.encoder_files():
            if path.name.startswith("frontend"):
                continue
            try:
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types
                raise PackageError(f"{path}: not a loadable ONNX model ({exc})") from None
            dim = sess.get_outputs()[0].shape[-1]
            if not isinstance(dim, int):  # symbolic: fall back on what export recorded
                meta = sess.get_modelmeta().custom_metadata_map.get("sonitor.embedding_dim", "")
                dim = int(meta) if meta.isdigit() else None
            if dim is not None and dim != self.embedding_dim:
                raise PackageError(
                    f"{path}: wrong embedding size: the graph outputs {dim}, the manifest says "
                    f"embedding_dim = {self.embedding_dim}"
                )

    # ----------------------------------------------------------------- accessors

    @property
    def machines(self) -> list[str]:
        return sorted(self._machines)

    def machine(self, name: str) -> MachineModel:
        try:
            return self._machines[name]
        except KeyError:
            known = ", ".join(self.machines) or "none"
            raise PackageError(
                f"{self.path}: machine {name!r} is not in this package (machines: {known}); "
                "add it with `sonitor enroll`"
            ) from None

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def frontend(self) -> dict[str, Any]:
        return self.manifest["frontend"]

    @property
    def precision(self) -> str:
        return self._encoder_section().get("precision", "fp32")

    def _enc_file(self, key: str, precision: str | None) -> Path | None:
        enc = self._encoder_section()
        precision = precision or self.precision
        if precision not in PRECISIONS:
            raise PackageError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
        if precision == "int8" and key != "frontend":
            if not enc.get("int8"):
                raise PackageError(f"{self.path}: this package has no int8 encoder")
            rel = enc["int8"].get(key)
        else:
            rel = enc.get(key)
        return None if rel is None else self.path / rel

    def encoder_file(self, precision: str | None = None) -> Path:
        path = self._enc_file("full", precision)
        assert path is not None  # validated: the full graph is mandatory
        return path

    def frontend_file(self) -> Path | None:
        return self._enc_file("frontend", "fp32")

    def backbone_file(self, precision: str | None = None) -> Path | None:
        return self._enc_file("backbone", precision)

    def encoder_files(self) -> list[Path]:
        enc = self._encoder_section()
        rels = [enc.get(k) for k in ("full", "frontend", "backbone")]
        if enc.get("int8"):
            rels += [enc["int8"].get(k) for k in ("full", "backbone")]
        return [self.path / r for r in rels if r]

    @property
    def encoder_path(self) -> Path:
        return self.encoder_file()

    @property
    def separator_path(self) -> Path | None:
        sep = self.manifest.get("separator")
        return None if not sep else self.path / sep["file"]

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    def __repr__(self) -> str:
        return (
            f"ModelPackage({str(self.path)!r}, recipe={self.recipe!r}, "
            f"version={self.model_version}, machines={self.machines})"
        )


def _missing_message(path: Path) -> str:
    backups = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    msg = f"model package not found: {path}"
    if backups:
        msg += (
            f"; an interrupted write left the previous version at {backups[-1]}: rename it back "
            f"to {path.name} (the next `sonitor enroll` does this itself)"
        )
    return msg


def read_manifest(root: Path) -> tuple[dict[str, Any], str]:
    """Parse and check the manifest's top level; returns it and the sha256 of its bytes."""
    mpath = root / MANIFEST
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"{mpath}: missing: {root} is not a model package") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{mpath}: not valid JSON ({exc})") from None
    where = str(mpath)
    if not isinstance(manifest, dict):
        raise PackageError(f"{where}: the top level must be a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise PackageError(
            f"{where}: 'format' is {manifest.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise PackageError(
            f"{where}: unknown format_version {version!r}; this sonitor ({__version__}) reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}: upgrade sonitor or re-export the package"
        )
    sr = _req(manifest, "sample_rate", int, where)
    if sr <= 0:
        raise PackageError(f"{where}: 'sample_rate' must be positive, got {sr}")
    _positive(manifest, "window_seconds", where)
    _positive(manifest, "hop_seconds", where)
    dim = _req(manifest, "embedding_dim", int, where)
    if dim <= 0:
        raise PackageError(f"{where}: 'embedding_dim' must be positive, got {dim}")
    _req(manifest, "recipe", str, where)
    enc = _req(manifest, "encoder", dict, where)
    _req(enc, "full", str, f"{where}: encoder")
    precision = enc.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise PackageError(f"{where}: encoder.precision must be one of {PRECISIONS}")
    if precision == "int8" and not enc.get("int8"):
        raise PackageError(f"{where}: encoder.precision is int8 but there is no encoder.int8")
    fe = _req(manifest, "frontend", dict, where)
    for key in ("n_fft", "hop_length", "n_mels"):
        value = _req(fe, key, int, f"{where}: frontend")
        if value <= 0:
            raise PackageError(f"{where}: frontend.{key} must be positive, got {value}")
    return manifest, hashlib.sha256(raw).hexdigest()


def manifest_version(path: str | Path) -> str:
    """The model version of a package directory or archive without loading it (12 hex)."""
    path = Path(path)
    if path.is_dir():
        return read_manifest(path)[1][:12]
    try:
        with tarfile.open(path, "r:*") as tar:
            member = tar.extractfile(MANIFEST)
            raw = member.read() if member is not None else b""
        if json.loads(raw).get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME}")
    except (tarfile.TarError, OSError, KeyError, ValueError, AttributeError) as exc:
        raise PackageError(f"{path}: cannot read a package {MANIFEST} ({exc})") from None
    return hashlib.sha256(raw).hexdigest()[:12]


# --------------------------------------------------------------------------- atomic writing


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    res = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"renameat2({a}, {b}): {os.strerror(err)}")


def recover_interrupted(dest: Path) -> None:
    """Finish what an interrupted write left: restore a moved-aside package, drop stale stages."""
    parent = dest.parent
    if not parent.is_dir():
        return
    backups = sorted(parent.glob(f".{dest.name}.old-*"))
    if not dest.exists() and backups:
        os.rename(backups[-1], dest)  # the fallback swap died between its two renames
        backups = backups[:-1]
    stages = [p for p in parent.glob(f".{dest.name}.staging-*") if not _writer_alive(p)]
    for stale in [*backups, *stages]:
        shutil.rmtree(stale, ignore_errors=True)


def _writer_alive(stage: Path) -> bool:
    """Whether the process that owns a staging folder (".<name>.staging-<pid>-<id>") still runs."""
    try:
        pid = int(stage.name.rsplit(".staging-", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # our own leftovers (a failed earlier write in this process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def package_lock(dest: str | Path, timeout: float = 60.0) -> Iterator[None]:
    """Exclusive advisory lock for read-modify-write of a package (enrolments do not race)."""
    import fcntl

    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dest.parent / f".{dest.name}.lock"
    with open(lock_path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PackageError(
                        f"{dest}: another sonitor process is changing this package "
                        f"(lock {lock_path}); try again when it has finished"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_replaceable(dest: Path) -> None:
    """Only ever replace a model package: never a user's other folder (it would be deleted)."""
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_dir() and not dest.is_symlink():
        try:
            fmt = json.loads((dest / MANIFEST).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt == FORMAT_NAME:
            return
    raise PackageError(
        f"refusing to write a package to {dest}: it exists and is not a sonitor model package "
        "(choose a new folder)"
    )


class PackageWriter:
    """Stage a complete package beside ``dest``, then swap it in atomically.

    Unchanged files of the base package are hard-linked (copied where links are impossible):
    package files are never modified in place, so sharing them between versions is safe.
    """

    def __init__(self, dest: str | Path) -> None:
        self.dest = Path(dest).absolute()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(self.dest)
        _check_replaceable(self.dest)
        self.stage = (
            self.dest.parent / f".{self.dest.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.stage.mkdir()
        self._written: set[str] = set()

    def path(self, rel: str) -> Path:
        """Where to write ``rel`` inside the stage (folders are created)."""
        rel = _safe_relpath(rel, "PackageWriter")
        target = self.stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        self._written.add(rel)
        return target

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.path(rel).write_bytes(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def add_file(self, rel: str, src: str | Path) -> None:
        target = self.path(rel)
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)

    def commit(
        self, manifest: dict[str, Any], before_swap: Callable[[Path], None] | None = None
    ) -> Path:
        """Checksum every staged file into the manifest, fsync everything, swap in; return dest."""
        manifest = dict(manifest)
        manifest["files"] = {
            rel: {
                "sha256": sha256_file(self.stage / rel),
                "bytes": (self.stage / rel).stat().st_size,
            }
            for rel in sorted(self._written)
        }
        (self.stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for dirpath, _dirs, files in os.walk(self.stage):
            for name in files:
                _fsync_path(Path(dirpath) / name)
            _fsync_path(Path(dirpath))
        if before_swap is not None:
            before_swap(self.stage)  # a hook for tests of interrupted writes
        if not self.dest.exists():
            os.rename(self.stage, self.dest)
        elif _exchange(self.stage, self.dest):
            shutil.rmtree(self.stage)  # now holds the old version
        else:
            backup = self.dest.parent / f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.dest, backup)
            os.rename(self.stage, self.dest)
            _fsync_path(self.dest.parent)
            shutil.rmtree(backup)
        _fsync_path(self.dest.parent)
        return self.dest

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> PackageWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()


# --------------------------------------------------------------------------- archive form


def pack_archive(package_dir: str | Path, archive: str | Path) -> Path:
    """Write the package as one uncompressed tar (ONNX weights barely compress), atomically."""
    src = Path(package_dir)
    read_manifest(src)  # refuse to pack something that is not a package
    archive = Path(archive).absolute()
    if archive.exists():
        try:
            manifest_version(archive)  # an earlier package archive may be replaced...
        except PackageError:
            raise PackageError(  # ... anything else may not
                f"refusing to overwrite {archive}: it exists and is not a package archive"
            ) from None
    tmp = archive.parent / f".{archive.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(src.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
        _fsync_path(tmp)
        os.replace(tmp, archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(archive.parent)
    return archive


def unpack_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a package archive safely (regular files only, nothing outside ``dest``)."""
    archive, dest = Path(archive), Path(dest)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise PackageError(
            f"{archive}: not a package directory or a readable tar archive ({exc})"
        ) from None
    with tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()):
                raise PackageError(f"{archive}: member {member.name!r} is not a regular file")
            _safe_relpath(member.name, str(archive))
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise PackageError(f"{archive}: cannot extract ({exc})") from None
    if not (dest / MANIFEST).is_file():
        raise PackageError(f"{archive}: the archive holds no {MANIFEST}")
    return dest


def is_archive(path: str | Path) -> bool:
    return Path(path).is_file()
