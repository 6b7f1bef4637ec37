"""The inference thread: batches of windows from the queue -> encoder -> scores -> each source's
channel, which hands the results to the outputs.

Why one thread for all of this: one encoder call scores windows of several sources (batching is
where the CPU time goes), and everything per source after the queue (alert machines, smoothers,
clip recorders, publish timers) is touched by this thread alone, so none of it needs a lock. The
main thread talks to it through two queues only: the window queue and `post` (reloads to adopt,
commands from MQTT).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from monitor.alerting.machine import AlertStatus
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.windowing import Window, WindowQueue, batches
from monitor.config import Config
from monitor.daemon.acks import Acknowledgements
from monitor.daemon.channel import HEALTH_PERIOD_S, SourceChannel
from monitor.daemon.outputs import Outputs
from monitor.daemon.wiring import Pipeline, channel_settings, init_metrics, is_realtime
from monitor.outputs.prometheus import Metrics
from monitor.outputs.sink import Command

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 2.0  # SIGTERM: time allowed to score the queued windows


class InferenceWorker:
    """Owns the inference thread and, on it, every channel's alert half.

    ``pipelines`` (by config generation) is shared with the main thread, which adds a reload's
    pipeline before any of its windows are queued and retires all but the previous one;
    ``current()`` is the newest. A batch whose generation was retired is scored with it.
    """

    def __init__(
        self,
        cfg: Config,
        window_queue: WindowQueue,
        pipelines: dict[int, Pipeline],
        current: Callable[[], Pipeline],
        outputs: Outputs,
        metrics: Metrics,
        stop: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.queue = window_queue
        self.pipelines = pipelines
        self.current = current
        self.channels: dict[str, SourceChannel] = {}
        self.outputs = outputs
        self.metrics = metrics
        self._stop = stop
        self._pending: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.windows_scored = 0
        self.last_scored_mono: float | None = None
        self.acks: Acknowledgements | None = None  # the ack command's windows (daemon sets it)
        self._embeddings: dict[int, np.ndarray] = {}  # by window id, of the batch being handled

    # ------------------------------------------------------------------ main-thread side
    def start(self, channels: dict[str, SourceChannel]) -> None:
        """Start the thread; from now on the alert half of ``channels`` is its alone."""
        self.channels = dict(channels)
        self._thread = threading.Thread(target=self._loop, name="sonitor-inference", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def post_reload(
        self, old_cfg: Config, cfg: Config, generation: int, channels: dict[str, SourceChannel]
    ) -> None:
        """Hand a reload to the inference thread; it adopts it between two batches."""
        self._pending.put(("reload", (old_cfg, cfg, generation, channels)))

    def post_command(self, command: Command) -> None:
        """A command for the sources (mute, unmute, test_alert, ack); callable from any thread."""
        self._pending.put(("command", command))

    def alert_status(self, source: str) -> AlertStatus | None:
        channel = self.channels.get(source)
        return None if channel is None else channel.alert.status()

    def close_channels(self) -> None:
        """Shutdown, after the thread ended: end open events, write the clips being recorded."""
        for channel in self.channels.values():
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - every channel must still finish its clip
                log.exception("closing the events of %s failed", channel.name)
            channel.finish_clip()

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        last_health = 0.0
        flush_deadline: float | None = None
        try:
            while True:
                self._drain_pending()
                windows = self.queue.take(self.cfg.inference.max_batch, timeout=0.1)
                if windows:
                    self.process(windows)
                    self.metrics["pending_windows"].set(len(self.queue))
                now = time.monotonic()
                if now - last_health >= HEALTH_PERIOD_S:
                    last_health = now
                    self._health_tick()
                for channel in self.channels.values():
                    channel.feed_clip()
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

    def _adopt(
        self, old_cfg: Config, cfg: Config, generation: int, channels: dict[str, SourceChannel]
    ) -> None:
        """Inference-side part of a reload: clips, channels' alert halves, outputs, metrics."""
        pipeline = self.pipelines.get(generation) or self.current()  # retired: a later one
        t = time.time()
        if self.outputs.clips_change(cfg):
            for channel in self.channels.values():
                channel.use_clip_writer(None)  # their clips go to the old writer
            self.outputs.restart_clips(cfg)
        settings = channel_settings(cfg, pipeline)
        realtime = {src.name: is_realtime(src) for src in cfg.sources}
        for name, channel in channels.items():
            if name in self.channels:
                channel.adopt(settings, realtime[name], t)
            channel.use_package(
                pipeline.thresholds.get(name),
                pipeline.package.model_version,
                pipeline.level_refs(name),
            )
            channel.use_clip_writer(self.outputs.clip_writer)
        for name, channel in self.channels.items():  # sources removed from the config
            if name not in channels:
                channel.close(t)
                channel.finish_clip(feed=False)
        self.channels = dict(channels)
        self.cfg = cfg
        self.outputs.adopt(old_cfg, cfg)
        init_metrics(self.metrics, cfg, pipeline)
        # counted once the inference thread has adopted it: a scrape that sees the count also
        # sees the new package's model info and thresholds
        self.metrics["config_reloads"].labels(result="success").inc()

    def _command(self, cmd: Command) -> None:
        from monitor.outputs.mqtt.commands import mute_until  # commands only come with MQTT

        if cmd.verb == "ack":
            if self.acks is not None:
                self.acks.command(cmd, self.channels, self.current())
            return
        names = [cmd.source] if cmd.source else list(self.channels)
        unknown = [n for n in names if n not in self.channels]
        if unknown:
            log.warning("MQTT command %s: unknown source %s", cmd.topic, unknown[0])
            return
        for name in names:
            channel = self.channels[name]
            if cmd.verb == "mute":
                try:
                    until = mute_until(cmd.args, time.time())
                except ValueError as exc:
                    log.warning("MQTT command %s: %s", cmd.topic, exc)
                    return
                channel.mute(until)
                log.info("source %s muted until %s", name, until or "unmuted by command")
            elif cmd.verb == "unmute":
                channel.unmute()
                log.info("source %s unmuted", name)
            elif cmd.verb == "test_alert":
                channel.test_alert()

    def process(self, windows: list[Window]) -> None:
        """Score windows (of any sources, in batches) and feed each to its channel."""
        for batch in batches(windows, self.cfg.inference.max_batch):
            pipeline = self.pipelines.get(batch[0].generation)
            if pipeline is None:
                pipeline = self.current()  # a generation already retired
            now = time.monotonic()
            for w in batch:
                self.metrics.observe_stage("capture_to_window", now - w.ready_monotonic)
            skip = {id(w): self.skip_reason(w) for w in batch}
            valid = [w for w in batch if skip[id(w)] is None and w.source in self.channels]
            scored = self._score(pipeline, valid) if valid else {}
            version = pipeline.package.model_version
            for w in batch:
                channel = self.channels.get(w.source)
                if channel is None:
                    continue
                nan = float("nan")
                raw_score, threshold, condition = scored.get(
                    id(w), (nan, pipeline.thresholds.get(w.source, nan), None)
                )
                result = channel.on_window(
                    w, raw_score, threshold, version, skip[id(w)], condition=condition
                )
                if result.skipped is None:
                    self.windows_scored += 1
                    self.last_scored_mono = time.monotonic()
                    if self.acks is not None and id(w) in self._embeddings:
                        self.acks.on_window(result, self._embeddings[id(w)], pipeline)
            self._embeddings = {}

    def _score(
        self, pipeline: Pipeline, valid: list[Window]
    ) -> dict[int, tuple[float, float, str]]:
        """(raw score, threshold of the matched condition, condition) by window id: one
        encoder call, then each machine's scorer once (`Pipeline.assess`)."""
        emb = pipeline.embed(valid, self.metrics)
        if self.acks is not None:
            self._embeddings = {id(w): emb[i] for i, w in enumerate(valid)}
        t0 = time.perf_counter()
        scored = pipeline.assess([w.source for w in valid], emb)
        out = {id(w): s for w, s in zip(valid, scored, strict=True) if s is not None}
        self.metrics.observe_stage("scoring", (time.perf_counter() - t0) / len(valid))
        return out

    def skip_reason(self, w: Window) -> str | None:
        """Why a window is not embedded: its audio cannot say anything about the machine.

        Unhealthy capture feeds the alert machine's capture alarm; digital silence (overall or
        in the model's band: a DC offset or drift of a broken input) and heavy clipping are
        skipped until capture liveness decides (after silence_seconds /
        clipping_seconds) that the microphone is at fault, so a dead or overloaded input never
        raises an *anomaly* alert; non-finite samples count as invalid scores.
        """
        if not w.meta.get("healthy", True):
            return "unhealthy"
        if not w.finite:
            return "nonfinite_audio"
        if min(w.level_dbfs, w.band_level_dbfs) <= self.cfg.capture.silence_dbfs:
            return "silent"  # also in the model's band only: a DC offset, a 1 Hz drift
        if w.clipped_fraction > self.cfg.capture.clip_fraction:
            return "clipped"
        return None

    def _health_tick(self) -> None:
        """Capture health of every source -> metrics, health outputs, capture alarms; then the
        counters of the clip writer and MQTT."""
        now_mono = time.monotonic()
        hop_s = self.current().hop_samples / SAMPLE_RATE
        for channel in self.channels.values():
            channel.check_health(now_mono, hop_s)
        self.outputs.sync_metrics()
