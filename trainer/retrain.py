"""Retrain the live model on collected data, compare, publish through a gate
(`vigil-train retrain`).

1. The collected rows are sorted by time; the newest `holdout` share is kept aside.
2. A candidate is fitted on the rest with the live model's own training configuration
   (stored in its manifest), through the same `build_bundle` as `vigil-train fit`.
3. Live model and candidate score the held-out rows with the detector's offline scorer.
   For each: the share of rows above its threshold against the share on its calibration
   data, and the drift of its scores from its calibration deciles (PSI, detector/contract/drift.py).
4. The candidate is published to the live model's registry only if it passes the gate;
   running detectors then hot-swap to it. Otherwise the reasons are returned.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detector.contract.bundle import Bundle, load_bundle
from detector.contract.drift import psi
from detector.errors import ConfigError, DataError
from detector.model.offline import score_file
from detector.model.registry import is_model_dir, publish, resolve
from detector.model.scorer import Scorer
from trainer.collect import ENTITY_COLUMN, TIME_COLUMN
from trainer.config import TrainConfig

__all__ = ["Gate", "Outcome", "assess", "config_of", "gate_reasons", "held_out_scores", "retrain"]


@dataclass(frozen=True)
class Gate:
    max_alert_ratio: float = 3.0  # held-out alarm share at most this x the calibrated share
    # Held-out scores at most this far from the calibration deciles. Off by default: the
    # held-out rows are the newest few hours, so a daily cycle alone can move their PSI.
    max_psi: float | None = None
    holdout: float = 0.2  # newest share of the collected rows, never trained on


@dataclass(frozen=True)
class Outcome:
    candidate: Bundle
    comparison: dict[str, Any]
    reasons: list[str]  # empty: the candidate passed
    published: bool


def config_of(bundle: Bundle) -> TrainConfig:
    """The training configuration of a bundle, as its manifest recorded it."""
    stored = bundle.manifest.training.config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in names}
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    return TrainConfig(**values)


def _split(data: Path, holdout: float, out: Path) -> tuple[Path, Path, int, int]:
    table = pq.read_table(data)
    if TIME_COLUMN not in table.column_names:
        raise DataError(f"{data}: no {TIME_COLUMN} column; write it with `vigil-train collect`")
    table = table.take(pc.sort_indices(table, [(TIME_COLUMN, "ascending")]))
    n_hold = round(len(table) * holdout)
    if n_hold < 100 or len(table) - n_hold < 100:
        raise DataError(
            f"{data}: {len(table)} rows are too few to train on and hold out {holdout:.0%} "
            "(at least 100 each); collect a longer range"
        )
    out.mkdir(parents=True, exist_ok=True)
    train, held = out / "train.parquet", out / "holdout.parquet"
    pq.write_table(table.slice(0, len(table) - n_hold), train)
    pq.write_table(table.slice(len(table) - n_hold), held)
    return train, held, len(table) - n_hold, n_hold


def held_out_scores(bundle: Bundle, data: Path) -> np.ndarray:
    """Scores of a file's rows by the detector's offline scorer (warm-up rows left out)."""
    entity = ENTITY_COLUMN if bundle.manifest.window > 1 else None
    s = score_file(Scorer(bundle, provider="cpu"), data, entity_column=entity).scores.score
    return s[np.isfinite(s)]


def assess(bundle: Bundle, s: np.ndarray) -> dict[str, Any]:
    """How a model scores recent normal rows, next to what its calibration promised."""
    m = bundle.manifest
    calibrated = m.validation.get("calibration_alarm_rate")
    alert = float(np.mean(s > m.threshold.value))
    return {
        "version": m.version,
        "threshold": m.threshold.value,
        "rows_scored": len(s),
        "alert_ratio": alert,
        "calibrated_alert_ratio": calibrated,
        "psi": psi(s, m.score_reference) if m.score_reference else None,
        "score_quantiles": {str(q): float(np.quantile(s, q)) for q in (0.5, 0.9, 0.99)},
    }


def gate_reasons(result: dict[str, Any], gate: Gate) -> list[str]:
    reasons = []
    calibrated = result["calibrated_alert_ratio"] or 0.0
    allowed = gate.max_alert_ratio * max(calibrated, 1.0 / max(result["rows_scored"], 1))
    if result["alert_ratio"] > allowed:
        reasons.append(
            f"the candidate alarms on {result['alert_ratio']:.2%} of the held-out recent rows, "
            f"more than {gate.max_alert_ratio:g} x its calibrated {calibrated:.2%}"
        )
    if gate.max_psi is not None and result["psi"] is not None and result["psi"] > gate.max_psi:
        reasons.append(
            f"the candidate's scores on held-out recent rows drift from its calibration "
            f"(PSI {result['psi']:.3f} > {gate.max_psi:g})"
        )
    return reasons


def _plot(held: dict[str, np.ndarray], results: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(held), figsize=(5 * len(held), 3.5), squeeze=False)
    for ax, (role, s) in zip(axes[0], held.items(), strict=True):
        r = results[role]
        positive = np.maximum(s, 1e-9)
        bins = np.geomspace(positive.min(), max(positive.max(), r["threshold"] * 1.1), 60)
        ax.hist(positive, bins=bins, color="#4477aa")
        ax.axvline(r["threshold"], color="#cc3311", label="threshold")
        ax.set_xscale("log")
        ax.set_title(
            f"{role} {r['version']}\nalarms {r['alert_ratio']:.2%} "
            f"(calibrated {r['calibrated_alert_ratio'] or 0:.2%})",
            fontsize=9,
        )
        ax.set_xlabel("score on held-out recent rows")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def retrain(
    model_path: Path, data: Path, report: Path, gate: Gate, *, dry_run: bool, progress: bool
) -> Outcome:
    if not is_model_dir(model_path):
        raise ConfigError(
            f"model.path {model_path} is not a registry model directory (with CURRENT): "
            "retrain publishes into the registry the detectors follow"
        )
    from trainer import data as datasets
    from trainer.build import build_bundle

    live = load_bundle(resolve(model_path))
    cfg = config_of(live)
    train, held, n_train, n_held = _split(data, gate.holdout, report)
    ds = datasets.load(
        [str(train)],
        features=live.features,
        entity_column=ENTITY_COLUMN if cfg.window > 1 else None,
    )
    candidate = build_bundle(ds, cfg, report / "candidate", progress=progress)
    models = {"live": live, "candidate": candidate}
    scores = {role: held_out_scores(b, held) for role, b in models.items()}
    results = {role: assess(b, scores[role]) for role, b in models.items()}
    reasons = gate_reasons(results["candidate"], gate)
    comparison = {
        "data": str(data),
        "rows": {"train": n_train, "holdout": n_held},
        "gate": dataclasses.asdict(gate),
        "models": results,
        "passed": not reasons,
        "reasons": reasons,
    }
    _plot(scores, results, report / "comparison.png")
    published = False
    if not reasons and not dry_run:
        publish(candidate.path, model_path.parent)
        published = True
    comparison["published"] = published
    (report / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    return Outcome(candidate, comparison, reasons, published)
