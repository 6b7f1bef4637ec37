"""The official DCASE 2023-2025 Task 2 baseline autoencoder (nttcslab `AENet`), MSE mode.

Dense encoder 640 -> 128 -> 128 -> 128 -> 128 -> 8 and mirror decoder 8 -> 128 x 4 -> 640; every
hidden layer is Linear + BatchNorm1d(momentum 0.01, eps 1e-3) + ReLU, including the bottleneck,
and the output layer is a plain Linear. The baseline's Mahalanobis mode keeps two covariance
matrices as extra parameters; MSE mode never uses them, so they are left out here.
"""

from __future__ import annotations

import torch
from torch import nn

# The baseline's feature: 5 consecutive frames of 128 log-mel bands, concatenated.
N_MELS = 128
N_FRAMES = 5
INPUT_DIM = N_MELS * N_FRAMES
HIDDEN = 128
BOTTLENECK = 8


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    """Linear + BN + ReLU with the baseline's (Keras-inherited) BatchNorm settings."""
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3), nn.ReLU()]


class DcaseAutoencoder(nn.Module):
    """`forward(x [B, input_dim]) -> (reconstruction [B, input_dim], code [B, bottleneck])`."""

    def __init__(
        self, input_dim: int = INPUT_DIM, hidden: int = HIDDEN, bottleneck: int = BOTTLENECK
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.encoder = nn.Sequential(
            *_block(input_dim, hidden),
            *_block(hidden, hidden),
            *_block(hidden, hidden),
            *_block(hidden, hidden),
            *_block(hidden, bottleneck),
        )
        self.decoder = nn.Sequential(
            *_block(bottleneck, hidden),
            *_block(hidden, hidden),
            *_block(hidden, hidden),
            *_block(hidden, hidden),
            nn.Linear(hidden, input_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.reshape(-1, self.input_dim))
        return self.decoder(z), z
