"""The daemon's pieces in-process: config mapping, smoothing, model pipeline, separator path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from daemon_process import daemon_on_a_file, machine_audio, write_config, write_wav
from package_fixtures import exported_tiny_encoder, make_tiny_package

from monitor.audio.capture import DeviceSourceSpec, FileSourceSpec
from monitor.config import load_config, parse_config
from monitor.daemon.channel import ScoreSmoother
from monitor.daemon.wiring import (
    Pipeline,
    alert_policy,
    capture_groups,
    clip_policy,
    liveness_spec,
    mqtt_settings,
    source_spec,
)
from monitor.errors import ConfigError
from monitor.model.conditions import ConditionCalibration, persistence_rule

FULL = """\
node: {name: plant-7}
model: {package: pkg, threads: 2, precision: int8}
paths: {state_dir: state}
sources:
  - {name: m1, type: device, machine: fan, device: "usb:0d8c:0014", channel: 1,
     gain_db: 6, samplerate: 48000, blocksize: 1024, latency: low}
  - {name: m2, type: device, machine: fan, device: 3}
  - {name: f1, type: file, machine: pump, path: a.wav, realtime: false, loop: true,
     channel: 1, block_seconds: 0.2, gain_db: -3}
capture: {stall_seconds: 2, silence_seconds: 7, silence_dbfs: -80, clip_fraction: 0.02,
          clipping_seconds: 4, clip_level: 0.99, reopen_initial_seconds: 0.5,
          reopen_max_seconds: 8, check_interval_seconds: 0.5}
alerts: {on_threshold: 1.2, off_threshold: 0.9, critical_threshold: 3, n_of_m: [2, 6],
         clear_windows: 4, min_hold_seconds: 7, cooldown_seconds: 11,
         update_interval_seconds: 13, peak_step: 0.25, invalid_limit: 6,
         capture_alarm_delay_seconds: 2}
clips: {pre_roll_seconds: 3, post_roll_seconds: 4, max_event_seconds: 60, max_age_days: 2,
        max_total_bytes: 5000000, min_free_bytes: 0, retention_interval_seconds: 60}
mqtt: {enabled: true, host: broker.local, port: 8883, qos: 0, keepalive_seconds: 20,
       username: sonitor, password_file: pw.txt, protocol: "5",
       tls: {enabled: true, ca_file: ca.pem, cert_file: c.pem, key_file: k.pem},
       outbox: {max_messages: 50, max_bytes: 100000},
       reconnect_min_seconds: 0.5, reconnect_max_seconds: 5}
