"""training.synth: a seeded SYNTHETIC DCASE-layout data set that the data layer reads back."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

from monitor.audio.frontend import log_mel
from monitor.audio.io import load_audio
from monitor.errors import DataError
from training.data import discover, parse_clip_name, read_attributes_csv, supplemental_kind
from training.synth import add_arguments, generate_dataset, main, plan, run
from training.synth_sound import ANOMALY_TYPES, ClipSpec, draw_fault, recipe_for, render_clip

SR = 16000
TINY = dict(
    machines=("fan", "pump"),
    n_train_source=4,
    n_train_target=2,
    n_test_per_group=3,
    n_supplemental=2,
    seconds=1.0,
    seed=3,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "data", workers=1, **TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_counts_and_names_parse(tiny: Path):
    found = discover(tiny)
    assert list(found) == ["fan", "pump"]
    for m, md in found.items():
        assert [(c.domain, c.label) for c in md.train].count(("source", "normal")) == 4
        assert [(c.domain, c.label) for c in md.train].count(("target", "normal")) == 2
        groups = [(c.domain, c.label) for c in md.test]
        for g in [("source", "normal"), ("source", "anomaly"), ("target", "normal")]:
            assert groups.count(g) == 3
        assert groups.count(("target", "anomaly")) == 3 and len(groups) == 12
        assert len(md.supplemental) == 2
        for c in md.train + md.test:
            assert c.section == "00" and c.machine == m
            assert set(c.attributes) == {"speed", "load", "noise"}
            x = load_audio(c.path)
            assert x.size == SR and 0.005 < np.sqrt(np.mean(x**2)) < 0.5
    # supplemental alternates: first machine clean machine sound, second noise only
    assert supplemental_kind(found["fan"].supplemental) == "clean"
    assert supplemental_kind(found["pump"].supplemental) == "noise"
    assert [c.attributes for c in found["pump"].supplemental] == [
        {"noise": "factory"},
        {"noise": recipe_for("pump").target_noise},
    ]
    assert found["fan"].supplemental[0].attributes["noise"] == "none"


def test_domains_carry_their_attributes(tiny: Path):
    md = discover(tiny)["fan"]
    src = {c.attributes["speed"] for c in md.train if c.domain == "source"}
    tgt = {
        (c.attributes["speed"], c.attributes["load"], c.attributes["noise"])
        for c in md.train
        if c.domain == "target"
    }
    assert src <= {"1390", "1450", "1510"}
    assert tgt == {("1650", "85", "babble")}
    assert {c.attributes["noise"] for c in md.test if c.domain == "source"} == {"factory"}


def test_same_seed_same_bytes_whatever_the_worker_count(tiny: Path, tmp_path: Path):
    again = generate_dataset(tmp_path / "again", workers=2, **TINY)
    assert _files(again) == _files(tiny)
    other = generate_dataset(tmp_path / "other", workers=1, **{**TINY, "seed": 4})
    a, b = _files(other), _files(tiny)
    assert len(a) == len(b)
    wavs_a = {v for k, v in a.items() if k.endswith(".wav")}
    assert not wavs_a & {v for k, v in b.items() if k.endswith(".wav")}  # another seed: all new


def test_readme_marker_and_attributes_csv(tiny: Path):
    readme = (tiny / "README.md").read_text()
    assert "SYNTHETIC" in readme and "--seed 3" in readme and "no real machine" in readme
    marker = (tiny / "SYNTHETIC").read_text()
    assert marker.startswith("SYNTHETIC DATA")
    body = json.loads(marker.split("\n", 1)[1])
    assert body["complete"] is True
    params = body["parameters"]
    assert params["seed"] == 3 and params["machines"] == ["fan", "pump"]
    assert params["n_test_per_group"] == 3 and params["seconds"] == 1.0
    for m in ("fan", "pump"):
        table = read_attributes_csv(tiny / m / "attributes_00.csv")
        wavs = sorted((tiny / m).rglob("*.wav"))
        assert len(table) == len(wavs) == 20
        for p in wavs:
            assert table[p.stem] == parse_clip_name(p).attributes
    with sf.SoundFile(next(tiny.rglob("*.wav"))) as f:
        assert f.comment.startswith("SYNTHETIC") and f.subtype == "PCM_16"


def _band_db(x: np.ndarray) -> np.ndarray:
    """Energy in 40 log-spaced bands, dB."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SR)
    edges = np.geomspace(40, 8000, 41)
    return np.array(
        [
            10 * np.log10(spec[(f >= a) & (f < b)].sum() + 1e-20)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    )


@pytest.mark.parametrize("machine", ["fan", "pump", "gearbox"])
@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_each_fault_changes_the_spectrum_of_its_normal_twin(kind: str, machine: str):
    spec = next(s for s in plan((machine,), 0, 0, 1, 0, 1.0, 0, 1.0) if s.label == "anomaly")
    twin = render_clip(spec, fault=None)
    faulty = render_clip(spec, fault=draw_fault(spec, kind, severity=0.7))
    mag_twin, mag_faulty = np.abs(np.fft.rfft(twin)), np.abs(np.fft.rfft(faulty))
    change = np.linalg.norm(mag_faulty - mag_twin) / np.linalg.norm(mag_twin)
    assert change > 0.05, f"{kind}: the magnitude spectrum changed by only {change:.3f}"
    again = render_clip(spec, fault=draw_fault(spec, kind, severity=0.7))
    np.testing.assert_array_equal(again, faulty)  # forced faults are deterministic


def test_normal_clip_equals_its_twin_and_difficulty_scales_faults():
    specs = plan(("pump",), 0, 0, 1, 0, 1.0, 0, 1.0)
    normal = next(s for s in specs if s.label == "normal")
    np.testing.assert_array_equal(render_clip(normal), render_clip(normal, fault=None))
    anom = next(s for s in specs if s.label == "anomaly")
    easy, hard = (ClipSpec(**{**anom.__dict__, "difficulty": d}) for d in (0.5, 4.0))
    twin = render_clip(anom, fault=None)
    dist = [
        np.abs(_band_db(render_clip(s, draw_fault(s, "bearing", 0.5))) - _band_db(twin)).max()
        for s in (easy, hard)
    ]
    assert dist[0] > dist[1] + 3


def test_anomalies_are_detectable_but_not_trivially():
    """A plain detector (log-mel mean/std, 3-NN) separates the classes, but not perfectly."""

    def feat(x: np.ndarray) -> np.ndarray:
        mel = log_mel(x, n_fft=1024, hop=512, n_mels=64)
        return np.concatenate([mel.mean(1), mel.std(1)])

    specs = [s for s in plan(("pump",), 30, 0, 30, 0, 1.0, 12, 1.0) if s.domain == "source"]
    train = np.array([feat(render_clip(s)) for s in specs if s.split == "train"])
    mu, sd = train.mean(0), train.std(0) + 1e-3
    bank = (train - mu) / sd
    test = [s for s in specs if s.split == "test"]
    scores = [
        np.sort(np.linalg.norm(bank - (feat(render_clip(s)) - mu) / sd, axis=1))[:3].mean()
        for s in test
    ]
    auc = roc_auc_score([s.label == "anomaly" for s in test], scores)
    assert 0.7 < auc < 0.99  # chance is 0.5 +- 0.075 here


def _peak_hz(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    f = np.fft.rfftfreq(x.size, 1 / SR)
    band = (f > lo) & (f < hi)
    return float(f[band][np.argmax(spec[band])])


@pytest.mark.parametrize("machine", ["fan", "pump", "gearbox", "compressor"])
def test_source_and_target_differ_in_fundamental(machine: str):
    r = recipe_for(machine)
    nominal = r.pass_order * r.rpm / 60  # blade/vane/tooth pass frequency at nominal speed
    for s in plan((machine,), 2, 2, 0, 0, 1.0, 5, 1.0):
        expected = r.pass_order * s.speed / 60
        got = _peak_hz(render_clip(s), 0.7 * nominal, 1.4 * nominal)
        assert got == pytest.approx(expected, rel=0.03), (s.domain, s.speed)
    src, tgt = (
        next(s for s in plan((machine,), 1, 1, 0, 0, 1.0, 5, 1.0) if s.domain == d)
        for d in ("source", "target")
    )
    assert abs(tgt.speed / src.speed - 1) > 0.08


def test_unknown_machine_gets_a_stable_distinct_recipe():
    assert recipe_for("compressor") == recipe_for("compressor")
    assert recipe_for("compressor") != recipe_for("blower") != recipe_for("fan")


def test_refuses_to_overwrite_foreign_folders(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty") as exc:
        generate_dataset(foreign, **TINY)
    assert str(foreign) in str(exc.value)
    with pytest.raises(DataError, match="no SYNTHETIC file"):
        generate_dataset(foreign, overwrite=True, **TINY)
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_reuse_overwrite_and_interrupted_runs(tmp_path: Path):
    small = {**TINY, "machines": ("fan",), "n_train_source": 1, "n_test_per_group": 1}
    ours = generate_dataset(tmp_path / "ours", **small)
    stamp = {p: p.stat().st_mtime_ns for p in ours.rglob("*")}
    assert generate_dataset(ours, **small) == ours  # same parameters: reused untouched
    assert {p: p.stat().st_mtime_ns for p in ours.rglob("*")} == stamp
    with pytest.raises(DataError, match="not empty"):
        generate_dataset(ours, **{**small, "seed": 99})
    generate_dataset(ours, overwrite=True, **{**small, "machines": ("pump",)})
    assert sorted(p.name for p in ours.iterdir() if p.is_dir()) == ["pump"]
    # an interrupted run leaves an incomplete marker: never reused, but may be overwritten
    marker = ours / "SYNTHETIC"
    marker.write_text(marker.read_text().replace('"complete": true', '"complete": false'))
    pump = {**small, "machines": ("pump",)}
    with pytest.raises(DataError, match="not empty"):
        generate_dataset(ours, **pump)
    generate_dataset(ours, overwrite=True, **pump)
    assert '"complete": true' in marker.read_text()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"machines": ()}, "at least one"),
        ({"machines": ("fan", "fan")}, "duplicates"),
        ({"machines": ("a/b",)}, "folder name"),
        ({"n_train_source": -1}, "n_train_source"),
        ({"n_test_per_group": 2.5}, "n_test_per_group"),
        ({"seconds": 0}, "seconds"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"difficulty": 0}, "difficulty"),
    ],
)
def test_bad_parameters_are_named(tmp_path: Path, kw: dict, match: str):
    with pytest.raises(DataError, match=match):
        generate_dataset(tmp_path / "x", **{**TINY, **kw})
    assert not (tmp_path / "x").exists()


def test_command_line(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    argv = [
        str(out),
        "--machines",
        "gearbox",
        "--n-train-source",
        "2",
        "--n-train-target",
        "1",
        "--n-test-per-group",
        "1",
        "--n-supplemental",
        "1",
        "--seconds",
        "0.5",
        "--seed",
        "9",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    assert "SYNTHETIC data set ready: 8 clips" in capsys.readouterr().out
    assert len(list(out.rglob("*.wav"))) == 2 + 1 + 4 + 1
    assert main([*argv, "--seed", "10"]) == 2  # other parameters, folder not empty
    assert "not empty" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([*argv, "--overwrite", "--difficulty", "2"])) == 0
    assert '"difficulty": 2.0' in (out / "SYNTHETIC").read_text()
    r = subprocess.run(
        [sys.executable, "-m", "training.synth", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "SYNTHETIC" in r.stdout
