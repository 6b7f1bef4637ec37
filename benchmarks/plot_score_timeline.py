"""Score timeline around an event: what the dashboard's score and alarm panels show, per window.

Runs the real daemon (`python -m monitor.cli.sonitor run`) on a replayed recording with an injected
fault, reads its `/metrics` every 50 ms (so every window's score is caught at a 0.5 s hop), and
draws the normalised and smoothed scores, the alert on/off thresholds, the injected fault and
the interval the alarm was open. The score log is saved as CSV; `--from-csv` redraws from it.

    python benchmarks/plot_score_timeline.py                       # -> docs/img/score_timeline.png
    python benchmarks/plot_score_timeline.py --fault noise --before 8 --fault-seconds 5 --after 12
    python benchmarks/plot_score_timeline.py --from-csv bench-out/timeline/scores.csv

Default package: the tests' tiny package (CED-tiny with random weights, banks of SYNTHETIC
machine sound; tests/package_fixtures.py) and SYNTHETIC fan sound, with the tests' alert rules
(on 1.5 / off 1.25, 3 of 4 windows). `--package PKG --machine NAME --recording FILE...` replays
your own recordings (concatenated) against a real package and the daemon's default alert rules.
Faults: `imbalance` (the same machine with an ~8 Hz modulation and an off-harmonic whine),
`noise` (broadband noise, a rub or leak), `none`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # daemon, package and synthetic-audio helpers

SR = 16000
FIELDS = ("t_end_s", "window", "normalised", "smoothed", "warning", "critical")


def make_audio(args: argparse.Namespace) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The replayed signal and the (start, end) of the injected fault in seconds."""
    from package_fixtures import synthetic_machine_audio

    from monitor.audio.io import load_audio

    total = args.before + args.fault_seconds + args.after
    if args.recording:
        x = np.concatenate([load_audio(p) for p in args.recording]).astype(np.float32)
        if len(x) < total * SR:
            sys.exit(f"--recording: {len(x) / SR:.1f} s of audio, the timeline needs {total} s")
        x = x[: int(total * SR)]
    else:
        x = synthetic_machine_audio(args.machine, 1, total, seed=args.seed)[0]
    if args.fault == "none":
        return x, None
    a, b = int(args.before * SR), int((args.before + args.fault_seconds) * SR)
    if args.fault == "noise":
        rng = np.random.default_rng(args.seed)
        x[a:b] += (0.3 * rng.standard_normal(b - a)).astype(np.float32)
    else:  # imbalance: the same machine with modulation and a whine (package_fixtures)
        bad = synthetic_machine_audio(args.machine, 1, args.fault_seconds, seed=args.seed,
                                      anomalous=True)[0]  # fmt: skip
        x[a:b] = bad[: b - a] if not args.recording else x[a:b] + bad[: b - a]
    return np.clip(x, -1, 1), (args.before, args.before + args.fault_seconds)


def record(args: argparse.Namespace, out: Path) -> tuple[list[dict], dict]:
    """Run the daemon on the signal; one row per scored window."""
    import yaml
    from daemon_process import DaemonProcess, expected_windows, write_config, write_wav
    from package_fixtures import make_tiny_package

    work = (out.parent / "run").resolve()  # the config resolves relative paths against itself
    work.mkdir(parents=True, exist_ok=True)
    x, fault = make_audio(args)
    wav = write_wav(work / "replay.wav", x)
    package = (
        Path(args.package).resolve()
        if args.package
        else make_tiny_package(work / "pkg", ("fan", "pump"))
    )
    source = {"name": "src1", "type": "file", "machine": args.machine, "path": str(wav),
              "realtime": True}  # fmt: skip
    cfg_path = write_config(work / "cfg.yaml", package, [source])
    cfg = yaml.safe_load(cfg_path.read_text())
    if args.package:  # a real package: the daemon's own default alert rules
        cfg.pop("alerts")
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from monitor.config import load_config

    alerts = load_config(cfg_path).alerts
    manifest = json.loads((package / "manifest.json").read_text())
    window_s, hop_s = float(manifest["window_seconds"]), float(manifest["hop_seconds"])
    n_windows = expected_windows(len(x) / SR, window_s, hop_s)

    rows: list[dict] = []
    daemon = DaemonProcess(cfg_path)
    try:
        daemon.wait_ready(timeout=120)
        last = 0
        deadline = time.monotonic() + len(x) / SR + 60
        while last < n_windows and time.monotonic() < deadline:
            m = daemon.metrics()
            lab = (("source", "src1"),)
            n = int(m.get(("sonitor_windows_total", lab), 0))
            if n > last:
                if n > last + 1:
                    print(f"note: windows {last + 1}..{n - 1} scored between two polls")
                rows.append({
                    "t_end_s": window_s + (n - 1) * hop_s, "window": n,
                    "normalised": m[("sonitor_score_normalised", lab)],
                    "smoothed": m[("sonitor_score_smoothed", lab)],
                    "warning": m[("sonitor_alert_active", (("severity", "warning"),) + lab)],
                    "critical": m[("sonitor_alert_active", (("severity", "critical"),) + lab)],
                })  # fmt: skip
                last = n
            time.sleep(0.05)
    finally:
        daemon.stop()
    meta = {
        "on": alerts.on_threshold, "off": alerts.off_threshold,
        "critical": alerts.critical_threshold, "fault": fault, "fault_kind": args.fault,
        "alert_on": load_config(cfg_path).scoring.alert_on,
    }  # fmt: skip
    return rows, meta


