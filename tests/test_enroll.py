"""`sonitor enroll` and `sonitor score`: banks, recalibration, coreset, atomicity, no torch."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from package_fixtures import copy_package, make_tiny_package, synthetic_machine_audio

from monitor.audio.io import write_wav
from monitor.cli.package import register
from monitor.errors import AudioError, PackageError, SonitorError
from monitor.model import enroll as en
from monitor.model.package import ModelPackage, pack_archive
from monitor.model.runtime import Embedder, FrameStream

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("base") / "pkg")


@pytest.fixture
def pkg_dir(base, tmp_path) -> Path:
    return copy_package(base, tmp_path / "pkg")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sonitor")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def _write(folder: Path, machine: str, n: int, seconds: float, seed: int, anomalous=False):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(
        synthetic_machine_audio(machine, n, seconds, seed=seed, anomalous=anomalous)
    ):
        paths.append(write_wav(folder / f"{machine}_{'a' if anomalous else 'n'}_{seed}_{i}.wav", x))
    return paths


# ----------------------------------------------------------------------------- enrol


def test_enroll_a_new_machine_from_a_folder(pkg_dir, tmp_path, capsys):
    before = ModelPackage.load(pkg_dir)
    _write(tmp_path / "valve", "valve", 6, 8.0, seed=1)  # 6 files x 4 windows of 2 s
    rc = run_cli(
        [
            "enroll",
            "--package",
            str(pkg_dir),
            "--machine",
            "valve",
            "--audio",
            str(tmp_path / "valve"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "machine 'valve' created: +24 embeddings" in out
    pkg = ModelPackage.load(pkg_dir)
    assert pkg.machines == ["fan", "pump", "valve"]
    valve = pkg.machine("valve")
    assert valve.bank.embeddings.shape == (24, 192) and valve.threshold > 0
    assert valve.bank.domains.tolist() == ["source"] * 24
    assert pkg.model_version != before.model_version
    hist = pkg.manifest.machines["valve"].history
    assert hist[-1]["action"] == "enroll" and hist[-1]["n_added"] == 24
    # other machines untouched, byte for byte
    for rel in ("machines/fan/bank.npz", "encoder.onnx"):
        assert pkg.manifest.files[rel] == before.manifest.files[rel]
    # the new machine's scorer is the package default (rescaled k-NN): normal below anomalous
    emb = Embedder(pkg)
    normal = valve.score(emb.embed(synthetic_machine_audio("valve", 6, 2.0, seed=9)))
    anomal = valve.score(
        emb.embed(synthetic_machine_audio("valve", 6, 2.0, seed=9, anomalous=True))
    )
    assert normal.max() < anomal.min()
    assert np.mean(anomal > valve.threshold) == 1.0


def test_enroll_extends_an_existing_machine_and_recalibrates(pkg_dir, tmp_path):
    pkg = ModelPackage.load(pkg_dir)
    n0, thr0 = len(pkg.machine("fan").bank.embeddings), pkg.machine("fan").threshold
    # a target-domain recording: the fan at a slightly different speed
    x = synthetic_machine_audio("fan", 1, 12.0, seed=7)[0]
    x = np.interp(np.arange(x.size) * 1.08, np.arange(x.size), x).astype(np.float32)
    res = en.enroll(pkg_dir, "fan", waveforms=[("rec", x)], condition="target")
    assert not res.created and res.n_added == 6 and res.n_bank == n0 + 6
    assert res.threshold_before == pytest.approx(thr0)
    fan = ModelPackage.load(pkg_dir).machine("fan")
    assert (fan.bank.conditions == "target").sum() == 6
    assert fan.conditions == ("source", "target")
    assert fan.threshold == pytest.approx(res.threshold) and fan.threshold != pytest.approx(thr0)
    # the calibration is the per-condition fit of the leave-one-out scores of the new bank,
    # each score grouped by the condition of its nearest other reference
    # (scored with whole recordings held out in turn: each export clip is one, the enrolment
    # recording another)
    from monitor.model.conditions import calibrate_conditions

    bank = fan.bank
    assert bank.groups.tolist() == list(range(n0)) + [n0] * 6
    folds = en.recording_folds(bank.groups, bank.conditions)
    assert len(set(folds[bank.groups == n0].tolist())) == 6  # one recording cut to fill folds
    cv = en.cross_validated_scores(
        bank.scorer_name, bank.scorer_params, bank.embeddings, bank.domain_list(), folds
    )
    cal, matched = calibrate_conditions(
        cv, bank.embeddings, bank.conditions.tolist(), fan.calibration.rule, recordings=bank.groups
    )
    assert cal.thresholds() == pytest.approx(fan.calibration.thresholds())
    assert matched.tolist() == bank.matched.tolist()
    np.testing.assert_allclose(bank.calibration_scores, cv)
    history = ModelPackage.load(pkg_dir).manifest.machines["fan"].history
    assert history[-1]["condition"] == "target" and history[-1]["n_added"] == 6


def test_enrolment_is_idempotent_in_embeddings(pkg_dir):
    """Enrolling the same window embeddings directly or via audio gives the same bank."""
    pkg = ModelPackage.load(pkg_dir)
    x = synthetic_machine_audio("pump", 1, 4.0, seed=3)[0]
    _, e = en.embed_waveform(Embedder(pkg), pkg, x)
    assert e.shape == (2, 192)
    res = en.enroll(pkg_dir, "pump", waveforms=[("a", x)])
    bank = ModelPackage.load(pkg_dir).machine("pump").bank.embeddings
    np.testing.assert_allclose(bank[-2:], e, atol=1e-6)
    assert res.n_bank == 66


def test_coreset_bounds_the_bank_and_measures_the_change(pkg_dir):
    pkg = ModelPackage.load(pkg_dir)
    emb = Embedder(pkg)
    x = synthetic_machine_audio("fan", 40, 2.0, seed=11)
    new = emb.embed(x)
    res = en.enroll_embeddings(pkg_dir, "fan", new, max_bank=48)
    assert res.n_candidates == 104 and res.n_bank == 48
    sub = res.subsample
    assert sub["from"] == 104 and sub["to"] == 48
    assert 0.5 < sub["spearman_vs_full"] <= 1.0  # measured, and the ranking mostly survives
    assert 0 < sub["decision_agreement"] <= 1.0 and sub["threshold_full"] > 0
    fan = ModelPackage.load(pkg_dir).machine("fan")
    assert len(fan.bank.embeddings) == 48
    hist = ModelPackage.load(pkg_dir).manifest.machines["fan"].history[-1]
    assert hist["subsample"]["spearman_vs_full"] == pytest.approx(sub["spearman_vs_full"])


def test_subsample_keeps_a_small_target_domain():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (300, 8)), rng.normal(5, 1, (10, 8))])
    doms = np.array(["source"] * 300 + ["target"] * 10)
    idx = en.subsample_bank(x, doms, 64)
    assert len(idx) == 64 and (doms[idx] == "target").sum() == 10
    assert np.array_equal(en.subsample_bank(x, doms, 1000), np.arange(310))


def test_calibration_scores_are_leave_one_out_for_kept_points():
    from monitor.model.scoring import scorer_by_name

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    kept = np.arange(0, 50, 2)
    sc = scorer_by_name("knn", k=1, metric="euclidean").fit(x[kept])
    s = en.calibration_scores(sc, x, kept)
    d = np.linalg.norm(x[:, None] - x[kept][None], axis=2)
    d[kept, np.arange(len(kept))] = np.inf  # a kept point never meets itself
    np.testing.assert_allclose(s, d.min(1))


def test_enroll_errors_name_the_problem(pkg_dir, tmp_path):
    short = write_wav(tmp_path / "short.wav", np.zeros(8000, np.float32))
    with pytest.raises(AudioError, match=r"short\.wav: 0\.50 s is shorter than one 2 s window"):
        en.enroll(pkg_dir, "fan", [short])
    with pytest.raises(AudioError, match="no .wav or .flac files"):
        (tmp_path / "empty").mkdir()
        en.enroll(pkg_dir, "fan", [tmp_path / "empty"])
    with pytest.raises(AudioError, match="no such file"):
        en.enroll(pkg_dir, "fan", [tmp_path / "missing.wav"])
    with pytest.raises(PackageError, match="invalid machine name"):
        en.enroll_embeddings(pkg_dir, "../evil", np.zeros((3, 192), np.float32))
    with pytest.raises(SonitorError, match=r"must be \[N >= 1, 192\]"):
        en.enroll_embeddings(pkg_dir, "fan", np.zeros((3, 100), np.float32))
    with pytest.raises(SonitorError, match="invalid condition name 'fast speed'"):
        en.enroll_embeddings(pkg_dir, "fan", np.zeros((3, 192), np.float32), "fast speed")
    with pytest.raises(SonitorError, match="exactly one of --audio"):
        run_cli(["enroll", "--package", str(pkg_dir), "--machine", "fan"])


def test_enroll_into_an_archive(base, tmp_path):
    archive = pack_archive(base, tmp_path / "pkg.tar")
    v0 = ModelPackage.load(archive).model_version
    res = en.enroll(
        archive,
        "valve",
        waveforms=[("x", synthetic_machine_audio("valve", 1, 24.0)[0])],
        max_bank=16,
    )
    pkg = ModelPackage.load(archive)
    assert pkg.machines == ["fan", "pump", "valve"] and pkg.model_version == res.model_version
    assert pkg.model_version != v0
    assert not list(tmp_path.glob(".pkg.tar.tmp-*"))


def test_kill_during_enrolment_leaves_the_old_package(pkg_dir, tmp_path):
    v0 = ModelPackage.load(pkg_dir).model_version
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 192)).astype(np.float32))
    script = tmp_path / "enrol.py"
    script.write_text(
        textwrap.dedent("""
        import sys, time
        import numpy as np
        from monitor.model.enroll import enroll_embeddings

        def pause(stage):
            print("STAGED", flush=True)
            time.sleep(60)

        enroll_embeddings(sys.argv[1], "fan", np.load(sys.argv[2]), _before_swap=pause)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pkg_dir), str(tmp_path / "x.npy")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "STAGED"
        proc.kill()
    finally:
        proc.wait(10)
    pkg = ModelPackage.load(pkg_dir)  # loads, checksums and all
    assert pkg.model_version == v0 and len(pkg.machine("fan").bank.embeddings) == 64


