"""The training loop: Adam, mini-batches, early stopping on validation loss.

Rows and windows go through the same loop: a mini-batch is gathered from the rows when it is
needed (`Windows.take`), so long windows over millions of rows fit in memory.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from detector.features.windows import gather
from trainer.config import TrainConfig
from trainer.data import Windows
from trainer.model import Categories, MixedAutoencoder, ScoringModel, network_for, stack_lags

__all__ = [
    "FitResult",
    "as_windows",
    "fit",
    "lag_vectors",
    "pick_device",
    "scaling_for",
    "whitening_for",
]


@dataclass
class FitResult:
    model: ScoringModel  # best weights, eval mode, on the CPU
    train_loss: list[float]
    val_loss: list[float]
    best_epoch: int
    device: str
    seconds: float


def pick_device(want: str) -> torch.device:
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def scaling_for(x: np.ndarray, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scores for MSE, min-max to [0, 1] for BCE. Constant columns get scale 1 so that
    any later deviation still shows as error instead of dividing by zero."""
    x64 = x.astype(np.float64)
    if loss == "bce":
        offset, scale = x64.min(axis=0), x64.max(axis=0) - x64.min(axis=0)
    else:
        offset, scale = x64.mean(axis=0), x64.std(axis=0)
    scale = np.where(scale > 1e-8 * np.maximum(1.0, np.abs(offset)), scale, 1.0)
    return torch.tensor(offset, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def whitening_for(
    z: np.ndarray, floor: float, keep: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening of standardised rows, W = U diag(lam^-1/2) U^T, and its inverse. The
    columns in `keep` (categorical codes) pass through both unchanged.

    ZCA is the whitening closest to the identity: each coordinate still belongs to its
    feature, so per-feature errors keep naming features. Eigenvalues below `floor` x the
    largest are raised to it: a direction with less variance than float32 inputs resolve
    would otherwise turn rounding into alarms.
    """
    rest = np.setdiff1d(np.arange(z.shape[1]), keep)
    lam, u = np.linalg.eigh(np.atleast_2d(np.cov(z[:, rest].astype(np.float64), rowvar=False)))
    lam = np.maximum(lam, floor * lam.max())
    w, w_inv = np.eye(z.shape[1]), np.eye(z.shape[1])
    w[np.ix_(rest, rest)] = (u / np.sqrt(lam)) @ u.T
    w_inv[np.ix_(rest, rest)] = (u * np.sqrt(lam)) @ u.T
    return torch.tensor(w, dtype=torch.float32), torch.tensor(w_inv, dtype=torch.float32)


def lag_vectors(w: Windows, lags: int) -> np.ndarray:
    """[M, L F]: every stretch of L consecutive rows inside the windows of `w`, once each,
    stacked oldest first as `stack_lags` does. Only stretches that some window holds, so
    none joins two entities or two segments."""
    if len(w) == 0:
        return np.empty((0, lags * w.n_features), dtype=w.rows.dtype)
    ends = np.unique(np.concatenate([w.ends - k for k in range(w.window - lags + 1)]))
    return gather(w.rows, ends, lags).reshape(len(ends), -1)


def as_windows(x: np.ndarray | Windows, window: int) -> Windows:
    """Rows in time order of one entity, or windows built already."""
    return x if isinstance(x, Windows) else Windows.build(x, window)


def _penalised_loss(
    ae: torch.nn.Module, z: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    target = z
    if cfg.variant == "denoising":
        noise = cfg.noise_std * torch.randn(z.shape, generator=generator, device=z.device)
        z = z + (noise * ae.numeric_mask if isinstance(ae, MixedAutoencoder) else noise)
    if cfg.variant == "contractive":
        z = z.detach().requires_grad_(True)
    # cuDNN's LSTM/GRU kernels cannot be differentiated twice, which the contractive penalty
    # needs: the native kernels for that forward pass (flags() resets the other cuDNN flags
    # too, so only where needed).
    twice = cfg.variant == "contractive" and z.is_cuda
    with torch.backends.cudnn.flags(enabled=False) if twice else contextlib.nullcontext():
        r, h = ae(z)
    loss = _reconstruction_loss(ae, r, target, cfg.loss)
    if cfg.variant == "sparse":
        loss = loss + cfg.sparsity * h.abs().mean()
    elif cfg.variant == "contractive":
        # Hutchinson estimate of ||J||_F^2 with one random probe: one extra backward pass
        # instead of one per latent unit.
        v = torch.randn(h.shape, generator=generator, device=h.device)
        (jt_v,) = torch.autograd.grad((h * v).sum(), z, create_graph=True)
        loss = loss + cfg.contraction * jt_v.pow(2).flatten(1).sum(dim=1).mean()
    return loss


def _reconstruction_loss(
    ae: torch.nn.Module, r: torch.Tensor, target: torch.Tensor, kind: str
) -> torch.Tensor:
    if isinstance(ae, MixedAutoencoder):  # the score itself: errors averaged over features
        return ae.errors(r, target).mean()
    if kind == "bce":
        return F.binary_cross_entropy(r, target.clamp(0.0, 1.0))
    return F.mse_loss(r, target)


@torch.no_grad()
def _evaluate(
    ae: torch.nn.Module,
    z: Windows,
    kind: str,
    inputs: Callable[[np.ndarray], torch.Tensor],
    batch: int = 65536,
) -> float:
    ae.eval()
    total = 0.0
    for zb in z.batches(batch):
        t = inputs(zb)
        r, _ = ae(t)
        total += _reconstruction_loss(ae, r, t, kind).item() * len(r)
    return total / max(1, len(z))


def fit(
    train: np.ndarray | Windows,
    val: np.ndarray | Windows,
    cfg: TrainConfig,
    progress: bool = True,
    categorical: dict[int, int] | None = None,
) -> FitResult:
    """Fit on `train`, stop early on `val`: rows [N, F] (one entity, time order) or
    `Windows` (per entity and segment, see `trainer.data`). `categorical`: the columns that
    hold categorical codes, with their number of codes."""
    cfg.check()
    train, val = as_windows(train, cfg.window), as_windows(val, cfg.window)
    cfg = cfg.resolved(len(train.rows))
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    # A full covariance is hard to estimate from a few hundred rows: whitening uses every
    # normal row of the fit, validation included (it only watches the loss).
    whitened = cfg.scaling == "whiten"
    normal = np.concatenate([train.rows, val.rows]) if whitened else train.rows
    offset, scale = scaling_for(normal, cfg.loss)
    n_features = train.n_features
    categories, cat_columns = None, sorted(categorical or {})
    if cat_columns:
        if cfg.model != "dense" or cfg.window != 1 or cfg.loss != "mse":
            raise ValueError(
                "categorical features are for dense single-row models with --loss mse "
                f"(not --model {cfg.model} --window {cfg.window} --loss {cfg.loss})"
            )
        assert categorical is not None
        sizes = [categorical[c] for c in cat_columns]
        categories = Categories.fit(
            train.rows[:, cat_columns], cat_columns, sizes, cfg.entropy_floor
        )
        offset[cat_columns], scale[cat_columns] = 0.0, 1.0  # codes pass through as they are
    latent = cfg.latent_for(n_features)
    if latent >= n_features:
        raise ValueError(
            f"latent size {latent} must be below the {n_features} features, or the autoencoder "
            "learns the identity and detects nothing; lower --latent"
        )
    if len(train) < 2:
        raise ValueError(
            f"only {len(train)} training windows of {cfg.window} samples: too few to train; "
            "give more rows per entity or a shorter --window"
        )
    ae = network_for(cfg, n_features, categories)
    ae.to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    off, sc = offset.numpy(), scale.numpy()
    lagged = cfg.lags > 1
    whiten = None
    if whitened and lagged:  # the covariance of L-sample stretches: lag cross-covariances too
        stacked = np.concatenate([lag_vectors(part, cfg.lags) for part in (train, val)])
        tiled_off, tiled_sc = np.tile(off, cfg.lags), np.tile(sc, cfg.lags)
        whiten = whitening_for((stacked - tiled_off) / tiled_sc, cfg.whiten_floor)
    elif whitened:
        whiten = whitening_for((normal - off) / sc, cfg.whiten_floor, cat_columns)
    # Rows are whitened once up front; lag vectors exist only per window, so with lags the
    # rows keep their z-scores and each mini-batch is stacked and whitened when it is taken.
    w = None if whiten is None or lagged else whiten[0].numpy()
    w_lag = whiten[0].to(device) if whiten is not None and lagged else None

    def scaled(x: np.ndarray) -> np.ndarray:
        return (x - off) / sc if w is None else ((x - off) / sc) @ w

    def inputs(zb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(zb).to(device)
        return t if w_lag is None else stack_lags(t, cfg.lags) @ w_lag

    z_train, z_val = train.map_rows(scaled), val.map_rows(scaled)
    dev_gen = generator if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
    best, best_epoch, stale = float("inf"), 0, 0
    best_state = copy.deepcopy(ae.state_dict())
    train_hist: list[float] = []
    val_hist: list[float] = []
    start = time.perf_counter()
    bar = tqdm(
        range(1, cfg.epochs + 1), desc="fit", unit="epoch", disable=not progress, leave=False
    )
    for epoch in bar:
        ae.train()
        order = torch.randperm(len(z_train), generator=generator).numpy()
        running = 0.0
        for i in range(0, len(order), cfg.batch_size):
            zb = inputs(z_train.take(order[i : i + cfg.batch_size]))
            loss = _penalised_loss(ae, zb, cfg, dev_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item() * len(zb)
        train_hist.append(running / len(order))
        val_hist.append(_evaluate(ae, z_val, cfg.loss, inputs) if len(z_val) else train_hist[-1])
        if val_hist[-1] < best - 1e-7:
            best, best_epoch, stale = val_hist[-1], epoch, 0
            best_state = copy.deepcopy(ae.state_dict())
        else:
            stale += 1
        bar.set_postfix(train=f"{train_hist[-1]:.4f}", val=f"{val_hist[-1]:.4f}", best=best_epoch)
        if stale >= cfg.patience:
            break
    ae.load_state_dict(best_state)
    model = ScoringModel(ae.cpu(), offset, scale, whiten, lags=cfg.lags).eval()
    return FitResult(
        model, train_hist, val_hist, best_epoch, str(device), time.perf_counter() - start
    )
