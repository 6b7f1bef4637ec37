"""`sonitor demo`: synthetic audio -> trained model -> package -> enrolment -> daemon -> alert.

One run of the real command at `--quick` sizes (about half a minute of CPU) is shared by the
tests that need a trained package; the MQTT and no-fault runs reuse its package and replay
through the same daemon step (`export.run_replay`), which takes seconds. The verdict
logic is also checked on scripted events, so a demo that cannot fail would be caught.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from export import demo
from export.demo_replay import (
    EventRecord,
    Recordings,
    ReplayRun,
    WindowScore,
    bar,
    judge,
    run_replay,
)
from monitor.alerting.machine import AlertEvent
from monitor.audio.io import load_audio
from monitor.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`sonitor demo --quick` run once as a user runs it: exit code, output, output folder."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli.sonitor", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=REPO,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    return SimpleNamespace(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr, out=out)


def _fail_text(run: SimpleNamespace) -> str:
    return f"exit {run.rc}\n--- stdout\n{run.stdout[-6000:]}\n--- stderr\n{run.stderr[-3000:]}"


def test_quick_demo_ends_with_the_alert(quick_demo: SimpleNamespace) -> None:
    assert quick_demo.rc == 0, _fail_text(quick_demo)
    lines = quick_demo.stdout.splitlines()
    steps = [ln for ln in lines if ln.startswith("[")]
    assert [s[:5] for s in steps] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"], steps
    assert all(" s; total " in s for s in steps), steps  # every step says how long it took
    assert "official" in steps[1] and "PASS" in steps[4]
    start = next(ln for ln in lines if ln.startswith("ALERT pump: start at"))
    raised = float(start.split("start at ")[1].split(" s")[0])
    fault = demo.QUICK.normal_seconds
    assert f"fault injected at {fault:.1f} s" in start
    assert fault < raised <= fault + demo.QUICK.fault_seconds, start
    # one live line per scored window, with the score over the threshold and the alarm state
    live = [ln for ln in lines if "x threshold [" in ln]
    assert len(live) > 50
    assert any("ACTIVE" in ln for ln in live) and any("IDLE" in ln for ln in live)
    # the start payload, as the daemon would publish it, is printed as JSON
    body = quick_demo.stdout.split(start, 1)[1]
    payload = json.loads(body[body.index("{") : body.index("\n}") + 2])
    assert payload["kind"] == "anomaly" and payload["type"] == "start"
    assert payload["source"] == "pump" and payload["threshold"] > 0


def test_quick_demo_leaves_a_usable_setup(quick_demo: SimpleNamespace) -> None:
    assert quick_demo.rc == 0, _fail_text(quick_demo)
    out = quick_demo.out
    cfg = load_config(out / "config.yaml")
    src = cfg.sources[0]
    assert src.type == "file" and src.realtime is False and src.loop is False
    assert src.path == (out / "pump-replay.wav").resolve()
    assert not cfg.mqtt.enabled and not cfg.metrics.enabled
    manifest = json.loads((out / "package" / "manifest.json").read_text())
    history = manifest["machines"]["pump"]["history"]
    assert [h["action"] for h in history] == ["export", "enroll"]
    assert (out / "run" / "run.json").exists()  # `sonitor export --run` can rebuild the package
    replay = load_audio(out / "pump-replay.wav")
    q = demo.QUICK
    assert replay.size == round((q.normal_seconds + q.fault_seconds + q.after_seconds) * 16000)
    assert list((out / "state" / "clips").glob("*.wav")), "the event clip was not written"
    for cmd in ("sonitor score --package", "sonitor run --config", "sonitor enroll --package"):
        assert cmd in quick_demo.stdout


@pytest.fixture
def trained(quick_demo: SimpleNamespace, tmp_path: Path) -> Path:
    """A copy of the quick demo's output folder (package already enrolled with the unit)."""
    if quick_demo.rc != 0:
        pytest.fail(
            "the quick demo failed, so its package cannot be reused:\n" + _fail_text(quick_demo)
        )
    dest = tmp_path / "demo-out"
    shutil.copytree(quick_demo.out / "package", dest / "package")
    return dest


def test_replay_without_fault_fails_with_a_clear_message(trained: Path) -> None:
    rec = demo.make_recordings(trained, "pump", demo.QUICK, 0, None, 0.3)
    cfg = demo.write_config(trained / "config.yaml", trained / "package", rec, "pump")
    lines: list[str] = []
    run = run_replay(cfg, rec, lines.append)
    ok, message = judge(run, rec, demo.QUICK.hop_seconds)
    assert not ok
    assert message.startswith("FAIL: no alert, as expected without a fault"), message
    assert len(run.windows) > 50 and not run.events


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[object]:
    from broker import broker_session

    yield from broker_session(tmp_path)


