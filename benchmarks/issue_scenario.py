"""The daemon scenario of the false-alarm issue, on any DCASE-layout data set with labels.

What a plant engineer's trial looks like: a package exported from the training clips, each
operating condition's held-out normal test clips replayed back to back as one stream, then its
anomalous ones, scored on the daemon's runtime path (`monitor.model.enroll.score_waveform`: the
streaming front-end, windows, scorer and per-condition thresholds of `sonitor score`) and fed
through the daemon's alert state machine with the config's alert settings (default: the
persistence rule). Counts alarm starts and the seconds in alarm per stream. SYNTHETIC unless the
data are real; the data set sizes of the issue (160 + 10 training clips, 50 test clips per
condition and label):

    sonitor synth DATA --machines fan --n-train-source 160 --n-train-target 10 \\
        --n-test-per-group 50 --seed 7
    sonitor export --data DATA --window-seconds 9.984 --hop-seconds 1.024 --out PKG
    python benchmarks/issue_scenario.py DATA --package PKG

Replaying through `sonitor run` and a broker gives the same starts (the false-alarm benchmark,
`bench_false_alarms.py`, checks that its re-simulation, this same path, matches the broker).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from monitor.alerting.machine import AlertMachine
from monitor.config.config import Config
from monitor.daemon.wiring import alert_policy
from monitor.model.enroll import load, score_waveform
from monitor.model.package import ModelPackage
from monitor.model.runtime import Embedder
from training.data import discover


def streams(data: Path, machine: str) -> dict[tuple[str, str], list[Path]]:
    """(domain, normal|anomaly) -> the machine's labelled test clips, in name order."""
    found = discover(data)
    if machine not in found:
        raise SystemExit(f"{data}: no machine {machine!r} (found: {', '.join(sorted(found))})")
    out: dict[tuple[str, str], list[Path]] = {}
    for c in found[machine].test:
        if c.label is not None:
            out.setdefault((c.domain or "source", c.label), []).append(Path(c.path))
    return {k: sorted(v) for k, v in sorted(out.items())}


def replay(
    pkg: ModelPackage, embedder: Embedder, machine: str, clips: list[Path], cfg: Config
) -> dict[str, float]:
    """One stream of ``clips`` back to back: its windows, alarm starts and time in alarm."""
    audio = np.concatenate([load(p, pkg.sample_rate) for p in clips])
    starts, a = score_waveform(embedder, pkg, machine, audio, f"{len(clips)} clips")
    alarms = AlertMachine(machine, alert_policy(cfg, pkg.window_seconds, pkg.hop_seconds))
    n_starts, open_since, in_alarm = 0, None, 0.0
    for t0, v in zip(starts, a.normalised, strict=True):
        t = float(t0) + pkg.window_seconds  # the window's end, as the daemon stamps it
        for e in alarms.step(t, float(v), True):
            if e.kind == "anomaly" and e.type == "start":
                n_starts, open_since = n_starts + 1, t
            elif e.kind == "anomaly" and e.type == "end" and open_since is not None:
                in_alarm, open_since = in_alarm + t - open_since, None
    if open_since is not None:
        in_alarm += float(starts[-1]) + pkg.window_seconds - open_since
    return {
        "seconds": audio.size / pkg.sample_rate,
        "windows": len(starts),
        "over": int(np.sum(a.normalised >= 1.0)),
        "starts": n_starts,
        "in_alarm": in_alarm,
        "peak": float(np.max(a.normalised)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="DCASE-layout folder with labelled test clips")
    ap.add_argument("--package", type=Path, required=True, help="model package folder")
    ap.add_argument("--machine", help="machine type (default: the package's only one)")
    args = ap.parse_args(argv)
    pkg = ModelPackage.load(args.package)
    machines = list(pkg.manifest.machines)
    machine = args.machine or (machines[0] if len(machines) == 1 else None)
    if machine is None:
        raise SystemExit(f"the package holds {', '.join(machines)}: give --machine")
    cfg = Config.model_validate(
        {
            "model": {"package": str(args.package)},
            "sources": [{"type": "file", "name": "replay", "machine": machine, "path": "-"}],
        }
    )
    groups = streams(args.data, machine)  # before any work: a missing machine fails at once
    embedder = Embedder(pkg)
    thr = pkg.machine(machine).calibration.thresholds()
    print(
        f"package {args.package}: {pkg.window_seconds:g} s windows every {pkg.hop_seconds:g} s; "
        f"thresholds {', '.join(f'{c} {v:.4g}' for c, v in thr.items())}"
    )
    print(
        "| condition | audio | clips | seconds | windows | windows >= threshold | alarm starts "
        "| seconds in alarm | peak (x threshold) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (dom, label), clips in groups.items():
        r = replay(pkg, embedder, machine, clips, cfg)
        print(
            f"| {dom} | {label} | {len(clips)} | {r['seconds']:.0f} | {r['windows']} | "
            f"{r['over']} | {r['starts']} | {r['in_alarm']:.0f} | {r['peak']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
