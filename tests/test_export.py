"""ONNX export: parity with PyTorch, the streaming split, long windows, int8 and its drift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from package_fixtures import exported_tiny_encoder, synthetic_machine_audio, tiny_torch_model

from export.onnx_export import (
    Tolerance,
    check_parity,
    export_encoder,
    find_frontend,
    torch_embed,
)
from export.onnx_graph import ExportError
from monitor.audio import frontend as fe
from monitor.errors import PackageError
from monitor.model.runtime import Embedder, FrameStream, embed_recording


@pytest.fixture(scope="module")
def enc():
    return exported_tiny_encoder()


@pytest.fixture(scope="module")
def embedder(enc):
    return Embedder({"encoder": enc.full, "frontend": enc.frontend, "backbone": enc.backbone})


def _clips(n: int, seconds: float, seed: int = 0) -> np.ndarray:
    return synthetic_machine_audio("fan", n, seconds, seed=seed)


def test_parity_full_and_split_graph_with_pytorch(enc):
    model = tiny_torch_model()
    for seconds in (2.0, 3.3):
        rep = check_parity(model, enc, _clips(3, seconds))
        for key in ("full", "split"):
            assert rep[key]["rel_max_abs_diff"] < 1e-5, rep
            assert rep[key]["min_cosine"] > 0.99999


def test_windows_longer_than_the_position_table(enc, embedder):
    """12.5 s = 1251 frames > 1012: CED's chunking is inside the graph and matches PyTorch."""
    model = tiny_torch_model()
    x = _clips(2, 12.5)
    ref = torch_embed(model, x)
    got = embedder.embed(x)
    assert np.max(np.abs(ref - got)) < 1e-4 * np.abs(ref).max()
    # and the chunked embedding really differs from the first 10 s alone
    assert np.max(np.abs(got - embedder.embed(x[:, :160000]))) > 1e-3


def test_a_different_model_fails_parity_loudly(enc):
    torch.manual_seed(123)
    from training.models.ced import CED

    other = CED("tiny").eval()
    with pytest.raises(ExportError, match="does not match PyTorch"):
        check_parity(other, enc, _clips(2, 2.0))


def test_resnet_splits_and_matches(tmp_path):
    from training.models.resnet import ResNetEncoder

    torch.manual_seed(0)
    model = ResNetEncoder(n_mels=32).eval()  # fewer mel bands: same structure, quicker
    ex = export_encoder(model, tmp_path, example_seconds=1.0)
    assert ex.frontend is not None and ex.embedding_dim == 512
    assert ex.frontend_params["n_fft"] == fe.LOGMEL_N_FFT
    rep = check_parity(model, ex, _clips(2, 1.0), tolerance=Tolerance(rel_max_abs=1e-4))
    assert rep["split"]["min_cosine"] > 0.99999


def test_model_without_a_known_frontend_exports_the_full_graph_only(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.mean(1), x.std(1), x.abs().max(1).values], 1)

    assert find_frontend(Plain()) is None
    ex = export_encoder(Plain(), tmp_path, example_seconds=0.5)
    assert ex.frontend is None and ex.backbone is None and ex.embedding_dim == 3
    emb = Embedder({"encoder": ex.full})
    assert not emb.streaming
    x = _clips(2, 1.0)
    np.testing.assert_allclose(emb.embed(x), Plain()(torch.from_numpy(x)).numpy(), rtol=1e-5)
    starts, e = embed_recording(emb, _clips(1, 2.0)[0], 16000, 8000)  # windowed full graph
    assert starts.tolist() == [0, 8000, 16000] and e.shape == (3, 3)
    with pytest.raises(PackageError, match="no split front-end"):
        emb.frames(x)


# ----------------------------------------------------------------------------- streaming split


def test_frames_match_the_numpy_reference(embedder):
    x = _clips(1, 1.0)[0]
    frames = embedder.frames(x)  # valid framing: no padding
    ref = fe.log_mel(x, fe.CED_N_FFT, fe.CED_HOP, fe.CED_N_MELS, f_max=fe.CED_F_MAX, center=False)
    assert frames.shape == ref.shape == (64, 1 + (16000 - 512) // 160)
    assert np.max(np.abs(frames - ref)) < 1e-3  # dB


def test_graphs_keep_the_band_limit(enc, embedder):
    """The band limit is inside the exported graphs (a constant) and named in their metadata:
    sound above `BAND_EDGE_HZ` (what a 16 kHz recording has and a resampled 48 kHz one lacks)
    changes neither the frames nor the embedding."""
    import json

    import onnx

    for path in (enc.full, enc.frontend, enc.backbone):
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert json.loads(meta["sonitor.frontend"])["band_edge_hz"] == fe.BAND_EDGE_HZ
    x = _clips(2, 2.0)
    t = np.arange(x.shape[1]) / fe.SAMPLE_RATE
    y = (x + 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (7450.0, 7800.0))).astype(np.float32)
    assert np.abs(embedder.frames(x[0]) - embedder.frames(y[0])).max() < 0.05  # dB
    a, b = embedder.embed(x), embedder.embed(y)
    # (level normalisation spreads the leakage's hundredths of a dB over the whole window)
    assert np.abs(a - b).max() < 2e-2 * np.abs(a).max()


