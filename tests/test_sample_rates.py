"""A microphone's rate must not change the verdict: the model hears one band (BAND_EDGE_HZ).

Resampling 22.05/44.1/48 kHz audio to 16 kHz (soxr) removes 7.35-8 kHz, which native 16 kHz
audio keeps; a front-end that heard that band scored normal sound as anomalous (the tiny package
below: 0.88 -> 1.61 x threshold; the demo's package: 1.04 -> 19.7). Real parts: a real exported
package (package_fixtures), the resampling of `sonitor score` (load_audio) and of the daemon's
capture (streaming soxr in CaptureManager), PCM 16 files. Also: `sonitor score` marks input the
daemon's capture checks would not trust, and old packages (no band edge recorded) still load.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from package_fixtures import copy_package, make_tiny_package, synthetic_machine_audio

from monitor.audio import frontend as fe
from monitor.audio.capture import CaptureManager, FileSourceSpec, SourceState
from monitor.cli.package import register
from monitor.model.enroll import score_files
from monitor.model.package import ModelPackage

SR = fe.SAMPLE_RATE
RATES = (16000, 22050, 44100, 48000)
CASES = (("pump", False), ("fan", False), ("pump", True), ("fan", True))


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("rates") / "pkg")


def at_rate(x: np.ndarray, rate: int, path: Path) -> Path:
    """The 16 kHz clip as a `rate` microphone would deliver it (soxr HQ, PCM 16 file)."""
    y = x if rate == SR else soxr.resample(x, SR, rate, quality="HQ")
    sf.write(path, y, rate, subtype="PCM_16")
    return path


def captured(path: Path) -> np.ndarray:
    """The file through the daemon's capture: native-rate ring, streaming soxr to 16 kHz."""
    parts = []
    with CaptureManager([FileSourceSpec("mic", path, realtime=False)]) as m:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ended = m.source_health("mic").state is SourceState.ENDED
            _, y = m.read_new("mic")
            parts.append(y)
            if ended and y.size == 0:
                break
            time.sleep(0.005)
    return np.concatenate(parts)


