"""`sonitor ack`, `sonitor history`, `sonitor revert`: operator feedback on a machine's model.

`ack` is the offline twin of the MQTT ``ack`` command (`monitor.daemon.acks`), for an event the
daemon no longer holds: it enrols the event's part of its clip (``<event id>.wav`` in the clips
folder; the JSON sidecar says where the event starts and ends inside it) with the same guard
rails. A running daemon notices the rewritten package and reloads it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import SonitorError

RELOAD_NOTE = "a running daemon with this package reloads it within seconds"


def read_sidecar(clip: Path) -> dict[str, Any]:
    """The clip's JSON sidecar ({} when there is none); the event must be an anomaly."""
    from monitor.model.history import AckRefused

    side = clip.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise SonitorError(f"{side}: not a clip sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise SonitorError(f"{side}: not a clip sidecar (a JSON object)")
    if data.get("kind") != "anomaly":
        raise AckRefused(
            "unknown_event",
            f"{side}: kind is {data.get('kind')!r}: only anomaly events can be acknowledged",
        )
    return data


def event_audio(audio: np.ndarray, side: dict[str, Any], sr: int, window_s: float) -> np.ndarray:
    """The part of a clip that the event's windows covered: from the start of the first window
    above the threshold to the event's end (no pre-roll before it, no post-roll after it)."""
    if not side:
        return audio
    try:
        onset = float(side["start_time"]) - float(side["clip_start_time"]) - window_s
        tail = float(side.get("post_roll_s") or 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        raise SonitorError(f"clip sidecar: bad or missing timing ({exc})") from None
    if not (math.isfinite(onset) and math.isfinite(tail)):
        raise SonitorError("clip sidecar: non-finite timing")
    a = max(0, int(round(onset * sr)))
    b = audio.size - max(0, int(round(tail * sr)))
    return audio[a:b]


def thin(n: int, cap: int) -> np.ndarray:
    """Indices of at most ``cap`` of ``n`` windows, evenly spread (all of them when n <= cap)."""
    if n <= cap:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


def cmd_ack(args: argparse.Namespace) -> int:
    from monitor.audio.capture import LivenessSpec
    from monitor.audio.inputcheck import check_window
    from monitor.model.conditions import validate_condition_name
    from monitor.model.enroll import embed_waveform, load
    from monitor.model.history import MAX_ACK_WINDOWS, AckRefused, enroll_ack
    from monitor.model.package import ModelPackage
    from monitor.model.runtime import Embedder

    if args.condition is not None:
        try:
            validate_condition_name(args.condition)
        except ValueError as exc:
            raise SonitorError(f"--condition: {exc}") from None
    clip: Path = args.clip
    if not clip.is_file():
        raise AckRefused(
            "unknown_event",
            f"{clip}: no such clip (each anomaly event's clip is <event id>.wav in the "
            "daemon's clips folder)",
        )
    side = read_sidecar(clip)
    event_id = str(side.get("event_id") or clip.stem)
    pkg = ModelPackage.load(args.package)
    mm = pkg.machine(args.machine)
    sr, win = pkg.sample_rate, pkg.window_samples
    audio = event_audio(load(clip, sr), side, sr, pkg.window_seconds)
    starts, emb = embed_waveform(Embedder(pkg, threads=args.threads), pkg, audio, name=str(clip))
    lv = LivenessSpec()  # the daemon's default capture checks, as `sonitor score` applies them
    for s in starts:
        a = int(round(s * sr))
        c = check_window(
            audio[a : a + win], silence_dbfs=lv.silence_dbfs, clip_fraction=lv.clip_fraction, sr=sr
        )
        if c.problem:
            raise AckRefused(
                "capture_unhealthy",
                f"{clip}: the window at {s:.1f} s of the event is unhealthy input "
                f"({c.describe(lv.silence_dbfs, lv.clip_fraction)}): the daemon does not score "
                "such audio, so it is not enrolled either",
            )
    keep = thin(len(emb), MAX_ACK_WINDOWS)
    condition = args.condition or Counter(mm.matcher.match_names(emb)).most_common(1)[0][0]
    res = enroll_ack(
        args.package, args.machine, emb[keep], condition, event_id=event_id, command="cli",
        windows_scored=len(emb), source=side.get("source"),
    )  # fmt: skip
    print(
        f"event {event_id} acknowledged as normal: {len(keep)} of {len(emb)} window(s) into "
        f"condition {condition!r}"
    )
    print(res.summary())
    print(RELOAD_NOTE)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from monitor.model.history import format_history
    from monitor.model.package import ModelPackage

    pkg = ModelPackage.load(args.package, verify_checksums=False, check_encoder=False)
    machines = [pkg.machine(args.machine).name] if args.machine else pkg.machines
    print("\n".join(format_history(pkg.manifest, m) for m in machines))
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from monitor.model.history import revert

    res = revert(args.package, args.machine, to=args.to, last=args.last)
    print(res.summary())
    print(RELOAD_NOTE)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    a = subparsers.add_parser(
        "ack",
        help="acknowledge a false alarm: enrol its clip as normal sound",
        description="Enrol the windows of an anomaly event's clip (<event id>.wav in the "
        "daemon's clips folder; its sidecar bounds the event) as normal sound of the condition "
        "they matched (or --condition), recalibrate and rewrite the package atomically, as the "
        "MQTT `ack` command does for the events the daemon still holds. Refused (exit 2): a "
        "missing clip or one of no anomaly, an event already acknowledged, unhealthy audio "
        "(silence, clipping). At most 600 windows, evenly spread, are enrolled.",
    )
    a.add_argument("--package", required=True, help="model package folder (or .tar archive)")
    a.add_argument("--machine", required=True, help="machine the event's source listens to")
    a.add_argument("--clip", required=True, type=Path, help="the event's clip (WAV)")
    a.add_argument(
        "--condition",
        metavar="NAME",
        help="operating condition to enrol into: an existing or a new name (default: the one "
        "most of the event's windows matched)",
    )
    a.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    a.set_defaults(handler=cmd_ack)

    h = subparsers.add_parser(
        "history",
        help="list the changes to a package's machines (export, enrol, ack, revert)",
        description="One line per change: when, what, by which command, which condition, how "
        "many windows, which event; and the changes `sonitor revert --to N` can return to.",
    )
    h.add_argument("--package", required=True, help="model package folder (or .tar archive)")
    h.add_argument("--machine", help="only this machine")
    h.set_defaults(handler=cmd_history)

    r = subparsers.add_parser(
        "revert",
        help="restore a machine's bank and thresholds as they were after an earlier change",
        description="Restore the bank and calibration of a machine from the snapshot the "
        "package keeps of each of its last 5 changes, rewrite the package atomically and "
        "record the revert as a change (so it can be reverted too).",
    )
    r.add_argument("--package", required=True, help="model package folder (or .tar archive)")
    r.add_argument("--machine", required=True, help="machine name")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--to", type=int, metavar="N", help="the state right after change N")
    which.add_argument("--last", action="store_true", help="undo the last change")
    r.set_defaults(handler=cmd_revert)