def test_frame_stream_is_chunking_invariant(embedder):
    x = _clips(1, 3.0)[0]
    rng = np.random.default_rng(0)
    whole = FrameStream(embedder)
    a = np.concatenate([whole.push(x), whole.flush()], axis=1)
    pieces = FrameStream(embedder)
    cuts = np.sort(rng.integers(0, x.size, 12))
    parts = [pieces.push(c) for c in np.split(x, cuts)] + [pieces.flush()]
    b = np.concatenate(parts, axis=1)
    assert a.shape == b.shape == (64, 1 + x.size // 160)
    np.testing.assert_allclose(a, b, atol=1e-3)  # dB; only the summation order differs
    assert whole.frames_done == a.shape[1]


def test_a_whole_file_window_equals_the_full_graph(embedder):
    """Start and end of a stream are reflected like torch.stft(center=True): exact match."""
    x = _clips(3, 2.0)
    full = embedder.embed(x)
    split = np.concatenate([embed_recording(embedder, c, c.size, c.size)[1] for c in x])
    np.testing.assert_allclose(split, full, atol=1e-5 * np.abs(full).max())


def test_mid_stream_window_differs_only_in_its_edge_frames(embedder):
    """A window inside a recording: interior frames equal the full graph's, edges use real audio."""
    x = _clips(1, 4.0)[0]
    win, start = 32000, 8000  # a 2 s window starting at 0.5 s
    stream = FrameStream(embedder)
    frames = np.concatenate([stream.push(x), stream.flush()], axis=1)
    n = embedder.frames_per_window(win)
    streamed = frames[:, start // 160 : start // 160 + n]
    alone = embedder.frames(np.pad(x[start : start + win], 256, mode="reflect"))
    assert streamed.shape == alone.shape == (64, 201)
    edge = int(np.ceil(256 / 160))  # 2 frames at each end see the reflection
    np.testing.assert_allclose(streamed[:, edge:-edge], alone[:, edge:-edge], atol=1e-3)
    assert np.max(np.abs(streamed[:, 0] - alone[:, 0])) > 1e-2  # real context vs reflection
    # the backbone on the window-alone frames is exactly the full graph on that window
    np.testing.assert_allclose(
        embedder.embed_frames(alone[None]), embedder.embed(x[None, start : start + win]), atol=1e-5
    )
    # and the streamed window gives nearly the same embedding (only 4 of 201 frames differ)
    a, b = embedder.embed_frames(streamed[None])[0], embedder.embed_frames(alone[None])[0]
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_embed_recording_windows_and_errors(embedder):
    x = _clips(1, 3.0)[0]
    starts, emb = embed_recording(embedder, x, 32000, 8000)
    assert starts.tolist() == [0, 8000, 16000] and emb.shape == (3, 192)
    with pytest.raises(ValueError, match="multiple of the frame hop"):
        embed_recording(embedder, x, 32000, 8001)
    with pytest.raises(ValueError, match="shorter than the minimum"):
        embed_recording(embedder, x[:1000], 32000, 8000, min_samples=16000)
    with pytest.raises(ValueError, match="NaN or inf"):
        embedder.embed(np.full((1, 16000), np.nan, np.float32))
    with pytest.raises(ValueError, match="mel bands"):
        embedder.embed_frames(np.zeros((1, 10, 100), np.float32))


# ----------------------------------------------------------------------------- int8


@pytest.fixture(scope="module")
def int8_full(enc, tmp_path_factory):
    from export.quantize import quantize_encoder

    return quantize_encoder(enc.full, tmp_path_factory.mktemp("q") / "encoder.int8.onnx")


def test_int8_quantizes_weight_matmuls_but_not_the_front_end(int8_full):
    import onnx

    ops = [n.op_type for n in onnx.load(str(int8_full)).graph.node]
    assert ops.count("DynamicQuantizeLinear") + ops.count("MatMulInteger") > 0
    assert "ConvInteger" not in ops  # the STFT convolution stays float
    g = onnx.load(str(int8_full)).graph
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    mel = [
        n
        for n in g.node
        if n.op_type == "MatMul" and any(inits.get(i) == (257, 64) for i in n.input)
    ]
    assert len(mel) == 1  # the mel filterbank product is still a float MatMul


def test_int8_drift_is_measured_and_small(enc, int8_full):
    from export.package_writer import MachineSpec
    from export.quantize import check_drift, measure_drift
    from monitor.model.scoring import scorer_by_name

    fp = Embedder({"encoder": enc.full})
    bank = fp.embed(_clips(32, 2.0, seed=1))
    spec = MachineSpec("fan", bank, ["source"] * 32, scorer_by_name("knn", k=2).fit(bank))
    queries = np.concatenate(
        [_clips(8, 2.0, seed=2), synthetic_machine_audio("fan", 8, 2.0, seed=3, anomalous=True)]
    )
    rep = measure_drift(enc.full, int8_full, [spec], queries)
    assert rep["embedding"]["min_cosine"] > 0.99
    assert rep["machines"]["fan"]["spearman"] > 0.9
    assert rep["machines"]["fan"]["decision_agreement"] >= 0.9
    check_drift(rep)  # within tolerance: no exception
    rep["embedding"]["min_cosine"] = 0.5
    with pytest.raises(ExportError, match="int8 encoder drifts too far"):
        check_drift(rep)
