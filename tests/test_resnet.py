"""ResNet-18 encoder and projection head of the second seed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from training.features import LogMel
from training.models.resnet import BasicBlock, ProjectionHead, ResNetEncoder

SR = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ResNetEncoder().eval()


def _wave(seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=g)


@pytest.mark.parametrize("seconds,frames", [(1.0, 32), (10.0, 313)])
def test_shapes(encoder, seconds, frames):
    x = _wave(seconds)
    with torch.no_grad():
        logmel = encoder.front_end(x)
        emb = encoder(x)
    assert logmel.shape == (2, 128, frames)
    assert emb.shape == (2, ResNetEncoder.embed_dim) == (2, 512)
    assert torch.isfinite(emb).all()


def test_architecture_is_resnet18(encoder):
    blocks = [m for m in encoder.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8  # [2, 2, 2, 2]
    assert encoder.conv1.in_channels == 1
    widths = [layer[0].conv1.out_channels for layer in (encoder.layer1, encoder.layer2,
              encoder.layer3, encoder.layer4)]  # fmt: skip
    assert widths == [64, 128, 256, 512]
    n_params = sum(p.numel() for n, p in encoder.named_parameters() if n.startswith(("conv", "bn",
                   "layer")))  # fmt: skip
    assert 11.1e6 < n_params < 11.2e6  # ImageNet ResNet-18 less its FC head and 2 input channels


def test_front_end_is_second_seed_logmel(encoder):
    fe = encoder.front_end
    assert isinstance(fe, LogMel)
    assert (fe.n_fft, fe.hop, fe.n_mels) == (2048, 512, 128)


def test_forward_equals_forward_logmel(encoder):
    x = _wave(2.0)
    with torch.no_grad():
        logmel = encoder.front_end(x).unsqueeze(1)
        torch.testing.assert_close(encoder(x), encoder.forward_logmel(logmel))


def test_input_normalisation_is_per_mel_bin():
    """Training the BN on data with a per-bin offset must remove that offset in eval."""
    torch.manual_seed(1)
    enc = ResNetEncoder().train()
    offset = torch.linspace(-80.0, 0.0, 128)[None, None, :, None]
    with torch.no_grad():
        for _ in range(60):  # BN momentum 0.1: 0.9**60 of the initial 0 remains
            enc.forward_logmel(offset + torch.randn(4, 1, 128, 8))
    enc.eval()
    assert torch.allclose(enc.input_bn.running_mean, offset.flatten(), atol=1.0)


def test_gradient_flows():
    torch.manual_seed(2)
    enc, head = ResNetEncoder().train(), ProjectionHead()
    z = head(enc(_wave(1.0, batch=4)))
    assert z.shape == (4, 128)
    z.pow(2).mean().backward()
    for name, p in list(enc.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_projection_head_layout():
    head = ProjectionHead(512, 256, 64)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]
    assert head(torch.randn(3, 512)).shape == (3, 64)


def test_bad_input_shapes(encoder):
    with pytest.raises(ValueError, match=r"\[B, samples\]"):
        encoder(torch.zeros(SR))
    with pytest.raises(ValueError, match=r"\[B, 1, n_mels, T\]"):
        encoder.forward_logmel(torch.zeros(2, 128, 32))


def test_onnx_export(tmp_path, encoder):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "resnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder, (_wave(1.0),), str(path), dynamo=False, opset_version=17,
            input_names=["waveform"], output_names=["embedding"],
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seconds, batch in [(1.0, 1), (3.0, 2)]:
        x = _wave(seconds, batch, seed=3)
        with torch.no_grad():
            ref = encoder(x).numpy()
        out = session.run(None, {"waveform": x.numpy()})[0]
        assert out.shape == (batch, 512)
        assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_bf16_autocast_matches_float32_on_narrow_crops():
    """Short crops reach strided convolutions with one-frame outputs, which oneDNN's AMX bf16
    kernels get wrong (NaN); the encoder computes those in float32 and the rest in bf16."""
    torch.manual_seed(0)
    model = ResNetEncoder().eval()
    for frames in (1, 2, 5, 9, 16):
        x = torch.randn(4, 1, 128, frames)
        with torch.no_grad():
            ref = model.forward_logmel(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model.forward_logmel(x).float()
        assert torch.isfinite(low).all(), frames
        assert torch.allclose(low, ref, rtol=0.1, atol=0.1 * ref.abs().max().item()), frames
