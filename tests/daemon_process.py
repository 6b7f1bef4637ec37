"""Helpers for end-to-end tests that run `sonitor run` in a subprocess (tests/test_daemon_*.py).

A session-cached tiny real package (CED-tiny, random weights; tests/package_fixtures.py), audio
files with a known anomaly, config writing, and a `DaemonProcess` with signals, logs, /metrics
and /healthz access. Every process is ours and ended by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml
from prometheus_client.parser import text_string_to_metric_families

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- audio


def machine_audio(machine: str, seconds: float, seed: int) -> np.ndarray:
    from package_fixtures import synthetic_machine_audio

    return synthetic_machine_audio(machine, 1, seconds, seed=seed)[0]


def with_anomaly(
    machine: str, before_s: float, anomaly_s: float, after_s: float, seed: int = 5
) -> np.ndarray:
    """Normal machine sound, then the same machine with loud broadband noise (a rub / leak),
    then normal again. The noise scores ~2.4x the threshold of the tiny test package, normal
    windows stay below ~1.15x (measured), so alert thresholds of 1.5 / 1.25 separate them."""
    total = before_s + anomaly_s + after_s
    x = machine_audio(machine, total, seed).astype(np.float32)
    rng = np.random.default_rng(seed)
    a, b = int(before_s * SR), int((before_s + anomaly_s) * SR)
    x[a:b] += (0.3 * rng.standard_normal(b - a)).astype(np.float32)
    return np.clip(x, -1, 1)


def expected_windows(seconds: float, window_s: float = 2.0, hop_s: float = 0.5) -> int:
    """Windows of a file of `seconds` (the streaming front-end needs n_fft/2 = 256 samples past
    a window's end before the window is complete)."""
    n, w, h = int(seconds * SR), int(window_s * SR), int(hop_s * SR)
    return (n - w - 256) // h + 1


def write_wav(path: Path, x: np.ndarray, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), x, SR, subtype=subtype)
    return path


# --------------------------------------------------------------------------- config


# Alert settings that separate the test package's normal and anomalous windows (see with_anomaly).
TEST_ALERTS = {
    "on_threshold": 1.5,
    "off_threshold": 1.25,
    "critical_threshold": 5.0,
    "n_of_m": [3, 4],
    # thresholds near the 0.9 quantile of the normal windows (what these mechanics tests were
    # tuned on): one false alarm per 10 windows of 2 s with a 3-of-4 rule is 30240 a week
    "false_alarms_per_week": 30000,
    # the loud-noise anomaly of with_anomaly is also a level change: the tests of the level
    # rule turn it on (tests/test_level_rule.py)
    "level_shift_db": None,
    "clear_windows": 3,
    "min_hold_seconds": 2.0,
    "cooldown_seconds": 5.0,
    "update_interval_seconds": 0,
    "peak_step": 0,
}


def write_config(
    path: Path,
    package: Path,
    sources: list[dict[str, Any]],
    *,
    state_dir: Path | None = None,
    metrics_port: int | None = None,
    broker: Any = None,
    topic_prefix: str = "test/sonitor",
    **sections: dict[str, Any],
) -> Path:
    cfg: dict[str, Any] = {
        "node": {"name": "e2e"},
        "model": {"package": str(package)},
        "paths": {"state_dir": str(state_dir or path.parent / "state")},
        "sources": sources,
        "alerts": dict(TEST_ALERTS),
        "metrics": {"enabled": True, "port": metrics_port or free_port()},
        "logging": {"level": "INFO"},
    }
    if broker is not None:
        cfg["mqtt"] = {
            "enabled": True,
            "host": broker.host,
            "port": broker.port,
            "topic_prefix": topic_prefix,
            "keepalive_seconds": 5,
            "reconnect_min_seconds": 0.2,
            "reconnect_max_seconds": 1.0,
        }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the process


class DaemonProcess:
    """`python -m monitor.cli.sonitor run --config FILE` in a subprocess, logs to a file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        data = yaml.safe_load(config.read_text())
        self.metrics_port = data.get("metrics", {}).get("port")
        self.log_path = config.with_suffix(f".{int(time.time() * 1000)}.log")
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli.sonitor", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it hangs (the test then fails on the exit code)."""
        if not self.alive():
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)

    # ------------------------------------------------------------------------ HTTP
    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        code, body = self._get("/healthz")
        return code, json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """{(sample name, sorted labels): value} of the current /metrics."""
        _, body = self._get("/metrics")
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        want = tuple(sorted(labels.items()))
        for (n, lab), value in self.metrics().items():
            if n == name and all(item in lab for item in want):
                return value
        return None

    def wait_until(
        self, cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.2
    ) -> None:
        """Poll `cond` (errors count as False) until true; fail with the daemon log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) waiting for {what}:\n"
                    f"{self.log_text()[-6000:]}"
                )
            try:
                if cond():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(poll)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}:\n{self.log_text()[-6000:]}"
        )

    def wait_ready(self, timeout: float = 40.0) -> None:
        self.wait_until(lambda: self._get("/metrics")[0] == 200, timeout, "the metrics endpoint")


def run_cli(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> Any:
    """`python -m monitor.cli.sonitor ARGS` to completion: CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli.sonitor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def daemon_on_a_file(
    tmp_path: Path, package: Path, seconds: float = 5, timeout: float = 60
) -> Iterator[tuple[Any, Any]]:
    """An in-process daemon replaying `seconds` of fan sound as fast as it can (no metrics port).

    Yields (daemon, metrics) once all but the last window are scored; afterwards stops it and
    checks that it ended cleanly.
    """
    import threading

    from monitor.config import load_config
    from monitor.daemon.daemon import Daemon
    from monitor.outputs.prometheus import Metrics
    from monitor.outputs.sdnotify import Notifier

    wav = write_wav(tmp_path / "a.wav", machine_audio("fan", seconds, seed=3))
    src = {"name": "a", "type": "file", "machine": "fan", "path": str(wav), "realtime": False}
    cfg_path = write_config(tmp_path / "c.yaml", package, [src], metrics={"enabled": False})
    metrics = Metrics(process=False)
    daemon = Daemon(load_config(cfg_path), cfg_path, notifier=Notifier({}), metrics=metrics)
    runner = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + timeout
        while daemon.windows_scored < expected_windows(seconds, 2.0, 0.5) - 1:
            assert runner.is_alive(), "the daemon stopped"
            assert time.monotonic() < deadline, "windows were not scored"
            time.sleep(0.05)
        yield daemon, metrics
    finally:
        daemon.request_stop()
        runner.join(10)
    assert not runner.is_alive() and daemon.exit_code == 0