def test_demo_replay_publishes_the_alert_over_mqtt(trained: Path, broker: object) -> None:
    from broker import Subscriber

    prefix = "test/demo"
    sub = Subscriber(broker, [f"{prefix}/pump/events"])  # type: ignore[arg-type]
    try:
        rec = demo.make_recordings(trained, "pump", demo.QUICK, 0, "bearing", 0.6)
        cfg = demo.write_config(
            trained / "config.yaml",
            trained / "package",
            rec,
            "pump",
            mqtt_host=broker.host,  # type: ignore[attr-defined]
            mqtt_port=broker.port,  # type: ignore[attr-defined]
            topic_prefix=prefix,
        )
        run = run_replay(cfg, rec, lambda s: None)
        assert run.published is True and run.topic == f"{prefix}/pump/events"
        ok, message = judge(run, rec, demo.QUICK.hop_seconds)
        assert ok, message
        got = sub.collect(
            lambda msgs: any(json.loads(m.payload)["type"] == "end" for m in msgs), timeout=15
        )
    finally:
        sub.close()
    events = [json.loads(m.payload) for m in got]
    assert [e["type"] for e in events][0] == "start"
    start = events[0]
    printed = next(e.payload for e in run.events if e.event.type == "start")
    assert start == printed  # what the demo prints is exactly what went to the broker
    assert start["kind"] == "anomaly" and start["source"] == "pump"
    assert start["replayed"] is False and start["threshold"] > 0
    onset = start["start_time"] - run.events[0].offset
    assert rec.fault_start < onset + run.window_seconds  # its first window overlapped the fault


# ------------------------------------------------------------------------------ no model needed


def test_replay_recording_differs_from_normal_only_during_the_fault(tmp_path: Path) -> None:
    sizes = replace(demo.QUICK, enroll_seconds=8.0, normal_seconds=6.0, fault_seconds=4.0,
                    after_seconds=6.0)  # fmt: skip
    normal = demo.make_recordings(tmp_path / "a", "pump", sizes, 3, None, 0.3)
    faulty = demo.make_recordings(tmp_path / "b", "pump", sizes, 3, "bearing", 0.6)
    assert load_audio(normal.enroll_path).size == round(sizes.enroll_seconds * 16000)
    x, y = load_audio(normal.replay_path), load_audio(faulty.replay_path)
    assert x.shape == y.shape
    a, b = round(faulty.fault_start * 16000), round(faulty.fault_end * 16000)
    assert np.array_equal(x[:a], y[:a]) and np.array_equal(x[b:], y[b:])
    diff = np.sqrt(np.mean((x[a:b] - y[a:b]) ** 2)) / np.sqrt(np.mean(x[a:b] ** 2))
    assert diff > 0.05  # the fault is there, at a level an ear would notice
    assert faulty.fault["type"] == "bearing" and faulty.fault["severity"] == 0.6


def _event(type_: str, t: float, start: float | None = None) -> AlertEvent:
    end = t if type_ == "end" else None
    return AlertEvent("anomaly", type_, "pump-1", "pump", 0, t, start or t, end, score=2.0,
                      peak_score=2.0, windows_above=3, windows=5)  # fmt: skip


def _scripted(starts: list[float], fault: bool = True) -> tuple[ReplayRun, Recordings]:
    rec = Recordings(Path("n.wav"), Path("r.wav"), {"type": "bearing"} if fault else None,
                          40.0, 60.0, 90.0)  # fmt: skip
    run = ReplayRun(window_seconds=4.0, n_of_m=(3, 5), threshold=1.0)
    run.windows = [WindowScore(t, 0.5, 0.5, "idle", None) for t in np.arange(4.0, 90.0, 1.0)]
    run.events = [EventRecord(_event("start", t + 1000.0), {}, 1000.0) for t in starts]
    return run, rec


@pytest.mark.parametrize(
    ("starts", "fault", "ok", "words"),
    [
        ([43.0], True, True, "PASS: the alert was raised at 43.0 s, 3.0 s after"),
        ([], True, False, "FAIL: missed the fault injected at 40.0-60.0 s"),
        ([20.0, 43.0], True, False, "FAIL: false alarm at 20.0 s, before the fault"),
        ([40.0], True, False, "FAIL: false alarm at 40.0 s, before the fault"),
        ([43.0, 85.0], True, False, "FAIL: false alarm at 85.0 s, after the fault ended"),
        ([], False, False, "FAIL: no alert, as expected without a fault"),
        ([50.0], False, False, "FAIL: false alarm at 50.0 s (no fault was injected)"),
    ],
)
def test_judge(starts: list[float], fault: bool, ok: bool, words: str) -> None:
    run, rec = _scripted(starts, fault)
    got_ok, message = judge(run, rec, hop_seconds=1.0)
    assert got_ok is ok and message.startswith(words), message


def test_bar_marks_the_threshold() -> None:
    assert bar(0.0, width=30) == "[" + " " * 10 + "|" + " " * 19 + "]"
    assert bar(2.0, width=30) == "[" + "#" * 20 + " " * 10 + "]"
    assert bar(9.0, width=30) == "[" + "#" * 30 + "]"
    assert bar(float("nan"), width=4) == "[????]"


def test_quick_sizes_keep_the_demo_grid_and_calibration_sane() -> None:
    for sizes in (demo.QUICK, demo.FULL):
        for seconds in (sizes.clip_seconds, sizes.hop_seconds):
            assert round(seconds * 16000) % 512 == 0  # the simclr front end's STFT hop
        # Mahalanobis on the 128-d embedding needs clearly more embeddings than dimensions
        n_bank = (
            sizes.train_source + sizes.train_target + sizes.enroll_seconds // sizes.clip_seconds
        )
        assert n_bank > 1.2 * 128
        assert sizes.after_seconds > sizes.clip_seconds + 5 * sizes.hop_seconds  # time to clear
