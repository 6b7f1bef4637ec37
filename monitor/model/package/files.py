"""Names and checksums of the files inside a package: what every other package module checks."""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from pathlib import Path

from monitor.errors import PackageError

_MACHINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def safe_relpath(rel: str, where: str) -> str:
    """Reject absolute paths and '..' so a manifest can never point outside its package."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise PackageError(f"{where}: unsafe file path {rel!r} in the manifest")
    return p.as_posix()


def package_file(root: Path, rel: str) -> Path:
    """``root / rel``, refusing symlinks on the way and anything that resolves outside ``root``.

    `safe_relpath` checks the name only: a symlinked file or folder in a package folder would
    still let a bank or calibration be read from anywhere on the disk (archives never hold
    links: `unpack_archive` refuses them). The package folder itself may be a link.
    """
    path = root
    for part in Path(safe_relpath(rel, str(root))).parts:
        path = path / part
        if path.is_symlink():
            raise PackageError(
                f"{path}: is a symbolic link; a package holds regular files only (copy the "
                "file into the package instead of linking it)"
            )
    if not path.resolve().is_relative_to(root.resolve()):
        raise PackageError(f"{path}: resolves outside the package folder {root}")
    return path


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
