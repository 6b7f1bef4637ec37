"""The single-file form of a package: an uncompressed tar of its folder, for distribution."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import uuid
from pathlib import Path

from monitor.errors import PackageError
from monitor.model.package.files import safe_relpath
from monitor.model.package.manifest import FORMAT_NAME, MANIFEST, Manifest
from monitor.model.package.writer import fsync_path

ARCHIVE_SUFFIXES = (".tar", ".sonitor")  # names `sonitor` offers for the archive form


def manifest_version(path: str | Path) -> str:
    """The model version of a package directory or archive without loading it (12 hex)."""
    path = Path(path)
    if path.is_dir():
        digest = Manifest.load(path).digest
        assert digest is not None  # set by load
        return digest[:12]
    try:
        with tarfile.open(path, "r:*") as tar:
            member = tar.extractfile(MANIFEST)
            raw = member.read() if member is not None else b""
        if json.loads(raw).get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME}")
    except (tarfile.TarError, OSError, KeyError, ValueError, AttributeError) as exc:
        raise PackageError(f"{path}: cannot read a package {MANIFEST} ({exc})") from None
    return hashlib.sha256(raw).hexdigest()[:12]


def pack_archive(package_dir: str | Path, archive: str | Path) -> Path:
    """Write the package as one uncompressed tar (ONNX weights barely compress), atomically."""
    src = Path(package_dir)
    Manifest.load(src)  # refuse to pack something that is not a package
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
        fsync_path(tmp)
        os.replace(tmp, archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(archive.parent)
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
            safe_relpath(member.name, str(archive))
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
