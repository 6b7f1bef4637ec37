"""'Louder' apart from 'sounds different', end to end with a real Mosquitto: a machine that only
gets louder raises a `level` event (not an anomaly); a change of a few dB raises nothing; the
anomaly score does not move with the level (the front-end is level-normalised)."""

from __future__ import annotations

import contextlib
import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from broker import Broker, Subscriber, broker_session
from daemon_process import DaemonProcess, expected_windows, machine_audio, write_config, write_wav
from package_fixtures import make_tiny_package, synthetic_machine_audio

from monitor.model.package import ModelPackage
from monitor.model.runtime import Embedder

pytestmark = pytest.mark.timeout(180)
PREFIX = "test/sonitor"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan",))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def test_scores_do_not_move_with_the_level_and_the_bank_knows_its_level(package: Path) -> None:
    pkg = ModelPackage.load(package)
    fan = pkg.machine("fan")
    refs = fan.bank.level_references()
    assert set(refs) == {"source"} and -40 < refs["source"].level < 0
    assert 0.0 < refs["source"].natural_db < 3.0
    x = synthetic_machine_audio("fan", 3, 2.0, seed=77)
    emb = Embedder(pkg)
    base = fan.assess(emb.embed(x)).normalised
    for gain_db in (-6.0, -3.0, 3.0, 6.0):
        moved = fan.assess(emb.embed(x * 10 ** (gain_db / 20))).normalised
        np.testing.assert_allclose(moved, base, rtol=0.02, atol=0.02)


def test_a_louder_machine_raises_a_level_event_and_no_anomaly(
    tmp_path: Path, package: Path, broker: Broker
) -> None:
    x = machine_audio("fan", 60, seed=11).astype(np.float32)
    sr = 16000
    x[20 * sr : 40 * sr] *= 10 ** (3.0 / 20)  # +3 dB: within the rule, nothing
    x[40 * sr :] *= 10 ** (9.0 / 20)  # +9 dB: a level event
    wav = write_wav(tmp_path / "fan.wav", np.clip(x, -1, 1))
    src = {"name": "fan1", "type": "file", "machine": "fan", "path": str(wav), "realtime": False}
    cfg = write_config(
        tmp_path / "cfg.yaml", package, [src], broker=broker, alerts={"level_shift_db": 3.0}
    )
    live = Subscriber(broker, [f"{PREFIX}/#"])
    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_until(
            lambda: daemon.metric("sonitor_windows_total", source="fan1") >= expected_windows(60),
            90,
            "every window",
        )
        time.sleep(0.5)
        got = []
        with contextlib.suppress(queue.Empty):
            while True:  # everything published so far
                got.append(live.messages.get(timeout=1.0))
        events = [json.loads(m.payload) for m in got if m.topic == f"{PREFIX}/fan1/events"]
        assert not [e for e in events if e["kind"] == "anomaly"], events
        level = [e for e in events if e["kind"] == "level"]
        assert [e["type"] for e in level][:1] == ["start"], events
        start = level[0]
        assert start["time"] > 40.0 + 2.0  # not during the +3 dB part
        assert 7.0 < start["level_shift_db"] < 11.0 and start["condition"] == "source"
        ref = ModelPackage.load(package).machine("fan").bank.level_references()["source"]
        assert start["threshold"] == pytest.approx(ref.threshold_db(3.0), abs=0.01)
        states = [json.loads(m.payload) for m in got if m.topic == f"{PREFIX}/fan1/state"]
        assert states and isinstance(states[-1]["level_shift_db"], float)
    finally:
        daemon.stop()
