"""Writing a package atomically, and the lock that serialises read-modify-write.

A complete new version is staged beside the old one (``.<name>.staging-<pid>-<id>``), fsynced,
then swapped in with one ``renameat2(RENAME_EXCHANGE)``; where that is unsupported, two renames
with the old version moved aside (``.<name>.old-<id>``) in between, which `recover_interrupted`
undoes after a crash. Either way an interrupted write leaves the old package intact.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from monitor.errors import PackageError
from monitor.model.package.files import safe_relpath, sha256_file
from monitor.model.package.manifest import FORMAT_NAME, MANIFEST, Manifest
from monitor.model.package.sections import FileEntry


def fsync_path(path: Path) -> None:
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
        rel = safe_relpath(rel, "PackageWriter")
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
        self,
        manifest: Manifest | Mapping[str, Any],
        before_swap: Callable[[Path], None] | None = None,
    ) -> Path:
        """Checksum every staged file into the manifest, fsync everything, swap in; return dest.

        ``manifest`` is a `Manifest` or its JSON form; its ``files`` become the staged files.
        It is validated as `Manifest.load` will validate it, so a package that would not load
        is never swapped in.
        """
        data = dict(manifest.to_dict() if isinstance(manifest, Manifest) else manifest)
        data["files"] = {
            rel: FileEntry(
                sha256_file(self.stage / rel), (self.stage / rel).stat().st_size
            ).to_dict()
            for rel in sorted(self._written)
        }
        final = Manifest.from_dict(data, f"{self.dest / MANIFEST} (being written)")
        text = json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n"
        (self.stage / MANIFEST).write_text(text)
        for dirpath, _dirs, files in os.walk(self.stage):
            for name in files:
                fsync_path(Path(dirpath) / name)
            fsync_path(Path(dirpath))
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
            fsync_path(self.dest.parent)
            shutil.rmtree(backup)
        fsync_path(self.dest.parent)
        return self.dest

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> PackageWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
