"""Detection quality against labels: plain functions on numpy arrays, plus a timeline plot."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["average_precision", "detection_metrics", "evaluate_file", "roc_auc", "timeline_plot"]


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


def evaluate_file(
    model: Path,
    data: str,
    label_column: str,
    *,
    plot: Path | None = None,
    threshold: float | None = None,
    entity_column: str | None = None,
    time_column: str | None = None,
    card_column: str | None = None,
    k: int = 100,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
) -> dict[str, Any]:
    """Score a labelled file with the detector's offline scorer (`vigil-train evaluate`) and
    report detection quality; with `card_column`, the fraud metrics per day too. The
    timeline plot goes to `plot` (default: <data>.timeline.png)."""
    from detector.contract.bundle import load_bundle
    from detector.model.offline import score_file
    from detector.model.scorer import Scorer

    if card_column and not time_column:
        raise ValueError("--card-column needs --time-column (card precision is per day)")
    scorer = Scorer(load_bundle(model), provider="cpu")
    keep: Sequence[str] = [label_column, *([card_column, time_column] if card_column else [])]
    res = score_file(
        scorer,
        data,
        sep=sep,
        transpose=transpose,
        drop_bad_rows=drop_bad_rows,
        keep=[c for c in dict.fromkeys(keep) if c],
        entity_column=entity_column,
        threshold=threshold,
        time_column=time_column,
    )
    columns = res.table.extra or {}
    labels = np.asarray(columns[label_column]).astype(float) > 0
    scored = ~res.warmup  # rows in their entity's warm-up have no score: not counted
    metrics: dict[str, Any] = detection_metrics(
        labels[scored], res.scores.score[scored], res.threshold
    )
    if card_column and time_column:
        from detector.features.decode import epoch_ms
        from trainer.fraud_metrics import fraud_metrics

        days = epoch_ms(columns[time_column]) // 86_400_000
        fm = fraud_metrics(
            days[scored], columns[card_column][scored], res.scores.score[scored], labels[scored], k
        )
        metrics |= {"fraud": asdict(fm)}
    plot = plot or Path(f"{data}.timeline.png")
    plot.write_bytes(
        timeline_plot(res.scores.score, labels, res.threshold, f"{model.name} on {data}")
    )
    return metrics | {"rows_warmup": int(res.warmup.sum()), "plot": str(plot)}
