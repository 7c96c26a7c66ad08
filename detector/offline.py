"""Offline scoring of a file: the same Scorer and `decide` the daemon uses."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import DataError
from detector.scorer import Decisions, Scorer, Scores, decide
from detector.tables import Table, read_table

__all__ = ["ScoredFile", "score_file", "write_csv"]


@dataclass(frozen=True)
class ScoredFile:
    table: Table
    scores: Scores
    decisions: Decisions
    threshold: float


def score_file(
    scorer: Scorer,
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
    keep: Sequence[str] = (),
    threshold: float | None = None,
    top_k: int = 3,
    latent: bool = False,
    batch_rows: int = 65_536,
) -> ScoredFile:
    """Read the manifest's features from a file (by name; headerless matrices by position)
    and score them in batches."""
    try:
        table = read_table(
            path,
            features=scorer.features,
            keep=keep,
            sep=sep,
            transpose=transpose,
            drop_bad_rows=drop_bad_rows,
        )
    except DataError as e:
        if "unknown column" not in str(e):
            raise
        raise DataError(f"{e}\nThe model expects the features {scorer.features}") from None
    if scorer.window != 1:
        raise DataError(
            "offline scoring of windowed models needs per-entity windows (not supported yet)"
        )
    parts = [
        scorer.score(table.values[i : i + batch_rows], latent=latent)
        for i in range(0, len(table.values), batch_rows)
    ]
    scores = Scores(
        score=np.concatenate([p.score for p in parts]),
        feature_error=np.concatenate([p.feature_error for p in parts]),
        reconstruction=np.concatenate([p.reconstruction for p in parts]),
        latent=np.concatenate([p.latent for p in parts])
        if latent and parts[0].latent is not None
        else None,
    )
    t = scorer.threshold if threshold is None else threshold
    return ScoredFile(table, scores, decide(scores, t, top_k), t)


def write_csv(result: ScoredFile, out: str | os.PathLike[str]) -> int:
    """One row per input row: score, threshold, anomaly (0/1), top features, latent code."""
    names = result.table.names
    s, d = result.scores, result.decisions
    latent = s.latent
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with Path(out).open("w", newline="") as f:
        w = csv.writer(f)
        header = ["row", "score", "threshold", "anomaly", "severity", "top_features"]
        if latent is not None:
            header += [f"latent_{i}" for i in range(latent.shape[1])]
        w.writerow(header)
        for i in range(len(s.score)):
            top = ";".join(
                f"{names[j]}:{share:.3f}"
                for j, share in zip(d.top_index[i], d.top_share[i], strict=True)
            )
            row = [
                i + 1,
                f"{s.score[i]:.6g}",
                f"{result.threshold:.6g}",
                int(d.anomaly[i]),
                f"{d.severity[i]:.4g}",
                top,
            ]
            if latent is not None:
                row += [f"{v:.6g}" for v in latent[i]]
            w.writerow(row)
    return len(s.score)
