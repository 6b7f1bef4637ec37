"""A loaded, fully validated package: what the daemon, enrolment and offline scoring use."""

from __future__ import annotations

import json
import math
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.errors import PackageError
from monitor.model.conditions import ConditionCalibration, ConditionMatcher
from monitor.model.package.archive import unpack_archive
from monitor.model.package.bank import Bank, load_bank
from monitor.model.package.files import package_file, sha256_file
from monitor.model.package.manifest import MANIFEST, Manifest
from monitor.model.package.sections import (
    PRECISIONS,
    FrontendParams,
    MachineEntry,
    SeparatorSpec,
)

if TYPE_CHECKING:  # imported when a machine is loaded: the package format alone needs no scipy
    from monitor.model.scoring import Scorer


@dataclass(frozen=True)
class Assessment:
    """Windows scored against a machine: raw scores, the condition each is closest to, and the
    normalised score (raw / that condition's threshold: 1.0 is the boundary everywhere)."""

    raw: np.ndarray  # [N]
    conditions: list[str]  # [N]
    thresholds: np.ndarray  # [N] raw threshold used for each window
    normalised: np.ndarray  # [N]


@dataclass
class MachineModel:
    """One machine type: its scorer (fitted on the bank), its operating conditions and their
    thresholds (`monitor.model.conditions`)."""

    name: str
    scorer: Scorer
    calibration: ConditionCalibration
    bank: Bank
    entry: MachineEntry  # its manifest entry (file names, bank summary, history)
    matcher: ConditionMatcher

    @property
    def threshold(self) -> float:
        """The lowest condition threshold (one number for summaries)."""
        return float(self.calibration.threshold)

    @property
    def conditions(self) -> tuple[str, ...]:
        return self.calibration.names

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Anomaly scores (higher = more anomalous) for ``[N, D]`` embeddings."""
        return np.asarray(self.scorer.score_samples(embeddings), dtype=np.float64)

    def assess(
        self,
        embeddings: np.ndarray,
        calibration: ConditionCalibration | None = None,
        dcase: bool = False,
    ) -> Assessment:
        """Score, match each window to a condition and normalise by that condition's threshold
        (``calibration``: e.g. the package's with the daemon's alarm rule; default its own)."""
        cal = calibration or self.calibration
        raw = self.score(embeddings)
        names = self.matcher.match_names(embeddings)
        thr = np.array([cal.threshold_of(c, dcase) for c in names], dtype=np.float64)
        return Assessment(raw, names, thr, raw / thr)


class ModelPackage:
    """A validated, loaded model package. Use `ModelPackage.load(path)`.

    Loading checks everything up front (the manifest, then every listed file's size and
    checksum, every machine's bank, scorer and calibration, and the encoder graphs' output
    size), so that a daemon never discovers a broken package halfway through a night.
    """

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        # the manifest's hash: it changes with every export and enrolment
        self.model_version: str = (manifest.digest or "")[:12]
        self._machines: dict[str, MachineModel] = {}
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.archive: Path | None = None  # the archive it was extracted from, if any

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
        package_file(path, MANIFEST)  # not a link to a manifest elsewhere
        pkg = cls(path, Manifest.load(path))
        pkg._check_files(verify_checksums)
        for name in pkg.manifest.machines:
            pkg._machines[name] = pkg._load_machine(name)
        if check_encoder:
            pkg._check_onnx_outputs()
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

    def _check_files(self, verify_checksums: bool) -> None:
        """Every listed file exists with its recorded size (and checksum)."""
        for rel, entry in self.manifest.files.items():
            fpath = package_file(self.path, rel)  # no symlinks, nothing outside the package
            if not fpath.is_file():
                raise PackageError(f"{fpath}: file listed in the manifest is missing")
            size = fpath.stat().st_size
            if entry.bytes is not None and size != entry.bytes:
                raise PackageError(
                    f"{fpath}: size {size} bytes, manifest says {entry.bytes} "
                    "(truncated or replaced file)"
                )
            if verify_checksums:
                actual = sha256_file(fpath)
                if actual != entry.sha256:
                    raise PackageError(
                        f"{fpath}: checksum mismatch (sha256 {actual[:16]}..., manifest says "
                        f"{entry.sha256[:16]}...): the file was changed or corrupted"
                    )

    def _load_machine(self, name: str) -> MachineModel:
        from monitor.model.scoring import scorer_from_arrays

        entry = self.manifest.machines[name]
        bank_path, cal_path = self.path / entry.bank, self.path / entry.calibration
        where = f"{bank_path} (machine {name!r})"
        bank = load_bank(bank_path, where=where)
        if bank.dim != self.embedding_dim:
            raise PackageError(
                f"{where}: wrong embedding size {bank.dim}, the package encoder gives "
                f"{self.embedding_dim}"
            )
        try:
            scorer = scorer_from_arrays(bank.scorer_arrays)
        except (PackageError, KeyError, ValueError, TypeError) as exc:
            raise PackageError(f"{where}: bad scorer arrays ({exc})") from None
        try:
            probe = np.asarray(scorer.score_samples(bank.embeddings[:1]), dtype=np.float64)
        except ValueError as exc:
            raise PackageError(
                f"{where}: the scorer does not accept {self.embedding_dim}-d embeddings ({exc})"
            ) from None
        if probe.shape != (1,) or not np.all(np.isfinite(probe)):
            raise PackageError(f"{where}: the scorer gives no finite score")
        conditions = sorted(set(np.asarray(bank.conditions).tolist()))
        try:
            calibration = ConditionCalibration.from_dict(
                json.loads(cal_path.read_text()), str(cal_path), conditions
            )
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{cal_path}: not valid JSON ({exc})") from None
        except (PackageError, KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{cal_path}: not a threshold calibration ({exc})") from None
        thr = float(calibration.threshold)
        if not math.isfinite(thr) or thr <= 0:
            raise PackageError(f"{cal_path}: threshold must be a positive number, got {thr!r}")
        missing = sorted(set(conditions) - set(calibration.names))
        if missing:
            raise PackageError(
                f"{cal_path}: no threshold for the bank's condition(s) {missing} "
                f"(calibrated: {list(calibration.names)})"
            )
        matcher = ConditionMatcher(bank.embeddings, np.asarray(bank.conditions).tolist())
        return MachineModel(name, scorer, calibration, bank, entry, matcher)

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
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def window_seconds(self) -> float:
        return self.manifest.window_seconds

    @property
    def hop_seconds(self) -> float:
        return self.manifest.hop_seconds

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def recipe(self) -> str:
        return self.manifest.recipe

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
    def frontend(self) -> FrontendParams:
        return self.manifest.frontend

    @property
    def separator(self) -> SeparatorSpec | None:
        return self.manifest.separator

    @property
    def separator_info(self) -> dict[str, Any] | None:
        """The separator section as JSON (a copy), or None; `separator` is the typed form."""
        sep = self.manifest.separator
        return None if sep is None else sep.to_dict()

    @property
    def precision(self) -> str:
        return self.manifest.encoder.precision

    def _enc_file(self, key: str, precision: str | None) -> Path | None:
        enc = self.manifest.encoder
        precision = precision or self.precision
        if precision not in PRECISIONS:
            raise PackageError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
        if precision == "int8" and key != "frontend":
            if enc.int8 is None:
                raise PackageError(f"{self.path}: this package has no int8 encoder")
            rel = enc.int8.full if key == "full" else enc.int8.backbone
        else:
            rel = {"full": enc.full, "frontend": enc.frontend, "backbone": enc.backbone}[key]
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
        return [self.path / rel for rel in self.manifest.encoder.files().values()]

    @property
    def encoder_path(self) -> Path:
        return self.encoder_file()

    @property
    def separator_path(self) -> Path | None:
        sep = self.manifest.separator
        return None if sep is None else self.path / sep.file

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
