"""A machine's change history: snapshots to revert to, the listing, and acknowledged events.

Every change to a machine (export, `sonitor enroll`, an acknowledged false alarm, a revert) is
one entry of ``machines[<m>].history`` in the manifest, oldest first; entry N is "change N".
Why snapshots inside the package: an acknowledgement is one MQTT message from an operator, and
a wrong one (a real fault acknowledged as normal) must be undone without the files of the day
before. So each change (`enroll.write_machine`) also keeps the machine's previous ``bank.npz`` and
``calibration.json`` under ``machines/<m>/history/<N>/`` (hard links, listed with checksums like
every file) and records that folder as the entry's ``snapshot``: the state *before* change N,
which is the state *after* change N - 1. Only the last `KEEP_SNAPSHOTS` are kept (a bank can be
megabytes); older entries stay listed, but cannot be returned to.

`revert` restores the state after change N (``--to N``) or before the last change (``--last``)
and is itself a change (entry ``action: revert``, with a snapshot), so a revert can be reverted.
`enroll_ack` enrols an acknowledged event's windows and refuses an event whose windows are
already in the bank (an ``ack`` entry still in effect: one undone by a revert is not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.errors import PackageError, SonitorError
from monitor.model.conditions import ConditionCalibration
from monitor.model.package import (
    Manifest,
    ModelPackage,
    load_bank,
    package_lock,
    utc_now,
)

if TYPE_CHECKING:
    from monitor.model.enroll import EnrollResult

KEEP_SNAPSHOTS = 5  # changes whose previous bank and calibration the package keeps
MAX_ACK_WINDOWS = 600  # windows one acknowledgement enrols at most (evenly thinned beyond)
_SNAPSHOT_RE = re.compile(
    r"^machines/(?P<m>[^/]+)/history/(?P<k>\d+)/(bank\.npz|calibration\.json)$"
)


class AckRefused(SonitorError):
    """An acknowledgement that is not carried out; ``result`` is its `acks` metric label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- snapshots


def snapshot_folder(machine: str, change: int) -> str:
    """Where change ``change`` keeps the machine's state from before it."""
    return f"machines/{machine}/history/{change}"


def kept_snapshots(manifest: Manifest, machine: str) -> dict[int, str]:
    """Change number -> snapshot folder, for the snapshots the package holds (both files)."""
    files: dict[int, set[str]] = {}
    for rel in manifest.files:
        m = _SNAPSHOT_RE.match(rel)
        if m and m["m"] == machine:
            files.setdefault(int(m["k"]), set()).add(rel.rsplit("/", 1)[1])
    return {
        k: snapshot_folder(machine, k)
        for k, names in sorted(files.items())
        if names == {"bank.npz", "calibration.json"}
    }


@dataclass(frozen=True)
class SnapshotPlan:
    """What a change to a machine adds to and drops from the package (`plan_snapshot`)."""

    folder: str  # the new snapshot (recorded in the change's history entry)
    copies: Mapping[str, str]  # new file -> the current file it is a copy of
    dropped: frozenset[str]  # snapshot files beyond `KEEP_SNAPSHOTS`, left out of the new version


def plan_snapshot(
    manifest: Manifest, machine: str, keep: int = KEEP_SNAPSHOTS
) -> SnapshotPlan | None:
    """The snapshot of ``machine``'s current bank and calibration for its next change (None
    for a machine that does not exist yet: there is nothing to return to)."""
    old = manifest.machines.get(machine)
    if old is None:
        return None
    change = len(old.history)
    folder = snapshot_folder(machine, change)
    kept = sorted(set(kept_snapshots(manifest, machine)) | {change})[-keep:]
    dropped = {
        rel
        for rel in manifest.files
        if (m := _SNAPSHOT_RE.match(rel))
        and m["m"] == machine
        and (int(m["k"]) not in kept or int(m["k"]) == change)
    }
    copies = {f"{folder}/bank.npz": old.bank, f"{folder}/calibration.json": old.calibration}
    return SnapshotPlan(folder, copies, frozenset(dropped))


# --------------------------------------------------------------------------- listing


def acked_in_effect(history: Sequence[Mapping[str, Any]]) -> set[str]:
    """Event ids whose acknowledged windows are in the current bank (reverts undo them)."""
    after: list[frozenset[str]] = []  # acknowledged event ids after each change
    current: frozenset[str] = frozenset()
    for i, entry in enumerate(history):
        action, to = entry.get("action"), entry.get("to")
        if action == "revert" and isinstance(to, int) and 0 <= to < i:
            current = after[to]
        elif action == "ack" and isinstance(entry.get("event_id"), str):
            current = current | {entry["event_id"]}
        after.append(current)
    return set(current)