def run_score(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sonitor")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["score", *argv])
    return args.handler(args)


def test_package_records_its_band_edge(pkg_dir):
    pkg = ModelPackage.load(pkg_dir)
    assert pkg.frontend.extra["band_edge_hz"] == fe.BAND_EDGE_HZ


def test_same_sound_same_verdict_at_every_capture_rate(pkg_dir, tmp_path):
    """`sonitor score`'s path: decisions equal, normalised scores within 1% of the 16 kHz one."""
    pkg = ModelPackage.load(pkg_dir)
    for machine, anomalous in CASES:
        x = synthetic_machine_audio(machine, 1, 6.0, seed=7, anomalous=anomalous)[0]
        name = f"{machine}-{'a' if anomalous else 'n'}"
        files = [at_rate(x, r, tmp_path / f"{name}-{r}.wav") for r in RATES]
        res = score_files(pkg, machine, files)
        norm = np.array([r.score / r.threshold for r in res])
        assert [r.decision for r in res] == [int(anomalous)] * len(RATES), (name, norm)
        np.testing.assert_allclose(norm[1:], norm[0], rtol=0.01, err_msg=name)


def test_daemon_capture_of_a_48k_file_scores_as_16k(pkg_dir, tmp_path):
    """The daemon's resampler (streaming soxr in the capture) gives the same verdict too."""
    pkg = ModelPackage.load(pkg_dir)
    x = synthetic_machine_audio("pump", 1, 6.0, seed=7)[0]
    ref = at_rate(x, SR, tmp_path / "ref.wav")
    live = captured(at_rate(x, 48000, tmp_path / "mic48k.wav"))
    assert abs(live.size - x.size) <= 2
    got = tmp_path / "captured.wav"
    sf.write(got, live, SR, subtype="FLOAT")
    a, b = score_files(pkg, "pump", [ref, got])
    assert a.decision == b.decision == 0
    assert b.score / b.threshold == pytest.approx(a.score / a.threshold, rel=0.01)


def unhealthy_inputs(folder: Path) -> dict[str, Path]:
    t = np.arange(6 * SR) / SR
    sounds = {
        "silence": np.zeros(t.size),
        "tone-1hz-full-scale": np.sin(2 * np.pi * t),  # clips, as the daemon counts it
        "tone-1hz-half": 0.5 * np.sin(2 * np.pi * t),  # loud, but nothing in the model's band
    }
    folder.mkdir()
    return {k: at_rate(v.astype(np.float32), SR, folder / f"{k}.wav") for k, v in sounds.items()}


def test_score_names_unhealthy_input(pkg_dir, tmp_path, capsys):
    bad = unhealthy_inputs(tmp_path / "bad")
    normal = at_rate(synthetic_machine_audio("pump", 1, 6.0, seed=3)[0], SR, tmp_path / "n.wav")
    files = [normal, *bad.values()]
    assert run_score(["--package", str(pkg_dir), "--machine", "pump", *map(str, files)]) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert lines[0].endswith(",input")
    marks = {Path(line.split(",")[0]).stem: line.split(",")[-1] for line in lines[1:]}
    assert marks == {"n": "ok", "silence": "unhealthy", "tone-1hz-full-scale": "unhealthy",
                     "tone-1hz-half": "unhealthy"}  # fmt: skip
    warnings = cap.err.strip().splitlines()
    assert len(warnings) == 3 and str(normal) not in cap.err
    why = {"silence": "digital silence (exact zeros", "tone-1hz-full-scale": "clipping (",
           "tone-1hz-half": "no sound in 20-7000 Hz"}  # fmt: skip
    for key, path in bad.items():
        (line,) = [w for w in warnings if f"{path}:" in w]
        # 6 s in 2 s windows every 0.5 s (the tiny package): 9 windows
        assert "unhealthy input in 9 of 9 window(s)" in line and why[key] in line, line


def test_score_per_window_marks_each_window(pkg_dir, tmp_path, capsys):
    x = synthetic_machine_audio("pump", 1, 6.0, seed=3)[0]
    x[2 * SR : 4 * SR] = 0.0  # a dropout: the window from 2 s to 4 s is digital silence
    path = at_rate(x, SR, tmp_path / "dropout.wav")
    argv = ["--package", str(pkg_dir), "--machine", "pump", "--per-window", str(path)]
    assert run_score(argv) == 0
    cap = capsys.readouterr()
    marks = [line.rsplit(",", 1)[1] for line in cap.out.strip().splitlines()[1:]]
    assert marks == ["ok"] * 4 + ["silent"] + ["ok"] * 4  # windows from 0, 0.5, ... 4 s
    assert f"{path}: unhealthy input in 1 of 9 window(s): digital silence" in cap.err


def test_old_package_without_band_edge_loads_and_warns_about_rates(pkg_dir, tmp_path, capsys):
    """Packages exported before the band limit keep their graphs; their manifests still load,
    and `sonitor score` says why a 48 kHz file may score high with them."""
    old = copy_package(pkg_dir, tmp_path / "old")
    manifest = old / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["frontend"]["band_edge_hz"]
    manifest.write_text(json.dumps(data, indent=2))
    assert "band_edge_hz" not in ModelPackage.load(old).frontend.extra

    x = synthetic_machine_audio("pump", 1, 6.0, seed=7)[0]
    f16, f48 = at_rate(x, SR, tmp_path / "a16.wav"), at_rate(x, 48000, tmp_path / "a48.wav")
    f8 = at_rate(x, 8000, tmp_path / "a8.wav")
    assert run_score(["--package", str(old), "--machine", "pump", str(f16), str(f48)]) == 0
    err = capsys.readouterr().err
    assert f"{f48}: recorded at 48000 Hz, but this package was exported before" in err
    assert str(f16) not in err
    assert run_score(["--package", str(pkg_dir), "--machine", "pump", str(f48), str(f8)]) == 0
    err = capsys.readouterr().err
    assert str(f48) not in err  # band-limited package: 48 kHz is fine
    assert f"{f8}: recorded at 8000 Hz, it holds nothing above 4000 Hz" in err
