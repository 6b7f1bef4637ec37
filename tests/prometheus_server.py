"""Start a real Prometheus server on a free loopback port that scrapes given targets.

Used by end-to-end tests (daemon metrics, Grafana panels). Prometheus applies discovered targets
on a ~5 s tick, so the first sample is queryable only ~6 s after start: use `wait_for()`.

    with PrometheusServer(["127.0.0.1:9464"], tmp_path) as prom:
        prom.wait_for("sonitor_windows_total > 0", timeout=20)
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_prometheus() -> str:
    """The prometheus binary, or skip the test with the reason."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    return PROMETHEUS


class PrometheusServer:
    """A private Prometheus (fresh TSDB in `workdir`), 1 s scrape interval."""

    def __init__(self, targets: list[str], workdir: Path, job: str = "sonitor") -> None:
        self.binary = require_prometheus()
        self.targets = list(targets)
        self.workdir = Path(workdir)
        self.job = job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "prometheus.log"

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
            ],
        }
        cfg_path = self.workdir / "prometheus.yml"
        cfg_path.write_text(json.dumps(cfg))  # JSON is valid YAML
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ queries
    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (list of {metric, value})."""
        return self._get("/api/v1/query", {"query": expr})["result"]

    def targets_health(self) -> list[str]:
        return [t["health"] for t in self._get("/api/v1/targets")["activeTargets"]]

    def series_names(self) -> set[str]:
        """Every metric name Prometheus holds a sample for."""
        return set(self._get("/api/v1/label/__name__/values"))

    def wait_for(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll until `expr` returns a non-empty result (first scrape takes ~6 s)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no result for {expr!r} after {timeout} s; targets: "
                    f"{self.targets_health()}\n{self.logs()}"
                )
            time.sleep(0.5)