def format_history(manifest: Manifest, machine: str) -> str:
    """A table of the machine's changes, for `sonitor history`."""
    entry = manifest.machines[machine]
    snaps = kept_snapshots(manifest, machine)
    rows = [("#", "time", "action", "command", "condition", "windows", "event", "threshold")]
    for i, e in enumerate(entry.history):
        n = e.get("n_added")  # windows (embeddings) the change added
        event = e.get("event_id") or (f"to #{e['to']}" if e.get("action") == "revert" else "")
        thr = e.get("threshold")
        rows.append(
            (
                str(i),
                str(e.get("time", "")),
                str(e.get("action", "")),
                str(e.get("command", "")),
                str(e.get("condition", "")),
                "" if n is None else str(n),
                str(event),
                f"{thr:.6g}" if isinstance(thr, int | float) else "",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [f"machine {machine}:"]
    for r in rows:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    # --to N needs the snapshot of change N + 1 (the state before it = after N)
    targets = [k - 1 for k in snaps if 0 < k < len(entry.history)]
    if targets:
        lines.append(f"  can revert --to N with N = {', '.join(map(str, targets))}")
    else:
        lines.append("  nothing to revert to (no snapshot kept)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- changes


def enroll_ack(
    package: str | Path,
    machine: str,
    embeddings: np.ndarray,
    condition: str,
    *,
    event_id: str,
    command: str,
    windows_scored: int,
    source: str | None = None,
) -> EnrollResult:
    """Enrol an acknowledged event's windows as normal sound of ``condition``; AckRefused when
    that event's windows are already in the bank (checked under the package lock)."""
    from monitor.model.enroll import enroll_embeddings

    def refuse_twice(pkg: ModelPackage) -> None:
        entry = pkg.manifest.machines.get(machine)
        if entry is not None and event_id in acked_in_effect(entry.history):
            raise AckRefused(
                "already_acked",
                f"event {event_id!r} is already acknowledged in {package} (machine {machine!r}): "
                "its windows are in the bank; see `sonitor history`",
            )

    details: dict[str, Any] = {
        "event_id": event_id,
        "command": command,
        "windows_scored": int(windows_scored),
    }
    if source is not None:
        details["source"] = source
    return enroll_embeddings(
        package,
        machine,
        embeddings,
        condition,
        action="ack",
        origin=f"{command} acknowledgement of event {event_id}",
        details=details,
        check=refuse_twice,
    )


@dataclass(frozen=True)
class RevertResult:
    machine: str
    to: int
    thresholds_before: dict[str, float]
    thresholds: dict[str, float]
    model_version: str

    def summary(self) -> str:
        def fmt(d: dict[str, float]) -> str:
            return ", ".join(f"{c} {v:.6g}" for c, v in d.items())

        return (
            f"machine {self.machine!r} reverted to its state after change #{self.to}: "
            f"thresholds {fmt(self.thresholds)} (were {fmt(self.thresholds_before)}); "
            f"package version {self.model_version}"
        )


def revert(
    package: str | Path,
    machine: str,
    *,
    to: int | None = None,
    last: bool = False,
    command: str = "cli",
) -> RevertResult:
    """Restore ``machine``'s bank and calibration as they were after change ``to`` (or before
    the last change), rewriting the package atomically; the revert is recorded as a change."""
    from monitor.model.enroll import write_machine

    if (to is None) == (not last):
        raise SonitorError("give exactly one of --to N or --last")
    dest = Path(package)
    with package_lock(dest):
        pkg = ModelPackage.load(dest)
        current = pkg.machine(machine)  # PackageError naming the machines there are
        history = current.entry.history
        newest = len(history) - 1
        target = newest - 1 if last else int(to)  # type: ignore[arg-type]
        if not 0 <= target < newest:
            raise SonitorError(
                f"machine {machine!r} has changes #0-#{newest}: --to must be one of "
                f"0-{newest - 1} (#{newest} is the current state)"
                if newest > 0
                else f"machine {machine!r} has not changed since change #0: nothing to revert"
            )
        folder = kept_snapshots(pkg.manifest, machine).get(target + 1)
        if folder is None:
            raise SonitorError(
                f"{dest}: the state after change #{target} of machine {machine!r} is not kept "
                f"(the package keeps snapshots of the last {KEEP_SNAPSHOTS} changes only); "
                "see `sonitor history`"
            )
        bank = load_bank(pkg.path / folder / "bank.npz", where=f"{folder}/bank.npz")
        cal_path = pkg.path / folder / "calibration.json"
        try:
            data = json.loads(cal_path.read_text())
        except (OSError, ValueError) as exc:
            raise PackageError(f"{cal_path}: cannot read the snapshot ({exc})") from None
        conditions = sorted(set(np.asarray(bank.conditions).tolist()))
        cal = ConditionCalibration.from_dict(data, str(cal_path), conditions)
        event = {
            "time": utc_now(),
            "action": "revert",
            "to": target,
            "command": command,
            "n_bank": len(bank.embeddings),
            "threshold": float(cal.threshold),
            "thresholds": cal.thresholds(),
        }
        version = write_machine(pkg, dest, machine, bank, cal, event)
    return RevertResult(
        machine, target, current.calibration.thresholds(), cal.thresholds(), version
    )
