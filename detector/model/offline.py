"""Offline scoring of a file: the same Scorer and `decide` the daemon uses.

Windowed bundles score each row as the newest sample of its entity's last W rows, in file
order (`detector.features.windows`, the definition the trainer uses too). A row before its entity's
W-th sample is in warm-up: it has no score and never alarms.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detector.errors import DataError
from detector.features.behaviour import with_derived
from detector.features.tables import Table, read_table
from detector.features.windows import Windows, entity_keys, window_ends
from detector.model.scorer import Decisions, Scorer, Scores, decide

__all__ = ["ScoredFile", "score_file", "write_csv"]


@dataclass(frozen=True)
class ScoredFile:
    """One entry per input row. Warm-up rows have NaN scores, errors and reconstructions,
    anomaly False, severity NaN and no top features."""

    table: Table
    scores: Scores
    decisions: Decisions
    threshold: float
    warmup: np.ndarray  # [N] bool: fewer than `window` samples of the row's entity so far


def score_file(
    scorer: Scorer,
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
    keep: Sequence[str] = (),
    entity_column: str | None = None,
    threshold: float | None = None,
    top_k: int = 3,
    latent: bool = False,
    batch_rows: int = 65_536,
    time_column: str | None = None,
) -> ScoredFile:
    """Read the manifest's features from a file (by name; headerless matrices by position)
    and score them in batches. `entity_column` names each row's entity for windowed
    bundles; without it all rows are one entity."""
    wanted = [*keep, *([entity_column] if entity_column and entity_column not in keep else [])]
    spec = scorer.bundle.manifest.behaviour
    if spec is not None:  # derived features: read what they come from instead
        if not time_column:
            raise DataError(
                "this model derives behaviour features per entity: name the time column "
                "(--time-column)"
            )
        wanted += [c for c in [*spec.entity_fields(), time_column] if c not in wanted]
    try:
        table = read_table(
            path,
            features=scorer.bundle.manifest.payload_features,
            keep=wanted,
            sep=sep,
            transpose=transpose,
            drop_bad_rows=drop_bad_rows,
            categorical=scorer.bundle.encoders,
        )
    except DataError as e:
        if "unknown column" not in str(e):
            raise
        raise DataError(f"{e}\nThe model expects the features {scorer.features}") from None
    if spec is not None:
        assert table.extra is not None and time_column
        try:
            names, x = with_derived(spec, table.names, table.values, table.extra, time_column)
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        table = replace(table, names=names, values=x)
    n, t = len(table.values), scorer.threshold if threshold is None else threshold
    if scorer.window == 1:
        scores = _score_rows(scorer, table.values, latent, batch_rows)
        return ScoredFile(table, scores, decide(scores, t, top_k), t, np.zeros(n, dtype=bool))
    entities = None
    if entity_column:
        assert table.extra is not None
        entities = entity_keys(table.extra[entity_column], entity_column)
    order, ends = window_ends(entities, n, scorer.window)
    newest = order[ends]
    xs = table.values[order]
    per = max(1, batch_rows // scorer.window)  # bounded memory: [per, W, F] at a time
    parts = Scores.concat(
        [
            scorer.score(Windows(xs, ends[i : i + per], scorer.window), latent=latent)
            for i in range(0, len(ends), per)
        ],
        len(scorer.features),
    )
    warmup = np.ones(n, dtype=bool)
    warmup[newest] = False
    return ScoredFile(
        table,
        _scatter(parts, newest, n),
        _scatter_decisions(decide(parts, t, top_k), newest, n),
        t,
        warmup,
    )


def _score_rows(scorer: Scorer, x: np.ndarray, latent: bool, batch_rows: int) -> Scores:
    parts = [
        scorer.score(x[i : i + batch_rows], latent=latent) for i in range(0, len(x), batch_rows)
    ]
    return Scores.concat(parts, len(scorer.features))


def _spread(a: np.ndarray, rows: np.ndarray, n: int, fill: float) -> np.ndarray:
    """The values of the scored `rows` among all n rows; `fill` in the others."""
    out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
    out[rows] = a
    return out


def _scatter(s: Scores, rows: np.ndarray, n: int) -> Scores:
    return Scores(
        score=_spread(s.score, rows, n, np.nan),
        feature_error=_spread(s.feature_error, rows, n, np.nan),
        reconstruction=_spread(s.reconstruction, rows, n, np.nan),
        latent=None if s.latent is None else _spread(s.latent, rows, n, np.nan),
    )


def _scatter_decisions(d: Decisions, rows: np.ndarray, n: int) -> Decisions:
    return Decisions(
        anomaly=_spread(d.anomaly, rows, n, False),
        severity=_spread(d.severity, rows, n, np.nan),
        top_index=_spread(d.top_index, rows, n, 0),
        top_share=_spread(d.top_share, rows, n, 0.0),
    )


def write_csv(result: ScoredFile, out: str | os.PathLike[str]) -> int:
    """One row per input row: score, threshold, anomaly (0/1), top features, warm-up (0/1),
    latent code. A warm-up row has empty score, severity, features and code."""
    names = result.table.names
    s, d = result.scores, result.decisions
    latent = s.latent
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with Path(out).open("w", newline="") as f:
        w = csv.writer(f)
        header = ["row", "score", "threshold", "anomaly", "severity", "top_features", "warmup"]
        if latent is not None:
            header += [f"latent_{i}" for i in range(latent.shape[1])]
        w.writerow(header)
        for i in range(len(s.score)):
            if result.warmup[i]:
                row = [i + 1, "", f"{result.threshold:.6g}", 0, "", "", 1]
                if latent is not None:
                    row += [""] * latent.shape[1]
                w.writerow(row)
                continue
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
                0,
            ]
            if latent is not None:
                row += [f"{v:.6g}" for v in latent[i]]
            w.writerow(row)
    return len(s.score)
