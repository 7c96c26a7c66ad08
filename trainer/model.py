"""The networks, and the scoring head that is exported to ONNX. Nothing else.

Every network maps scaled inputs to (reconstruction, latent code): the dense autoencoder
maps rows [N, F]; the windowed ones map windows [N, W, F] of one entity's last W samples,
or with lag whitening (`lags` L > 1) the window's W - L + 1 lag vectors [N, W - L + 1, L F].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.config import SCORES, ScoreKind, TrainConfig

__all__ = [
    "Autoencoder",
    "Categories",
    "ConvAutoencoder",
    "FlatWindowAutoencoder",
    "MixedAutoencoder",
    "RecurrentAutoencoder",
    "ScoringModel",
    "network_for",
    "stack_lags",
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


@dataclass(frozen=True)
class Categories:
    """Which input columns hold categorical codes, how many codes each has, and the weight of
    each one's cross-entropy (1 / its entropy on the training rows, so that a model that
    learned nothing scores 1 on a categorical as it scores 1 on a z-scored numeric feature:
    neither kind dominates the score)."""

    columns: tuple[int, ...]
    sizes: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def fit(
        cls, codes: np.ndarray, columns: Sequence[int], sizes: Sequence[int], floor: float
    ) -> Categories:
        """From the training rows' codes [N, C]; an entropy below `floor` nats counts as
        `floor`, so that a nearly constant field does not turn every rare value into a
        storm."""
        weights = []
        for j, size in enumerate(sizes):
            p = np.bincount(codes[:, j].astype(np.int64), minlength=size) / max(1, len(codes))
            entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
            weights.append(1.0 / max(entropy, floor))
        return cls(tuple(columns), tuple(sizes), tuple(weights))


class MixedAutoencoder(nn.Module):
    """The dense autoencoder over numeric and categorical features together.

    Input z [N, F]: scaled numeric values, and codes in the categorical columns. A categorical
    enters one-hot (at most `onehot_max` codes) or as a learned embedding, and comes out as
    logits over its codes. Output r [N, F_numeric + sum(sizes)]: the numeric reconstructions,
    then each categorical's logits; `errors` and `expected` read it back in feature order.
    """

    def __init__(
        self,
        n_features: int,
        categories: Categories,
        hidden: tuple[int, ...],
        latent: int,
        activation: str,
        onehot_max: int,
    ):
        super().__init__()
        cats = set(categories.columns)
        numeric = [j for j in range(n_features) if j not in cats]
        self.categories = categories
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long))
        order = torch.tensor([*numeric, *categories.columns])
        self.register_buffer("feature_order", torch.argsort(order))  # back to feature order
        self.register_buffer("weights", torch.tensor(categories.weights, dtype=torch.float32))
        mask = torch.ones(n_features)
        mask[list(categories.columns)] = 0.0
        self.register_buffer("numeric_mask", mask)  # denoising adds noise here only
        self.embeddings = nn.ModuleList(
            nn.Embedding.from_pretrained(torch.eye(size), freeze=True)
            if size <= onehot_max
            else nn.Embedding(size, embedding_width(size))
            for size in categories.sizes
        )
        width = len(numeric) + sum(e.embedding_dim for e in self.embeddings)
        out = len(numeric) + sum(categories.sizes)
        self.encoder = _mlp([width, *hidden, latent], activation, last_activation=False)
        self.decoder = _mlp([latent, *hidden[::-1], out], activation, last_activation=False)

    def _codes(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [
            z[:, c].long().clamp(0, size - 1)
            for c, size in zip(self.categories.columns, self.categories.sizes, strict=True)
        ]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [z[:, self.numeric]]
        parts += [emb(c) for emb, c in zip(self.embeddings, self._codes(z), strict=True)]
        h = self.encoder(torch.cat(parts, dim=1))
        return self.decoder(h), h

    def _logits(self, r: torch.Tensor) -> list[torch.Tensor]:
        return list(r[:, len(self.numeric) :].split(list(self.categories.sizes), dim=1))

    def errors(self, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """[N, F]: squared error of each numeric feature, weighted cross-entropy of each
        categorical one's code."""
        numeric = (r[:, : len(self.numeric)] - z[:, self.numeric]) ** 2
        ce = [
            torch.logsumexp(logits, dim=1) - logits.gather(1, code.unsqueeze(1)).squeeze(1)
            for logits, code in zip(self._logits(r), self._codes(z), strict=True)
        ]
        return torch.cat([numeric, torch.stack(ce, dim=1) * self.weights], dim=1)[
            :, self.feature_order
        ]

    def expected(self, r: torch.Tensor) -> torch.Tensor:
        """[N, F]: numeric reconstructions and each categorical's most likely code."""
        codes = [logits.argmax(dim=1).float() for logits in self._logits(r)]
        return torch.cat([r[:, : len(self.numeric)], torch.stack(codes, dim=1)], dim=1)[
            :, self.feature_order
        ]


