"""The monitoring daemon: capture -> windows -> encoder -> scores -> alerts -> outputs.

Threads and who owns what:
- the main thread reads new audio through each source's channel (`channel.SourceChannel`: ring
  buffer -> windows, front-end once per hop) and puts the windows on a bounded queue; it also
  handles signals, reloads and the systemd watchdog;
- the inference thread (`worker.InferenceWorker`) takes batches of windows (several sources per
  encoder call), scores them and feeds each channel's alert half (alert machine, clips), which
  hands the window's result, its events and the source's state to the outputs through one
  `Dispatcher`; everything per source after the queue belongs to this thread alone, so it
  needs no locks;
- capture, MQTT, the clip writer and the HTTP server run their own threads.

Outputs: MQTT, Sparkplug B, Home Assistant and Prometheus are sinks (`monitor.outputs.sink`);
``Daemon(..., sinks=[...])`` adds more, called on the inference thread after the built-in ones.

Signals: SIGHUP reloads config and model package without dropping audio (capture keeps running;
windowers resume where the old ones stopped; an invalid new config keeps the old one and logs
why). A package rewritten on disk (`sonitor enroll`, `ack`, `revert`, or an acknowledgement
over MQTT: `acks.py`) is reloaded the same way. SIGTERM/SIGINT flush the queued windows, end
open events, publish `stopped` and exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.audio.capture import RETRY_STATES, SourceHealth, SourceState
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.windowing import SourceWindower, Window, WindowQueue
from monitor.config import Config, DeviceSource, FileSource, load_config
from monitor.daemon.acks import Acknowledgements, PackageWatch
from monitor.daemon.channel import ChannelSettings, SourceChannel
from monitor.daemon.outputs import Outputs
from monitor.daemon.wiring import (
    CaptureGroups,
    Pipeline,
    channel_settings,
    init_metrics,
    is_realtime,
    mqtt_settings,
)
from monitor.daemon.worker import FLUSH_TIMEOUT_S, InferenceWorker
from monitor.errors import ConfigError, SonitorError
from monitor.outputs.prometheus import Metrics, MetricsServer
from monitor.outputs.sdnotify import Notifier, Watchdog
from monitor.outputs.sink import Command, Sink

log = logging.getLogger(__name__)


class Daemon:
    """Run with `Daemon(config, path).run()`; returns the process exit code.

    ``sinks`` are extra outputs (`monitor.outputs.sink.Sink`): they see every window, event,
    state and health update, after MQTT and Prometheus.
    """

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.cfg = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.generation = 0
        self.pipelines: dict[int, Pipeline] = {}
        self.queue = WindowQueue(config.inference.max_pending_windows)
        self.capture = CaptureGroups()
        self.channels: dict[str, SourceChannel] = {}  # the main thread's view (capture)
        self.outputs = Outputs(
            self.metrics, lambda source: self.worker.alert_status(source), self._on_command, sinks
        )
        self._stop = threading.Event()
        self.worker = InferenceWorker(
            config,
            self.queue,
            self.pipelines,
            self._pipeline,
            self.outputs,
            self.metrics,
            self._stop,
        )
        # the ack command enrols on its own thread, then reloads; another process's change to
        # the package (`sonitor ack`, `revert`, `enroll`) is noticed and reloaded too
        self.acks = Acknowledgements(self.metrics, self.request_reload)
        self.worker.acks = self.acks
        self.package_watch = PackageWatch()
        self.server: MetricsServer | None = None
        self._wake = threading.Event()
        self._reload_requested = threading.Event()
        self.started_mono = time.monotonic()
        self.exit_code = 0
        self.watchdog = Watchdog(self.notifier, self.progressing)

    # ================================================================== start / stop
    def start(self) -> None:
        """Load the model, open capture, MQTT, clips and HTTP; tell systemd READY=1."""
        cfg = self.cfg
        root = logging.getLogger()
        if root.level != logging.DEBUG:  # `sonitor -v` wins over the config
            root.setLevel(cfg.logging.level)
        self.metrics["start_time_seconds"].set(time.time())
        # everything that can refuse to start (package, port, secrets, folders) comes first
        pipeline = Pipeline.build(cfg)
        self.pipelines[0] = pipeline
        init_metrics(self.metrics, cfg, pipeline)
        if cfg.metrics.enabled:
            host, port = cfg.metrics.host, cfg.metrics.port
            try:
                self.server = MetricsServer(self.metrics, self.health, host, port)
            except OSError as exc:
                raise ConfigError(
                    f"metrics.host/metrics.port: cannot listen on {host}:{port}: "
                    f"{exc.strerror or exc}"
                ) from None
        self.outputs.start(cfg)
        self.capture.sync(cfg)
        settings = channel_settings(cfg, pipeline)
        for src in cfg.sources:
            channel = self._new_channel(src, pipeline, 0, settings)
            # the inference thread does not run yet: its half of the channel is still ours
            channel.use_package(
                pipeline.thresholds[src.name],
                pipeline.package.model_version,
                pipeline.level_refs(src.name),
            )
            channel.use_clip_writer(self.outputs.clip_writer)
            self.channels[src.name] = channel
        if self.server is not None:
            self.server.start()
            host, port = self.server.address
            log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
        self.worker.start(self.channels)
        log.info(
            "sonitor %s running: %d source(s), package %s (version %s, %s), window %.3g s, "
            "hop %.3g s, %s front-end",
            __version__,
            len(cfg.sources),
            pipeline.package.path,
            pipeline.package.model_version,
            pipeline.package.recipe,
            pipeline.window_samples / SAMPLE_RATE,
            pipeline.hop_samples / SAMPLE_RATE,
            "streaming" if pipeline.embedder.streaming else "per-window",
        )
        self.notifier.ready(status=f"listening to {len(cfg.sources)} source(s)")

    def _new_channel(
        self,
        src: DeviceSource | FileSource,
        pipeline: Pipeline,
        generation: int,
        settings: ChannelSettings,
    ) -> SourceChannel:
        return SourceChannel(
            src.name,
            manager=self.capture.manager_of[src.name],
            windower=self._new_windower(src.name, pipeline, generation),
            realtime=is_realtime(src),
            settings=settings,
            metrics=self.metrics,
            dispatcher=self.outputs.dispatcher,
        )

    def _new_windower(self, name: str, pipeline: Pipeline, generation: int) -> SourceWindower:
        return SourceWindower(
            name,
            pipeline.window_samples,
            pipeline.hop_samples,
            frames_factory=pipeline.frames_factory(),
            generation=generation,
        )

    def _pipeline(self) -> Pipeline:
        """The newest pipeline (any thread)."""
        return self.pipelines[self.generation]

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested.set()
        self._wake.set()

    def _on_command(self, command: Command) -> None:
        """A command from an output (MQTT's network thread): reload here, the rest on the
        inference thread, which owns the alert machines."""
        if command.verb == "reload":
            self.request_reload()
        else:
            self.worker.post_command(command)

    # ================================================================== main loop
    def run(self, install_signals: bool = True) -> int:
        """Start, serve until SIGTERM/SIGINT, shut down; the exit code."""
        if install_signals:
            self._install_signals()
        try:
            self.start()
            self._main_loop()
        finally:
            self.shutdown()
        return self.exit_code

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _main_loop(self) -> None:
        tick = 0.02
        last_status = 0.0
        while not self._stop.is_set():
            package = Path(self.cfg.model.package)
            if self.package_watch.changed(package, self._pipeline().package.model_version):
                log.info("model package %s changed on disk: reloading", package)
                self._reload_requested.set()
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            self._capture_tick()
            self.watchdog.tick()
            now = time.monotonic()
            if now - last_status > 10.0:
                last_status = now
                self.notifier.status(self.status_line())
            if not self.worker.alive():
                log.error("the inference thread died; exiting so that systemd restarts us")
                self.exit_code = 1
                return
            self._wake.wait(tick)
            self._wake.clear()

    def _capture_tick(self) -> None:
        """Read new audio of every source and queue the windows it completes."""
        max_batch = self.cfg.inference.max_batch
        for channel in self.channels.values():
            channel.read(self._enqueue, self.queue.__len__, max_batch)

    def _enqueue(self, windows: list[Window]) -> None:
        dropped = self.queue.put(windows)
        for w in dropped:
            self.metrics["windows_dropped"].labels(source=w.source, reason="backlog").inc()
        if dropped:
            log.warning(
                "inference is behind: dropped %d oldest window(s) (%s)",
                len(dropped),
                ", ".join(sorted({w.source for w in dropped})),
            )
        self.metrics["pending_windows"].set(len(self.queue))

    # ================================================================== reload
    def reload(self) -> bool:
        """Re-read the config file and the model package; keep the old ones if anything fails."""
        if self.config_path is None:
            log.warning("reload requested but the daemon has no config file; ignored")
            return False
        self.notifier.reloading()
        old_cfg = self.cfg
        try:
            cfg = load_config(self.config_path)
            pipeline = Pipeline.build(cfg)
            if cfg.mqtt.enabled:
                mqtt_settings(cfg).read_password()
        except (SonitorError, OSError, ValueError) as exc:
            log.error("reload failed; keeping the running config and model: %s", exc)
            self.metrics["config_reloads"].labels(result="failure").inc()
            self.notifier.ready(status="reload failed; running on the previous config")
            return False
        gen = self.generation + 1
        self.pipelines[gen] = pipeline  # before the generation moves: the current one exists
        self.generation = gen
        for old in [g for g in self.pipelines if g < gen - 1]:
            del self.pipelines[old]
        self.capture.sync(cfg)
        settings = channel_settings(cfg, pipeline)
        channels: dict[str, SourceChannel] = {}
        resumed: list[Window] = []
        for src in cfg.sources:
            channel = self.channels.get(src.name)
            if channel is None:
                channel = self._new_channel(src, pipeline, gen, settings)
            else:
                windower = self._new_windower(src.name, pipeline, gen)
                manager = self.capture.manager_of[src.name]
                resumed += channel.rewire(manager, windower, is_realtime(src))
            channels[src.name] = channel
        self.worker.post_reload(old_cfg, cfg, gen, channels)  # its half of the channels
        self.channels = channels
        if resumed:
            self._enqueue(resumed)
        self.cfg = cfg
        self.queue.max_pending = cfg.inference.max_pending_windows
        if self.server is not None and (cfg.metrics.host, cfg.metrics.port) != (
            old_cfg.metrics.host,
            old_cfg.metrics.port,
        ):
            log.warning("metrics.host/port changes take effect after a restart")
        log.info(
            "reloaded %s: package %s version %s, %d source(s)",
            self.config_path,
            pipeline.package.path,
            pipeline.package.model_version,
            len(cfg.sources),
        )
        self.notifier.ready(status=f"reloaded; listening to {len(cfg.sources)} source(s)")
        return True

    # ================================================================== health and status
    @property
    def windows_scored(self) -> int:
        return self.worker.windows_scored

    @property
    def last_scored_mono(self) -> float | None:
        return self.worker.last_scored_mono

    def progressing(self) -> bool:
        """Watchdog rule: audio arrives and windows get scored (or the first is not due yet).

        With no audio from any source, the daemon still counts as progressing while every
        source's capture is visibly retrying (device missing, reopening, stalled) under a live
        capture supervisor: a restart cannot bring an unplugged microphone back, it would only
        make MQTT availability flap every watchdog period and hide the capture alarm that is
        already raised. A stuck main loop stops the pings anyway (they are sent from it).
        """
        stale = self.cfg.health.inference_stale_seconds
        now = time.monotonic()
        heard = [c.last_audio_mono for c in self.channels.values() if c.last_audio_mono is not None]
        if any(now - t < stale for t in heard):
            return self._inference_ok(now)
        return self._all_capture_retrying()

    def _all_capture_retrying(self) -> bool:
        channels = list(self.channels.values())
        if not channels:
            return False
        for channel in channels:
            if not channel.manager.supervising:
                return False
            if channel.manager.source_health(channel.name).state not in RETRY_STATES:
                return False
        return True

    def _inference_ok(self, now: float) -> bool:
        stale = self.cfg.health.inference_stale_seconds
        last = self.worker.last_scored_mono
        if last is not None:
            return now - last < stale
        window_s = self._pipeline().window_samples / SAMPLE_RATE
        return now - self.started_mono < stale + window_s  # the first window is not due yet

    def health(self) -> tuple[bool, dict[str, Any]]:
        """/healthz: capture alive per source, inference progressing, broker connected."""
        now = time.monotonic()
        capture: dict[str, Any] = {}
        for channel in list(self.channels.values()):
            h = channel.manager.source_health(channel.name)
            capture[channel.name] = {
                "ok": h.state is SourceState.OK,
                "state": h.state.value,
                "reason": h.reason,
                "last_frame_age_s": h.last_frame_age_s,
            }
        last_mono = self.worker.last_scored_mono
        last = None if last_mono is None else round(now - last_mono, 3)
        inference = {
            "ok": self._inference_ok(now),
            "last_window_age_s": last,
            "windows_scored": self.worker.windows_scored,
            "pending_windows": len(self.queue),
        }
        checks: dict[str, Any] = {
            "capture": {"ok": bool(capture) and all(c["ok"] for c in capture.values()), **capture},
            "inference": inference,
        }
        mqtt = self.outputs.mqtt_check()
        if mqtt is not None:
            checks["mqtt"] = mqtt
        ok = all(c["ok"] for c in checks.values())
        pkg = self._pipeline().package
        body = {
            "status": "ok" if ok else "unhealthy",
            "version": __version__,
            "model_version": pkg.model_version,
            "uptime_s": round(now - self.started_mono, 1),
            "checks": checks,
        }
        return ok, body

    def status_line(self) -> str:
        states = [c.health.state.value for c in self.channels.values() if c.health is not None]
        ok = sum(s == "ok" for s in states)
        return (
            f"{ok}/{len(self.channels)} sources ok, {self.worker.windows_scored} windows scored, "
            f"{len(self.queue)} pending"
        )

    # ================================================================== for embedding callers
    def source_health(self, name: str) -> SourceHealth | None:
        """Capture health of a configured source (None: no such source, or not started)."""
        channel = self.channels.get(name)
        return None if channel is None else channel.manager.source_health(name)

    def all_scored(self, name: str) -> bool:
        """True once a source's capture has ended (a file that does not loop), all its audio
        went into windows and every window cut from it was handled by the inference thread.
        Meant for files replayed as fast as possible: their windows are never dropped."""
        channel = self.channels.get(name)
        if channel is None or not channel.drained:  # read first: it is set last
            return False
        cut, handled = channel.cut_end, channel.scored_end
        return cut is None or (handled is not None and handled >= cut)

    def wait_published(self, timeout: float) -> bool | None:
        """Wait until the broker acknowledged every event so far (also after `shutdown`, for
        the events it ended); False on timeout, None without MQTT."""
        return self.outputs.wait_published(timeout)

    # ================================================================== shutdown
    def shutdown(self) -> None:
        """Flush queued windows, end open events, publish `stopped`, close everything."""
        self._stop.set()
        self.notifier.stopping(status="stopping")
        t_start = time.monotonic()
        self.capture.stop(timeout=1.0)
        self.worker.join(FLUSH_TIMEOUT_S + 2.0)
        self.worker.close_channels()
        self.acks.stop(timeout=5.0)  # an enrolment cut short leaves the old package intact
        self.outputs.stop()
        if self.server is not None:
            self.server.stop()
        log.info(
            "stopped after %.1f s of shutdown (%d windows scored)",
            time.monotonic() - t_start,
            self.worker.windows_scored,
        )


def run_daemon(config_path: Path) -> int:
    """`sonitor run --config FILE`: load, run until SIGTERM, return the exit code."""
    return Daemon(load_config(config_path), config_path).run()