def save_csv(path: Path, rows: list[dict], meta: dict) -> None:
    with path.open("w", newline="") as f:
        f.write(f"# {meta!r}\n")
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def load_csv(path: Path) -> tuple[list[dict], dict]:
    import ast

    with path.open() as f:
        meta = ast.literal_eval(f.readline().lstrip("# "))
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows, meta


def open_intervals(t: np.ndarray, active: np.ndarray, hop: float) -> list[tuple[float, float]]:
    """(start, end) of runs of windows with the alarm open."""
    out, start = [], None
    for ti, a in zip(t, active, strict=True):
        if a and start is None:
            start = ti
        if not a and start is not None:
            out.append((start, ti - hop))
            start = None
    if start is not None:
        out.append((start, float(t[-1])))
    return out


def plot(rows: list[dict], meta: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t_end_s"] for r in rows])
    hop = float(np.median(np.diff(t))) if len(t) > 1 else 0.5
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=120)
    if meta["fault"]:
        ax.axvspan(*meta["fault"], color="0.85", label=f"injected fault ({meta['fault_kind']})")
    for i, (a, b) in enumerate(open_intervals(t, np.array([r["warning"] for r in rows]), hop)):
        ax.axvspan(a, b, ymin=0.0, ymax=0.05, color="red", label="alarm open" if i == 0 else None)
    ax.plot(t, [r["normalised"] for r in rows], ".-", lw=0.8, ms=3, color="tab:blue",
            label="normalised score (per window)")  # fmt: skip
    ax.plot(t, [r["smoothed"] for r in rows], lw=2, color="tab:orange", label="smoothed (EMA)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="calibrated threshold (= 1)")
    ax.axhline(meta["on"], color="red", lw=1, ls="--", label=f"alert on ({meta['on']:g})")
    ax.axhline(meta["off"], color="green", lw=1, ls="--", label=f"alert off ({meta['off']:g})")
    ax.set_xlabel("audio time at the window's end (s)")
    ax.set_ylabel("score / threshold")
    top = max(max(r["normalised"] for r in rows), meta["on"])
    ax.set_ylim(0, 1.45 * top)  # room for the legend above the data
    ax.set_title(f"Score around an event (alarms on the {meta['alert_on']} score)")
    ax.legend(loc="upper right", fontsize=7, ncol=2, framealpha=0.9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--package", help="model package (default: the tests' tiny package)")
    p.add_argument("--machine", default="fan", help="machine name in the package")
    p.add_argument("--recording", nargs="+", help="audio files to replay (default: SYNTHETIC)")
    p.add_argument("--fault", choices=("imbalance", "noise", "none"), default="imbalance")
    p.add_argument("--before", type=float, default=8.0, help="seconds before the fault")
    p.add_argument("--fault-seconds", type=float, default=6.0)
    p.add_argument("--after", type=float, default=12.0, help="seconds after the fault")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default="bench-out/timeline", help="folder for the run and CSV")
    p.add_argument("--png", default="docs/img/score_timeline.png")
    p.add_argument("--from-csv", help="redraw from a saved score log instead of running")
    args = p.parse_args(argv)
    if args.from_csv:
        rows, meta = load_csv(Path(args.from_csv))
    else:
        out = Path(args.out) / "scores.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        rows, meta = record(args, out)
        if not rows:
            sys.exit("the daemon scored no window; see the log in " + str(out.parent / "run"))
        save_csv(out, rows, meta)
        print(f"wrote {out} ({len(rows)} windows)")
    plot(rows, meta, Path(args.png))


if __name__ == "__main__":
    main()
