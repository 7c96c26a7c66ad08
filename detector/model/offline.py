"""Offline scoring of a file: the same inputs, Scorer and `decide` as the daemon.

The file's rows become the model's inputs through `detector.features.inputs`, the path the
trainer fits on: numeric features by name (headerless matrices by position), categorical
text coded by the bundle's vocabularies, behaviour features derived over all rows in time
order. Windowed bundles score each row as the newest sample of its entity's last W rows
(`detector.features.windows`, the definition the trainer uses too), in time order when a
time column is named, else in file order. A row before its entity's W-th sample is in
warm-up: it has no score and never alarms.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import DataError
from detector.features.inputs import InputSpec, ModelInputs, model_inputs, read_inputs
from detector.features.tables import Table
from detector.features.windows import Windows
from detector.model.scorer import Decisions, Scorer, Scores, decide

__all__ = ["ScoredFile", "score_file", "score_inputs", "write_csv"]


@dataclass(frozen=True)
class ScoredFile:
    """One entry per input row. Rows without a score (warm-up, or left out by `rows`) have
    NaN scores, errors and reconstructions, anomaly False, severity NaN and no top
    features."""

    table: Table
    scores: Scores
    decisions: Decisions
    threshold: float
    warmup: np.ndarray  # [N] bool: not scored (fewer than `window` samples of its entity so far)


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
    """Read the manifest's features from a file and score them in batches. `entity_column`
    names each row's entity for windowed bundles (without it all rows are one entity);
    `time_column` each row's event time (needed by behaviour features); `keep` more
    columns to return raw in `table.extra` (labels)."""
    spec = InputSpec.of(
        scorer.bundle.manifest,
        entity_column=entity_column if scorer.window > 1 else None,
        time_column=time_column,
    )
    table = read_inputs(
        path,
        spec,
        keep=[*keep, *([entity_column] if entity_column else [])],
        sep=sep,
        transpose=transpose,
        drop_bad_rows=drop_bad_rows,
    )
    return score_inputs(
        scorer,
        model_inputs(table, spec),
        threshold=threshold,
        top_k=top_k,
        latent=latent,
        batch_rows=batch_rows,
    )


def score_inputs(
    scorer: Scorer,
    inputs: ModelInputs,
    *,
    rows: np.ndarray | None = None,
    threshold: float | None = None,
    top_k: int = 3,
    latent: bool = False,
    batch_rows: int = 65_536,
) -> ScoredFile:
    """Score a model's inputs (`detector.features.inputs.model_inputs`); only the rows
    `rows` (a bool mask or indices; default all) when given. A windowed model's windows
    still reach back into the other rows, as a running detector's history would."""
    if inputs.names != scorer.features:
        raise DataError(
            f"the inputs' features {inputs.names[:8]}… are not the model's {scorer.features[:8]}…"
        )
    n, t = len(inputs), scorer.threshold if threshold is None else threshold
    table = inputs.table()
    if scorer.window == 1:
        if rows is None:
            scores = _score_rows(scorer, inputs.values, latent, batch_rows)
            return ScoredFile(table, scores, decide(scores, t, top_k), t, np.zeros(n, dtype=bool))
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        scored = np.flatnonzero(mask)
        parts = _score_rows(scorer, inputs.values[scored], latent, batch_rows)
    else:
        w = scorer.window
        windows, scored = inputs.windows(w, rows)
        per = max(1, batch_rows // w)  # bounded memory: [per, W, F] at a time
        parts = Scores.concat(
            [
                scorer.score(Windows(windows.rows, windows.ends[i : i + per], w), latent=latent)
                for i in range(0, len(windows), per)
            ],
            len(scorer.features),
        )
    warmup = np.ones(n, dtype=bool)
    warmup[scored] = False
    return ScoredFile(
        table,
        _scatter(parts, scored, n),
        _scatter_decisions(decide(parts, t, top_k), scored, n),
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