def test_random_kills_never_break_the_package(pkg_dir, tmp_path):
    """Kill enrolments at random moments: the package is always the old or the new version."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 192)).astype(np.float32))
    code = (
        "import sys, numpy as np; from monitor.model.enroll import enroll_embeddings; "
        "enroll_embeddings(sys.argv[1], 'fan', np.load(sys.argv[2]))"
    )
    rng = np.random.default_rng(0)
    sizes = set()
    for delay in rng.uniform(0.3, 2.0, 4):
        proc = subprocess.Popen([sys.executable, "-c", code, str(pkg_dir), str(tmp_path / "x.npy")])
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        n = len(ModelPackage.load(pkg_dir).machine("fan").bank.embeddings)
        assert (n - 64) % 5 == 0  # whole enrolments only
        sizes.add(n)
    assert ModelPackage.load(pkg_dir).machines == ["fan", "pump"]


BLOCK_TORCH = """
import sys
class _Block:
    BLOCKED = ("torch", "torchaudio", "training", "export", "sklearn")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} is blocked: this test runs without torch")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_enroll_and_score_work_without_torch(pkg_dir, tmp_path):
    """A subprocess whose import system refuses torch (sitecustomize runs before anything)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    paths = _write(tmp_path / "audio", "valve", 2, 12.0, seed=2)
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable: the blocker does not work")
        import argparse
        from monitor.cli.package import register
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        for argv in (
            ["enroll", "--package", {str(pkg_dir)!r}, "--machine", "valve", "--audio",
             {str(tmp_path / "audio")!r}],
            ["score", "--package", {str(pkg_dir)!r}, "--machine", "valve", {str(paths[0])!r}],
        ):
            args = parser.parse_args(argv)
            assert args.handler(args) == 0
        bad = sorted(m for m in sys.modules if m.split(".")[0] in
                     ("torch", "training", "export", "sklearn"))
        assert not bad, bad
        print("NO-TORCH-OK")
    """)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "NO-TORCH-OK" in out.stdout
    assert "machine 'valve' created" in out.stdout
    assert out.stdout.count("file,score,normalised,condition,decision") == 1
    assert "valve" in ModelPackage.load(pkg_dir).machines


