"""A small U-Net on dB mel frames that predicts the machine's time-frequency mask.

Why this shape: the separator runs in front of an encoder on a live stream, hop by hop. So
- it pools and upsamples along FREQUENCY only; time keeps its resolution;
- its convolutions are "valid" along time (no time padding): every output frame depends on
  exactly ``context`` input frames on each side and on nothing else. A stream is separated by
  feeding the new frames plus ``context`` frames of history on each side, and the result equals
  separating the whole recording, in every frame that has its full context;
- offline, a recording is replicate-padded by ``context`` frames at both ends first, so any length
  (even one frame) gives an output of the same length. The streaming runtime pads the stream's
  first and last frames the same way, so a file scored as one window matches exactly.

Time context: each level has one 3-wide (time) convolution and one 1-wide, so
``context = 2 * levels + 1`` frames (7 with 3 levels: 70 ms at CED's 10 ms hop).
Input normalisation is a BatchNorm over mel bands (a fixed per-band affine map in eval mode, so
still frame-local).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the mask network; stored in the separator checkpoint."""

    n_mels: int = 64
    channels: int = 8  # first level; doubles per level (16: 4x the parameters, 2x the time)
    levels: int = 3  # frequency poolings by 2: n_mels must divide by 2**levels

    @property
    def context(self) -> int:
        """Input frames needed on each side of an output frame."""
        return 2 * self.levels + 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    """3x3 (freq x time, time valid) then 3x1 conv, each with BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, (3, 3), padding=(1, 0), bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, (3, 1), padding=(1, 0), bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """dB mel ``[B, n_mels, T + 2 * context]`` -> mask logits ``[B, n_mels, T]``."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        if cfg.levels < 1 or cfg.channels < 1:
            raise ValueError(f"UNet: levels and channels must be >= 1, got {cfg}")
        if cfg.n_mels % (2**cfg.levels):
            raise ValueError(
                f"UNet: n_mels={cfg.n_mels} must be divisible by 2**levels={2**cfg.levels}"
            )
        self.config = cfg
        self.context = cfg.context
        self.input_bn = nn.BatchNorm2d(cfg.n_mels)
        widths = [cfg.channels * 2**i for i in range(cfg.levels + 1)]
        self.down = nn.ModuleList()
        cin = 1
        for w in widths[:-1]:
            self.down.append(_block(cin, w))
            cin = w
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(cfg.levels)):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], (2, 1), stride=(2, 1)))
            self.dec.append(_block(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, db: torch.Tensor) -> torch.Tensor:
        levels = self.config.levels
        # per-band normalisation: [B, M, T] -> [B, M, 1, T] (bands as channels) -> [B, 1, M, T]
        x = self.input_bn(db.unsqueeze(2)).transpose(1, 2)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, (2, 1))
        x = self.bottom(x)
        for j, (up, dec) in enumerate(zip(self.up, self.dec, strict=True)):
            i = levels - 1 - j
            skip = skips[i]
            # the skip saw fewer time-valid convs: crop the same number of frames on each side
            c = 2 * levels - 2 * i - 1
            x = dec(torch.cat([up(x), skip[..., c : skip.shape[-1] - c]], dim=1))
        return self.head(x)[:, 0]


def pad_frames(db: torch.Tensor, context: int) -> torch.Tensor:
    """Replicate the first and last frame ``context`` times: ``[B, M, T] -> [B, M, T + 2c]``."""
    if context == 0:
        return db
    return F.pad(db, (context, context), mode="replicate")
