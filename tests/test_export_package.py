"""`sonitor export` end to end: train -> export -> score with the runtime equals training-side.

Also the three ways in (--run, --data, --checkpoint), the parity guard and int8 drift.
"""

from __future__ import annotations

import argparse
import csv
import json
import warnings

import numpy as np
import pytest
import torch
from package_fixtures import synthetic_machine_audio

from export.onnx_export import Tolerance, torch_embed
from export.onnx_graph import ExportError
from export.package_writer import MachineSpec, build_package
from monitor.audio.io import write_wav
from monitor.errors import SonitorError
from monitor.model import enroll as en
from monitor.model.package import ModelPackage
from monitor.model.scoring import scorer_by_name


def _cli(argv: list[str]) -> int:
    from export.cli import register as reg_export
    from monitor.cli.package import register as reg_runtime

    parser = argparse.ArgumentParser(prog="sonitor")
    sub = parser.add_subparsers(dest="command")
    reg_export(sub)
    reg_runtime(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


class _Lowpass(torch.nn.Module):
    """Stands in for a trained separator: any waveform -> waveform graph."""

    def forward(self, x):
        k = torch.ones(1, 1, 9) / 9
        return torch.nn.functional.conv1d(x.unsqueeze(1), k, padding=4).squeeze(1)


@pytest.fixture(scope="module")
def lowpass_onnx(tmp_path_factory):
    sep = tmp_path_factory.mktemp("sep") / "sep.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            _Lowpass(), (torch.zeros(2, 16000),), str(sep), dynamo=False, opset_version=17,
            input_names=["waveform"], output_names=["separated"],
            dynamic_axes={"waveform": {0: "b", 1: "t"}, "separated": {0: "b", 1: "t"}},
        )  # fmt: skip
    return sep


def _tiny_trained_ced(steps: int = 2):
    """CED-tiny after a few real gradient steps (the weights are no longer the initial ones)."""
    from training.models.ced import CED

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = CED("tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    a = torch.from_numpy(synthetic_machine_audio("fan", 4, 1.0, seed=1))
    b = torch.from_numpy(synthetic_machine_audio("pump", 4, 1.0, seed=1))
    model.train()
    for _ in range(steps):  # pull same-machine embeddings together, push machines apart
        za, zb = model(a), model(b)
        loss = torch.cdist(za, za).mean() - torch.cdist(za, zb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    model = _tiny_trained_ced()
    specs = []
    for m in ("fan", "pump"):
        x = torch_embed(model, synthetic_machine_audio(m, 24, 2.0, seed=2))
        specs.append(MachineSpec(m, x, ["source"] * 24, scorer_by_name("knn", k=2).fit(x)))
    return model, specs


def test_round_trip_train_export_score(trained, tmp_path, capsys):
    """Runtime scores (onnxruntime, streaming path, `sonitor score`) = training-side scores."""
    model, specs = trained
    path, report = build_package(
        tmp_path / "pkg", model, specs, recipe="test", window_seconds=2.0, hop_seconds=0.5
    )
    assert report["embeddings"]["full"]["min_cosine"] > 0.99999
    assert report["embeddings"]["split"]["rel_max_abs_diff"] < 1e-4
    assert set(report["scores"]) == {"fan", "pump"}
    pkg = ModelPackage.load(path)
    assert pkg.manifest.parity["embeddings"]["full"]["max_abs_diff"] >= 0
    clips = np.concatenate(
        [
            synthetic_machine_audio("fan", 3, 2.0, seed=3),
            synthetic_machine_audio("fan", 3, 2.0, seed=3, anomalous=True),
        ]
    )
    files = [write_wav(tmp_path / f"c{i}.wav", c, subtype="FLOAT") for i, c in enumerate(clips)]
    assert _cli(["score", "--package", str(path), "--machine", "fan", *map(str, files)]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.strip().splitlines()))
    runtime = np.array([float(r["score"]) for r in rows])
    training_side = specs[0].scorer.score_samples(torch_embed(model, clips))
    np.testing.assert_allclose(runtime, training_side, rtol=1e-4, atol=1e-6)
    thr = pkg.machine("fan").calibration.threshold_of("source")
    assert {r["condition"] for r in rows} == {"source"}
    assert [int(r["decision"]) for r in rows] == [int(s > thr) for s in training_side]


def test_parity_failure_writes_nothing(trained, tmp_path):
    model, specs = trained
    with pytest.raises(ExportError, match="does not match PyTorch"):
        build_package(
            tmp_path / "pkg",
            model,
            specs,
            recipe="test",
            window_seconds=2.0,
            hop_seconds=0.5,
            tolerance=Tolerance(rel_max_abs=0.0),
        )
    assert not (tmp_path / "pkg").exists()
    assert not list(tmp_path.glob(".pkg.*"))


def test_window_must_sit_on_the_frame_grid(trained, tmp_path):
    model, specs = trained
    with pytest.raises(ExportError, match="not a multiple of the frame hop 160"):
        build_package(
            tmp_path / "pkg", model, specs, recipe="t", window_seconds=2.0, hop_seconds=0.3333
        )


def test_int8_package_with_drift(trained, tmp_path):
    model, specs = trained
    path, report = build_package(
        tmp_path / "pkg",
        model,
        specs,
        recipe="test",
        window_seconds=2.0,
        hop_seconds=0.5,
        int8=True,
        precision="int8",
    )
    drift = report["int8_drift"]
    assert drift["embedding"]["min_cosine"] > 0.99
    assert all(m["spearman"] > 0.9 for m in drift["machines"].values())
    pkg = ModelPackage.load(path)
    assert pkg.precision == "int8" and pkg.encoder_file().name == "encoder.int8.onnx"
    assert pkg.manifest.encoder.int8.drift["embedding"]["min_cosine"] > 0.99
    x = synthetic_machine_audio("fan", 2, 2.0, seed=8)
    a = en.score_files(pkg, "fan", [write_wav(tmp_path / "x.wav", x[0], subtype="FLOAT")])[0]
    b = en.score_files(
        pkg, "fan", [write_wav(tmp_path / "x.wav", x[0], subtype="FLOAT")], precision="fp32"
    )[0]
    assert a.score == pytest.approx(b.score, rel=0.1) and a.score != b.score


def test_export_from_a_saved_run(trained, tmp_path):
    from export.run_dir import load_run, save_run

    model, specs = trained
    save_run(
        tmp_path / "run", recipe="test", model=model, machines=specs, window_seconds=2.0,
        hop_seconds=0.5, training_data={"synthetic": True},
    )  # fmt: skip
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["encoder"]["class"] == "training.models.ced.CED"
    run = load_run(tmp_path / "run")
    x = synthetic_machine_audio("pump", 2, 2.0, seed=4)
    np.testing.assert_allclose(torch_embed(run.model, x), torch_embed(model, x), atol=1e-6)
    assert _cli(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "pkg")]) == 0
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert pkg.machines == ["fan", "pump"] and pkg.window_seconds == 2.0
    np.testing.assert_allclose(pkg.machine("pump").bank.embeddings, specs[1].embeddings, atol=1e-6)


