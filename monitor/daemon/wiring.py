"""How the daemon's config becomes running parts.

The config schema (the `monitor.config` package) is the single source of truth for every key and
every rule on its value; the components (capture, alerts, clips, MQTT, Sparkplug) take small
settings dataclasses of their own, plain values that do not check themselves again. The functions
here map a validated `Config` onto them. What the schema cannot know is checked where it is met:
the model package (`Pipeline.build`: machines, window and hop), folders, secrets, ports.

Also here: the model pipeline (package + onnxruntime embedder) and the capture groups (which
sources share a capture manager).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.alerting.clips import ClipPolicy
from monitor.alerting.machine import AlertPolicy
from monitor.audio.capture import (
    CaptureManager,
    DeviceSourceSpec,
    FileSourceSpec,
    LivenessSpec,
)
from monitor.audio.frontend import SAMPLE_RATE
from monitor.audio.windowing import Window, stack
from monitor.config import Config, DeviceSource, FileSource
from monitor.daemon.channel import ChannelSettings
from monitor.errors import ConfigError
from monitor.model.conditions import AlarmRule, ConditionCalibration, persistence_rule
from monitor.model.levels import LevelReference
from monitor.model.package import CalibrationDefaults, ModelPackage
from monitor.model.runtime import Embedder, FrameStream
from monitor.outputs.prometheus import Metrics

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------ config mapping


def liveness_spec(cfg: Config) -> LivenessSpec:
    c = cfg.capture
    return LivenessSpec(
        stall_seconds=c.stall_seconds,
        silence_seconds=c.silence_seconds,
        silence_dbfs=c.silence_dbfs,
        clip_fraction=c.clip_fraction,
        clipping_seconds=c.clipping_seconds,
        reopen_initial_seconds=c.reopen_initial_seconds,
        reopen_max_seconds=c.reopen_max_seconds,
        clip_level=c.clip_level,
        check_interval_seconds=c.check_interval_seconds,
    )


def source_spec(src: DeviceSource | FileSource) -> DeviceSourceSpec | FileSourceSpec:
    if isinstance(src, DeviceSource):
        return DeviceSourceSpec(
            name=src.name,
            device=src.device,
            channel=src.channel,
            gain_db=src.gain_db,
            samplerate=src.samplerate,
            blocksize=src.blocksize,
            latency=src.latency,
        )
    return FileSourceSpec(
        name=src.name,
        path=src.path,
        realtime=src.realtime,
        loop=src.loop,
        gain_db=src.gain_db,
        channel=src.channel,
        block_s=src.block_seconds,
    )


def n_of_m(cfg: Config, window_s: float, hop_s: float) -> tuple[int, int]:
    """The configured [N, M], or the persistence rule for these windows (`alerts.n_of_m` null)."""
    a = cfg.alerts
    return a.n_of_m or persistence_rule(window_s, hop_s, a.burst_seconds)


def alert_policy(cfg: Config, window_s: float = 10.0, hop_s: float = 1.0) -> AlertPolicy:
    """The alert rules of ``cfg`` for windows of ``window_s`` every ``hop_s`` (the pipeline's)."""
    a = cfg.alerts
    n, m = n_of_m(cfg, window_s, hop_s)
    return AlertPolicy(
        on_threshold=a.on_threshold,
        critical_threshold=a.critical_threshold,
        off_threshold=a.off_threshold,
        n_above=n,
        m_windows=m,
        k_below=a.clear_windows,
        min_hold_s=a.min_hold_seconds,
        cooldown_s=a.cooldown_seconds,
        update_interval_s=a.update_interval_seconds,
        peak_step=a.peak_step,
        invalid_limit=a.invalid_limit,
        capture_alarm_delay_s=a.capture_alarm_delay_seconds,
    )


def clip_policy(cfg: Config) -> ClipPolicy:
    c = cfg.clips
    return ClipPolicy(
        directory=cfg.clips_dir,
        pre_roll_s=c.pre_roll_seconds,
        post_roll_s=c.post_roll_seconds,
        max_clip_s=c.max_event_seconds,
        sample_rate=SAMPLE_RATE,
        max_age_s=c.max_age_days * 86400.0,
        max_total_bytes=c.max_total_bytes,
        min_free_bytes=c.min_free_bytes,
        retention_interval_s=c.retention_interval_seconds,
    )


def channel_settings(cfg: Config, pipeline: Pipeline) -> ChannelSettings:
    sc = cfg.scoring
    return ChannelSettings(
        policy=alert_policy(cfg, pipeline.window_seconds, pipeline.hop_seconds),
        smoothing=(sc.smoothing, sc.ema_alpha, sc.median_windows),
        alert_on=sc.alert_on,
        level_shift_db=cfg.alerts.level_shift_db,
        state_interval_s=cfg.health.state_interval_seconds,
        history_s=cfg.capture.history_seconds,
    )


def mqtt_settings(cfg: Config) -> Any:
    from monitor.outputs.mqtt import MqttSettings

    m = cfg.mqtt
    return MqttSettings(
        host=m.host,
        port=m.port,
        topic_prefix=cfg.mqtt_topic_prefix,
        client_id=cfg.mqtt_client_id,
        qos=m.qos,
        keepalive_s=m.keepalive_seconds,
        username=m.username,
        password_env=m.password_env,
        password_file=m.password_file,
        tls=m.tls.enabled,
        tls_ca_file=m.tls.ca_file,
        tls_cert_file=m.tls.cert_file,
        tls_key_file=m.tls.key_file,
        tls_insecure=m.tls.insecure,
        protocol=m.protocol,
        reconnect_min_s=m.reconnect_min_seconds,
        reconnect_max_s=m.reconnect_max_seconds,
        outbox_path=cfg.outbox_path,
        outbox_max_rows=m.outbox.max_messages,
        outbox_max_bytes=m.outbox.max_bytes,
    )


def sparkplug_settings(cfg: Config) -> Any:
    from monitor.outputs.sparkplug import SparkplugSettings

    sp = cfg.sparkplug
    return SparkplugSettings(
        group_id=sp.group_id,
        edge_node_id=cfg.sparkplug_edge_node_id,
        primary_host_id=sp.primary_host_id,
        bdseq_path=cfg.sparkplug_bdseq_path,
        store_max_messages=sp.store_max_messages,
    )


def source_machines(cfg: Config) -> dict[str, str]:
    """Source name -> machine, in config order (Home Assistant devices, Sparkplug devices)."""
    return {s.name: s.machine for s in cfg.sources}


def integrations_key(cfg: Config) -> tuple[Any, ...]:
    """What the HA and Sparkplug sessions are built from (sources aside): a change restarts them."""
    if not cfg.mqtt.enabled:
        return (None,)
    return (mqtt_settings(cfg), cfg.node.name, cfg.homeassistant, cfg.sparkplug)


def is_realtime(src: DeviceSource | FileSource) -> bool:
    return isinstance(src, DeviceSource) or src.realtime


def init_metrics(metrics: Metrics, cfg: Config, pipeline: Pipeline) -> None:
    """Series of every configured source at 0, the package's model info and thresholds."""
    pkg = pipeline.package
    conditions = {m: pkg.machine(m).conditions for m in pkg.machines}
    metrics.init_sources(((s.name, s.machine, s.type) for s in cfg.sources), conditions)
    metrics.set_model_info(pkg.model_version, pkg.recipe, Path(pkg.path).name)
    for src in cfg.sources:
        metrics["score_threshold"].labels(source=src.name).set(pipeline.thresholds[src.name])


# ------------------------------------------------------------------------ model pipeline


@dataclass
class Pipeline:
    """A loaded package and its encoder: one per config generation (reload builds a new one)."""

    package: ModelPackage
    embedder: Embedder
    window_samples: int
    hop_samples: int
    thresholds: dict[str, float]  # per source: the lowest raw threshold (summaries, metrics)
    machines: dict[str, str]  # per source: machine name
    # per source: the machine's calibration for the config's alert rule and budget, or a fixed
    # raw threshold (`sources[].threshold`)
    calibrations: dict[str, ConditionCalibration | float] = field(default_factory=dict)
    # per machine: condition -> enrolled level and natural variation (the level rule's
    # reference), derived from the package once per machine however many sources listen to it
    levels: dict[str, dict[str, LevelReference]] = field(init=False)

    def __post_init__(self) -> None:
        used = sorted({m for m in self.machines.values() if m in self.package.machines})
        self.levels = {m: self.package.machine(m).bank.level_references() for m in used}

    @property
    def window_seconds(self) -> float:
        return self.window_samples / SAMPLE_RATE

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / SAMPLE_RATE

    @classmethod
    def build(cls, cfg: Config) -> Pipeline:
        pkg = ModelPackage.load(cfg.model.package)
        machines: dict[str, str] = {}
        for i, src in enumerate(cfg.sources):
            if src.machine not in pkg.machines:
                raise ConfigError(
                    f"sources[{i}].machine: {src.machine!r} (source {src.name!r}) is not in the "
                    f"model package {pkg.path} (machines: {', '.join(pkg.machines) or 'none'}); "
                    "add it with `sonitor enroll`"
                )
            machines[src.name] = src.machine
        win_s = cfg.windows.window_seconds or pkg.window_seconds
        hop_s = cfg.windows.hop_seconds or pkg.hop_seconds
        if hop_s > win_s:
            raise ConfigError(
                f"windows: hop ({hop_s} s) exceeds the window ({win_s} s; "
                "one of them comes from the package)"
            )
        embedder = Embedder(pkg, threads=cfg.model.threads, precision=cfg.model.precision)
        window, hop = round(win_s * SAMPLE_RATE), round(hop_s * SAMPLE_RATE)
        if embedder.streaming:
            for key, n, secs in (("window_seconds", window, win_s), ("hop_seconds", hop, hop_s)):
                if n % embedder.hop_length:
                    raise ConfigError(
                        f"windows.{key}: {secs} s = {n} samples is not a multiple of the "
                        f"front-end hop ({embedder.hop_length} samples = "
                        f"{embedder.hop_length / SAMPLE_RATE * 1000:g} ms)"
                    )
        n, m = n_of_m(cfg, window / SAMPLE_RATE, hop / SAMPLE_RATE)
        defaults = pkg.manifest.calibration or CalibrationDefaults()
        rule = AlarmRule(
            cfg.alerts.false_alarms_per_week or defaults.false_alarms_per_week,
            window / SAMPLE_RATE,
            hop / SAMPLE_RATE,
            n,
            m,
        )
        # once per machine, however many sources listen to it
        used = sorted(set(machines.values()))
        per_machine = {m: pkg.machine(m).calibration.with_rule(rule) for m in used}
        calibrations: dict[str, ConditionCalibration | float] = {}
        thresholds: dict[str, float] = {}
        for src in cfg.sources:
            if src.threshold is not None:
                calibrations[src.name] = thresholds[src.name] = float(src.threshold)
            else:
                cal = per_machine[src.machine]
                calibrations[src.name], thresholds[src.name] = cal, cal.threshold
        return cls(pkg, embedder, window, hop, thresholds, machines, calibrations)

    def level_refs(self, source: str) -> dict[str, LevelReference]:
        """Condition -> enrolled level and natural variation of the source's machine (the
        level rule's reference; empty for a package without stored levels)."""
        return self.levels.get(self.machines.get(source, ""), {})

    def assess(
        self, sources: list[str], embeddings: np.ndarray
    ) -> list[tuple[float, float, str] | None]:
        """(raw score, threshold of the matched condition, condition) of windows of any sources
        (None: a source whose machine is not in the package). Each machine's scorer and
        condition matcher run once for all its windows, whatever source they come from; the
        threshold is then the source's: its calibration (the config's alert rule and budget)
        or its fixed `sources[].threshold`."""
        out: list[tuple[float, float, str] | None] = [None] * len(sources)
        by_machine: dict[str, list[int]] = {}
        for i, source in enumerate(sources):
            by_machine.setdefault(self.machines.get(source, ""), []).append(i)
        for machine, idx in by_machine.items():
            if machine not in self.package.machines:
                continue
            mm = self.package.machine(machine)
            raw = mm.score(embeddings[idx])
            names = mm.matcher.match_names(embeddings[idx])
            for i, r, c in zip(idx, raw.tolist(), names, strict=True):
                cal = self.calibrations[sources[i]]
                thr = cal if isinstance(cal, float) else cal.threshold_of(c)
                out[i] = (r, thr, c)
        return out

    def frames_factory(self) -> Callable[[], FrameStream] | None:
        if not self.embedder.streaming:
            return None  # a separator needs the waveform: windows carry audio instead
        return lambda: FrameStream(self.embedder)

    def embed(self, windows: list[Window], metrics: Metrics) -> np.ndarray:
        """One encoder call for a batch of windows (of any sources)."""
        x = stack(windows)
        if windows[0].kind == "frames":
            t0 = time.perf_counter()
            emb = self.embedder.embed_frames(x)
        else:
            if self.embedder.separator is not None:
                t0 = time.perf_counter()
                x = np.ascontiguousarray(self.embedder.separate(x), dtype=np.float32)
                metrics.observe_stage("separator", time.perf_counter() - t0)
            t0 = time.perf_counter()
            emb = self.embedder.encoder(x)  # the full graph; separation already done
        metrics.observe_stage("encoder", time.perf_counter() - t0)
        return emb


# ------------------------------------------------------------------------ capture groups


def capture_groups(cfg: Config) -> dict[tuple[str, ...], list[DeviceSourceSpec | FileSourceSpec]]:
    """Device sources share one manager (one PortAudio re-scan domain); each file its own, so a
    reload that touches one file source restarts only that source."""
    groups: dict[tuple[str, ...], list[DeviceSourceSpec | FileSourceSpec]] = {}
    devices = [source_spec(s) for s in cfg.sources if isinstance(s, DeviceSource)]
    if devices:
        groups[("devices",)] = devices
    for s in cfg.sources:
        if isinstance(s, FileSource):
            groups[("file", s.name)] = [source_spec(s)]
    return groups


@dataclass
class CaptureGroup:
    specs: list[DeviceSourceSpec | FileSourceSpec]
    liveness: LivenessSpec
    buffer_s: float
    history_s: float
    manager: CaptureManager

    def same(self, specs: list, lv: LivenessSpec, buffer_s: float, history_s: float) -> bool:
        return (specs, lv, buffer_s, history_s) == (
            self.specs,
            self.liveness,
            self.buffer_s,
            self.history_s,
        )


class CaptureGroups:
    """The running capture managers, one per group (`capture_groups`).

    `sync` starts managers for new or changed groups, keeps unchanged ones running (their audio
    is not interrupted, so a reload loses none) and stops groups no longer configured.
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], CaptureGroup] = {}
        self.manager_of: dict[str, CaptureManager] = {}  # source name -> its manager

    def sync(self, cfg: Config) -> None:
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
        self.manager_of = {s.name: g.manager for g in self.groups.values() for s in g.specs}

    def stop(self, timeout: float) -> None:
        """Stop every manager; errors are ignored (shutdown goes on regardless)."""
        for group in self.groups.values():
            with contextlib.suppress(Exception):
                group.manager.stop(timeout=timeout)
