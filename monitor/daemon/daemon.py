"""The monitoring daemon: capture -> windows -> encoder -> scores -> alerts -> clips / MQTT.

Threads and who owns what:
- the main thread reads new audio from capture, cuts windows (front-end once per hop) and puts
  them on a bounded queue; it also handles signals, reloads and the systemd watchdog;
- the inference thread takes batches of windows (several sources per encoder call), scores
  them, runs each source's alert state machine, records clips and publishes state and events;
  everything per source after the queue belongs to this thread alone, so it needs no locks;
- capture, MQTT, the clip writer and the HTTP server run their own threads.

Signals: SIGHUP reloads config and model package without dropping audio (capture keeps running;
windowers resume where the old ones stopped; an invalid new config keeps the old one and logs
why). SIGTERM/SIGINT flush the queued windows, end open events, publish `stopped` and exit 0.

Time: alerts need a clock. For real-time sources it is the wall-clock time at which a window's
last sample arrived (robust to clock drift and capture holes); for files replayed as fast as
possible it is audio time (start + samples / 16 kHz), so alert timings mean the same at any speed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from monitor import __version__
from monitor.alerting.clips import ClipRecorder, ClipWriter
from monitor.alerting.machine import AlertEvent, AlertMachine
from monitor.audio.capture import (
    ALARM_STATES,
    RETRY_STATES,
    CaptureManager,
    SourceHealth,
    SourceState,
)
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.windowing import SourceWindower, Window, WindowQueue, batches
from monitor.config.schema import Config, DeviceSource, FileSource, load_config
from monitor.daemon.wiring import (
    CaptureGroup,
    Pipeline,
    ScoreSmoother,
    SourceRuntime,
    alert_policy,
    capture_groups,
    clip_policy,
    integrations_key,
    is_realtime,
    liveness_spec,
    mqtt_settings,
    source_machines,
    sparkplug_settings,
)
from monitor.errors import ConfigError, SonitorError
from monitor.outputs.payloads import health_payload, state_payload
from monitor.outputs.prometheus import Metrics, MetricsServer
from monitor.outputs.sdnotify import Notifier, Watchdog

log = logging.getLogger(__name__)

# Capture states that mean "do not trust this audio": anomaly alerts pause, a capture alarm runs.
UNHEALTHY_STATES = ALARM_STATES
HEALTH_PERIOD_S = 0.5  # how often the inference thread looks at capture health
HEALTH_REPUBLISH_S = 30.0  # retained health is re-published at least this often
FLUSH_TIMEOUT_S = 2.0  # SIGTERM: time allowed to score the queued windows
MQTT_STOP_TIMEOUT_S = 2.0


# ------------------------------------------------------------------------ the daemon


class Daemon:
    """Run with `Daemon(config, path).run()`; returns the process exit code."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.generation = 0
        self.pipelines: dict[int, Pipeline] = {}
        self.queue = WindowQueue(config.inference.max_pending_windows)
        self.groups: dict[tuple[str, ...], CaptureGroup] = {}
        self.manager_of: dict[str, CaptureManager] = {}
        self.windowers: dict[str, SourceWindower] = {}
        self.realtime: dict[str, bool] = {}
        self.sources: dict[str, SourceRuntime] = {}
        self.mqtt: Any = None
        self.homeassistant: Any = None  # HomeAssistantDiscovery when homeassistant.enabled
        self.sparkplug: Any = None  # SparkplugNode when sparkplug.enabled
        self.clip_writer: ClipWriter | None = None
        self.server: MetricsServer | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = threading.Event()
        self._pending: queue.Queue[tuple[str, Any]] = queue.Queue()  # to the inference thread
        self._inference_thread: threading.Thread | None = None
        self._last_audio_mono: dict[str, float] = {}
        self._read_from: dict[str, CaptureManager] = {}  # the manager each windower reads
        self._clock: dict[str, int] = {}  # per source: sample clock after the last read
        self._carry: dict[str, tuple[int, np.ndarray]] = {}  # fast files: read, not yet windowed
        self._health: dict[str, SourceHealth] = {}
        self.last_scored_mono: float | None = None
        self.started_mono = time.monotonic()
        self.windows_scored = 0
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
        self._init_metrics(cfg, pipeline)
        if cfg.metrics.enabled:
            host, port = cfg.metrics.host, cfg.metrics.port
            try:
                self.server = MetricsServer(self.metrics, self.health, host, port)
            except OSError as exc:
                raise ConfigError(
                    f"metrics.host/metrics.port: cannot listen on {host}:{port}: "
                    f"{exc.strerror or exc}"
                ) from None
        if cfg.clips.enabled:
            self.clip_writer = ClipWriter(clip_policy(cfg)).start()
        if cfg.mqtt.enabled:
            self.mqtt = self._start_mqtt(cfg)
        self._start_integrations(cfg)
        for src in cfg.sources:
            self.sources[src.name] = self._new_source_runtime(src, cfg)
        self._sync_capture(cfg)
        for src in cfg.sources:
            self.windowers[src.name] = self._new_windower(src.name, pipeline, 0)
            self.realtime[src.name] = is_realtime(src)
            self._read_from[src.name] = self.manager_of[src.name]
        if self.server is not None:
            self.server.start()
            host, port = self.server.address
            log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
        self._inference_thread = threading.Thread(
            target=self._inference_loop, name="sonitor-inference", daemon=True
        )
        self._inference_thread.start()
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

    def _start_mqtt(self, cfg: Config) -> Any:
        from monitor.outputs.mqtt import MqttClient

        client = MqttClient(
            mqtt_settings(cfg),
            on_connection_change=lambda up: self.metrics["mqtt_connected"].set(int(up)),
        )
        client.on_command("reload", lambda cmd: self.request_reload())
        for verb in ("mute", "unmute", "test_alert"):
            client.on_command(verb, lambda cmd: self._pending.put(("command", cmd)))
        return client.start()

    def _start_integrations(self, cfg: Config) -> None:
        """Home Assistant discovery and the Sparkplug B node: side sessions on the mqtt broker,
        fed from the same state and health the daemon publishes (``_publish_state/health``)."""
        if cfg.homeassistant.enabled:
            from monitor.outputs.homeassistant import HomeAssistantDiscovery

            self.homeassistant = HomeAssistantDiscovery(
                mqtt_settings(cfg),
                cfg.node.name,
                source_machines(cfg),
                discovery_prefix=cfg.homeassistant.discovery_prefix,
                sw_version=__version__,
            ).start()
        if cfg.sparkplug.enabled:
            from monitor.outputs.sparkplug import SparkplugNode

            self.sparkplug = SparkplugNode(
                mqtt_settings(cfg),
                sparkplug_settings(cfg),
                list(source_machines(cfg)),
                version=__version__,
            ).start()

    def _stop_integrations(self) -> None:
        if self.homeassistant is not None:
            self.homeassistant.stop()
            self.homeassistant = None
        if self.sparkplug is not None:
            self.sparkplug.stop(timeout=MQTT_STOP_TIMEOUT_S)  # publishes NDEATH
            self.sparkplug = None

    def _init_metrics(self, cfg: Config, pipeline: Pipeline) -> None:
        self.metrics.init_sources((s.name, s.machine, s.type) for s in cfg.sources)
        pkg = pipeline.package
        self.metrics.set_model_info(pkg.model_version, pkg.recipe, Path(pkg.path).name)
        for src in cfg.sources:
            self.metrics["score_threshold"].labels(source=src.name).set(
                pipeline.thresholds[src.name]
            )

    def _new_source_runtime(self, src: DeviceSource | FileSource, cfg: Config) -> SourceRuntime:
        policy = alert_policy(cfg)
        rt = SourceRuntime(
            name=src.name,
            realtime=is_realtime(src),
            alert=AlertMachine(src.name, policy),
            smoother=ScoreSmoother(
                cfg.scoring.smoothing, cfg.scoring.ema_alpha, cfg.scoring.median_windows
            ),
            policy=policy,
        )
        if self.clip_writer is not None:
            rt.recorder = self._new_recorder(rt, cfg)
        return rt

    def _new_recorder(self, rt: SourceRuntime, cfg: Config) -> ClipRecorder:
        assert self.clip_writer is not None
        return ClipRecorder(rt.name, clip_policy(cfg), self.clip_writer, lambda n: np.zeros(0))

    def _new_windower(self, name: str, pipeline: Pipeline, generation: int) -> SourceWindower:
        return SourceWindower(
            name,
            pipeline.window_samples,
            pipeline.hop_samples,
            frames_factory=pipeline.frames_factory(),
            generation=generation,
        )

    def _sync_capture(self, cfg: Config) -> None:
        """Start capture managers for new or changed source groups; keep unchanged ones running
        (their audio is not interrupted); stop groups no longer configured."""
        lv = liveness_spec(cfg)
        buf, hist = cfg.capture.buffer_seconds, cfg.capture.history_seconds
        wanted = capture_groups(cfg)
        for key, group in list(self.groups.items()):
            if key not in wanted or not group.same(wanted[key], lv, buf, hist):
                log.info("capture: stopping %s", "/".join(key))
                group.manager.stop()
                del self.groups[key]
        for key, specs in wanted.items():
            if key in self.groups:
                continue
            manager = CaptureManager(specs, liveness=lv, buffer_s=buf, history_s=hist)
            manager.start()
            self.groups[key] = CaptureGroup(list(specs), lv, buf, hist, manager)
        self.manager_of = {spec.name: g.manager for g in self.groups.values() for spec in g.specs}

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested.set()
        self._wake.set()

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
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            self._capture_tick()
            self.watchdog.tick()
            now = time.monotonic()
            if now - last_status > 10.0:
                last_status = now
                self.notifier.status(self.status_line())
            if not self._inference_thread or not self._inference_thread.is_alive():
                log.error("the inference thread died; exiting so that systemd restarts us")
                self.exit_code = 1
                return
            self._wake.wait(tick)
            self._wake.clear()

    def _capture_tick(self) -> None:
        """Read new audio of every source and queue the windows it completes.

        Files replayed as fast as possible are fed one hop at a time and only while inference
        keeps up (back-pressure reaches the file reader through the capture ring), so they are
        never dropped; real-time sources are always read and the queue drops their oldest
        windows when inference falls behind.
        """
        now = time.monotonic()
        for name, windower in self.windowers.items():
            manager = self.manager_of.get(name)
            if manager is None:
                continue
            realtime = self.realtime.get(name, True)
            carry = self._carry.get(name)
            if realtime or carry is None:
                try:
                    self._health[name] = manager.source_health(name)
                    start, x = manager.read_new(name)
                except Exception:  # noqa: BLE001 - one broken source must not stop the others
                    log.exception("capture read of %s failed", name)
                    continue
                if x.size == 0:
                    continue
                self._clock[name] = start + x.size
                self._last_audio_mono[name] = now
                self.metrics["capture_samples"].labels(source=name).inc(x.size)
                self.metrics["capture_last_sample_timestamp_seconds"].labels(source=name).set(
                    time.time()
                )
                carry = (start, x)
            start, x = carry
            if realtime:
                self._carry.pop(name, None)
                self._push(name, windower, start, x)
                continue
            step = windower.hop
            while x.size and len(self.queue) < self.cfg.inference.max_batch:
                self._push(name, windower, start, x[:step])
                start, x = start + min(step, x.size), x[step:]
            if x.size:
                self._carry[name] = (start, x)
            else:
                self._carry.pop(name, None)

    def _push(self, name: str, windower: SourceWindower, start: int, x: np.ndarray) -> None:
        health = self._health.get(name)
        t0 = time.perf_counter()
        windows = windower.push(start, x)
        # front-end cost per hop of new audio (what the streaming front-end promises)
        self.metrics.observe_stage(
            "frontend", (time.perf_counter() - t0) * windower.hop / max(x.size, 1)
        )
        if not windows:
            return
        healthy = health is None or health.state not in UNHEALTHY_STATES
        state = health.state.value if health is not None else "starting"
        for w in windows:
            w.meta.update(healthy=healthy, state=state, ready_sample=start + x.size)
        self._enqueue(windows)

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
            if cfg.clips.enabled:
                clip_policy(cfg)  # validates the clip settings before anything changes
            if cfg.mqtt.enabled:
                mqtt_settings(cfg).read_password()
        except (SonitorError, OSError, ValueError) as exc:
            log.error("reload failed; keeping the running config and model: %s", exc)
            self.metrics["config_reloads"].labels(result="failure").inc()
            self.notifier.ready(status="reload failed; running on the previous config")
            return False
        self.generation += 1
        gen = self.generation
        self.pipelines[gen] = pipeline
        for old in [g for g in self.pipelines if g < gen - 1]:
            del self.pipelines[old]
        self._pending.put(("reload", (old_cfg, cfg, gen)))  # the inference thread adopts it
        self._sync_capture(cfg)
        old_windowers = self.windowers
        self.windowers = {}
        resumed: list[Window] = []
        for src in cfg.sources:
            new = self._new_windower(src.name, pipeline, gen)
            old = old_windowers.get(src.name)
            manager = self.manager_of[src.name]
            # same capture manager = same sample clock: continue without losing audio
            if old is not None and self._read_from.get(src.name) is manager:
                resumed += new.resume_from(old)
            else:  # a new capture manager starts a new sample clock
                self._carry.pop(src.name, None)
                self._clock.pop(src.name, None)
            self.windowers[src.name] = new
            self.realtime[src.name] = is_realtime(src)
            self._read_from[src.name] = manager
        for w in resumed:
            w.meta.setdefault("healthy", True)
        if resumed:
            self._enqueue(resumed)
        self.cfg = cfg
        self.queue.max_pending = cfg.inference.max_pending_windows
        log.info(
            "reloaded %s: package %s version %s, %d source(s)",
            self.config_path,
            pipeline.package.path,
            pipeline.package.model_version,
            len(cfg.sources),
        )
        self.notifier.ready(status=f"reloaded; listening to {len(cfg.sources)} source(s)")
        return True

    # ================================================================== inference thread
    def _inference_loop(self) -> None:
        last_health = 0.0
        flush_deadline: float | None = None
        try:
            while True:
                self._drain_pending()
                windows = self.queue.take(self.cfg.inference.max_batch, timeout=0.1)
                if windows:
                    self._process(windows)
                    self.metrics["pending_windows"].set(len(self.queue))
                now = time.monotonic()
                if now - last_health >= HEALTH_PERIOD_S:
                    last_health = now
                    self._health_tick()
                self._feed_clips()
                if self._stop.is_set():
                    if flush_deadline is None:
                        flush_deadline = now + FLUSH_TIMEOUT_S
                    if len(self.queue) == 0 or now > flush_deadline:
                        break
        except Exception:  # noqa: BLE001 - logged; the main loop exits non-zero
            log.exception("inference thread crashed")

    def _drain_pending(self) -> None:
        while True:
            try:
                kind, payload = self._pending.get_nowait()
            except queue.Empty:
                return
            if kind == "reload":
                self._adopt(*payload)
            elif kind == "command":
                self._command(payload)

    def _adopt(self, old_cfg: Config, cfg: Config, gen: int) -> None:
        """Inference-side part of a reload: per-source state, MQTT, clips, metrics."""
        pipeline = self.pipelines[gen]
        t = time.time()
        if cfg.clips.enabled and (
            self.clip_writer is None or clip_policy(cfg) != self.clip_writer.policy
        ):
            for rt in self.sources.values():
                if rt.recorder is not None:
                    rt.recorder.flush()
                    rt.recorder = None
            if self.clip_writer is not None:
                self.clip_writer.close()
            self.clip_writer = ClipWriter(clip_policy(cfg)).start()
        elif not cfg.clips.enabled and self.clip_writer is not None:
            for rt in self.sources.values():
                if rt.recorder is not None:
                    rt.recorder.flush()
                    rt.recorder = None
            self.clip_writer.close()
            self.clip_writer = None
        new_sources: dict[str, SourceRuntime] = {}
        for src in cfg.sources:
            rt = self.sources.pop(src.name, None)
            policy = alert_policy(cfg)
            if rt is None or rt.policy != policy:
                if rt is not None:
                    self._handle_events(rt, rt.alert.close(t), None)
                    if rt.recorder is not None:
                        rt.recorder.flush()
                rt = self._new_source_runtime(src, cfg)
            else:
                rt.realtime = is_realtime(src)
                if (cfg.scoring.smoothing, cfg.scoring.ema_alpha, cfg.scoring.median_windows) != (
                    old_cfg.scoring.smoothing,
                    old_cfg.scoring.ema_alpha,
                    old_cfg.scoring.median_windows,
                ):
                    rt.smoother = ScoreSmoother(
                        cfg.scoring.smoothing, cfg.scoring.ema_alpha, cfg.scoring.median_windows
                    )
                if self.clip_writer is not None and (
                    rt.recorder is None or rt.recorder.writer is not self.clip_writer
                ):
                    rt.recorder = self._new_recorder(rt, cfg)
            new_sources[src.name] = rt
        for rt in self.sources.values():  # sources removed from the config
            self._handle_events(rt, rt.alert.close(t), None)
            if rt.recorder is not None:
                rt.recorder.flush()
        self.sources = new_sources
        if (cfg.mqtt.enabled, mqtt_settings(cfg) if cfg.mqtt.enabled else None) != (
            old_cfg.mqtt.enabled,
            mqtt_settings(old_cfg) if old_cfg.mqtt.enabled else None,
        ):
            if self.mqtt is not None:
                self.mqtt.stop(timeout=MQTT_STOP_TIMEOUT_S)
                self.mqtt = None
            if cfg.mqtt.enabled:
                self.mqtt = self._start_mqtt(cfg)
        if integrations_key(cfg) != integrations_key(old_cfg):
            self._stop_integrations()
            self._start_integrations(cfg)
        elif source_machines(cfg) != source_machines(old_cfg):
            if self.homeassistant is not None:  # deletes the entities of removed sources
                self.homeassistant.set_sources(source_machines(cfg))
            if self.sparkplug is not None:  # DDEATH for removed sources, then a rebirth
                self.sparkplug.set_sources(list(source_machines(cfg)))
        self._init_metrics(cfg, pipeline)
        # counted once the inference thread has adopted it: a scrape that sees the count also
        # sees the new package's model info and thresholds
        self.metrics["config_reloads"].labels(result="success").inc()
        if self.server is not None and (cfg.metrics.host, cfg.metrics.port) != (
            old_cfg.metrics.host,
            old_cfg.metrics.port,
        ):
            log.warning("metrics.host/port changes take effect after a restart")

    def _command(self, cmd: Any) -> None:
        from monitor.outputs.mqtt import mute_until

        names = [cmd.source] if cmd.source else list(self.sources)
        unknown = [n for n in names if n not in self.sources]
        if unknown:
            log.warning("MQTT command %s: unknown source %s", cmd.topic, unknown[0])
            return
        now = time.time()
        for name in names:
            rt = self.sources[name]
            if cmd.verb == "mute":
                try:
                    until = mute_until(cmd.args, now)
                except ValueError as exc:
                    log.warning("MQTT command %s: %s", cmd.topic, exc)
                    return
                self._handle_events(rt, rt.alert.mute(self._source_now(rt), until), None)
                log.info("source %s muted until %s", name, until or "unmuted by command")
            elif cmd.verb == "unmute":
                self._handle_events(rt, rt.alert.unmute(self._source_now(rt)), None)
                log.info("source %s unmuted", name)
            elif cmd.verb == "test_alert" and self.mqtt is not None:
                version = self.pipelines[self.generation].package.model_version
                self.mqtt.publish_test_alert(name, model_version=version)
            self._publish_state(rt, force=True)

    def _source_now(self, rt: SourceRuntime) -> float:
        """`now` on the source's alert clock (audio time for fast files)."""
        if rt.realtime or rt.t0 is None:
            return time.time()
        return rt.last.get("t", time.time())

    def _process(self, windows: list[Window]) -> None:
        for batch in batches(windows, self.cfg.inference.max_batch):
            pipeline = self.pipelines.get(batch[0].generation)
            if pipeline is None:
                pipeline = self.pipelines[self.generation]  # a generation already retired
            now = time.monotonic()
            for w in batch:
                self.metrics.observe_stage("capture_to_window", now - w.ready_monotonic)
            skip = {id(w): self._skip_reason(w) for w in batch}
            valid = [w for w in batch if skip[id(w)] is None and w.source in self.sources]
            raw: dict[int, float] = {}
            if valid:
                emb = pipeline.embed(valid, self.metrics)
                t0 = time.perf_counter()
                by_machine: dict[str, list[int]] = {}
                for i, w in enumerate(valid):
                    by_machine.setdefault(pipeline.machines.get(w.source, ""), []).append(i)
                for machine, idx in by_machine.items():
                    if machine not in pipeline.package.machines:
                        continue
                    scores = pipeline.package.machine(machine).score(emb[idx])
                    for i, s in zip(idx, scores, strict=True):
                        raw[id(valid[i])] = float(s)
                self.metrics.observe_stage("scoring", (time.perf_counter() - t0) / len(valid))
            for w in batch:
                rt = self.sources.get(w.source)
                if rt is None:
                    continue
                threshold = pipeline.thresholds.get(w.source, float("nan"))
                raw_score = raw.get(id(w), float("nan"))
                self._post(rt, w, raw_score, threshold, pipeline, skip[id(w)])

    def _skip_reason(self, w: Window) -> str | None:
        """Why a window is not embedded: its audio cannot say anything about the machine.

        Unhealthy capture feeds the alert machine's capture alarm; digital silence and heavy
        clipping are skipped until capture liveness decides (after silence_seconds /
        clipping_seconds) that the microphone is at fault, so a dead or overloaded input never
        raises an *anomaly* alert; non-finite samples count as invalid scores.
        """
        if not w.meta.get("healthy", True):
            return "unhealthy"
        if not w.finite:
            return "nonfinite_audio"
        if w.level_dbfs <= self.cfg.capture.silence_dbfs:
            return "silent"
        if w.clipped_fraction > self.cfg.capture.clip_fraction:
            return "clipped"
        return None

    def _post(
        self,
        rt: SourceRuntime,
        w: Window,
        raw: float,
        threshold: float,
        pipeline: Pipeline,
        skipped: str | None = None,
    ) -> None:
        m = self.metrics
        src = rt.name
        if skipped is not None and skipped != "unhealthy":
            m["windows_invalid"].labels(source=src, reason=skipped).inc()
        elif skipped is None and not math.isfinite(raw):
            m["windows_invalid"].labels(source=src, reason="nonfinite_score").inc()
        norm = raw / threshold if math.isfinite(raw) and threshold > 0 else float("nan")
        smoothed = rt.smoother.update(norm)
        fed = smoothed if self.cfg.scoring.alert_on == "smoothed" else norm
        t = rt.window_time(w)
        healthy = bool(w.meta.get("healthy", True))
        rt.last_window_mono = time.monotonic()
        if skipped in ("silent", "clipped"):
            events: list[AlertEvent] = []  # capture liveness decides; see _skip_reason
        elif skipped == "unhealthy":
            # the capture state ("silent", "clipping", ...) is the alarm's stable reason; the
            # detail goes to the health topic
            events = rt.alert.set_health(t, False, w.meta.get("state", "unhealthy"))
        else:
            events = rt.alert.step(t, fed, healthy)
        rt.last.update(
            t=t,
            raw=raw,
            norm=norm,
            smoothed=smoothed,
            threshold=threshold,
            level=w.level_dbfs,
            healthy=healthy,
            end_sample=w.end_sample,
            version=pipeline.package.model_version,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "window %s [%d, %d) raw=%.4g norm=%.3f smoothed=%.3f level=%.1f dBFS healthy=%s",
                src, w.start_sample, w.end_sample, raw, norm, smoothed, w.level_dbfs, healthy,
            )  # fmt: skip
        self._handle_events(rt, events, w.end_sample)
        if skipped is not None:
            self._publish_state(rt)
            return
        self.windows_scored += 1
        self.last_scored_mono = time.monotonic()
        m["windows"].labels(source=src).inc()
        m["last_inference_timestamp_seconds"].set(time.time())
        m["processing_lag_seconds"].labels(source=src).set(time.monotonic() - w.ready_monotonic)
        m["input_level_dbfs"].labels(source=src).set(w.level_dbfs)
        m["score_threshold"].labels(source=src).set(threshold)
        for key, value in (("score_raw", raw), ("score_normalised", norm)):
            if math.isfinite(value):
                m[key].labels(source=src).set(value)
        if math.isfinite(smoothed):
            m["score_smoothed"].labels(source=src).set(smoothed)
        self._publish_state(rt)

    def _handle_events(
        self, rt: SourceRuntime, events: list[AlertEvent], anchor_sample: int | None
    ) -> None:
        """Clips, MQTT, metrics and logs for the lifecycle events of one source."""
        if not events:
            return
        pipeline = self.pipelines[self.generation]
        threshold = pipeline.thresholds.get(rt.name)
        version = pipeline.package.model_version
        for ev in events:
            clip = rt.clip_names.get(ev.event_id)
            if rt.recorder is not None and ev.kind == "anomaly":
                if ev.type == "start" and anchor_sample is not None:
                    rt.recorder.latest = self._latest_before(rt.name, anchor_sample)
                    rt.clip_fed_upto = anchor_sample
                name = rt.recorder.on_event(ev, threshold=threshold, model_version=version)
                if name:
                    clip = rt.clip_names[ev.event_id] = name
            level = logging.WARNING if ev.type == "start" else logging.INFO
            log.log(
                level,
                "%s %s %s (%s) source=%s score=%s reason=%s",
                ev.kind,
                ev.type,
                ev.event_id,
                ev.severity,
                ev.source,
                None if ev.score is None else round(ev.score, 3),
                ev.reason,
            )
            if self.mqtt is not None:
                t0 = time.perf_counter()
                try:
                    self.mqtt.publish_alert(
                        ev, threshold=threshold, model_version=version, clip=clip
                    )
                except Exception:  # noqa: BLE001 - e.g. outbox disk full: keep monitoring
                    log.exception("could not queue event %s for MQTT", ev.event_id)
                self.metrics.observe_stage("publish", time.perf_counter() - t0)
            # counted after the outbox holds it: a scrape never sees an event that could be lost
            self.metrics["alert_events"].labels(source=rt.name, type=ev.type).inc()
            if ev.type == "end":
                rt.clip_names.pop(ev.event_id, None)
        status = rt.alert.status()
        for sev in ("warning", "critical"):
            active = int(status.state == "active" and status.severity == sev)
            self.metrics["alert_active"].labels(source=rt.name, severity=sev).set(active)
        self.metrics["source_muted"].labels(source=rt.name).set(int(status.state == "muted"))
        self._publish_state(rt, force=True)

    def _latest_before(self, name: str, end_sample: int) -> Callable[[int], np.ndarray]:
        def latest(n: int) -> np.ndarray:
            return self._audio_range(name, end_sample - n, end_sample)

        return latest

    def _audio_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """16 kHz audio [start, stop) of a source from capture's history (what is still held)."""
        manager = self.manager_of.get(name)
        clock = self._clock.get(name, 0)
        stop = min(stop, clock)
        if manager is None or stop <= start:
            return np.zeros(0, np.float32)
        seconds = min((clock - start) / SAMPLE_RATE + 0.01, self.cfg.capture.history_seconds)
        h_start, h = manager.history(name, seconds)
        a, b = max(start, h_start) - h_start, min(stop, h_start + h.size) - h_start
        return h[a:b] if b > a else np.zeros(0, np.float32)

    def _feed_clips(self) -> None:
        for rt in self.sources.values():
            if rt.recorder is None or not rt.recorder.recording or rt.clip_fed_upto is None:
                continue
            end = self._clock.get(rt.name, 0)
            if end > rt.clip_fed_upto:
                rt.recorder.feed(self._audio_range(rt.name, rt.clip_fed_upto, end))
                rt.clip_fed_upto = end

    def _publish_state(self, rt: SourceRuntime, force: bool = False) -> None:
        if self.mqtt is None or "t" not in rt.last:
            return
        now = time.monotonic()
        if not force and now - rt.last_state_pub < self.cfg.health.state_interval_seconds:
            return
        rt.last_state_pub = now
        last = rt.last
        t0 = time.perf_counter()
        payload = state_payload(
            rt.name,
            time=last["t"],
            status=rt.alert.status(),
            score=last["raw"],
            normalised_score=last["norm"],
            threshold=last["threshold"],
            level_dbfs=last["level"],
            capture_healthy=last["healthy"],
            model_version=last["version"],
        )
        self.mqtt.publish_state(rt.name, payload)
        if self.sparkplug is not None:
            self.sparkplug.update_state(rt.name, payload)
        self.metrics.observe_stage("publish", time.perf_counter() - t0)

    def _health_tick(self) -> None:
        """Capture health -> metrics, MQTT health, and capture alarms for sources that deliver
        no windows at all (a stalled or missing device)."""
        now_mono = time.monotonic()
        hop_s = self.pipelines[self.generation].hop_samples / SAMPLE_RATE
        for name, rt in self.sources.items():
            manager = self.manager_of.get(name)
            if manager is None:
                continue
            h = manager.source_health(name)
            m = self.metrics
            m["capture_up"].labels(source=name).set(int(h.state is SourceState.OK))
            m.sync_counter("capture_overflows", h.input_overflows, source=name)
            m.sync_counter("capture_lost_samples", h.overflow_samples, source=name)
            m.sync_counter("capture_reopens", h.reopen_count, source=name)
            unhealthy = h.state in UNHEALTHY_STATES
            starved = now_mono - rt.last_window_mono > hop_s + 2 * HEALTH_PERIOD_S + 1.0
            if unhealthy and starved:
                events = rt.alert.set_health(self._source_now(rt), False, h.state.value)
                self._handle_events(rt, events, None)
            self._publish_health(rt, h)
        if self.clip_writer is not None:
            st = self.clip_writer.stats()
            self.metrics.sync_counter("clips_written", st["written_total"])
            self.metrics.sync_counter("clips_dropped", st["dropped_total"])
            self.metrics.sync_counter("clips_deleted", st["deleted_total"])
            self.metrics["clips_disk_bytes"].set(st["disk_bytes"])
        if self.mqtt is not None:
            st = self.mqtt.stats()
            self.metrics["mqtt_connected"].set(int(st["connected"]))
            self.metrics["mqtt_outbox_messages"].set(st.get("outbox_pending", 0))
            self.metrics.sync_counter("mqtt_outbox_dropped", st.get("outbox_dropped_total", 0))
            self.metrics.sync_counter("mqtt_published", st.get("events_acked_total", 0))
            self.metrics.sync_counter("mqtt_connects", st.get("connects_total", 0))

    def _publish_health(self, rt: SourceRuntime, h: SourceHealth) -> None:
        if self.mqtt is None:
            return
        key = (h.state, h.reason)
        now = time.monotonic()
        if key == rt.last_health_key and now - rt.last_health_pub < HEALTH_REPUBLISH_S:
            return
        rt.last_health_key, rt.last_health_pub = key, now
        last_frame = None if h.last_frame_age_s is None else time.time() - h.last_frame_age_s
        level = h.level_dbfs if h.level_dbfs is not None and math.isfinite(h.level_dbfs) else None
        payload = health_payload(
            rt.name,
            time=time.time(),
            healthy=h.state is SourceState.OK,
            status=h.state.value,
            detail=h.reason,
            level_dbfs=level,
            last_frame_time=last_frame,
            overflows_total=h.input_overflows,
            reopen_attempts=h.reopen_count,
        )
        self.mqtt.publish_health(rt.name, payload)
        if self.sparkplug is not None:
            self.sparkplug.update_health(rt.name, payload)

    # ================================================================== health and status
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
        audio = any(now - t < stale for t in self._last_audio_mono.values())
        if audio:
            return self._inference_ok(now)
        return self._all_capture_retrying()

    def _all_capture_retrying(self) -> bool:
        names = [n for n in self.sources if n in self.manager_of]
        if not names:
            return False
        for name in names:
            manager = self.manager_of[name]
            if not manager.supervising:
                return False
            if manager.source_health(name).state not in RETRY_STATES:
                return False
        return True

    def _inference_ok(self, now: float) -> bool:
        stale = self.cfg.health.inference_stale_seconds
        if self.last_scored_mono is not None:
            return now - self.last_scored_mono < stale
        window_s = self.pipelines[self.generation].window_samples / SAMPLE_RATE
        return now - self.started_mono < stale + window_s  # the first window is not due yet

    def health(self) -> tuple[bool, dict[str, Any]]:
        """/healthz: capture alive per source, inference progressing, broker connected."""
        now = time.monotonic()
        capture: dict[str, Any] = {}
        for name in list(self.sources):
            manager = self.manager_of.get(name)
            if manager is None:
                continue
            h = manager.source_health(name)
            capture[name] = {
                "ok": h.state is SourceState.OK,
                "state": h.state.value,
                "reason": h.reason,
                "last_frame_age_s": h.last_frame_age_s,
            }
        last = None if self.last_scored_mono is None else round(now - self.last_scored_mono, 3)
        inference = {
            "ok": self._inference_ok(now),
            "last_window_age_s": last,
            "windows_scored": self.windows_scored,
            "pending_windows": len(self.queue),
        }
        checks: dict[str, Any] = {
            "capture": {"ok": bool(capture) and all(c["ok"] for c in capture.values()), **capture},
            "inference": inference,
        }
        if self.mqtt is not None:
            checks["mqtt"] = {"ok": bool(self.mqtt.connected), "last_error": self.mqtt.last_error}
        ok = all(c["ok"] for c in checks.values())
        pkg = self.pipelines[self.generation].package
        body = {
            "status": "ok" if ok else "unhealthy",
            "version": __version__,
            "model_version": pkg.model_version,
            "uptime_s": round(now - self.started_mono, 1),
            "checks": checks,
        }
        return ok, body

    def status_line(self) -> str:
        states = [h.state.value for h in self._health.values()]
        ok = sum(s == "ok" for s in states)
        return (
            f"{ok}/{len(self.sources)} sources ok, {self.windows_scored} windows scored, "
            f"{len(self.queue)} pending"
        )

    # ================================================================== shutdown
    def shutdown(self) -> None:
        """Flush queued windows, end open events, publish `stopped`, close everything."""
        self._stop.set()
        self.notifier.stopping(status="stopping")
        t_start = time.monotonic()
        for group in self.groups.values():
            with contextlib.suppress(Exception):
                group.manager.stop(timeout=1.0)
        if self._inference_thread is not None:
            self._inference_thread.join(FLUSH_TIMEOUT_S + 2.0)
        for rt in self.sources.values():
            with contextlib.suppress(Exception):
                self._handle_events(rt, rt.alert.close(self._source_now(rt)), None)
            if rt.recorder is not None:
                self._feed_clips()
                rt.recorder.flush()
        if self.mqtt is not None:
            self.mqtt.stop(timeout=MQTT_STOP_TIMEOUT_S)
        self._stop_integrations()
        if self.clip_writer is not None:
            self.clip_writer.close(timeout=2.0)
        if self.server is not None:
            self.server.stop()
        log.info(
            "stopped after %.1f s of shutdown (%d windows scored)",
            time.monotonic() - t_start,
            self.windows_scored,
        )


def run_daemon(config_path: Path) -> int:
    """`sonitor run --config FILE`: load, run until SIGTERM, return the exit code."""
    return Daemon(load_config(config_path), config_path).run()