"""


def test_config_maps_onto_every_component(tmp_path: Path) -> None:
    cfg = parse_config(FULL, tmp_path / "sonitor.yaml")
    pol = alert_policy(cfg)
    assert (pol.on_threshold, pol.off_threshold, pol.critical_threshold) == (1.2, 0.9, 3.0)
    assert (pol.n_above, pol.m_windows, pol.k_below) == (2, 6, 4)
    assert (pol.min_hold_s, pol.cooldown_s, pol.update_interval_s) == (7.0, 11.0, 13.0)
    assert (pol.peak_step, pol.invalid_limit, pol.capture_alarm_delay_s) == (0.25, 6, 2.0)
    clips = clip_policy(cfg)
    assert clips.directory == tmp_path / "state" / "clips"
    assert (clips.pre_roll_s, clips.post_roll_s, clips.max_clip_s) == (3.0, 4.0, 60.0)
    assert clips.max_age_s == 2 * 86400 and clips.max_total_bytes == 5_000_000
    assert (clips.min_free_bytes, clips.retention_interval_s) == (0, 60.0)
    lv = liveness_spec(cfg)
    assert (lv.stall_seconds, lv.silence_seconds, lv.silence_dbfs) == (2.0, 7.0, -80.0)
    assert (lv.clip_fraction, lv.clipping_seconds, lv.clip_level) == (0.02, 4.0, 0.99)
    assert (lv.reopen_initial_seconds, lv.reopen_max_seconds) == (0.5, 8.0)
    assert lv.check_interval_seconds == 0.5
    m1 = source_spec(cfg.sources[0])
    assert isinstance(m1, DeviceSourceSpec)
    assert (m1.device, m1.channel, m1.gain_db, m1.samplerate) == ("usb:0d8c:0014", 1, 6.0, 48000)
    assert (m1.blocksize, m1.latency) == (1024, "low")
    f1 = source_spec(cfg.sources[2])
    assert isinstance(f1, FileSourceSpec)
    assert (f1.path, f1.realtime, f1.loop) == (tmp_path / "a.wav", False, True)
    assert (f1.channel, f1.block_s, f1.gain_db) == (1, 0.2, -3.0)
    groups = capture_groups(cfg)
    assert [s.name for s in groups[("devices",)]] == ["m1", "m2"]  # one PortAudio domain
    assert [s.name for s in groups[("file", "f1")]] == ["f1"]
    mq = mqtt_settings(cfg)
    assert (mq.host, mq.port, mq.qos, mq.keepalive_s, mq.protocol) == ("broker.local", 8883, 0,
                                                                        20, "5")  # fmt: skip
    assert mq.topic_prefix == "sonitor/plant-7" and mq.client_id == "sonitor-plant-7"
    assert (mq.username, mq.password_file, mq.password_env) == ("sonitor", tmp_path / "pw.txt",
                                                                None)  # fmt: skip
    assert mq.tls and mq.tls_ca_file == tmp_path / "ca.pem"
    assert (mq.tls_cert_file, mq.tls_key_file) == (tmp_path / "c.pem", tmp_path / "k.pem")
    assert mq.outbox_path == tmp_path / "state" / "outbox.sqlite"
    assert (mq.outbox_max_rows, mq.outbox_max_bytes) == (50, 100_000)
    assert (mq.reconnect_min_s, mq.reconnect_max_s) == (0.5, 5.0)


def test_smoothers() -> None:
    ema = ScoreSmoother("ema", alpha=0.5, n=1)
    assert [ema.update(x) for x in (1.0, 3.0, math.nan, 1.0)] == [1.0, 2.0, 2.0, 1.5]
    med = ScoreSmoother("median", alpha=0.5, n=3)
    assert [med.update(x) for x in (5.0, 1.0, 3.0, 10.0, math.inf)] == [5.0, 3.0, 3.0, 3.0, 3.0]
    raw = ScoreSmoother("none", alpha=0.5, n=3)
    assert [raw.update(x) for x in (5.0, 1.0)] == [5.0, 1.0]
    assert math.isnan(ScoreSmoother("ema", 0.5, 1).update(math.nan))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan",))


def test_pipeline_checks_machines_and_the_frame_grid(tmp_path: Path, package: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", machine_audio("fan", 3, seed=0))
    src = {"name": "a", "type": "file", "machine": "fan", "path": str(wav)}
    cfg = load_config(write_config(tmp_path / "c.yaml", package, [src]))
    pipe = Pipeline.build(cfg)
    assert pipe.embedder.streaming and (pipe.window_samples, pipe.hop_samples) == (32000, 8000)
    # the package's calibration, for this config's windows and alert rule
    cal = pipe.calibrations["a"]
    assert isinstance(cal, ConditionCalibration)
    assert (cal.rule.window_seconds, cal.rule.hop_seconds) == (2.0, 0.5)
    assert (cal.rule.n_above, cal.rule.m_windows) == (
        cfg.alerts.n_of_m or persistence_rule(2.0, 0.5)
    )
    assert pipe.thresholds["a"] == pytest.approx(
        pipe.package.machine("fan").calibration.with_rule(cal.rule).threshold
    )
    bad = load_config(write_config(tmp_path / "d.yaml", package, [src | {"machine": "x"}]))
    with pytest.raises(ConfigError, match=r"sources\[0\]\.machine: 'x'"):
        Pipeline.build(bad)
    odd = load_config(
        write_config(tmp_path / "e.yaml", package, [src], windows={"hop_seconds": 0.505})
    )
    with pytest.raises(ConfigError, match=r"windows\.hop_seconds: 0\.505 s = 8080 samples"):
        Pipeline.build(odd)
    own = load_config(write_config(tmp_path / "f.yaml", package, [src | {"threshold": 7.5}]))
    assert Pipeline.build(own).thresholds["a"] == 7.5


def identity_separator(path: Path) -> Path:
    """A stand-in waveform -> waveform separator graph: the older package kind, still supported."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])
    y = helper.make_tensor_value_info("separated", TensorProto.FLOAT, ["batch", "samples"])
    graph = helper.make_graph([helper.make_node("Identity", ["waveform"], ["separated"])],
                              "identity_separator", [x], [y])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.save(model, path)
    return path


def test_separator_package_runs_per_window_through_the_separator(tmp_path: Path) -> None:
    from export.package_writer import MachineSpec, write_package
    from monitor.model.runtime import Embedder
    from monitor.model.scoring import scorer_by_name

    enc = exported_tiny_encoder()
    waves = np.stack([machine_audio("fan", 2, seed=i) for i in range(16)])
    x = Embedder({"encoder": enc.full}).embed(waves)
    scorer = scorer_by_name("rescaled_knn", k=4, metric="cosine").fit(x)
    pkg = write_package(
        tmp_path / "pkg",
        enc,
        [MachineSpec("fan", x, ["source"] * len(x), scorer, {})],
        recipe="test",
        window_seconds=2.0,
        hop_seconds=0.5,
        separator=identity_separator(tmp_path / "sep.onnx"),
    )
    # a separator must see the waveform: windows carry audio and the STFT runs per window
    with daemon_on_a_file(tmp_path, pkg, timeout=30) as (daemon, metrics):
        assert not daemon.pipelines[0].embedder.streaming
    sep = metrics["stage_duration_seconds"].labels(stage="separator")
    assert sep._sum.get() > 0  # the separator stage was timed on every batch
    assert metrics["score_raw"].labels(source="a")._value.get() > 0
