"""The counting core of benchmarks/bench_false_alarms.py: a real daemon, a real Mosquitto.

Why a test for a benchmark: its numbers (false alarm starts per hour, detection delay) are only
as good as the attribution of each `start` a subscriber receives to a stream and to an injected
fault. A strong fault in a tiny package's fan sound must come out as exactly one alarm with a
delay inside the fault's reach, normal sound as none, and the re-simulation of the alert rule
from recorded scores must reproduce what the broker delivered.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker, broker_session
from daemon_process import TEST_ALERTS, machine_audio, with_anomaly, write_wav
from package_fixtures import make_tiny_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fab_audio import Injected  # noqa: E402
from fab_replay import Stream, analyse, matches, resimulate, run_trial  # noqa: E402

WINDOW_S, HOP_S = 2.0, 0.5  # make_tiny_package's


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from broker_session(tmp_path)


def test_one_fault_one_alarm_normal_none(tmp_path: Path, broker: Broker) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    normal = write_wav(tmp_path / "normal.wav", machine_audio("fan", 60.0, seed=11))
    fault = write_wav(tmp_path / "fault.wav", with_anomaly("fan", 20.0, 12.0, 25.0, seed=5))
    onset = Injected("fault", "broadband noise", 20.0, 32.0)
    streams = [
        Stream("fan-normal", "fan", "source", "normal", normal, 60.0, True),
        Stream("fan-faults", "fan", "source", "faults", fault, 57.0, True, (onset,)),
    ]
    trial = run_trial("t", pkg, streams, dict(TEST_ALERTS), broker, tmp_path / "trial")
    assert trial.n_of_m == (3, 4) and (trial.window_s, trial.hop_s) == (WINDOW_S, HOP_S)

    normal_run, fault_run = trial.runs["fan-normal"], trial.runs["fan-faults"]
    assert len(normal_run.windows) > 100 and len(fault_run.windows) > 100
    # what the broker delivered: every event the daemon emitted, one start in all
    assert sum(len(r.payloads) for r in trial.runs.values()) == sum(
        r.emitted for r in trial.runs.values()
    )
    assert normal_run.starts() == []
    [start] = fault_run.starts()
    assert start.kind == "anomaly"

    res = analyse(fault_run, trial.window_s, trial.hop_s, trial.n_of_m)
    assert res.false_starts == {}
    [f] = res.faults
    assert f.fault == onset and f.peak > TEST_ALERTS["on_threshold"] and f.open_since is None
    delay = f.delay
    # three windows above the threshold, the first of them ending after the onset
    assert delay is not None and 2 * HOP_S <= delay <= WINDOW_S + 4 * HOP_S
    assert analyse(normal_run, WINDOW_S, HOP_S, trial.n_of_m).false_starts == {}

    sim, n_of_m, _ = resimulate(trial, pkg, dict(TEST_ALERTS), tmp_path / "resim")
    assert n_of_m == (3, 4) and matches(trial, sim)
    strict, _, _ = resimulate(
        trial, pkg, {**TEST_ALERTS, "on_threshold": 50.0, "critical_threshold": 60.0}, tmp_path
    )
    assert not any(strict.values()) and not matches(trial, strict)
