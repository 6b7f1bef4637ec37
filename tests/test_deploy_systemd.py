"""deploy/systemd/sonitor.service and deploy/install.sh.

The unit is checked by systemd's own tools (`systemd-analyze verify` and the offline
`systemd-analyze security`), its hardening by name, its timings against the daemon's constants,
and its sandbox against what the real daemon does: a daemon run under strace (live capture from a
virtual PulseAudio microphone, MQTT, metrics, a reload) must use only the socket families and
system calls the unit allows, must not phone home, and must not need W+X memory if the unit
forbids it. Where root may create namespaces, systemd itself runs the unit (as PID 1 of private
PID and mount namespaces) and the daemon must start, be confined, reload, stop and fail as the
docs say. The installer is run for real below a temporary root.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "systemd" / "sonitor.service"
INSTALL = REPO / "deploy" / "install.sh"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)


def unit_entries(text: str | None = None) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd units repeat keys, so no dict."""
    section, out = "", []
    for raw in (UNIT.read_text() if text is None else text).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_entries() if k == key]


def unit_value(key: str) -> str:
    values = unit_values(key)
    assert len(values) == 1, f"{key}= appears {len(values)} times in {UNIT}"
    return values[0]


def seconds(value: str) -> float:
    """systemd time span ('60', '60s', '2min', '1min 30s') in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 1e-3}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(num) * units[unit]
    return total


def runnable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    exe = tmp_path / "bin" / "sonitor"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNIT.read_text() if text is None else text
    unit = tmp_path / "sonitor.service"
    unit.write_text(text.replace("/opt/sonitor/bin/sonitor", str(exe)))
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=unit.parent
    )


def exposure(unit: Path) -> float:
    res = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, f"no exposure figure in:\n{res.stdout}\n{res.stderr}"
    return float(m.group(1))


def documented_exposure() -> float:
    m = re.search(r"exposure level[^\n]*?\*\*(\d+\.\d+)", DEPLOY_DOC.read_text())
    assert m, f"{DEPLOY_DOC} does not state the exposure figure as **N.N**"
    return float(m.group(1))


# ------------------------------------------------------------------ systemd's own checks


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    res = verify(runnable_copy(tmp_path))
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), (
        res.stdout + res.stderr
    )


@needs_analyze
def test_verify_reports_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: systemd-analyze names unknown keys and bad values."""
    bad = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=maybe")
    bad = bad.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    res = verify(runnable_copy(tmp_path, bad))
    assert "Unknown key 'NoNewPrivilege'" in res.stderr, res.stderr
    assert "protect home value" in res.stderr.lower() and "maybe" in res.stderr, res.stderr


@needs_analyze
def test_security_exposure_is_at_most_the_documented_figure(tmp_path: Path) -> None:
    measured = exposure(runnable_copy(tmp_path))
    assert measured <= documented_exposure(), (
        f"systemd-analyze security rates the unit {measured}, docs/deploy.md says "
        f"{documented_exposure()}: tighten the unit or document why it loosened"
    )
    # a loosened unit scores worse, so the comparison above guards the hardening
    loose = "\n".join(
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(("ProtectSystem=", "CapabilityBoundingSet=", "SystemCallFilter="))
    )
    assert exposure(runnable_copy(tmp_path / "loose", loose)) > measured


# ------------------------------------------------------------------ what the unit says