def embedding_width(codes: int) -> int:
    """A learned embedding's width: the fast.ai rule of thumb, at most 32."""
    return min(32, max(2, round(1.6 * codes**0.56)))


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


def network_for(
    cfg: TrainConfig, n_features: int, categories: Categories | None = None
) -> nn.Module:
    """The network that `cfg` describes, for `n_features` input features (`categories` of
    them categorical). With lags L, it sees a sequence of W - L + 1 lag vectors of
    L x n_features values each."""
    latent, sigmoid = cfg.latent_for(n_features), cfg.loss == "bce"
    inputs, steps = n_features * cfg.lags, cfg.positions
    if categories is not None and categories.columns:
        return MixedAutoencoder(
            n_features, categories, cfg.hidden, latent, cfg.activation, cfg.onehot_max
        )
    if cfg.model == "dense" and cfg.window == 1:
        return Autoencoder(n_features, cfg.hidden, latent, cfg.activation, sigmoid)
    if cfg.model == "dense":
        return FlatWindowAutoencoder(inputs, steps, cfg.hidden, latent, cfg.activation, sigmoid)
    if cfg.model == "conv":
        return ConvAutoencoder(
            inputs, steps, cfg.hidden, latent, cfg.kernel_size, cfg.activation, sigmoid
        )
    return RecurrentAutoencoder(inputs, steps, cfg.hidden, latent, cfg.model, sigmoid)


def stack_lags(z: torch.Tensor, lags: int) -> torch.Tensor:
    """Windows [N, W, F] -> lag vectors [N, W - L + 1, L F]: position p holds samples
    p .. p + L - 1 (oldest first), so the last F values of a vector are its newest sample."""
    positions = z.shape[1] - lags + 1
    return torch.cat([z[:, i : i + positions] for i in range(lags)], dim=2)


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

    With `lags` L > 1 (windows only, whitened), the z-scores of each L consecutive samples
    of the window are stacked into one vector of L F values (`stack_lags`), and `whiten`,
    of size L F, whitens those vectors with their covariance across lags: the network sees
    the W - L + 1 lag vectors and a model that reconstructs nothing scores the lagged
    Hotelling T^2 / (L F) of the newest vector ("newest") or its mean over the window's
    vectors ("window-mean"). ZCA keeps each whitened coordinate tied to one (lag, feature),
    so feature_error[f] is the squared error of feature f's L coordinates averaged over the
    lags (and over the positions for "window-mean"): the shares name the features whose
    values or dynamics broke, and score = feature_error.mean(dim=1) still holds.
    Reconstruction is the newest sample's, from the newest lag vector's expectation.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        offset: torch.Tensor,
        scale: torch.Tensor,
        whiten: tuple[torch.Tensor, torch.Tensor] | None = None,
        score: ScoreKind = "newest",
        lags: int = 1,
    ):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if lags < 1 or (lags > 1 and whiten is None):
            raise ValueError(f"lags must be 1, or more with whitening; got {lags}")
        self.autoencoder = autoencoder
        self.window_mean = score == "window-mean"
        self.lags = lags
        self.register_buffer("offset", offset.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())
        self.whitened = whiten is not None
        if whiten is not None:
            if whiten[0].shape[0] != lags * offset.shape[0]:
                raise ValueError(
                    f"whitening of size {whiten[0].shape[0]} does not fit {lags} lags of "
                    f"{offset.shape[0]} features"
                )
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
        model = ScoringModel(self.autoencoder, self.offset, self.scale, whiten, score, self.lags)
        return model.eval()

    def scale_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: (whitened) z-scores of rows or windows, or with lags the
        whitened lag vectors [N, W - L + 1, L F]."""
        z = (x - self.offset) / self.scale
        if self.lags > 1:
            z = stack_lags(z, self.lags)
        return z @ self.whiten if self.whitened else z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(self.scale_inputs(x))

    def head(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs from what the network sees (`scale_inputs`). The split lets a
        detector scale each sample once rather than once per window that holds it."""
        r, h = self.autoencoder(z)
        if isinstance(self.autoencoder, MixedAutoencoder):  # codes pass through the scaling
            feature_error, r = self.autoencoder.errors(r, z), self.autoencoder.expected(r)
        else:
            feature_error = (r - z) ** 2
        if feature_error.dim() == 3:  # windows: [N, W, F] -> [N, F]; the newest expectation
            r = r[:, -1]
            feature_error = feature_error.mean(dim=1) if self.window_mean else feature_error[:, -1]
        if self.whitened:
            r = r @ self.unwhiten
        if self.lags > 1:  # [N, L F] -> [N, F]: each feature's lags, and the newest sample
            n_features = self.offset.shape[0]
            feature_error = feature_error.unflatten(1, (self.lags, n_features)).mean(dim=1)
            r = r[:, -n_features:]
        return feature_error.mean(dim=1), feature_error, r * self.scale + self.offset, h
