"""Runtime subcommands on model packages: `sonitor enroll` and `sonitor score` (no torch)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

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
    if not np.isfinite(audio).all():  # as load_audio refuses such a file
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioError(f"source {source!r}: recorded {bad} NaN or infinite sample(s)")
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
        condition=args.condition or args.domain or "source",
        threads=args.threads,
        stride_seconds=args.stride_seconds,
        max_bank=args.max_bank,
        scorer=args.scorer,
        budget=args.false_alarms_per_week,
    )
    print(res.summary())
    return 0


def _check_inputs(pkg: Any, results: list[Any]) -> list[list[Any]]:
    """The daemon's window checks on every scored window; a warning line per unhealthy file.

    The score is still printed (it is what the model says), but a file of silence, clipping or
    DC only is marked ``unhealthy`` and named on stderr: the daemon would not trust such audio,
    it would report the microphone.
    """
    from collections import Counter

    from monitor.audio.capture import LivenessSpec
    from monitor.audio.inputcheck import check_window
    from monitor.audio.io import load_audio

    lv = LivenessSpec()  # the config's defaults of capture.silence_dbfs and clip_fraction
    sr, win = pkg.sample_rate, pkg.window_samples
    checks = []
    for r in results:
        audio = load_audio(r.path, sr=sr)
        per = [
            check_window(
                audio[round(s * sr) : round(s * sr) + win],
                silence_dbfs=lv.silence_dbfs,
                clip_fraction=lv.clip_fraction,
                sr=sr,
            )
            for s in r.window_starts
        ]
        checks.append(per)
        bad = [c for c in per if c.problem]
        if bad:
            worst = Counter(c.problem for c in bad).most_common(1)[0][0]
            first = next(c for c in bad if c.problem == worst)
            print(
                f"warning: {r.path}: unhealthy input in {len(bad)} of {len(per)} window(s): "
                f"{first.describe(lv.silence_dbfs, lv.clip_fraction)}; {first.consequence()}",
                file=sys.stderr,
            )
    return checks


def _check_rates(pkg: Any, paths: list[Path]) -> None:
    """Warn where a file's native rate makes its scores incomparable (a line per file)."""
    from monitor.audio.io import audio_info

    edge = pkg.frontend.extra.get("band_edge_hz")
    for path in paths:
        rate = audio_info(path).sample_rate
        if rate == pkg.sample_rate:
            continue
        if "band_edge_hz" not in pkg.frontend.extra:
            print(
                f"warning: {path}: recorded at {rate} Hz, but this package was exported before "
                f"sonitor band-limited its front-end: its model hears up to "
                f"{pkg.sample_rate / 2:g} Hz, and resampling to {pkg.sample_rate} Hz removes "
                f"the top of that band, so normal sound can score as anomalous; export the "
                f"package again",
                file=sys.stderr,
            )
        elif edge is not None and rate / 2 < float(edge):
            print(
                f"warning: {path}: recorded at {rate} Hz, it holds nothing above {rate / 2:g} "
                f"Hz, but the model hears up to {float(edge):g} Hz: it scores higher than the "
                f"same sound recorded at {pkg.sample_rate} Hz or more",
                file=sys.stderr,
            )


def cmd_score(args: argparse.Namespace) -> int:
    from monitor.model.enroll import score_files
    from monitor.model.package import ModelPackage

    pkg = ModelPackage.load(args.package)
    results = score_files(
        pkg, args.machine, args.files, threads=args.threads,
        aggregate=args.aggregate, precision=args.precision,
    )  # fmt: skip
    _check_rates(pkg, [r.path for r in results])
    checks = _check_inputs(pkg, results)
    out = sys.stdout
    if args.per_window:
        if not args.no_header:
            print("file,start_s,score,normalised,condition,decision,input", file=out)
        for r, per in zip(results, checks, strict=True):
            assert r.window_normalised is not None
            rows = zip(
                r.window_starts, r.window_scores, r.window_normalised, r.window_conditions, per,
                strict=True,
            )  # fmt: skip
            for start, v, norm, cond, c in rows:
                print(
                    f"{r.path},{start:.3f},{v:.8g},{norm:.4f},{cond},{int(norm > 1)},"
                    f"{c.problem or 'ok'}",
                    file=out,
                )
    else:
        if not args.no_header:
            print("file,score,normalised,condition,decision,input", file=out)
        for r, per in zip(results, checks, strict=True):
            mark = "unhealthy" if any(c.problem for c in per) else "ok"
            print(
                f"{r.path},{r.score:.8g},{r.normalised:.4f},{r.condition},{r.decision},{mark}",
                file=out,
            )
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
        "--condition",
        metavar="NAME",
        help="operating condition of these recordings (a speed, load or product: any name; "
        "each condition gets its own threshold; default 'source', the main one)",
    )
    p.add_argument(
        "--domain", choices=["source", "target"], help="DCASE name of a condition (= --condition)"
    )
    p.add_argument("--max-bank", type=int, help="bank size cap (default: the package's, 4096)")
    p.add_argument("--scorer", help="scorer for a NEW machine (default: the package's)")
    p.add_argument(
        "--stride-seconds",
        type=float,
        help="step between enrolment windows (default: one window, no overlap)",
    )
    p.add_argument(
        "--false-alarms-per-week",
        type=float,
        help="the false-alarm budget the thresholds are fitted to (default: the package's, 1)",
    )
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    p.set_defaults(handler=cmd_enroll)

    s = subparsers.add_parser(
        "score",
        help="score recordings offline on the runtime path: prints file,score,decision",
        description="Score files exactly as the daemon scores live audio (same streaming "
        "front-end, windows and scorer). A file's score is the mean (or max) over its windows; "
        "normalised = score / the threshold of the operating condition the file sounds closest to; "
        "decision 1 = anomalous (normalised > 1). input = ok, or unhealthy (per window: silent, "
        "clipped, no_band_signal) where the daemon's capture checks would not trust the audio; "
        "a warning on stderr then names the file and the reason.",
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