def test_unit_has_the_hardening_the_issue_asks_for() -> None:
    assert unit_value("Type") == "notify"
    assert unit_value("Restart") == "on-failure"
    assert unit_value("User") == "sonitor"
    assert unit_value("SupplementaryGroups") == "audio"
    assert unit_value("StateDirectory") == "sonitor"
    assert unit_value("LogsDirectory") == "sonitor"
    assert unit_value("ConfigurationDirectory") == "sonitor"
    assert unit_value("DeviceAllow") == "char-alsa rw"
    assert unit_value("DevicePolicy") == "closed"
    assert "PrivateDevices" not in {k for _, k, _ in unit_entries()}  # it would hide /dev/snd
    assert "ProcSubset" not in {k for _, k, _ in unit_entries()}  # it would hide /proc/asound
    assert unit_value("ProtectSystem") == "strict"
    assert unit_value("ProtectHome") == "yes"
    assert unit_value("PrivateTmp") == "yes"
    assert unit_value("NoNewPrivileges") == "yes"
    assert unit_value("CapabilityBoundingSet") == ""
    assert unit_value("LockPersonality") == "yes"
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs"):
        assert unit_value(key) == "yes", key
    assert set(unit_value("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit_values("SystemCallFilter")[0] == "@system-service"
    assert unit_value("SystemCallErrorNumber") == "EPERM"
    assert unit_value("UMask") == "0027"
    assert re.fullmatch(r"\d+[KMG]?", unit_value("MemoryMax"))
    env = " ".join(unit_values("Environment"))
    assert "ORT_DISABLE_TELEMETRY=1" in env


def test_exec_lines_match_the_cli_and_the_installer() -> None:
    from monitor.cli.sonitor import build_parser

    argv = unit_value("ExecStart").split()
    assert argv[0] == "/opt/sonitor/bin/sonitor"
    parser, _ = build_parser(plugins=False)
    args = parser.parse_args(argv[1:])
    assert args.command == "run" and str(args.config) == "/etc/sonitor/config.yaml"
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"  # the daemon reloads on SIGHUP
    script = INSTALL.read_text()
    assert "PREFIX=/opt/sonitor" in script and "config.yaml" in script


def test_timeouts_fit_the_daemon() -> None:
    from monitor.config import HealthConfig
    from monitor.daemon.outputs import MQTT_STOP_TIMEOUT_S
    from monitor.daemon.worker import FLUSH_TIMEOUT_S

    # SIGTERM: capture stop (1 s per device group), flush (FLUSH_TIMEOUT_S + 2 s join), MQTT
    # stop, clip writer (2 s): the stop timeout leaves room for a few device groups
    shutdown_s = 4 * 1.0 + FLUSH_TIMEOUT_S + 2.0 + MQTT_STOP_TIMEOUT_S + 2.0
    assert seconds(unit_value("TimeoutStopSec")) >= 2 * shutdown_s
    # The daemon pings every WatchdogSec/2 from its main loop, which a reload (package load)
    # blocks for seconds, so WatchdogSec must be long; and a deaf daemon (no pings once nothing
    # progressed for inference_stale_seconds) must be restarted within a few minutes.
    watchdog = seconds(unit_value("WatchdogSec"))
    stale = HealthConfig().inference_stale_seconds
    assert 30 <= watchdog <= 120
    assert stale + watchdog <= 180
    assert "2" in unit_value("RestartPreventExitStatus").split()  # SonitorError exits 2


def test_config_example_paths_live_in_the_units_directories() -> None:
    cfg = yaml.safe_load((REPO / "config.example.yaml").read_text())
    state = Path("/var/lib") / unit_value("StateDirectory")
    assert Path(cfg["paths"]["state_dir"]) == state
    assert Path(cfg["model"]["package"]).is_relative_to(state)
    assert cfg["metrics"]["host"] == "127.0.0.1"  # scraped locally unless the engineer opens it


# ------------------------------------------------------------------ install.sh


def run_install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    res = run_install("--dry-run", "--root", str(tmp_path / "root"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for expected in (
        "useradd --system",
        "--groups audio",
        "-m venv",
        "pip install",
        f"--constraint {REPO / 'deploy' / 'constraints.txt'}",
        str(REPO),
        "config.example.yaml",
        "etc/sonitor/config.yaml",
        "etc/systemd/system/sonitor.service",
        "systemctl daemon-reload",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "torch" not in out.replace("torch is installed", "")
    assert not (tmp_path / "root").exists()


def test_install_dry_run_on_the_live_system_touches_nothing() -> None:
    res = run_install("--dry-run")
    assert res.returncode == 0, res.stderr
    assert "+ systemctl daemon-reload" in res.stdout
    assert "+ install -m 0644" in res.stdout and "/etc/systemd/system/sonitor.service" in res.stdout


def test_install_below_a_root_is_idempotent_and_keeps_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = run_install("--root", str(root), "--skip-venv")
    assert res.returncode == 0, res.stdout + res.stderr
    conf = root / "etc" / "sonitor" / "config.yaml"
    unit = root / "etc" / "systemd" / "system" / "sonitor.service"
    assert conf.read_text() == (REPO / "config.example.yaml").read_text()
    assert conf.stat().st_mode & 0o777 == 0o640
    assert unit.read_text() == UNIT.read_text()
    assert all((root / "var" / d / "sonitor").is_dir() for d in ("lib", "log"))
    assert "skipped" in res.stdout and "useradd" in res.stdout  # acts on no live system

    conf.write_text("# the plant's own settings\n")
    again = run_install("--root", str(root), "--skip-venv")
    assert again.returncode == 0, again.stderr
    assert conf.read_text() == "# the plant's own settings\n"
    assert "exists (kept" in again.stdout
    assert unit.read_text() == UNIT.read_text()


def test_install_prefix_rewrites_execstart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = run_install("--root", str(root), "--skip-venv", "--prefix", "/srv/sonitor")
    assert res.returncode == 0, res.stderr
    text = (root / "etc" / "systemd" / "system" / "sonitor.service").read_text()
    assert "ExecStart=/srv/sonitor/bin/sonitor run --config /etc/sonitor/config.yaml" in text
    assert "/opt/sonitor" not in text


def test_install_refuses_bad_options(tmp_path: Path) -> None:
    res = run_install("--frobnicate")
    assert res.returncode == 2 and "--frobnicate" in res.stderr
    res = run_install("--dry-run", "--prefix", "relative/path")
    assert res.returncode == 2 and "relative/path" in res.stderr


def test_constraints_pin_every_runtime_dependency() -> None:
    """deploy/constraints.txt pins each runtime dependency exactly once per Python, inside the
    range pyproject.toml allows, and nothing of the training extra (regenerate it with
    deploy/constraints.py after changing [project] dependencies)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    lines = (REPO / "deploy" / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(p.specifier) == 1 and next(iter(p.specifier)).operator == "==" for p in pins)
    train = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["train"]
    }
    assert not train & {canonicalize_name(p.name) for p in pins}
    for python in ("3.10", "3.11", "3.12", "3.13"):
        env = {"python_version": python, "python_full_version": python + ".0"}
        active = [p for p in pins if p.marker is None or p.marker.evaluate(env)]
        names = [canonicalize_name(p.name) for p in active]
        assert len(names) == len(set(names)), f"python {python}: a package pinned twice"
        for req in runtime:
            pin = [p for p in active if canonicalize_name(p.name) == canonicalize_name(req.name)]
            assert pin, f"python {python}: {req.name} is not pinned in deploy/constraints.txt"
            version = next(iter(pin[0].specifier)).version
            assert req.specifier.contains(version, prereleases=True), (python, req, version)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_install_script_is_shellcheck_clean() -> None:
    res = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


# ------------------------------------------------------------------ the sandbox vs the daemon

STRACE = shutil.which("strace")


def _syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(
        [ANALYZE, "syscall-filter"], capture_output=True, text=True, timeout=30
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def allowed_syscalls() -> set[str]:
    """The unit's SystemCallFilter= lines applied in order (allow list, then ~deny lists)."""
    groups = _syscall_groups()

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        return set().union(*(expand(x) for x in groups[item]))

    allowed: set[str] = set()
    for value in unit_values("SystemCallFilter"):
        deny = value.startswith("~")
        names = set().union(*(expand(x) for x in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@needs_analyze
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")
def test_daemon_stays_inside_the_unit_sandbox(tmp_path: Path) -> None:
    from broker import Broker, require_mosquitto
    from daemon_process import machine_audio, write_config
    from package_fixtures import make_tiny_package
    from virtual_audio import HAVE_PULSEAUDIO, SKIP_REASON, VirtualAudio

    if not HAVE_PULSEAUDIO:
        pytest.skip(SKIP_REASON)
    require_mosquitto()
    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    unit_env = dict(
        pair.split("=", 1) for value in unit_values("Environment") for pair in value.split()
    )
    trace = tmp_path / "trace"
    with VirtualAudio(tmp_path / "pulse") as va, Broker(tmp_path / "broker") as broker:
        source = {"name": "mic1", "type": "device", "machine": "fan", "device": "pulse"}
        cfg = write_config(
            tmp_path / "cfg.yaml",
            package,
            [source],
            broker=broker,
            capture={"silence_seconds": 600},
        )
        log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [STRACE, "-f", "-qq", "-s", "64", "-o", str(trace),
             sys.executable, "-m", "monitor.cli.sonitor", "run", "--config", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **va.env, **unit_env, "HOME": str(tmp_path / "home")},
        )  # fmt: skip
        log.close()
        threading.Thread(target=va.play, args=(machine_audio("fan", 10, 3),), daemon=True).start()
        try:
            _wait_for_windows(cfg, proc, 2)
            daemon_pid = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
            os.kill(daemon_pid, signal.SIGHUP)
            time.sleep(2.0)
            os.kill(daemon_pid, signal.SIGTERM)
            assert proc.wait(60) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = trace.read_text(errors="replace")

    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", text))
    allowed_families = set(unit_value("RestrictAddressFamilies").split())
    assert families and families <= allowed_families, families - allowed_families

    used = set(re.findall(r"^\d+\s+([a-z_0-9]+)\(", text, flags=re.M))
    outside = used - allowed_syscalls()
    if os.geteuid() == 0:
        outside.discard("fchown")  # SQLite chowns its journal only when run as root
    assert not outside, f"system calls the unit's SystemCallFilter= refuses: {sorted(outside)}"

    inet = [
        addr
        for line in text.splitlines()
        if " connect(" in line and "sa_family=AF_INET" in line
        for addr in re.findall(r'"([0-9a-fA-F.:]+)"', line)
    ]
    assert inet and all(a in ("127.0.0.1", "::1") for a in inet), inet  # no telemetry, no DNS
    assert "DeveloperTools" not in text  # onnxruntime's telemetry cache (ORT_DISABLE_TELEMETRY)

    wx = re.findall(r"(?:mmap|mprotect)\([^)]*PROT_WRITE\|PROT_EXEC", text)
    wx += re.findall(r"mprotect\([^)]*PROT_EXEC", text)
    if unit_values("MemoryDenyWriteExecute") == ["yes"]:
        assert not wx, f"the unit forbids W+X memory but the daemon maps it: {wx[:3]}"


def _wait_for_windows(
    cfg: Path, proc: subprocess.Popen, n: int, source: str = "mic1", timeout: float = 60
) -> None:
    import urllib.request

    port = yaml.safe_load(cfg.read_text())["metrics"]["port"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the daemon exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                body = r.read().decode()
            pattern = r"^sonitor_windows_total\{source=\"" + source + r"\"\} (\S+)"
            m = re.search(pattern, body, re.M)
            if m and float(m.group(1)) >= n:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} windows scored in {timeout} s")


# ------------------------------------------------------------------ the unit under real systemd

SYSTEMD = next(
    (p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if Path(p).exists()), None
)
INSIDE = """#!/bin/sh
set -e
mount --make-rprivate /
mount --bind {tmp}/etc /etc
for d in /run /var/lib /var/log /opt; do mount -t tmpfs tmpfs "$d"; done
mkdir -p /opt/py /opt/venv /opt/sonitor/bin /var/lib/sonitor /etc/sonitor
mount --bind {base_prefix} /opt/py
{venv_bind}
cp {tmp}/sonitor /opt/sonitor/bin/sonitor && chmod 755 /opt/sonitor/bin/sonitor
cp -r {tmp}/lib /opt/sonitor/lib
cp -r {package} /var/lib/sonitor/package && cp {wav} /var/lib/sonitor/fan.wav
chown -R {uid}:{uid} /var/lib/sonitor
install -m 0640 -o root -g {uid} {tmp}/config.yaml /etc/sonitor/config.yaml
exec env -i container=sonitor-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
    {systemd} --system --unit=sonitor.service
"""


def _can_run_systemd() -> str | None:
    """Why systemd cannot run as PID 1 of a private namespace here, or None when it can."""
    if SYSTEMD is None or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "systemd, unshare or nsenter is not installed"
    if os.geteuid() != 0:
        return "needs root (mount and PID namespaces)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"unshare is not permitted here: {probe.stderr.decode().strip()}"
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if not python.exists():
        return f"no {python} to run the daemon with"
    return None


class Namespace:
    """systemd as PID 1 of private PID, mount and UTS namespaces; ended by SIGKILL of it."""

    def __init__(self, script: Path, log: Path) -> None:
        with open(log, "wb") as out:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--uts", "--mount-proc",
                 "sh", str(script)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.pid = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not self.pid:
            children = subprocess.run(
                ["pgrep", "-P", str(self.unshare.pid)], capture_output=True, text=True
            ).stdout.split()
            if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == "systemd":
                self.pid = int(children[0])
            time.sleep(0.1)
        assert self.pid, f"systemd did not start:\n{log.read_text()[-3000:]}"

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def show(self, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "sonitor", *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_state(self, want: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
            if state.get("ActiveState") == want or time.monotonic() > deadline:
                return state
            time.sleep(0.2)

    def close(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # the kernel ends everything in the namespace
        self.unshare.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_unit_runs_the_daemon_under_real_systemd(tmp_path: Path) -> None:
    """The unit as shipped (only ordering, logging and the interpreter's location adapted) under
    systemd 252+ as PID 1 of a private namespace: READY and the status line arrive, the sandbox
    is in force (user, audio group, no capabilities, seccomp), reload and stop work, and a bad
    config fails with status 2 without a restart loop."""
    reason = _can_run_systemd()
    if reason:
        pytest.skip(reason)
    from daemon_process import free_port, machine_audio, write_wav
    from package_fixtures import make_tiny_package

    uid = 64990  # the test's `sonitor` user, only in the namespace's copy of /etc
    etc = tmp_path / "etc"
    shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True)
    with open(etc / "passwd", "a") as f:
        f.write(f"sonitor:x:{uid}:{uid}:sonitor:/var/lib/sonitor:/usr/sbin/nologin\n")
    groups = (etc / "group").read_text().splitlines()
    if not any(g.startswith("audio:") for g in groups):
        groups.append("audio:x:29:")
    groups = [g + ("," if not g.endswith(":") else "") + "sonitor" if g.startswith("audio:") else g
              for g in groups]  # fmt: skip
    (etc / "group").write_text("\n".join(groups + [f"sonitor:x:{uid}:"]) + "\n")
    audio_gid = next(g.split(":")[2] for g in groups if g.startswith("audio:"))
    units = etc / "systemd" / "system"
    shutil.rmtree(units)
    units.mkdir(parents=True)
    unit = UNIT.read_text()
    unit = unit.replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n")  # no sysinit.target here
    unit = unit.replace("Wants=network-online.target\n", "")
    unit = unit.replace("After=network-online.target sound.target\n", "")
    unit = unit.replace(
        "[Service]\n",
        "[Service]\nStandardOutput=append:/run/sonitor-test.log\nStandardError=inherit\n"
        # the test's interpreter is bind-mounted to /opt/py; its libpython may sit in /root
        "Environment=LD_LIBRARY_PATH=/opt/py/lib\n",
    )
    (units / "sonitor.service").write_text(unit)

    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    venv = sys.prefix != sys.base_prefix
    site_dir = f"/opt/venv/lib/python{ver}/site-packages" if venv else ""
    (tmp_path / "sonitor").write_text(
        f"#!/opt/py/bin/python{ver}\nimport site, sys\n"
        + (f"site.addsitedir({site_dir!r})\n" if venv else "")
        # the code is copied in as an install would put it: the unit's PrivateTmp= and
        # ProtectHome= hide a checkout under /tmp or a home folder from the service
        + "sys.path.insert(0, '/opt/sonitor/lib')\n"
        + "from monitor.cli.sonitor import main\nsys.exit(main())\n"
    )
    shutil.copytree(
        REPO / "monitor", tmp_path / "lib" / "monitor", ignore=shutil.ignore_patterns("__pycache__")
    )
    port = free_port()
    cfg = {
        "node": {"name": "ipc1"},
        "model": {"package": "/var/lib/sonitor/package"},
        "sources": [
            {
                "type": "file",
                "name": "fan1",
                "machine": "fan",
                "path": "/var/lib/sonitor/fan.wav",
                "loop": True,
                "realtime": True,
            }
        ],  # fmt: skip
        "metrics": {"port": port},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    package = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    wav = write_wav(tmp_path / "fan.wav", machine_audio("fan", 8, seed=4))
    script = tmp_path / "inside.sh"
    script.write_text(
        INSIDE.format(
            tmp=tmp_path, base_prefix=sys.base_prefix, package=package, wav=wav, uid=uid,
            systemd=SYSTEMD,
            venv_bind=f"mount --bind {sys.prefix} /opt/venv" if venv else "",
        )
    )  # fmt: skip
    ns = Namespace(script, tmp_path / "systemd.log")
    try:
        state = ns.wait_state("active", 90)
        log = ns.run("cat", "/run/sonitor-test.log").stdout
        assert state["SubState"] == "running", f"{state}\n{log[-3000:]}"
        _wait_for_windows(tmp_path / "config.yaml", ns.unshare, 2, source="fan1")
        info = ns.show("StatusText", "WatchdogUSec", "MainPID", "User")
        assert "sources ok" in info["StatusText"], info  # sd_notify STATUS= reached systemd
        assert info["WatchdogUSec"] in ("1min", "60s", "60000000"), info
        status = ns.run("cat", f"/proc/{info['MainPID']}/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[0] == str(uid)
        assert audio_gid in fields["Groups"].split()
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"

        assert ns.run("systemctl", "reload", "sonitor").returncode == 0
        time.sleep(3)
        assert "reloaded" in ns.run("cat", "/run/sonitor-test.log").stdout
        assert ns.show("ActiveState")["ActiveState"] == "active"

        assert ns.run("systemctl", "stop", "sonitor").returncode == 0
        state = ns.show("ActiveState", "Result", "ExecMainStatus")
        assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}

        ns.run("sh", "-c", "echo 'bogus_key: 1' >> /etc/sonitor/config.yaml")
        ns.run("systemctl", "start", "sonitor")
        state = ns.wait_state("failed", 30)
        time.sleep(6)  # longer than RestartSec: a restart would show now
        state = ns.show("ActiveState", "ExecMainStatus", "NRestarts")
        assert state == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}, state
    finally:
        ns.close()
