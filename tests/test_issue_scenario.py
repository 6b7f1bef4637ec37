"""benchmarks/issue_scenario.py: each condition's labelled test clips replayed back to back on
the daemon's runtime path and alert machine; normal clips must come out quieter than faulty ones
and every stream of the data set must get its row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from daemon_process import machine_audio, with_anomaly, write_wav
from package_fixtures import make_tiny_package

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import issue_scenario  # noqa: E402


def _dcase(root: Path) -> Path:
    """A DCASE-layout fan with 2 training clips and 4 test clips per condition and label."""
    train, test = root / "fan" / "train", root / "fan" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    for i in range(2):
        write_wav(train / f"section_00_source_train_normal_{i:04d}.wav", machine_audio("fan", 6, i))
    for dom in ("source", "target"):
        for i in range(4):
            normal = machine_audio("fan", 6.0, seed=100 + i)
            faulty = with_anomaly("fan", 0.0, 6.0, 0.0, seed=200 + i)
            write_wav(test / f"section_00_{dom}_test_normal_{i:04d}.wav", normal)
            write_wav(test / f"section_00_{dom}_test_anomaly_{i:04d}.wav", faulty)
    return root


def test_faulty_streams_alarm_and_normal_ones_stay_quieter(tmp_path, capsys) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    data = _dcase(tmp_path / "data")
    assert issue_scenario.main([str(data), "--package", str(pkg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [r.split("|")[1:-1] for r in lines if r.startswith(("| source", "| target"))]
    table = {(r[0].strip(), r[1].strip()): [float(v) for v in r[2:]] for r in rows}
    assert set(table) == {(d, lab) for d in ("source", "target") for lab in ("normal", "anomaly")}
    for label in ("normal", "anomaly"):
        clips, seconds = table[("source", label)][:2]
        assert clips == 4 and seconds == pytest.approx(24.0)
    normal, anomaly = table[("source", "normal")], table[("source", "anomaly")]
    assert anomaly[4] >= 1 and anomaly[5] > normal[5]  # alarm starts, seconds in alarm
    assert anomaly[6] > 1.0 and anomaly[6] > normal[6]  # peaks (x threshold)


def test_a_machine_the_data_lack_is_named(tmp_path) -> None:
    pkg = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    (tmp_path / "data" / "pump" / "train").mkdir(parents=True)
    write_wav(
        tmp_path / "data" / "pump" / "train" / "section_00_source_train_normal_0000.wav",
        machine_audio("pump", 3, 1),
    )
    with pytest.raises(SystemExit, match="no machine 'fan'"):
        issue_scenario.main([str(tmp_path / "data"), "--package", str(pkg)])
