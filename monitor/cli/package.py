"""Runtime subcommands on model packages: `sonitor enroll` and `sonitor score` (no torch)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from monitor.errors import AudioError, ConfigError, SonitorError

log = logging.getLogger(__name__)


def _capture(config: Path, source: str, seconds: float, timeout: float | None = None):
    """Record ``seconds`` of 16 kHz audio from a source configured for the daemon."""
    from monitor.audio import capture
    from monitor.config import load_config
    from monitor.daemon.wiring import source_spec

    cfg = load_config(config)
    src = cfg.source(source)
    spec = source_spec(src)  # the daemon's own mapping from the config
    need = int(round(seconds * capture.TARGET_RATE))
    parts, have = [], 0
    deadline = time.monotonic() + (timeout if timeout is not None else seconds * 2 + 15)
    with capture.CaptureManager([spec]) as mgr:
        while have < need:
            if time.monotonic() > deadline:
                h = mgr.source_health(source)
                raise AudioError(
                    f"source {source!r}: only {have / capture.TARGET_RATE:.1f} s of "
                    f"{seconds:g} s captured before the timeout (state {h.state.value}: {h.reason})"
                )
            _, x = mgr.read_new(source)
            if x.size:
                parts.append(x)
                have += x.size
            else:
                h = mgr.source_health(source)
                if h.state in (capture.SourceState.ERROR, capture.SourceState.ENDED) and not have:
                    raise AudioError(f"source {source!r}: {h.state.value}: {h.reason}")
                if h.state is capture.SourceState.ENDED:
                    break
                time.sleep(0.05)
    audio = np.concatenate(parts)[:need] if parts else np.zeros(0, np.float32)
    return src.machine, audio


def cmd_enroll(args: argparse.Namespace) -> int:
    from monitor.model.enroll import enroll

    if bool(args.audio) == bool(args.source):
        raise SonitorError("give exactly one of --audio PATH... or --source NAME --seconds N")
    waveforms = None
    machine = args.machine
    if args.source:
        if args.seconds is None or args.seconds <= 0:
            raise ConfigError("--source needs --seconds N (a positive duration to record)")
        if args.config is None:
            raise ConfigError("--source needs --config FILE (the daemon config naming the source)")
        print(f"recording {args.seconds:g} s from source {args.source!r} ...", file=sys.stderr)
        cfg_machine, audio = _capture(args.config, args.source, args.seconds)
        machine = machine or cfg_machine
        waveforms = [(f"source {args.source}", audio)]
    if not machine:
        raise SonitorError("--machine NAME is required")
    res = enroll(
        args.package,
        machine,
        args.audio,
        waveforms=waveforms,
        domain=args.domain,
        threads=args.threads,
        stride_seconds=args.stride_seconds,
        max_bank=args.max_bank,
        scorer=args.scorer,
        method=args.threshold_method,
        q=args.threshold_q,
    )
    print(res.summary())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from monitor.model.enroll import score_files

    results = score_files(
        args.package, args.machine, args.files, threads=args.threads,
        aggregate=args.aggregate, precision=args.precision,
    )  # fmt: skip
    out = sys.stdout
    if args.per_window:
        if not args.no_header:
            print("file,start_s,score,decision", file=out)
        for r in results:
            for start, v in zip(r.window_starts, r.window_scores, strict=True):
                print(f"{r.path},{start:.3f},{v:.8g},{int(v > r.threshold)}", file=out)
    else:
        if not args.no_header:
            print("file,score,decision", file=out)
        for r in results:
            print(f"{r.path},{r.score:.8g},{r.decision}", file=out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "enroll",
        help="add a machine (or more normal sound) to a model package, no training needed",
        description="Embed normal recordings with the package's encoder (onnxruntime), build or "
        "extend the machine's bank, recalibrate its threshold, and rewrite the package "
        "atomically (an interrupted write leaves the old package intact).",
    )
    p.add_argument("--package", required=True, help="model package folder (or .tar archive)")
    p.add_argument("--machine", help="machine name (default with --source: the source's machine)")
    p.add_argument("--audio", nargs="+", metavar="PATH", help="WAV/FLAC files or folders")
    p.add_argument("--source", metavar="NAME", help="record from this source of --config")
    p.add_argument("--seconds", type=float, help="how long to record with --source")
    p.add_argument("--config", type=Path, help="daemon config file (for --source)")
    p.add_argument(
        "--domain",
        choices=["source", "target"],
        default="source",
        help="domain of these recordings (default source)",
    )
    p.add_argument("--max-bank", type=int, help="bank size cap (default: the package's, 4096)")
    p.add_argument("--scorer", help="scorer for a NEW machine (default: the package's)")
    p.add_argument(
        "--stride-seconds",
        type=float,
        help="step between enrolment windows (default: one window, no overlap)",
    )
    p.add_argument(
        "--threshold-method",
        choices=["gamma", "percentile"],
        help="threshold fit (default: the package's, gamma)",
    )
    p.add_argument("--threshold-q", type=float, help="threshold quantile (default 0.9)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    p.set_defaults(handler=cmd_enroll)

    s = subparsers.add_parser(
        "score",
        help="score recordings offline on the runtime path: prints file,score,decision",
        description="Score files exactly as the daemon scores live audio (same streaming "
        "front-end, windows and scorer). A file's score is the mean (or max) over its windows; "
        "decision 1 = anomalous (score > the machine's threshold).",
    )
    s.add_argument("--package", required=True, help="model package folder (or .tar archive)")
    s.add_argument("--machine", required=True, help="machine whose bank scores the files")
    s.add_argument("files", nargs="+", metavar="FILE", help="WAV/FLAC files or folders")
    s.add_argument(
        "--aggregate",
        choices=["mean", "max"],
        default="mean",
        help="how a file's window scores combine (default mean)",
    )
    s.add_argument(
        "--per-window", action="store_true", help="one line per window: file,start_s,score,decision"
    )
    s.add_argument("--precision", choices=["fp32", "int8"], help="encoder precision")
    s.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    s.add_argument("--no-header", action="store_true", help="omit the CSV header line")
    s.set_defaults(handler=cmd_score)
