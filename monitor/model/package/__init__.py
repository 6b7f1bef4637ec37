"""The model package: what `sonitor export` and `sonitor enroll` write and the daemon loads.

A package is a directory (a single-file ``.tar`` archive of it serves distribution)::

    manifest.json                  format, audio and window parameters, recipe, sha256 of every file
    encoder.onnx                   waveform [B, samples] -> embedding [B, D], front-end inside
    frontend.onnx, backbone.onnx   the same graph split for streaming (optional, see runtime.py)
    encoder.int8.onnx, ...         dynamic-int8 variants (optional)
    separator.onnx                 mel frames -> masked frames, or waveform -> waveform (optional)
    machines/<name>/bank.npz       normal-memory bank + fitted scorer arrays (no pickle)
    machines/<name>/calibration.json   threshold fit on leave-one-out scores

Modules: `manifest` (the typed `Manifest` and its one loader) and `sections` (its parts),
`bank` (bank files), `files` (names and checksums), `writer` (atomic writes and the package
lock), `archive` (the tar form), `loaded` (`ModelPackage`, the validated package the runtime
uses).
"""

from monitor.model.package.archive import (
    ARCHIVE_SUFFIXES,
    is_archive,
    manifest_version,
    pack_archive,
    unpack_archive,
)
from monitor.model.package.bank import Bank, condition_names, load_bank, save_bank
from monitor.model.package.files import safe_relpath, sha256_file, utc_now, validate_machine_name
from monitor.model.package.loaded import MachineModel, ModelPackage
from monitor.model.package.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    SUPPORTED_VERSIONS,
    Manifest,
)
from monitor.model.package.sections import (
    PRECISIONS,
    CalibrationDefaults,
    EncoderSpec,
    FileEntry,
    FrontendParams,
    Int8Encoder,
    MachineEntry,
    ScorerSpec,
    SeparatorSpec,
)
from monitor.model.package.writer import PackageWriter, package_lock, recover_interrupted

__all__ = [
    "ARCHIVE_SUFFIXES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "PRECISIONS",
    "SUPPORTED_VERSIONS",
    "Bank",
    "CalibrationDefaults",
    "condition_names",
    "EncoderSpec",
    "FileEntry",
    "FrontendParams",
    "Int8Encoder",
    "MachineEntry",
    "MachineModel",
    "Manifest",
    "ModelPackage",
    "PackageWriter",
    "ScorerSpec",
    "SeparatorSpec",
    "is_archive",
    "load_bank",
    "manifest_version",
    "pack_archive",
    "package_lock",
    "recover_interrupted",
    "safe_relpath",
    "save_bank",
    "sha256_file",
    "unpack_archive",
    "utc_now",
    "validate_machine_name",
]
