"""``manifest.json``, the description of a model package, as a typed object with one loader.

`Manifest.load` (a package folder) and `Manifest.from_dict` (parsed JSON) are the only ways in:
both check everything that the manifest alone can tell (format and version, types and ranges,
file names that stay inside the package and are listed with a checksum, a window grid that the
streaming front-end can follow, a separator that matches the front-end) and raise PackageError
naming the file and the key. What needs the other files (do they exist, do checksums match, do
banks load) is `ModelPackage`'s part. `to_dict` is the JSON that `PackageWriter.commit` writes.

Keys this version does not know are kept in ``extra`` (top level and per section) and written
back unchanged, so rewriting a package (an enrolment) never drops what a newer writer put there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.errors import PackageError
from monitor.model.package.files import safe_relpath
from monitor.model.package.sections import (
    CalibrationDefaults,
    EncoderSpec,
    FileEntry,
    FrontendParams,
    MachineEntry,
    ScorerSpec,
    SeparatorSpec,
    optional,
    positive,
    positive_int,
    required,
    unmodelled,
    without_none,
)

FORMAT_NAME = "sonitor-model-package"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """A package's ``manifest.json``: audio and window parameters, graphs, machines, checksums.

    Build one with `load` or `from_dict` (validated), change one with `dataclasses.replace`,
    write one through `PackageWriter.commit` (which fills in ``files``).
    """

    recipe: str  # the training recipe that made the encoder and banks
    sample_rate: int  # Hz of the audio the encoder takes (16000)
    window_seconds: float  # one embedding per window of this length ...
    hop_seconds: float  # ... every hop (both on the front-end's frame grid)
    embedding_dim: int  # D of the encoder's [B, D] output and of every bank
    frontend: FrontendParams
    encoder: EncoderSpec
    machines: Mapping[str, MachineEntry] = field(default_factory=dict)
    files: Mapping[str, FileEntry] = field(default_factory=dict)  # every file but this one
    separator: SeparatorSpec | None = None
    scorer: ScorerSpec | None = None  # default scorer of newly enrolled machines
    calibration: CalibrationDefaults | None = None  # default threshold calibration
    max_bank_size: int | None = None  # enrolment subsamples banks beyond this size
    training_data: Mapping[str, Any] = field(default_factory=dict)  # what the model saw
    parity: Mapping[str, Any] = field(default_factory=dict)  # ONNX vs PyTorch at export
    created: str | None = None  # UTC "YYYY-mm-ddTHH:MM:SSZ" of the export
    modified: str | None = None  # ... of the last enrolment
    sonitor_version: str | None = None  # the sonitor that exported it
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # top-level keys not modelled here
    # sha256 of the bytes it was loaded from: the package's model version. Not a JSON key, and
    # None for a manifest built in code or changed with `dataclasses.replace`.
    digest: str | None = field(default=None, init=False, compare=False, repr=False)

    _KEYS = (
        "format",
        "format_version",
        "recipe",
        "sample_rate",
        "window_seconds",
        "hop_seconds",
        "embedding_dim",
        "frontend",
        "encoder",
        "machines",
        "files",
        "separator",
        "scorer",
        "calibration",
        "max_bank_size",
        "training_data",
        "parity",
        "created",
        "modified",
        "sonitor_version",
    )

    # ----------------------------------------------------------------- reading

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and validate ``<path>/manifest.json`` (``path``: a package folder or the file)."""
        path = Path(path)
        mpath = path if path.name == MANIFEST and path.is_file() else path / MANIFEST
        try:
            raw = mpath.read_bytes()
        except FileNotFoundError:
            raise PackageError(f"{mpath}: missing: {path} is not a model package") from None
        except OSError as exc:
            raise PackageError(f"{mpath}: cannot read ({exc})") from None
        return cls.from_bytes(raw, str(mpath))

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> Manifest:
        """Parse and validate manifest JSON; ``where`` names the file in errors."""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{where}: not valid JSON ({exc})") from None
        manifest = cls.from_dict(data, where)
        object.__setattr__(manifest, "digest", hashlib.sha256(raw).hexdigest())
        return manifest

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Validate parsed manifest JSON; PackageError names ``where`` and the key at fault."""
        if not isinstance(data, Mapping):
            raise PackageError(f"{where}: the top level must be a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise PackageError(
                f"{where}: 'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}"
            )
        version = data.get("format_version")
        if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
            raise PackageError(
                f"{where}: unknown format_version {version!r}; this sonitor ({__version__}) "
                f"reads {', '.join(map(str, SUPPORTED_VERSIONS))}: upgrade sonitor or re-export "
                "the package"
            )
        sample_rate = positive_int(data, "sample_rate", where, "'sample_rate'")
        window_seconds = positive(data, "window_seconds", where)
        hop_seconds = positive(data, "hop_seconds", where)
        embedding_dim = positive_int(data, "embedding_dim", where, "'embedding_dim'")
        recipe = required(data, "recipe", str, where)
        encoder = EncoderSpec.from_dict(required(data, "encoder", dict, where), where)
        frontend = FrontendParams.from_dict(required(data, "frontend", dict, where), where)
        files = {
            safe_relpath(rel, where): FileEntry.from_dict(entry, rel, where)
            for rel, entry in required(data, "files", dict, where).items()
        }
        sep = data.get("separator")
        separator = SeparatorSpec.from_dict(sep, frontend, where) if sep is not None else None
        scorer = optional(data, "scorer", dict, where)
        calibration = optional(data, "calibration", dict, where)
        manifest = cls(
            recipe=recipe,
            sample_rate=sample_rate,
            window_seconds=window_seconds,
            hop_seconds=hop_seconds,
            embedding_dim=embedding_dim,
            frontend=frontend,
            encoder=encoder,
            machines={
                name: MachineEntry.from_dict(entry, name, where)
                for name, entry in required(data, "machines", dict, where).items()
            },
            files=files,
            separator=separator,
            scorer=ScorerSpec.from_dict(scorer, where) if scorer is not None else None,
            calibration=(
                CalibrationDefaults.from_dict(calibration, where)
                if calibration is not None
                else None
            ),
            max_bank_size=optional(data, "max_bank_size", int, where),
            training_data=dict(optional(data, "training_data", dict, where) or {}),
            parity=dict(optional(data, "parity", dict, where) or {}),
            created=optional(data, "created", str, where),
            modified=optional(data, "modified", str, where),
            sonitor_version=optional(data, "sonitor_version", str, where),
            format_version=version,
            extra=unmodelled(data, cls._KEYS),
        )
        manifest._check_references(where)
        return manifest

    def _check_references(self, where: str) -> None:
        """File names listed with a checksum; windows on the frame grid of a split front-end."""
        for key, rel in self.encoder.files().items():
            self.listed(rel, f"encoder.{key}", where)
        if self.separator is not None:
            self.listed(self.separator.file, "separator.file", where)
        for name, entry in self.machines.items():
            self.listed(entry.bank, f"machines[{name!r}].bank", where)
            self.listed(entry.calibration, f"machines[{name!r}].calibration", where)
        if self.encoder.frontend is not None:  # streamed windows must start on STFT frames
            fh = self.frontend.hop_length
            for key, seconds in (
                ("window_seconds", self.window_seconds),
                ("hop_seconds", self.hop_seconds),
            ):
                n = int(round(seconds * self.sample_rate))
                if n % fh:
                    raise PackageError(
                        f"{where}: {key} = {seconds} ({n} samples) is not a multiple of the "
                        f"frame hop of {fh} samples"
                    )

    def listed(self, rel: Any, key: str, where: str = MANIFEST) -> str:
        """``rel`` as a safe relative path that ``files`` lists; PackageError naming ``key``."""
        if not isinstance(rel, str):
            raise PackageError(f"{where}: {key} must be a file name, got {rel!r}")
        rel = safe_relpath(rel, where)
        if rel not in self.files:
            raise PackageError(f"{where}: {key} = {rel!r} is not listed (with a checksum) in files")
        return rel

    # ----------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json`` (``Manifest.from_dict(m.to_dict()) == m``)."""
        d: dict[str, Any] = {
            **self.extra,
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "recipe": self.recipe,
            "sample_rate": self.sample_rate,
            "window_seconds": self.window_seconds,
            "hop_seconds": self.hop_seconds,
            "embedding_dim": self.embedding_dim,
            "frontend": self.frontend.to_dict(),
            "encoder": self.encoder.to_dict(),
            "separator": self.separator.to_dict() if self.separator is not None else None,
            "training_data": dict(self.training_data),
            "parity": dict(self.parity),
            "machines": {name: entry.to_dict() for name, entry in self.machines.items()},
            "files": {rel: entry.to_dict() for rel, entry in self.files.items()},
        }
        optional = {
            "scorer": self.scorer.to_dict() if self.scorer is not None else None,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "max_bank_size": self.max_bank_size,
            "created": self.created,
            "modified": self.modified,
            "sonitor_version": self.sonitor_version,
        }
        return d | without_none(optional)
