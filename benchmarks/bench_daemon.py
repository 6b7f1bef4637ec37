"""How many sources the daemon scores in real time, and how fast an event reaches MQTT.

Runs the real daemon (`sonitor run`) in a subprocess, optionally pinned to CPUs
with `taskset` (default: the first two, "2 cores"), on N real-time looping file sources of
SYNTHETIC machine sound, with a CED package (random weights: the cost does not depend on them),
10 s windows and a 1 s hop, and a real Mosquitto broker. For each (precision, N) it measures,
after the first windows:

- real-time ratio: windows scored / windows the audio allowed (1.0 = keeping up), windows
  dropped by the back-pressure queue, capture samples lost, the largest processing lag;
- latency from a window's end (its last sample arriving) to the MQTT event at a subscriber,
  p50 and p99: the alert rules are set so that every window emits an `update` event through the
  whole event path (alert machine, durable SQLite outbox with fsync, broker, subscriber);
- resident memory (process_resident_memory_bytes) and CPU use of the daemon process.

A setting passes when nothing was dropped or lost, the ratio is >= 0.95 and the lag stays below
the hop. The largest passing N per precision is the answer to "how many sources in real time".

    python benchmarks/bench_daemon.py [--size mini] [--precisions fp32 int8]
        [--sources 1 4 8 12 16] [--measure 20] [--cpus 0,1] [--threads 2] [--out results.md]

The package (export + int8 quantisation, ~1 min) is cached in --workdir.

With ``--separator CKPT`` (a `sonitor train-separator` checkpoint for the ``ced`` front-end) the
package carries the spectral separator: ``separator.onnx`` runs in the streaming front-end on each
hop's new mel frames (plus its context), so its cost shows in the front-end ms/hop column and
windows still reuse frames (the encoder cost per window is unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # broker and synthetic audio helpers

SR = 16000


# --------------------------------------------------------------------------- fixtures


def build_package(workdir: Path, size: str, separator: Path | None = None) -> Path:
    """A CED-<size> package (fp32 + int8, split front-end) with one 'fan' bank; cached.

    ``separator``: a separator checkpoint put in front of the encoder (its own package dir)."""
    pkg = workdir / (f"ced-{size}-package" if separator is None else f"ced-{size}-sep-package")
    if (pkg / "manifest.json").exists():
        return pkg
    import torch
    from package_fixtures import synthetic_machine_audio

    from export.onnx_export import export_encoder
    from export.package_writer import Int8Files, MachineSpec, write_package
    from export.quantize import quantize_encoder
    from monitor.model.runtime import Embedder
    from monitor.model.scoring import scorer_by_name
    from training.models.ced import CED

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = CED(size).eval()
    if separator is not None:
        from training.separator.masking import insert_separator, load_separator

        insert_separator(model, load_separator(separator))
    enc_dir = pkg.with_name(pkg.name.replace("package", "onnx"))
    enc = export_encoder(model, enc_dir, example_seconds=3.0)
    full8 = quantize_encoder(enc.full, enc_dir / "encoder.int8.onnx")
    bb8 = quantize_encoder(enc.backbone, enc_dir / "backbone.int8.onnx")
    embedder = Embedder({"encoder": enc.full}, threads=2)
    waves = synthetic_machine_audio("fan", 32, 10.0, seed=0)
    x = np.concatenate([embedder.embed(waves[i : i + 4]) for i in range(0, len(waves), 4)])
    scorer = scorer_by_name("rescaled_knn", k=8, metric="cosine").fit(x)
    spec = MachineSpec("fan", x, ["source"] * len(x), scorer, {"synthetic": True})
    return write_package(
        pkg,
        enc,
        [spec],
        recipe="bench",
        window_seconds=10.0,
        hop_seconds=1.0,
        int8=Int8Files(full8, bb8, {"note": "benchmark: drift not measured"}),
        training_data={"synthetic": True, "generator": "benchmarks/bench_daemon.py"},
    )


def audio_files(workdir: Path, n: int) -> list[Path]:
    import soundfile as sf
    from package_fixtures import synthetic_machine_audio

    out = []
    for i in range(n):
        path = workdir / "audio" / f"fan{i:02d}.wav"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            x = synthetic_machine_audio("fan", 1, 20.0, seed=100 + i)[0]
            sf.write(str(path), x, SR, subtype="PCM_16")
        out.append(path)
    return out


# --------------------------------------------------------------------------- one trial


class EventClock:
    """Subscriber that timestamps every event on arrival (wall clock, same host)."""

    def __init__(self, broker: Any, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.latencies: list[tuple[float, float]] = []  # (arrival, latency s)
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}"
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/events", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        payload = json.loads(msg.payload)
        if payload.get("kind") == "anomaly" and payload.get("replayed") is False:
            with self._lock:
                self.latencies.append((now, now - float(payload["time"])))

    def between(self, t0: float, t1: float) -> list[float]:
        with self._lock:
            return [lat for t, lat in self.latencies if t0 <= t <= t1]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= set(lab))


def peak(m: dict, name: str) -> float:
    vals = [v for (n, _), v in m.items() if n == name]
    return max(vals) if vals else float("nan")


def trial(
    args: argparse.Namespace, package: Path, precision: str, n: int, broker: Any
) -> dict[str, Any]:
    from daemon_process import free_port

    work = args.workdir / f"trial-{precision}-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    prefix = f"bench/{precision}/{n}"
    sources = [
        {"name": f"fan{i:02d}", "type": "file", "machine": "fan", "path": str(p),
         "realtime": True, "loop": True}
        for i, p in enumerate(audio_files(args.workdir, n))
    ]  # fmt: skip
    cfg = {
        "node": {"name": "bench"},
        "model": {"package": str(package), "threads": args.threads, "precision": precision},
        "paths": {"state_dir": str(work / "state")},
        "sources": sources,
        "inference": {"max_batch": 8, "max_pending_windows": max(32, 2 * n)},
        # every window emits an `update` event: the whole event path is timed on each window
        "alerts": {"on_threshold": 1e-6, "off_threshold": 1e-6, "critical_threshold": 1e6,
                   "n_of_m": [1, 1], "min_hold_seconds": 3600, "update_interval_seconds": 0.5,
                   "peak_step": 0},
        "clips": {"enabled": False},
        "mqtt": {"enabled": True, "host": broker.host, "port": broker.port,
                 "topic_prefix": prefix, "keepalive_seconds": 30},
        "metrics": {"port": port},
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    cfg_path = work / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "monitor.cli.sonitor", "run", "--config", str(cfg_path)]
    if args.cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", args.cpus, *cmd]
    clock = EventClock(broker, prefix)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    hop_s = 1.0
    try:
        deadline = time.monotonic() + 60
        while True:  # the first window of every source is due after 10 s
            try:
                m = metrics(port)
                if all(total(m, "sonitor_windows_total", source=s["name"]) >= 1 for s in sources):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start scoring; see {work / 'daemon.log'}")
            time.sleep(0.5)
        time.sleep(2.0)  # past the start-up burst
        t0, m0 = time.time(), metrics(port)
        lag_max = rss_max = 0.0
        while time.time() - t0 < args.measure:
            time.sleep(1.0)
            m = metrics(port)
            lag_max = max(lag_max, peak(m, "sonitor_processing_lag_seconds"))
            rss_max = max(rss_max, total(m, "process_resident_memory_bytes"))
        t1, m1 = time.time(), metrics(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        clock.close()
    span = t1 - t0

    def delta(name: str, **labels: str) -> float:
        return total(m1, name, **labels) - total(m0, name, **labels)

    windows = delta("sonitor_windows_total")
    enc_calls = delta("sonitor_stage_duration_seconds_count", stage="encoder")
    lat = sorted(clock.between(t0, t1))
    return {
        "precision": precision,
        "separator": "yes" if args.separator else "no",
        "sources": n,
        "realtime_ratio": windows / (n * span / hop_s),
        "dropped": delta("sonitor_windows_dropped_total"),
        "lost_samples": delta("sonitor_capture_lost_samples_total"),
        "lag_max_s": lag_max,
        "cpu": delta("process_cpu_seconds_total") / span,
        "rss_mb": rss_max / 1e6,
        "encoder_ms_per_call": 1000
        * delta("sonitor_stage_duration_seconds_sum", stage="encoder")
        / max(enc_calls, 1),
        "batch": windows / max(enc_calls, 1),
        "frontend_ms_per_hop": 1000
        * delta("sonitor_stage_duration_seconds_sum", stage="frontend")
        / max(delta("sonitor_stage_duration_seconds_count", stage="frontend"), 1),
        "events": len(lat),
        "latency_p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "latency_p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        if lat
        else float("nan"),
    }


def passes(r: dict[str, Any]) -> bool:
    return (
        r["dropped"] == 0
        and r["lost_samples"] == 0
        and r["realtime_ratio"] >= 0.95
        and r["lag_max_s"] < 1.0
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| precision | separator | sources | real-time ratio | dropped | lag max (s) | "
        "CPU (cores) | "
        "RSS (MB) | encoder ms/call (batch) | front-end ms/hop | event latency p50 / p99 (ms) "
        "| real time |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['precision']} | {r['separator']} | {r['sources']} | "
        f"{r['realtime_ratio']:.3f} | {r['dropped']:.0f} | "
        f"{r['lag_max_s']:.2f} | {r['cpu']:.2f} | {r['rss_mb']:.0f} | "
        f"{r['encoder_ms_per_call']:.1f} ({r['batch']:.1f}) | {r['frontend_ms_per_hop']:.2f} | "
        f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} | "
        f"{'yes' if passes(r) else 'NO'} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="mini", choices=("tiny", "mini", "small", "base"))
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--sources", nargs="+", type=int, default=[1, 4, 8, 12, 16])
    p.add_argument("--measure", type=float, default=20.0, help="seconds measured per trial")
    p.add_argument("--cpus", default="0,1", help="taskset CPU list ('' = no pinning)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (model.threads)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sonitor-bench-daemon"))
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    p.add_argument("--separator", type=Path, help="separator checkpoint (ced front-end)")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from broker import Broker

    package = build_package(args.workdir, args.size, args.separator)
    print(f"package {package}; load average {os.getloadavg()}; cpus {args.cpus or 'all'}")
    rows = []
    with Broker(args.workdir / "broker", persistence=False) as broker:
        for precision in args.precisions:
            for n in sorted(args.sources):
                r = trial(args, package, precision, n, broker)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if not passes(r):
                    break  # more sources will not keep up either
    table = markdown(rows)
    best = {
        prec: max([r["sources"] for r in rows if r["precision"] == prec and passes(r)], default=0)
        for prec in args.precisions
    }
    summary = (
        f"\nCED-{args.size}{' + separator' if args.separator else ''}, 10 s window, 1 s hop, "
        f"{args.threads} onnxruntime threads, "
        f"CPUs {args.cpus or 'all'}; most sources in real time: "
        + ", ".join(f"{k} {v}" for k, v in best.items())
        + f"; load average at the end {tuple(round(x, 2) for x in os.getloadavg())}\n"
    )
    print(table + summary)
    if args.out:
        args.out.write_text(table + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
