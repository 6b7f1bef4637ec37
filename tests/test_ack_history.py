"""A machine's change history in its package: acknowledgements, snapshots, listing, revert.

Real packages (CED-tiny, random weights) and real enrolments; the embeddings acknowledged are
those of another machine's sound, which the fan bank scores far above its threshold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from daemon_process import machine_audio, run_cli, write_wav
from package_fixtures import copy_package, make_tiny_package

from monitor.errors import SonitorError
from monitor.model.enroll import enroll_embeddings
from monitor.model.history import (
    KEEP_SNAPSHOTS,
    AckRefused,
    acked_in_effect,
    enroll_ack,
    kept_snapshots,
    revert,
)
from monitor.model.package import ModelPackage
from monitor.model.runtime import Embedder, embed_recording

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "pkg", machines=("fan",))


@pytest.fixture(scope="module")
def pump_windows(base: Path) -> np.ndarray:
    """Non-overlapping windows of pump sound, embedded as the daemon embeds them."""
    pkg = ModelPackage.load(base)
    x = machine_audio("pump", 12, seed=4)
    _, emb = embed_recording(Embedder(pkg), x, pkg.window_samples, pkg.window_samples)
    return emb


def thresholds(path: Path) -> dict[str, float]:
    return ModelPackage.load(path).machine("fan").calibration.thresholds()


def test_ack_is_recorded_refused_twice_and_reverted(
    tmp_path: Path, base: Path, pump_windows: np.ndarray
) -> None:
    pkg = copy_package(base, tmp_path / "pkg")
    before = ModelPackage.load(pkg).machine("fan")
    scores_before = before.score(pump_windows)
    assert np.all(before.calibration.normalise(scores_before, ["source"] * len(scores_before)) > 2)

    res = enroll_ack(
        pkg, "fan", pump_windows, "source", event_id="fan1-1000", command="mqtt",
        windows_scored=40, source="fan1",
    )  # fmt: skip
    assert res.n_added == len(pump_windows)
    after = ModelPackage.load(pkg)
    entry = after.manifest.machines["fan"]
    last = entry.history[-1]
    assert last["action"] == "ack" and last["event_id"] == "fan1-1000"
    assert last["command"] == "mqtt" and last["condition"] == "source"
    assert last["n_added"] == len(pump_windows) and last["windows_scored"] == 40
    assert last["source"] == "fan1" and last["time"].endswith("Z")
    assert last["snapshot"] == "machines/fan/history/1"
    assert kept_snapshots(after.manifest, "fan") == {1: "machines/fan/history/1"}
    assert after.machine("fan").score(pump_windows).max() < scores_before.min()

    with pytest.raises(AckRefused, match="already acknowledged") as refused:
        enroll_ack(
            pkg, "fan", pump_windows, "source", event_id="fan1-1000", command="cli",
            windows_scored=6,
        )  # fmt: skip
    assert refused.value.result == "already_acked"
    assert len(ModelPackage.load(pkg).manifest.machines["fan"].history) == 2  # nothing written

    out = revert(pkg, "fan", last=True)
    assert out.to == 0 and out.thresholds == before.calibration.thresholds()
    restored = ModelPackage.load(pkg).machine("fan")
    assert restored.calibration.thresholds() == before.calibration.thresholds()
    np.testing.assert_array_equal(restored.bank.embeddings, before.bank.embeddings)
    np.testing.assert_array_equal(restored.score(pump_windows), scores_before)
    hist = restored.entry.history
    assert [e["action"] for e in hist] == ["export", "ack", "revert"]
    assert hist[-1]["to"] == 0 and hist[-1]["command"] == "cli"
    assert acked_in_effect(hist) == set()  # the revert undid the acknowledgement

    # a revert is a change too: back to the state after the acknowledgement
    revert(pkg, "fan", to=1)
    assert thresholds(pkg) == after.machine("fan").calibration.thresholds()
    assert acked_in_effect(ModelPackage.load(pkg).manifest.machines["fan"].history) == {"fan1-1000"}


def test_snapshots_are_bounded_and_a_pruned_state_is_refused(
    tmp_path: Path, base: Path, pump_windows: np.ndarray
) -> None:
    pkg = copy_package(base, tmp_path / "pkg")
    seen = [thresholds(pkg)]
    for i in range(KEEP_SNAPSHOTS + 2):  # changes #1 .. #7
        row = pump_windows[[i % len(pump_windows)]] * (1 + 0.01 * i)
        enroll_embeddings(pkg, "fan", row, "source")
        seen.append(thresholds(pkg))
    m = ModelPackage.load(pkg).manifest
    assert sorted(kept_snapshots(m, "fan")) == [3, 4, 5, 6, 7]
    assert not [
        f for f in m.files if f.startswith(("machines/fan/history/1/", "machines/fan/history/2/"))
    ]
    assert not (pkg / "machines/fan/history/1").exists()
    with pytest.raises(SonitorError, match="last 5 changes"):
        revert(pkg, "fan", to=1)  # needs the snapshot of change #2: pruned
    with pytest.raises(SonitorError, match="--to must be one of 0-6"):
        revert(pkg, "fan", to=7)
    revert(pkg, "fan", to=2)
    assert thresholds(pkg) == seen[2]


def test_cli_history_and_revert(tmp_path: Path, base: Path, pump_windows: np.ndarray) -> None:
    pkg = copy_package(base, tmp_path / "pkg")
    original = thresholds(pkg)
    enroll_ack(pkg, "fan", pump_windows, "pumpmode", event_id="fan1-2000", command="cli",
               windows_scored=6)  # fmt: skip
    r = run_cli("history", "--package", str(pkg), "--machine", "fan")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    ack_line = next(line for line in lines if " ack " in line)
    for word in ("cli", "pumpmode", "fan1-2000", str(len(pump_windows))):
        assert word in ack_line.split(), (word, ack_line)
    assert "can revert --to N with N = 0" in r.stdout

    r = run_cli("revert", "--package", str(pkg), "--machine", "fan", "--to", "5")
    assert r.returncode == 2 and "--to must be one of 0-0" in r.stderr, r.stderr
    r = run_cli("revert", "--package", str(pkg), "--machine", "nope", "--last")
    assert r.returncode == 2 and "'nope' is not in this package" in r.stderr, r.stderr
    r = run_cli("revert", "--package", str(pkg), "--machine", "fan", "--last")
    assert r.returncode == 0, r.stderr
    assert "reverted to its state after change #0" in r.stdout
    assert thresholds(pkg) == original
    r = run_cli("history", "--package", str(pkg))
    assert r.returncode == 0 and " revert " in r.stdout and "to #0" in r.stdout, r.stdout


def test_cli_ack_of_a_clip_and_its_refusals(tmp_path: Path, base: Path) -> None:
    pkg = copy_package(base, tmp_path / "pkg")
    clips = tmp_path / "clips"
    clips.mkdir()
    fan, pump = machine_audio("fan", 5, seed=3), machine_audio("pump", 10, seed=4)
    clip = write_wav(clips / "fan1-5000.wav", np.concatenate([fan, pump]))
    # the daemon's sidecar: the event's first window ended 2 s into the pump sound
    sidecar = {"v": 1, "event_id": "fan1-5000", "source": "fan1", "kind": "anomaly",
               "clip_start_time": 995.0, "start_time": 1002.0, "post_roll_s": 0.0}  # fmt: skip
    clip.with_suffix(".json").write_text(json.dumps(sidecar))
    before = ModelPackage.load(pkg).machine("fan")

    r = run_cli("ack", "--package", str(pkg), "--machine", "fan", "--clip", str(clip),
                "--condition", "pumpmode")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "event fan1-5000 acknowledged as normal: 5 of 5 window(s)" in r.stdout, r.stdout
    m = ModelPackage.load(pkg).machine("fan")
    last = m.entry.history[-1]
    assert (last["action"], last["command"], last["condition"]) == ("ack", "cli", "pumpmode")
    assert last["event_id"] == "fan1-5000" and last["n_added"] == 5 and last["source"] == "fan1"
    assert set(m.calibration.names) == {"source", "pumpmode"}
    assert m.bank.embeddings.shape[0] == before.bank.embeddings.shape[0] + 5

    refusals = {
        "already acknowledged": clip,
        "no such clip": clips / "fan1-6000.wav",
    }
    silent = write_wav(clips / "fan1-7000.wav", np.zeros(16000 * 6, np.float32))
    refusals["unhealthy input"] = silent
    test_clip = write_wav(clips / "fan1-test-8000.wav", pump)
    test_clip.with_suffix(".json").write_text(json.dumps({**sidecar, "kind": "test"}))
    refusals["only anomaly events can be acknowledged"] = test_clip
    for why, path in refusals.items():
        r = run_cli("ack", "--package", str(pkg), "--machine", "fan", "--clip", str(path))
        assert r.returncode == 2 and why in r.stderr, (why, r.stderr)
    r = run_cli("ack", "--package", str(pkg), "--machine", "fan", "--clip", str(clip),
                "--condition", "bad name")  # fmt: skip
    assert r.returncode == 2 and "invalid condition name" in r.stderr, r.stderr
    assert len(ModelPackage.load(pkg).manifest.machines["fan"].history) == 2
    shutil.rmtree(clips)
