"""Detection quality against labels: plain functions on numpy arrays, plus a timeline plot."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["average_precision", "detection_metrics", "roc_auc", "timeline_plot"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U statistic with average ranks for ties."""
    y = np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s))
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, as the mean precision at each positive."""
    y = np.asarray(labels).astype(bool)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    hits = y[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(labels).astype(bool)
    alarm = np.asarray(scores) > threshold
    tp = int((alarm & y).sum())
    fp = int((alarm & ~y).sum())
    fn = int((~alarm & y).sum())
    tn = int((~alarm & ~y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "rows": len(y),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": ratio(fp, fp + tn),
        "missed_alarm_rate": ratio(fn, fn + tp),
        "roc_auc": roc_auc(y, scores),
        "pr_auc": average_precision(y, scores),
    }


def timeline_plot(scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4))
    idx = np.arange(len(scores))
    y = np.asarray(labels).astype(bool)
    ax.fill_between(
        idx,
        0,
        1,
        where=y,
        color="tab:red",
        alpha=0.15,
        transform=ax.get_xaxis_transform(),
        label="labelled anomalous",
    )
    ax.plot(idx, scores, lw=0.8, color="tab:blue", label="score")
    ax.axhline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.4g}")
    ax.set(yscale="log", xlabel="row", ylabel="score", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
