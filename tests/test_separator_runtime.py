"""A real (briefly trained) separator through ONNX, the package, `FrameStream` and the daemon."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from daemon_process import daemon_on_a_file, machine_audio
from package_fixtures import synthetic_machine_audio

from export.onnx_export import torch_embed
from export.package_writer import MachineSpec, build_package
from export.separator_export import export_separator, separator_parity
from monitor.errors import PackageError
from monitor.model.package import ModelPackage
from monitor.model.runtime import Embedder, FrameStream, embed_recording
from monitor.model.scoring import scorer_by_name
from training.separator.masking import insert_separator
from training.separator.mixtures import MixtureConfig
from training.separator.train import TrainConfig, train_separator
from training.separator.unet import UNetConfig

SR = 16000


@pytest.fixture(scope="module")
def separator():
    """Trained for a few steps on machine tones + white noise (weights far from the init)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    clean = list(synthetic_machine_audio("fan", 4, 1.0, seed=5))
    noise = [rng.standard_normal(SR).astype(np.float32) for _ in range(3)]
    cfg = TrainConfig(steps=8, batch_size=4, mixtures=MixtureConfig(crop_seconds=0.5))
    sep, _ = train_separator(
        clean, noise, config=cfg, unet=UNetConfig(channels=4, levels=2), progress_bar=False
    )
    return sep


@pytest.fixture(scope="module")
def package(separator, tmp_path_factory):
    from training.models.ced import CED

    torch.manual_seed(0)
    model = insert_separator(CED("tiny").eval(), separator)
    x = torch_embed(model, synthetic_machine_audio("fan", 12, 2.0, seed=2))
    spec = MachineSpec("fan", x, ["source"] * 12, scorer_by_name("knn", k=2).fit(x))
    path, report = build_package(
        tmp_path_factory.mktemp("pkg") / "pkg", model, [spec], recipe="test",
        window_seconds=2.0, hop_seconds=0.5,
    )  # fmt: skip
    return model, path, report


def test_separator_onnx_matches_pytorch_for_any_length(separator, tmp_path) -> None:
    path = export_separator(separator, tmp_path / "sep.onnx")
    c = separator.context
    for frames in (2 * c + 1, 50, 333):
        db = np.random.default_rng(frames).standard_normal((2, 64, frames)) * 10 - 50
        r = separator_parity(separator, path, db.astype(np.float32))
        assert r["frames"] == frames - 2 * c and r["max_abs_diff_db"] < 1e-3


def test_package_holds_a_frames_separator_and_streams(package) -> None:
    _, path, report = package
    assert report["embeddings"]["split"]["min_cosine"] > 0.99999  # FrameStream + separator
    pkg = ModelPackage.load(path)
    info = pkg.separator_info
    assert info is not None and info["input"] == "frames" and info["frontend"] == "ced"
    emb = Embedder(pkg)
    assert emb.streaming and emb.separator_kind == "frames"
    assert emb.context_frames == info["context_frames"] == 5


def test_framestream_chunks_equal_the_whole_recording(package, separator) -> None:
    """Hop-by-hop separation (any chunk sizes) = separating the whole recording in PyTorch."""
    _, path, _ = package
    emb = Embedder(path)
    x = machine_audio("fan", 3.0, seed=7) + 0.05 * np.random.default_rng(1).standard_normal(
        3 * SR
    ).astype(np.float32)
    stream = FrameStream(emb)
    parts, i = [], 0
    for size in [160, 1000, 7, 8000, 3200, 480] * 4:
        parts.append(stream.push(x[i : i + size]))
        i += size
        if i >= x.size:
            break
    parts.append(stream.push(x[i:]))
    parts.append(stream.flush())
    frames = np.concatenate(parts, axis=1)
    with torch.no_grad():
        db = separator.mel_db(torch.from_numpy(x)[None])
        ref = separator(db)[0].numpy()
    assert frames.shape == ref.shape and stream.frames_done == ref.shape[1]
    np.testing.assert_allclose(frames, ref, atol=2e-3)
    assert stream.pad == emb.pad + emb.context_frames * emb.hop_length


def test_runtime_scores_equal_pytorch_with_the_separator(package) -> None:
    model, path, _ = package
    emb = Embedder(path)
    clip = synthetic_machine_audio("fan", 1, 2.0, seed=9)[0]
    _, streamed = embed_recording(emb, clip, 2 * SR, SR // 2)
    ref = torch_embed(model, clip[None])
    np.testing.assert_allclose(streamed, ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(emb.embed(clip[None]), ref, rtol=1e-3, atol=1e-4)


def test_daemon_runs_the_separator_package_streaming(package, tmp_path) -> None:
    _, pkg, _ = package
    with daemon_on_a_file(tmp_path, pkg, timeout=60) as (daemon, metrics):
        assert daemon.pipelines[0].embedder.streaming  # frames separator: still streaming
    assert np.isfinite(metrics["score_raw"].labels(source="a")._value.get())


def test_manifest_separator_entry_is_validated(package, tmp_path) -> None:
    import shutil

    _, path, _ = package
    for change, match in (
        ({"context_frames": -1}, "context_frames"),
        ({"n_mels": 128}, "separator.n_mels = 128 but frontend.n_mels = 64"),
        ({"input": "spectrum"}, "must both be 'waveform' or 'frames'"),
    ):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(path, bad)
        m = json.loads((bad / "manifest.json").read_text())
        m["separator"].update(change)
        (bad / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(PackageError, match=match):
            ModelPackage.load(bad)
