"""A private PulseAudio server with a null sink, for capture tests with real PortAudio.

Why this shape (measured in ../shared/reference/platform-notes.md, probe 1):
- PortAudio records the null sink's *monitor* through ALSA's ``pulse`` plugin;
- an idle null sink's monitor delivers nothing, so a ``pacat`` keep-alive plays zeros into it;
- a new server's first capture streams stall for about 2 s, so :meth:`VirtualAudio.start` settles.

Everything lives under a private runtime directory (``XDG_RUNTIME_DIR``/``HOME`` in tmp), the socket
path is explicit and anonymous, and every process is ours and ended by PID. The server can be
SIGKILLed (a crash) and started again on the same socket, which is what recovery tests need.

Use it from another test module::

    from virtual_audio import VirtualAudio, pulse_env, requires_pulseaudio  # noqa: F401

``pulse_env`` is a module-scoped fixture: it starts a server with a stereo 16 kHz null sink (mono
playback reaches both channels, a mono capture gets the same level), points this process's libpulse
at it (``PULSE_SERVER``, ``PULSE_SOURCE``, ``PULSE_SINK``) and yields the :class:`VirtualAudio`.
A daemon started as a subprocess inherits these variables.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SINK = "vsink"
SINK_RATE = 16000


def _missing_parts() -> list[str]:
    """What real capture through PulseAudio needs on this machine and is not there."""
    missing = [t for t in ("pulseaudio", "pacat", "pactl") if shutil.which(t) is None]
    plugin = "alsa-lib/libasound_module_pcm_pulse.so"
    if not any(glob.glob(f"{d}/{plugin}") for d in ("/usr/lib/*", "/usr/lib", "/usr/lib64")):
        missing.append("ALSA pulse plugin (libasound2-plugins)")
    if ctypes.util.find_library("portaudio") is None:
        missing.append("PortAudio (libportaudio2)")
    return missing


MISSING = _missing_parts()
HAVE_PULSEAUDIO = not MISSING
SKIP_REASON = (
    "real capture needs pulseaudio, pulseaudio-utils, libasound2-plugins and libportaudio2; "
    f"missing: {', '.join(MISSING)}"
)
requires_pulseaudio = pytest.mark.skipif(not HAVE_PULSEAUDIO, reason=SKIP_REASON)


class VirtualAudioError(RuntimeError):
    """The private sound server did not come up."""


class VirtualAudio:
    """One private PulseAudio server; start, kill, restart and play into it."""

    def __init__(self, root: Path | None = None, settle_s: float = 2.5, channels: int = 1) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="sonitor-pulse-")) if root is None else root
        self.runtime = self.root / "run"
        self._own_runtime = len(str(self.runtime / "native")) > 100  # AF_UNIX path limit 108
        if self._own_runtime:
            self.runtime = Path(tempfile.mkdtemp(prefix="sonitor-pulse-run-"))
        self.home = self.root / "home"
        self.socket = self.runtime / "native"
        self.log = self.root / "pulse.log"
        self.settle_s = settle_s
        self.channels = channels
        self._server: subprocess.Popen[bytes] | None = None
        self._keepalive: subprocess.Popen[bytes] | None = None
        self._players: list[subprocess.Popen[bytes]] = []
        self._extra_modules: list[str] = []

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """Variables that point a libpulse client (paplay, ALSA's pulse plugin) at this server."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_SINK": SINK,
            "PULSE_SOURCE": f"{SINK}.monitor",
        }

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(XDG_RUNTIME_DIR=str(self.runtime), HOME=str(self.home))
        return env

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def start(self, settle: bool = True) -> None:
        """Start the server and the keep-alive; wait until the sink runs (and settle)."""
        if self.running:
            return
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime, 0o700)
        if self.socket.exists():  # left by a killed server
            self.socket.unlink()
        cmd = [
            "pulseaudio",
            "-n",  # no default.pa: only the modules below
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--disable-shm=yes",
            "--use-pid-file=no",
            f"--log-target=file:{self.log}",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            f"--load=module-null-sink sink_name={SINK} rate={SINK_RATE} "
            f"channels={self.channels} format=float32le",
            *(f"--load={m}" for m in self._extra_modules),
        ]
        self._server = subprocess.Popen(
            cmd, env=self._child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_for_socket()
        self._keepalive = subprocess.Popen(
            ["pacat", "--playback", f"--device={SINK}", "--raw", "--format=s16le",
             f"--rate={SINK_RATE}", f"--channels={self.channels}", "--latency-msec=20",
             "/dev/zero"],
            env=self._child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_for_running_sink()
        if settle:
            time.sleep(self.settle_s)

    def _wait_for_socket(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server is not None and self._server.poll() is not None:
                raise VirtualAudioError(f"pulseaudio exited at start; see {self.log}")
            if self.socket.exists() and self.pactl("info", check=False).returncode == 0:
                return
            time.sleep(0.02)
        raise VirtualAudioError(f"pulseaudio socket {self.socket} not ready in {timeout} s")

    def _wait_for_running_sink(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.pactl("list", "short", "sinks", check=False).stdout
            if any(SINK in line and "RUNNING" in line for line in out.splitlines()):
                return
            time.sleep(0.02)
        raise VirtualAudioError(f"null sink {SINK} not RUNNING in {timeout} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL the server (a crash, as a dying sound server looks to clients)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server and every player we started."""
        self._end(signal.SIGTERM)

    def restart(self, settle: bool = True) -> None:
        self.stop()
        self.start(settle=settle)

    def _end(self, sig: signal.Signals) -> None:
        for proc in [*self._players, self._keepalive]:
            _end_process(proc, signal.SIGTERM)
        self._players.clear()
        self._keepalive = None
        _end_process(self._server, sig)
        self._server = None

    def close(self) -> None:
        """Stop everything and remove the private directory (if we made it)."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        if self._own_runtime:
            shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> VirtualAudio:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def add_module_at_start(self, module_args: str) -> None:
        """Load an extra module (e.g. a pipe source) every time the server starts."""
        self._extra_modules.append(module_args)

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args], env=self._child_env(), capture_output=True, text=True,
            timeout=10, check=check,
        )  # fmt: skip

    def play(self, samples: np.ndarray, rate: int = SINK_RATE) -> subprocess.Popen[bytes]:
        """Play float samples (frames, or frames x channels) into the null sink, non-blocking."""
        samples = np.asarray(samples, dtype="<f4")
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        proc = subprocess.Popen(
            ["pacat", "--playback", f"--device={SINK}", "--raw", "--format=float32le",
             f"--rate={rate}", f"--channels={channels}", "--latency-msec=50"],
            env=self._child_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._players.append(proc)
        assert proc.stdin is not None
        try:
            proc.stdin.write(np.ascontiguousarray(samples).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        return proc

    def play_tone(self, freq: float, amplitude: float, seconds: float) -> subprocess.Popen[bytes]:
        return self.play(tone(freq, amplitude, seconds))

    def add_pipe_source(self, name: str = "vmic") -> Path:
        """Load a pipe source into the running server: a microphone that delivers nothing
        until someone writes float32 samples into the returned FIFO (a stalled device)."""
        fifo = self.root / f"{name}.fifo"
        self.pactl("load-module", "module-pipe-source", f"source_name={name}", f"file={fifo}",
                   "format=float32le", f"rate={SINK_RATE}", "channels=1")  # fmt: skip
        return fifo


def tone(freq: float, amplitude: float, seconds: float, rate: int = SINK_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _end_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def pulse_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    """A running private server with this process's libpulse pointed at it (module scope)."""
    if not HAVE_PULSEAUDIO:
        pytest.skip(SKIP_REASON)
    va = VirtualAudio(tmp_path_factory.mktemp("pulse"), channels=2)
    saved = {k: os.environ.get(k) for k in va.env}
    os.environ.update(va.env)  # putenv: libpulse in PortAudio's ALSA plugin reads these
    try:
        va.start()
        yield va
    finally:
        va.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
