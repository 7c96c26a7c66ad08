"""report.png: loss curves, and validation scores against the threshold."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["render_report"]


def render_report(
    train_loss: list[float],
    val_loss: list[float],
    best_epoch: int,
    scores: np.ndarray,
    threshold: float,
    title: str,
) -> bytes:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(train_loss) + 1)
    ax1.plot(epochs, train_loss, label="train")
    ax1.plot(epochs, val_loss, label="validation")
    ax1.axvline(best_epoch, color="grey", ls=":", label=f"best epoch {best_epoch}")
    ax1.set(xlabel="epoch", ylabel="loss", yscale="log", title="Training")
    ax1.legend()
    ax2.hist(scores, bins=60, color="tab:blue", alpha=0.8, label="held-out normal scores")
    ax2.axvline(threshold, color="tab:red", label=f"threshold {threshold:.4g}")
    ax2.set(xlabel="score", ylabel="samples", title="Calibration")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
