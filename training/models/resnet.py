"""ResNet-18 on log-mel, as in Shin & Lee, "Two-stage contrastive learning for anomalous sound
detection" (DCASE 2023).

Written here because torchvision is not a dependency. Layout: BasicBlock [2, 2, 2, 2], widths
64/128/256/512, a 7x7 stride-2 stem and max-pool, global average pooling: the ImageNet ResNet-18
with one input channel.
"""

from __future__ import annotations

import torch
from torch import nn

from monitor.audio import frontend as fe
from training.features import LogMel


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` that computes a strided convolution with a one-column output in float32.

    Under CPU bfloat16 autocast, oneDNN's AMX kernels (Intel Xeon with AMX-BF16, torch 2.13)
    return garbage or NaN for strided convolutions whose output is one frame wide, which short
    crops reach in the deeper stages; everywhere else bf16 stays on. Parameters and state-dict
    keys are those of `nn.Conv2d`, and outside autocast (export, eval) it is `nn.Conv2d` exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_autocast_enabled("cpu")
            and x.device.type == "cpu"
            and self.stride[1] > 1
            and (x.shape[-1] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] == 0
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNetEncoder(nn.Module):
    """Waveform ``[B, samples]`` -> embedding ``[B, 512]``.

    Front-end: librosa-style log-mel (n_fft 2048, hop 512, 128 Slaney mels) in dB. Normalisation:
    ``input_bn``, a BatchNorm over the 128 mel bins (each bin standardised with running statistics
    learnt in training, as CED's ``init_bn``), so no data-set statistics have to be computed and
    stored separately; in eval it is a fixed per-bin affine map and exports as one ONNX op.
    """

    embed_dim = 512

    def __init__(self, n_mels: int = fe.LOGMEL_N_MELS) -> None:
        super().__init__()
        self.front_end = LogMel(fe.LOGMEL_N_FFT, fe.LOGMEL_HOP, n_mels)
        self.input_bn = nn.BatchNorm2d(n_mels)
        self.conv1 = Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths, layers, in_ch = (64, 128, 256, 512), [], 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_ch, w, stride), BasicBlock(w, w)))
            in_ch = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, samples], got {tuple(waveform.shape)}")
        return self.forward_logmel(self.front_end(waveform).unsqueeze(1))

    def forward_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """Embedding from a dB log-mel ``[B, 1, n_mels, T]`` (for log-mel-domain augmentation)."""
        if logmel.dim() != 4 or logmel.shape[1] != 1:
            raise ValueError(f"expected log-mel [B, 1, n_mels, T], got {tuple(logmel.shape)}")
        x = self.input_bn(logmel.transpose(1, 2)).transpose(1, 2)  # mel bins as BN channels
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


class ProjectionHead(nn.Module):
    """SimCLR projection: Linear-ReLU-Linear (512 -> 512 -> 128 in Shin & Lee)."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