def test_run_dir_refuses_foreign_classes(tmp_path, trained):
    from export.run_dir import load_run, save_run
    from monitor.errors import CheckpointError

    model, specs = trained
    save_run(tmp_path / "run", recipe="t", model=model, machines=specs, window_seconds=2.0)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    meta["encoder"]["class"] = "os.system"
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="outside the training package"):
        load_run(tmp_path / "run")


def test_export_from_official_weights_then_enroll(tmp_path, capsys):
    """Stage 1 for a plant engineer: CED weights -> empty package -> enrol -> score."""
    from safetensors.torch import save_file

    from training.models.ced import ced_state_dict_names

    gen = torch.Generator().manual_seed(0)
    state = {
        k: 0.02 * torch.randn(s, generator=gen)
        for k, s in ced_state_dict_names("tiny", "hf").items()
        if s
    }
    state["encoder.init_bn.running_var"] = torch.ones(64)
    save_file(state, str(tmp_path / "model.safetensors"))
    assert (
        _cli(
            [
                "export",
                "--checkpoint",
                str(tmp_path / "model.safetensors"),
                "--out",
                str(tmp_path / "pkg"),
                "--window-seconds",
                "2",
                "--hop-seconds",
                "0.5",
            ]
        )
        == 0
    )
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert pkg.machines == [] and pkg.manifest.scorer.params["metric"] == "euclidean"
    audio = write_wav(tmp_path / "valve.wav", synthetic_machine_audio("valve", 1, 40.0)[0])
    assert (
        _cli(
            [
                "enroll",
                "--package",
                str(tmp_path / "pkg"),
                "--machine",
                "valve",
                "--audio",
                str(audio),
            ]
        )
        == 0
    )
    assert ModelPackage.load(tmp_path / "pkg").machines == ["valve"]
    assert "created: +20 embeddings" in capsys.readouterr().out


def test_export_from_data_with_int8(tmp_path, capsys):
    """--data fits stage1 (frozen random CED-tiny) and measures int8 drift on labelled clips."""
    from training.synth import generate_dataset

    data = generate_dataset(
        tmp_path / "data", machines=("fan", "pump"), n_train_source=12, n_train_target=2,
        n_test_per_group=2, n_supplemental=0, seconds=2.0, workers=1,
    )  # fmt: skip
    rc = _cli([
        "export", "--data", str(data), "--recipe", "stage1", "--ced-size", "tiny", "--k", "4",
        "--out", str(tmp_path / "pkg"), "--save-run", str(tmp_path / "run"), "--int8",
        "--hop-seconds", "0.5", "--quiet",
    ])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "package written" in out and "int8 drift" in out
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert pkg.machines == ["fan", "pump"] and pkg.window_seconds == 2.0
    assert pkg.machine("fan").bank.domains.tolist().count("target") == 2
    drift = pkg.manifest.encoder.int8.drift
    assert "official_score_change" in drift
    assert drift["machines"]["fan"]["clips"] == "labelled test clips"
    assert (tmp_path / "run" / "run.json").is_file()


