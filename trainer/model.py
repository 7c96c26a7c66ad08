"""The networks, and the scoring head that is exported to ONNX. Nothing else."""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["Autoencoder", "ScoringModel"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _mlp(widths: list[int], activation: str, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_activation:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """Dense autoencoder on scaled inputs; the decoder mirrors the encoder's widths."""

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...] = (64, 32),
        latent: int = 8,
        activation: str = "gelu",
        sigmoid_output: bool = False,
    ):
        super().__init__()
        widths = [n_features, *hidden, latent]
        self.encoder = _mlp(widths, activation, last_activation=False)
        self.decoder = _mlp(widths[::-1], activation, last_activation=False)
        self.sigmoid_output = sigmoid_output

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(z)
        r = self.decoder(h)
        return (torch.sigmoid(r) if self.sigmoid_output else r), h


class ScoringModel(nn.Module):
    """Raw units in; what the detector needs out. Scaling is part of the graph.

    Outputs: score [N] (mean squared error in scaled units), feature_error [N, F],
    reconstruction [N, F] (expected values, raw units), latent [N, K].
    """

    def __init__(self, autoencoder: Autoencoder, offset: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("offset", offset.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())

    def scale_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.scale_inputs(x)
        r, h = self.autoencoder(z)
        feature_error = (r - z) ** 2
        return feature_error.mean(dim=1), feature_error, r * self.scale + self.offset, h
