"""The daemon's side of acknowledgements, piece by piece: the ``ack`` payload, the windows kept
per event (spacing, cap, onset, the last 16 events) and the package watch.

Real parts: a tiny real package and its pipeline; results and statuses as the channel makes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from package_fixtures import copy_package, make_tiny_package

from monitor.alerting.machine import AlertStatus
from monitor.daemon.acks import (
    Acknowledgements,
    EventWindows,
    PackageWatch,
    _Window,
    ack_args,
    event_start_ms,
)
from monitor.daemon.wiring import Pipeline
from monitor.model.enroll import enroll_embeddings
from monitor.model.package import ModelPackage
from monitor.model.runtime import Embedder
from monitor.outputs.prometheus import Metrics
from monitor.outputs.sink import WindowResult

pytestmark = pytest.mark.timeout(300)
HOP = 8000  # 0.5 s: the tiny package's hop; its windows are 2 s = 32000 samples


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan",))


@pytest.fixture(scope="module")
def pipeline(package: Path) -> Pipeline:
    pkg = ModelPackage.load(package)
    return Pipeline(pkg, Embedder(pkg), 32000, HOP, {"fan1": 1.0}, {"fan1": "fan"})


def window(i: int, emb: float = 0.0, condition: str = "source") -> _Window:
    return _Window(i * HOP, 1000.0 + i * 0.5, np.full(4, emb, np.float32), condition)


def result(source: str, i: int, event_id: str | None) -> WindowResult:
    status = AlertStatus(
        "active" if event_id else "idle", "warning" if event_id else None, event_id, None,
        True, None, i + 1, 0, 0,
    )  # fmt: skip
    return WindowResult(
        source, i * HOP, i * HOP + 32000, 1000.0 + i * 0.5, 1.0, 1.0, 1.0, 1.0, -20.0, True,
        None, status, "v", 0.0, "source",
    )  # fmt: skip


def test_ack_payload() -> None:
    assert ack_args({"event_id": "fan1-1000"}) == ("fan1-1000", None)
    assert ack_args({"event_id": "fan1-1000", "condition": "fast"}) == ("fan1-1000", "fast")
    for args, why in (
        ({}, "'event_id' must be"),
        ({"event_id": 5}, "'event_id' must be"),
        ({"event_id": "x", "until": 3}, "unknown key(s) ['until']"),
        ({"event_id": "x", "condition": 1}, "'condition' must be a string"),
        ({"event_id": "x", "condition": "no spaces"}, "invalid condition name"),
    ):
        with pytest.raises(ValueError) as refused:
            ack_args(args)
        assert why in str(refused.value)
    assert event_start_ms("fan1-1000", "fan1") == 1000
    assert event_start_ms("line-2-1000", "line-2") == 1000
    assert event_start_ms("fan1-capture-1000", "fan1") is None
    assert event_start_ms("fan1-1000", "fan2") is None


def test_event_keeps_windows_a_window_apart_and_thins_evenly_beyond_the_cap() -> None:
    ev = EventWindows("fan1-1000", "fan1", "fan", "pkg", spacing=32000, max_windows=5)
    for i in range(12):
        ev.add(window(i, condition="slow" if i < 4 else "fast"))
    assert [w.start_sample // HOP for w in ev.windows] == [0, 4, 8]  # 4 hops = one window
    assert ev.scored == 12 and ev.condition() == "fast"
    for i in range(12, 80):
        ev.add(window(i))
    kept = [w.start_sample // HOP for w in ev.windows]
    assert len(kept) <= 5 and ev.spacing == 4 * 32000 and kept[0] == 0
    assert np.all(np.diff(kept) == 16) and kept[-1] >= 80 - 16 - 1  # spread over the event
    assert ev.embeddings().shape == (len(kept), 4)
    restarted = EventWindows("fan1-1000", "fan1", "fan", "pkg", spacing=32000)
    for i in (40, 41, 2):  # a reload with a new capture starts a new sample clock
        restarted.add(window(i))
    assert [w.start_sample // HOP for w in restarted.windows] == [40, 2]


def test_windows_from_the_onset_and_the_last_events_only(pipeline: Pipeline) -> None:
    acks = Acknowledgements(Metrics(process=False), lambda: None, max_events=3)
    emb = np.ones(pipeline.package.embedding_dim, np.float32)
    for i in range(10):
        acks.on_window(result("fan1", i, None), emb * i, pipeline)
    # the onset (t = 1002.5 s: window 5) is in the id; the event opens at window 10
    for i in range(10, 20):
        acks.on_window(result("fan1", i, "fan1-1002500"), emb * i, pipeline)
    acks.on_window(result("fan1", 20, None), emb * 20, pipeline)
    ev = acks.events["fan1-1002500"]
    assert [int(w.embedding[0]) for w in ev.windows] == [5, 9, 13, 17]
    assert ev.scored == 15 and not ev.open and ev.machine == "fan"
    assert ev.package == str(pipeline.package.path)
    for k in range(4):  # newer events push the oldest out
        acks.on_window(result("fan1", 30 + k, f"fan1-{2000000 + k}"), emb, pipeline)
    assert list(acks.events) == ["fan1-2000001", "fan1-2000002", "fan1-2000003"]
    assert [acks.events[e].open for e in acks.events] == [False, False, True]


def test_package_watch_sees_a_rewritten_package(tmp_path: Path, package: Path) -> None:
    pkg = copy_package(package, tmp_path / "pkg")
    loaded = ModelPackage.load(pkg).model_version
    watch = PackageWatch(period_s=0.0)
    assert not watch.changed(pkg, loaded)
    enroll_embeddings(pkg, "fan", ModelPackage.load(pkg).machine("fan").bank.embeddings[:2] * 2)
    assert watch.changed(pkg, loaded)
    assert not watch.changed(pkg, loaded)  # seen once: no reload loop when a reload fails
    assert not watch.changed(pkg, ModelPackage.load(pkg).model_version)
    assert not watch.changed(tmp_path / "gone", loaded)