def test_package_with_a_separator(tmp_path, lowpass_onnx):
    """A separator (waveform -> waveform ONNX) is applied before the encoder; no frame streaming."""
    from package_fixtures import exported_tiny_encoder

    from export.package_writer import write_package
    from monitor.model.runtime import Embedder, embed_recording

    sep = lowpass_onnx
    enc = exported_tiny_encoder()
    plain = Embedder({"encoder": enc.full})
    bank = plain.embed(synthetic_machine_audio("fan", 16, 2.0))
    spec = MachineSpec("fan", bank, ["source"] * 16, scorer_by_name("knn", k=2).fit(bank))
    path = write_package(
        tmp_path / "pkg", enc, [spec], recipe="t", window_seconds=2.0, hop_seconds=0.5,
        separator=sep,
    )  # fmt: skip
    pkg = ModelPackage.load(path)
    assert pkg.separator_path is not None and pkg.separator_path.name == "separator.onnx"
    emb = Embedder(pkg)
    assert not emb.streaming  # the separator must see the waveform first
    x = synthetic_machine_audio("fan", 2, 3.0, seed=1)
    filtered = _Lowpass()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(emb.separate(x), filtered, atol=1e-5)
    np.testing.assert_allclose(emb.embed(x), plain.embed(filtered), atol=1e-4)
    starts, e = embed_recording(emb, x[0], 32000, 8000)
    assert starts.tolist() == [0, 8000, 16000]
    np.testing.assert_allclose(e[1], emb.embed(x[:1, 8000:40000])[0], atol=1e-4)


def test_one_separator_at_most(tmp_path, lowpass_onnx):
    """A model with a separator inside and another given: refused before anything is written."""
    import dataclasses

    from package_fixtures import exported_tiny_encoder

    from export.package_writer import write_package

    enc = dataclasses.replace(
        exported_tiny_encoder(),
        separator=lowpass_onnx,
        separator_info={"input": "frames", "output": "frames", "context_frames": 2},
    )
    with pytest.raises(ExportError, match="two separators"):
        write_package(
            tmp_path / "pkg", enc, [], recipe="t", window_seconds=2.0, hop_seconds=0.5,
            separator=lowpass_onnx,
        )  # fmt: skip
    assert not (tmp_path / "pkg").exists()
    path = write_package(tmp_path / "pkg", enc, [], recipe="t", window_seconds=2.0, hop_seconds=0.5)
    sep = ModelPackage.load(path, check_encoder=False).manifest.separator
    assert sep is not None and sep.kind == "frames" and sep.context_frames == 2


def test_run_dir_rebuilds_the_simclr_model(tmp_path):
    """SimCLR's encoder + projection head (nested constructor arguments) survive a run dir."""
    from export.run_dir import load_run, save_run
    from training.models.resnet import ProjectionHead, ResNetEncoder
    from training.simclr import ProjectedEncoder

    torch.manual_seed(0)
    model = ProjectedEncoder(ResNetEncoder(n_mels=32), ProjectionHead(512, 64, 16)).eval()
    save_run(tmp_path / "run", recipe="simclr", model=model, machines=[], window_seconds=1.0)
    run = load_run(tmp_path / "run")
    assert type(run.model) is ProjectedEncoder and run.model.head.net[-1].out_features == 16
    x = synthetic_machine_audio("fan", 2, 1.0)
    np.testing.assert_allclose(torch_embed(run.model, x), torch_embed(model, x), atol=1e-5)


def test_export_from_data_of_10_s_clips_picks_a_window_on_the_frame_grid(tmp_path, capsys):
    """The default recipe (simclr: 512-sample frame hop) on 10 s clips, as in every DCASE year:
    160000 samples are no whole number of hops, so the window becomes 9.984 s and the hop
    0.992 s, chosen before training; an explicit window off the grid fails before training."""
    from training.synth import generate_dataset

    data = generate_dataset(
        tmp_path / "data", machines=("fan",), n_train_source=6, n_train_target=2,
        n_test_per_group=1, n_supplemental=0, seconds=10.0, workers=1,
    )  # fmt: skip
    with pytest.raises(SonitorError, match=r"--window-seconds 10 = 160000 samples .* 512-sample"):
        _cli(["export", "--data", str(data), "--out", str(tmp_path / "bad"),
              "--window-seconds", "10", "--quiet"])  # fmt: skip
    assert not (tmp_path / "bad").exists()
    rc = _cli([
        "export", "--data", str(data), "--out", str(tmp_path / "pkg"), "--epochs", "1",
        "--k", "2", "--quiet",
    ])  # fmt: skip
    assert rc == 0 and "package written" in capsys.readouterr().out
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert pkg.recipe == "simclr" and pkg.frontend.hop_length == 512
    assert (pkg.window_samples, pkg.hop_samples) == (312 * 512, 31 * 512)
