"""End to end: `sonitor evaluate` on a small SYNTHETIC data set writes DCASE files and metrics."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.synth import generate_dataset

MACHINES = ("fan", "pump")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return generate_dataset(
        root / "data",
        machines=MACHINES,
        n_train_source=24,
        n_train_target=4,
        n_test_per_group=5,
        n_supplemental=2,
        seconds=2.0,
        seed=1,
        workers=1,
    )


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli.sonitor", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("recipe", ["logmel_knn", "dcase_ae", "simclr", "stage1"])
def test_evaluate_writes_dcase_files_and_metrics(tiny_dataset: Path, tmp_path: Path, recipe):
    out = tmp_path / "out"
    extra = ["--epochs", "1"] if recipe in ("dcase_ae", "simclr") else []
    if recipe == "stage1":
        extra = ["--ced-size", "tiny"]
    r = _run(
        "evaluate", str(tiny_dataset), "--recipe", recipe, "--out", str(out), "--quiet", *extra
    )
    assert r.returncode == 0, r.stderr
    assert "official score" in r.stdout
    for m in MACHINES:
        rows = list(
            csv.reader((out / f"anomaly_score_{m}_section_00_test.csv").read_text().splitlines())
        )
        assert len(rows) == 20  # 5 per group x 4 groups, no header
        assert all(row[0].endswith(".wav") and float(row[1]) == float(row[1]) for row in rows)
        decisions = list(
            csv.reader((out / f"decision_result_{m}_section_00_test.csv").read_text().splitlines())
        )
        assert {row[1] for row in decisions} <= {"0", "1"}
        assert (out / f"roc_{m}.png").stat().st_size > 1000
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["recipe"] == recipe
    assert 0.0 < summary["official_score"] <= 1.0
    results = (out / "results.md").read_text()
    assert results.count("|") > 10
    # per condition: normal clips over the threshold (FPR) and anomalies over it (TPR), at the
    # alarm threshold and at the DCASE one that the decision files use
    assert "FPR (alarm)" in results and "TPR (DCASE 0.9)" in results
    alarms = list(csv.DictReader((out / "alarms.csv").read_text().splitlines()))
    assert {(r["machine"], r["condition"]) for r in alarms} == {
        (m, d) for m in MACHINES for d in ("source", "target")
    }
    for m in MACHINES:
        scores = list(
            csv.reader((out / f"anomaly_score_{m}_section_00_test.csv").read_text().splitlines())
        )
        decisions = dict(
            csv.reader((out / f"decision_result_{m}_section_00_test.csv").read_text().splitlines())
        )
        normal = [f for f, _ in scores if "_normal_" in f]
        for cond in ("source", "target"):
            row = next(r for r in alarms if (r["machine"], r["condition"]) == (m, cond))
            mine = [f for f in normal if f"_{cond}_" in f]
            fpr = sum(decisions[f] == "1" for f in mine) / len(mine)
            assert float(row["FPR (DCASE 0.9)"]) == pytest.approx(fpr)


def test_evaluate_auto_says_what_it_picked(tiny_dataset: Path, tmp_path: Path):
    r = _run(
        "evaluate",
        str(tiny_dataset),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--epochs",
        "1",
        "--machines",
        "fan",
    )
    assert r.returncode == 0, r.stderr
    assert "recipe: simclr (no pretrained CED weights" in r.stdout


def test_evaluate_bad_folder_is_a_clear_error(tmp_path: Path):
    r = _run("evaluate", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert str(tmp_path / "nope") in r.stderr
    assert "Traceback" not in r.stderr