def test_enroll_from_a_configured_source(pkg_dir, tmp_path, capsys):
    """--source records N seconds from a source of the daemon config (here a file source)."""
    pytest.importorskip("monitor.audio.capture")
    rec = write_wav(tmp_path / "rec.wav", synthetic_machine_audio("valve", 1, 24.0, seed=4)[0])
    cfg = tmp_path / "sonitor.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        model:
          package: {pkg_dir}
        paths:
          state_dir: {tmp_path / "state"}
        sources:
          - type: file
            name: valve-mic
            machine: valve
            path: {rec}
            realtime: false
    """)
    )
    rc = run_cli(
        [
            "enroll",
            "--package",
            str(pkg_dir),
            "--source",
            "valve-mic",
            "--seconds",
            "20",
            "--config",
            str(cfg),
        ]
    )
    assert rc == 0
    assert "machine 'valve' created: +10 embeddings" in capsys.readouterr().out
    with pytest.raises(SonitorError, match="--source needs --seconds"):
        run_cli(
            ["enroll", "--package", str(pkg_dir), "--source", "valve-mic", "--config", str(cfg)]
        )


# ----------------------------------------------------------------------------- score


def test_score_prints_file_score_decision(pkg_dir, tmp_path, capsys):
    normal = _write(tmp_path / "n", "pump", 3, 2.0, seed=21)
    anomal = _write(tmp_path / "a", "pump", 3, 2.0, seed=21, anomalous=True)
    assert (
        run_cli(
            ["score", "--package", str(pkg_dir), "--machine", "pump", *map(str, normal + anomal)]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,score,normalised,condition,decision") and len(lines) == 7
    rows = list(csv.DictReader(lines))
    assert [Path(r["file"]) for r in rows] == normal + anomal
    assert [int(r["decision"]) for r in rows[3:]] == [1, 1, 1]
    assert all(r["condition"] == "source" for r in rows)
    scores = np.array([float(r["score"]) for r in rows])
    norm = np.array([float(r["normalised"]) for r in rows])
    assert scores[:3].max() < scores[3:].min()
    thr = ModelPackage.load(pkg_dir).machine("pump").calibration.threshold_of("source")
    np.testing.assert_allclose(norm, scores / thr, rtol=1e-3)
    assert [int(r["decision"]) for r in rows] == [int(v > 1) for v in norm]
    with pytest.raises(PackageError, match="machine 'valve' is not in this package"):
        run_cli(["score", "--package", str(pkg_dir), "--machine", "valve", str(normal[0])])


def test_score_equals_the_training_side_and_the_daemon_path(pkg_dir, tmp_path):
    """One-window files: the same numbers as the full graph (what training's embeddings match)."""
    pkg = ModelPackage.load(pkg_dir)
    x = synthetic_machine_audio("fan", 3, 2.0, seed=5)
    files = [write_wav(tmp_path / f"f{i}.wav", c, subtype="FLOAT") for i, c in enumerate(x)]
    got = np.array([r.score for r in en.score_files(pkg, "fan", files)])
    ref = pkg.machine("fan").score(Embedder(pkg).embed(x))
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_long_file_windows_follow_the_daemon_stream(pkg_dir, tmp_path, capsys):
    pkg = ModelPackage.load(pkg_dir)
    x = synthetic_machine_audio("fan", 1, 5.0, seed=6)[0]
    path = write_wav(tmp_path / "long.wav", x, subtype="FLOAT")
    run_cli(["score", "--package", str(pkg_dir), "--machine", "fan", "--per-window", str(path)])
    rows = [r.split(",") for r in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [float(r[1]) for r in rows] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    # a daemon-like loop: one hop of audio at a time through FrameStream, windows from the frames
    emb = Embedder(pkg)
    stream, frames = FrameStream(emb), []
    for i in range(0, x.size, pkg.hop_samples):
        frames.append(stream.push(x[i : i + pkg.hop_samples]))
    frames.append(stream.flush())
    f = np.concatenate(frames, axis=1)
    wins = np.stack([f[:, s // 160 : s // 160 + 201] for s in range(0, 48001, 8000)])
    expect = pkg.machine("fan").score(emb.embed_frames(wins))
    np.testing.assert_allclose([float(r[2]) for r in rows], expect, rtol=1e-6)
    res = en.score_files(pkg, "fan", [path], aggregate="max")[0]
    assert res.score == pytest.approx(expect.max(), rel=1e-6)


def test_score_real_recordings(pkg_dir, capsys):
    """Real DCASE audio end to end: enrol normal pump clips, score a normal and an anomaly."""
    folder = SHARED / "dcase2020_dev_id00"
    if not folder.is_dir():
        pytest.skip(f"real recordings not available: {folder} is absent")
    train = sorted((folder / "train").glob("*.wav"))[:4]
    test = sorted((folder / "test").glob("*.wav")) + sorted((folder / "train").glob("*.wav"))[-1:]
    res = en.enroll(pkg_dir, "id00", train)
    assert res.n_added == 4 * 5  # 10 s clips, 2 s windows
    run_cli(["score", "--package", str(pkg_dir), "--machine", "id00", *map(str, test)])
    rows = list(csv.DictReader(capsys.readouterr().out.strip().splitlines()))
    assert len(rows) == len(test)
    assert all(np.isfinite(float(r["score"])) and r["decision"] in ("0", "1") for r in rows)


def test_manifest_history_is_json_serialisable(pkg_dir):
    en.enroll(pkg_dir, "fan", waveforms=[("x", synthetic_machine_audio("fan", 1, 4.0)[0])])
    json.dumps(ModelPackage.load(pkg_dir).manifest.to_dict())


def test_enrolment_rewrites_only_its_machine_and_keeps_unknown_keys(pkg_dir):
    """Keys a newer writer added survive an enrolment; nothing but the machine, its files and
    ``modified`` changes (the manifest goes through the typed `Manifest`, not a JSON dict)."""
    from monitor.model.package import PackageWriter

    raw = ModelPackage.load(pkg_dir).manifest.to_dict()
    raw["future_key"] = {"a": [1, 2]}
    raw["encoder"]["future_encoder_key"] = "x"
    raw["machines"]["pump"]["future_machine_key"] = 3
    with PackageWriter(pkg_dir) as w:
        for rel in raw.pop("files"):
            w.add_file(rel, pkg_dir / rel)
        w.commit(raw)
    before = ModelPackage.load(pkg_dir).manifest.to_dict()
    en.enroll(pkg_dir, "fan", waveforms=[("x", synthetic_machine_audio("fan", 1, 4.0)[0])])
    after = ModelPackage.load(pkg_dir).manifest.to_dict()
    assert after["future_key"] == {"a": [1, 2]}
    assert after["encoder"]["future_encoder_key"] == "x"
    assert after["machines"]["pump"] == before["machines"]["pump"]
    assert after["machines"]["fan"]["history"][:-1] == before["machines"]["fan"]["history"]
    for m in (before, after):
        for key in ("files", "modified"):
            m.pop(key, None)
        m["machines"].pop("fan")
    assert after == before


def test_errors_reach_the_user_through_the_sonitor_command(tmp_path, monkeypatch, capsys):
    """Wired into `sonitor`, a bad package path is exit code 2 and one clear line."""
    import monitor.cli.sonitor as cli

    if "monitor.cli.package" not in cli._RUNTIME_COMMAND_MODULES:
        monkeypatch.setattr(
            cli, "_RUNTIME_COMMAND_MODULES", (*cli._RUNTIME_COMMAND_MODULES, "monitor.cli.package")
        )
    wav = write_wav(tmp_path / "x.wav", np.zeros(32000, np.float32))
    rc = cli.main(["score", "--package", str(tmp_path / "nope"), "--machine", "fan", str(wav)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "sonitor score: error: model package not found" in err and str(tmp_path / "nope") in err


def test_mahalanobis_banks_are_never_subsampled(tmp_path):
    path = make_tiny_package(tmp_path / "pkg", machines=("fan",), n_bank=24, scorer="mahalanobis")
    new = np.random.default_rng(0).normal(size=(30, 192)).astype(np.float32) * 0.01
    base = ModelPackage.load(path).machine("fan").bank.embeddings.mean(0)
    res = en.enroll_embeddings(path, "fan", base + new, max_bank=16)
    assert res.n_bank == 54 and res.subsample is None
    assert ModelPackage.load(path).machine("fan").bank.scorer_name == "mahalanobis"


def test_concurrent_enrolments_do_not_lose_updates(pkg_dir):
    """Two processes enrol into the same machine at once: both additions survive (the lock)."""
    code = (
        "import sys, numpy as np; from monitor.model.enroll import enroll_embeddings; "
        "x = np.random.default_rng(int(sys.argv[2])).normal(size=(5, 192)).astype(np.float32); "
        "enroll_embeddings(sys.argv[1], 'fan', x)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pkg_dir), str(i)]) for i in (1, 2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    fan = ModelPackage.load(pkg_dir).machine("fan")
    assert len(fan.bank.embeddings) == 64 + 10
    assert len(ModelPackage.load(pkg_dir).manifest.machines["fan"].history) == 3
