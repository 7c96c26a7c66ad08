"""The networks, and the scoring head that is exported to ONNX. Nothing else.

Every network maps scaled inputs to (reconstruction, latent code): the dense autoencoder
maps rows [N, F]; the windowed ones map windows [N, W, F] of one entity's last W samples.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from trainer.config import SCORES, ScoreKind, TrainConfig

__all__ = [
    "Autoencoder",
    "ConvAutoencoder",
    "FlatWindowAutoencoder",
    "RecurrentAutoencoder",
    "ScoringModel",
    "network_for",
]

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


class FlatWindowAutoencoder(nn.Module):
    """The dense autoencoder on a flattened window: [N, W, F] -> [N, W * F] and back."""

    def __init__(
        self,
        n_features: int,
        window: int,
        hidden: tuple[int, ...],
        latent: int,
        activation: str,
        sigmoid_output: bool,
    ):
        super().__init__()
        self.shape = (window, n_features)
        self.dense = Autoencoder(n_features * window, hidden, latent, activation, sigmoid_output)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, h = self.dense(z.flatten(1))
        return r.unflatten(1, self.shape), h


class ConvAutoencoder(nn.Module):
    """1-D convolutions over time (features are channels), then a dense bottleneck.

    Stride 1 and 'same' padding keep the window length, so any W works; the bottleneck
    makes the code size the same K as the dense model's.
    """

    def __init__(
        self,
        n_features: int,
        window: int,
        channels: tuple[int, ...],
        latent: int,
        kernel_size: int,
        activation: str,
        sigmoid_output: bool,
    ):
        super().__init__()
        act = _ACTIVATIONS[activation]
        widths = [n_features, *channels]
        encoder: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            encoder += [nn.Conv1d(a, b, kernel_size, padding="same"), act()]
        decoder: list[nn.Module] = []
        back = widths[::-1]
        for i, (a, b) in enumerate(itertools.pairwise(back)):
            decoder.append(nn.Conv1d(a, b, kernel_size, padding="same"))
            if i < len(back) - 2:
                decoder.append(act())
        self.encoder = nn.Sequential(*encoder)
        self.to_latent = nn.Linear(channels[-1] * window, latent)
        self.from_latent = nn.Sequential(nn.Linear(latent, channels[-1] * window), act())
        self.decoder = nn.Sequential(*decoder)
        self.inner = (channels[-1], window)
        self.sigmoid_output = sigmoid_output

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.encoder(z.transpose(1, 2))  # [N, C, W]
        h = self.to_latent(c.flatten(1))
        r = self.decoder(self.from_latent(h).unflatten(1, self.inner)).transpose(1, 2)
        return (torch.sigmoid(r) if self.sigmoid_output else r), h


class RecurrentAutoencoder(nn.Module):
    """LSTM or GRU sequence autoencoder: the encoder's last state becomes the code, which
    the decoder unrolls over the window (the code repeated at every step)."""

    def __init__(
        self,
        n_features: int,
        window: int,
        hidden: tuple[int, ...],
        latent: int,
        cell: str,
        sigmoid_output: bool,
    ):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.encoder = nn.ModuleList(
            rnn(a, b, batch_first=True) for a, b in itertools.pairwise([n_features, *hidden])
        )
        self.to_latent = nn.Linear(hidden[-1], latent)
        self.decoder = nn.ModuleList(
            rnn(a, b, batch_first=True) for a, b in itertools.pairwise([latent, *hidden[::-1]])
        )
        self.out = nn.Linear(hidden[0], n_features)
        self.window = window
        self.sigmoid_output = sigmoid_output

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = z
        for layer in self.encoder:
            s, _ = layer(s)
        h = self.to_latent(s[:, -1])
        s = h.unsqueeze(1).expand(-1, self.window, -1)
        for layer in self.decoder:
            s, _ = layer(s)
        r = self.out(s)
        return (torch.sigmoid(r) if self.sigmoid_output else r), h


def network_for(cfg: TrainConfig, n_features: int) -> nn.Module:
    """The network that `cfg` describes, for `n_features` input features."""
    latent, sigmoid = cfg.latent_for(n_features), cfg.loss == "bce"
    if cfg.model == "dense" and cfg.window == 1:
        return Autoencoder(n_features, cfg.hidden, latent, cfg.activation, sigmoid)
    if cfg.model == "dense":
        return FlatWindowAutoencoder(
            n_features, cfg.window, cfg.hidden, latent, cfg.activation, sigmoid
        )
    if cfg.model == "conv":
        return ConvAutoencoder(
            n_features, cfg.window, cfg.hidden, latent, cfg.kernel_size, cfg.activation, sigmoid
        )
    return RecurrentAutoencoder(n_features, cfg.window, cfg.hidden, latent, cfg.model, sigmoid)


class ScoringModel(nn.Module):
    """Raw units in; what the detector needs out. Scaling is part of the graph.

    Input: rows x [N, F], or windows x [N, W, F] (oldest sample first). Outputs: score [N]
    (mean squared error in scaled units), feature_error [N, F], reconstruction [N, F]
    (expected values, raw units), latent [N, K]. For windows, reconstruction is that of
    the newest sample, the one the decision is about; score and feature_error are the
    newest sample's (`score` "newest") or their means over the window's samples
    ("window-mean"). Either way score = feature_error.mean(dim=1), so the detector's
    per-feature shares explain the score it alarms on.

    With `whiten` = (W, W^-1), the scaled units are ZCA-whitened z-scores: a model that
    reconstructs nothing then scores Hotelling's T^2 / F.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        offset: torch.Tensor,
        scale: torch.Tensor,
        whiten: tuple[torch.Tensor, torch.Tensor] | None = None,
        score: ScoreKind = "newest",
    ):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.autoencoder = autoencoder
        self.window_mean = score == "window-mean"
        self.register_buffer("offset", offset.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())
        self.whitened = whiten is not None
        if whiten is not None:
            self.register_buffer("whiten", whiten[0].detach().clone().float())
            self.register_buffer("unwhiten", whiten[1].detach().clone().float())

    @property
    def score(self) -> ScoreKind:
        return "window-mean" if self.window_mean else "newest"

    def scoring(self, score: ScoreKind) -> ScoringModel:
        """The same network and scaling, scoring windows as `score` says: the definition
        only changes how the per-sample errors are reduced, so no refit is needed."""
        if score == self.score:
            return self
        whiten = (self.whiten, self.unwhiten) if self.whitened else None
        return ScoringModel(self.autoencoder, self.offset, self.scale, whiten, score).eval()

    def scale_inputs(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.offset) / self.scale
        return z @ self.whiten if self.whitened else z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.scale_inputs(x)
        r, h = self.autoencoder(z)
        feature_error = (r - z) ** 2
        if feature_error.dim() == 3:  # windows: [N, W, F] -> [N, F]; the newest expectation
            r = r[:, -1]
            feature_error = feature_error.mean(dim=1) if self.window_mean else feature_error[:, -1]
        if self.whitened:
            r = r @ self.unwhiten
        return feature_error.mean(dim=1), feature_error, r * self.scale + self.offset, h
