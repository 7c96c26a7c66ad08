"""Every training default in one place. The bundle records the resolved config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

__all__ = ["AUTO_FOLDS_ROWS", "MODELS", "SCORES", "Gate", "TrainConfig"]

AUTO_FOLDS_ROWS = 5_000

Variant = Literal["plain", "denoising", "sparse", "contractive"]
ModelKind = Literal["dense", "conv", "lstm", "gru"]
MODELS: tuple[str, ...] = get_args(ModelKind)
ScoreKind = Literal["newest", "window-mean"]
SCORES: tuple[str, ...] = get_args(ScoreKind)


@dataclass(frozen=True)
class TrainConfig:
    # -- network ----------------------------------------------------------------------------
    # dense: an MLP (on the flattened window when window > 1); conv: 1-D convolutions over
    # time; lstm / gru: a recurrent encoder and decoder. Windowed models see the last
    # `window` samples of one entity and score the newest; window 1 is a dense model on
    # single rows (input [N, F]).
    model: ModelKind = "dense"
    window: int = 1
    entity_column: str | None = None  # windows never straddle two entities; None: one entity
    # What a window's score is: "newest", the newest sample's error alone (alarms as soon as
    # one sample is off); "window-mean", the mean of every sample's error over the window
    # (less noise, so weak but lasting faults stand out, at the price of up to W samples of
    # delay). Window 1: the same thing. Not the default: on TEP (W=20) window-mean detects
    # far more (mean FDR over 18 faults 95.7% against 91.8%), but a threshold calibrated on
    # 500 normal rows let 0-6% false alarms through on a new normal run, seed to seed,
    # instead of staying under 1% (bench/results/tep.md): slow normal drift that the
    # calibration rows never showed adds up over a window. With `lags` 3 (below) the same
    # window held 0-0.21% on every seed, mean FDR 98.5% (12 faults) and 96.2% (18).
    score: ScoreKind = "newest"
    # Layer sizes, mirrored by the decoder: dense widths, conv channels, recurrent units.
    hidden: tuple[int, ...] = (64, 32)
    kernel_size: int = 3  # conv: taps over time (odd keeps the window centred)
    latent: int = 0  # 0: auto, max(2, min(16, features // 3)); must stay below the feature count
    activation: Literal["relu", "tanh", "gelu"] = "gelu"
    # -- regularised variants (the classic autoencoder literature) -----------------------
    variant: Variant = "plain"
    noise_std: float = 0.1  # denoising: Gaussian input noise, in standardised units
    sparsity: float = 1e-3  # sparse: weight of the L1 penalty on the latent code
    contraction: float = 1e-3  # contractive: weight of ||d latent / d input||_F^2
    loss: Literal["mse", "bce"] = "mse"  # bce scales inputs to [0, 1] instead of z-scores
    # -- input scaling (mse only) --------------------------------------------------------
    # "standard": z-scores. "whiten": z-scores, then ZCA whitening with the full covariance
    # of the normal rows, so that the score is a Mahalanobis-type distance: a tight relation
    # between features (a flow and the valve that sets it) counts as much as a loud
    # direction instead of drowning in the reconstruction error of the noisy ones.
    # "auto": whiten with the MSE loss (measured on TEP: the z-scored model misses faults
    # that break tight relations, 84.6% against 95.6% mean detection rate), z-scores with BCE.
    scaling: Literal["auto", "standard", "whiten"] = "auto"
    whiten_floor: float = 1e-6  # eigenvalues below floor x the largest are raised to it
    # Lag whitening (windowed models, with whitening): stack each L consecutive samples of a
    # window into one vector of L x F z-scores and whiten those vectors together, with their
    # covariance across lags (x_t against x_t-1, ...), so that a broken dynamic relation (a
    # controller that stops acting, a valve that sticks) counts like a broken static one.
    # The network then sees the window's W - L + 1 lag vectors instead of its W samples, and
    # with a small code the score is close to the lagged ("dynamic PCA") Hotelling T^2 / (L F).
    # 1: no stacking, each sample whitened on its own.
    lags: int = 1
    # -- categorical features (dense single-row models) -----------------------------------
    # A categorical's values become codes (detector/contract/categorical.py): a vocabulary of the
    # values seen at least `min_count` times (rarer ones share the reserved bucket with
    # values never seen, so the model learns how often "something new" happens), or, past
    # `vocabulary_max` distinct values, feature hashing into `hash_buckets` buckets. The
    # network takes up to `onehot_max` codes one-hot and more through a learned embedding,
    # and reconstructs a distribution over the codes: the error is the cross-entropy,
    # divided by the field's entropy (at least `entropy_floor` nats) so that it counts like
    # a z-scored numeric feature's squared error.
    min_count: int = 5
    vocabulary_max: int = 1000
    hash_buckets: int = 1024
    onehot_max: int = 16
    entropy_floor: float = 0.5
    # -- optimisation --------------------------------------------------------------------
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 30  # early stopping on validation loss
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # -- time-ordered split of the normal data: train | validation | calibration ---------
    validation_fraction: float = 0.15
    calibration_fraction: float = 0.15
    # -- threshold calibration on held-out normal data ----------------------------------
    # POT at half a 1% false-alarm budget held the budget on TEP where the 0.99 quantile of
    # a few hundred held-out scores did not (bench/results/tep.md); with too few scores
    # above the initial threshold it falls back to the quantile 1 - pot_risk.
    calibration: Literal["quantile", "pot"] = "pot"
    quantile: float = 0.99  # target false-positive rate = 1 - quantile
    pot_risk: float = 0.005  # POT: target probability of exceeding the threshold
    pot_level: float = 0.95  # POT: quantile of the initial threshold t
    margin: float = 1.0  # multiply the calibrated value (>1 trades recall for fewer alarms)
    # Cross-fitting: score every normal sample with a model that never saw it (K time
    # blocks), calibrate on all of them, then fit the final model on everything. Worth
    # its K extra fits when normal data is scarce; 0 = a single held-out block; -1 = auto:
    # 5 folds below AUTO_FOLDS_ROWS rows (75 held-out rows gave 5.8% false alarms on TEP).
    folds: int = -1
    # -- bookkeeping ---------------------------------------------------------------------
    name: str = "vigil-model"
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self, rows: int) -> TrainConfig:
        """The configuration with every 'auto' decided, as the bundle records it."""
        from dataclasses import replace

        scaling = (
            self.scaling
            if self.scaling != "auto"
            else ("whiten" if self.loss == "mse" else "standard")
        )
        folds = self.folds if self.folds >= 0 else (5 if rows < AUTO_FOLDS_ROWS else 0)
        score = self.score if self.window > 1 else "newest"  # a 1-sample window has one error
        return replace(self, scaling=scaling, folds=folds, score=score)

    @property
    def positions(self) -> int:
        """Lag vectors per window, the length of the sequence the network sees."""
        return self.window - self.lags + 1

    def latent_for(self, n_features: int) -> int:
        return self.latent or max(2, min(16, n_features // 3))

    def check(self) -> None:
        """Reject combinations that cannot work, with what to change."""
        if self.window < 1:
            raise ValueError(f"--window must be 1 or more, got {self.window}")
        if self.model != "dense" and self.window < 2:
            raise ValueError(
                f"--model {self.model} looks at a sequence: give it --window 2 or more "
                "(e.g. --window 10), or use --model dense for single rows"
            )
        if self.kernel_size < 1:
            raise ValueError(f"--kernel-size must be 1 or more, got {self.kernel_size}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"--hidden needs at least one positive size, got {self.hidden}")
        if self.scaling == "whiten" and self.loss == "bce":
            raise ValueError(
                "whitened inputs are not in [0, 1]: use --loss mse with --scaling whiten"
            )
        if self.lags < 1:
            raise ValueError(f"--lags must be 1 or more, got {self.lags}")
        if self.lags > 1 and (self.scaling == "standard" or self.loss == "bce"):
            raise ValueError(
                f"--lags {self.lags} whitens stacked samples together: it needs --scaling whiten "
                "(or auto, with --loss mse)"
            )
        if self.lags > self.window:
            raise ValueError(
                f"--lags {self.lags} stacks {self.lags} consecutive samples of a window: give "
                f"--window {self.lags} or more (e.g. --window 20), or lower --lags"
            )
        for name in ("min_count", "vocabulary_max", "hash_buckets", "onehot_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be 1 or more")
        if self.entropy_floor <= 0:
            raise ValueError(f"entropy_floor must be above 0, got {self.entropy_floor}")
        if not 0.0 < self.whiten_floor < 1.0:
            raise ValueError(f"--whiten-floor must be in (0, 1), got {self.whiten_floor}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass(frozen=True)
class Gate:
    """What a retrained candidate must show on the held-out newest rows to be published
    (`vigil-train retrain`, trainer/retrain.py)."""

    # Held-out alarm share at most this x the calibrated share, and this x the live model's.
    max_alert_ratio: float = 3.0
    # Held-out scores at most this far from the calibration deciles. Off by default: the
    # held-out rows are the newest few hours, so a daily cycle alone can move their PSI.
    max_psi: float | None = None
    holdout: float = 0.2  # newest share of the collected rows, never trained on
