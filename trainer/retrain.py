"""Retrain the live model on collected data, compare, publish through a gate
(`vigil-train retrain`).

1. The collected rows (`vigil-train collect`: raw payload fields, entity fields, event
   time) become the live model's inputs through the one input path,
   `detector.features.inputs.model_inputs`: its numeric features, its categorical
   vocabularies (kept, or chosen again with `refit_vocabularies`), its behaviour features
   derived over every collected row in time order.
2. The rows are taken in time order. Those `collect` left out (`left_out`: around the live
   model's alarms) and those of the first `warmup_ms` are history only: they feed the
   behaviour state, as they fed a running detector's, and are never trained on. Of the
   others, the newest `holdout` share is kept aside. A candidate is fitted on the rest with
   the live model's own training configuration (stored in its manifest), through the same
   `build_bundle` as `vigil-train fit`; it keeps the live model's behaviour spec and bounds.
   (Windowed models read only the rows not left out, as before.)
3. Live model and candidate score the held-out rows with the detector's offline scorer, with
   the history a running detector would have: behaviour state built over the training rows
   first, then over the held-out ones (one pass over all rows in time order), and windows
   that reach back into the training rows. For each: the share of rows above its threshold,
   and the drift of its scores from its calibration deciles (PSI, detector/contract/drift.py).
4. The candidate is published to the live model's registry only if it passes the gate: its
   alarm share on the held-out rows at most `max_alert_ratio` times its calibrated share,
   and at most `max_alert_ratio` times the live model's (its share there, or its calibrated
   one if higher). Running detectors then hot-swap to it. Otherwise the reasons are returned.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from detector.contract.bundle import Bundle, DataFile, load_bundle, sha256_file
from detector.contract.drift import psi
from detector.errors import ConfigError, DataError
from detector.features.inputs import InputSpec, ModelInputs, model_inputs, read_inputs
from detector.features.tables import Table
from detector.model.offline import score_inputs
from detector.model.registry import is_model_dir, publish, resolve
from detector.model.scorer import Scorer
from trainer.collect import ENTITY_COLUMN, LEFT_OUT_COLUMN, TIME_COLUMN
from trainer.config import Gate, TrainConfig

__all__ = [
    "Gate",
    "Outcome",
    "assess",
    "collected_inputs",
    "collected_spec",
    "config_of",
    "gate_reasons",
    "held_out_scores",
    "read_collected",
    "retrain",
    "split_rows",
    "trainable",
]

MIN_ROWS = 100  # at least this many rows to train on and to hold out


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


def collected_spec(bundle: Bundle, *, refit_vocabularies: bool = False) -> InputSpec:
    """What a bundle reads from a collected file: its features, the entity fields and the
    time column `collect` writes, and the entity column for windows."""
    return InputSpec.of(
        bundle.manifest,
        entity_column=ENTITY_COLUMN if bundle.manifest.window > 1 else None,
        time_column=TIME_COLUMN,
        refit_vocabularies=refit_vocabularies,
    )


def read_collected(data: Path, bundle: Bundle) -> Table:
    """The columns of a collected file that `bundle` needs, raw (`detector.features.inputs`),
    and `left_out` when the file has it. A windowed model's rows that are left out are not
    read: the windows of the others are built without them."""
    import pyarrow.parquet as pq

    spec = collected_spec(bundle)
    try:
        marked = LEFT_OUT_COLUMN in pq.read_schema(data).names
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise DataError(f"{data}: cannot be read as Parquet: {e}") from None
    try:
        table = read_inputs(data, spec, keep=[LEFT_OUT_COLUMN] if marked else [])
    except DataError as e:
        if f"unknown column '{TIME_COLUMN}'" in str(e):
            raise DataError(
                f"{data}: no {TIME_COLUMN} column; write it with `vigil-train collect`"
            ) from None
        if "unknown column" in str(e):
            raise DataError(
                f"{e}\n{data} lacks fields the live model reads: collect it again with "
                "`vigil-train collect` (it writes the entity fields and the categorical values)"
            ) from None
        raise
    for name in spec.categorical:
        if np.asarray((table.extra or {})[name]).dtype.kind == "f":
            raise DataError(
                f"{data}: the categorical '{name}' holds numbers (an older collect wrote "
                "codes, not values): collect it again with `vigil-train collect`"
            )
    if bundle.manifest.window > 1 and marked:
        keep = trainable(table)
        extra = {k: v[keep] for k, v in (table.extra or {}).items()}
        table = replace(table, values=table.values[keep], extra=extra or None)
    return table


def trainable(table: Table) -> np.ndarray:
    """[N] bool: the collected rows that may teach "normal" (`left_out` empty)."""
    reasons = (table.extra or {}).get(LEFT_OUT_COLUMN)
    if reasons is None:
        return np.ones(len(table.values), dtype=bool)
    return np.array([r is None for r in reasons.tolist()], dtype=bool)


def collected_inputs(
    table: Table,
    bundle: Bundle,
    *,
    refit_vocabularies: bool = False,
    fit_rows: np.ndarray | None = None,
    cfg: TrainConfig | None = None,
) -> ModelInputs:
    """The inputs of `bundle` (or, with `refit_vocabularies`, of a model like it whose
    vocabularies are chosen on the rows `fit_rows` with `cfg`'s rule) for every row."""
    from trainer.prepare import vocabularies

    spec = collected_spec(bundle, refit_vocabularies=refit_vocabularies)
    rule = vocabularies(cfg or config_of(bundle))
    return model_inputs(table, spec, vocabularies=rule, fit_rows=fit_rows)


def split_rows(
    inputs: ModelInputs,
    holdout: float,
    source: object = "the data",
    warmup_ms: int = 0,
    usable: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, hold-out) row indices, each in time order: the newest `holdout` share of the
    usable rows (all by default) is held out. The rows of the first `warmup_ms`, and the
    ones not usable, are in neither: they are only history (behaviour state) for the
    others."""
    order = inputs.time_order()
    keep = inputs.warmed_up(warmup_ms)
    if usable is not None:
        keep &= usable
    order = order[keep[order]]
    n_hold = round(len(order) * holdout)
    if n_hold < MIN_ROWS or len(order) - n_hold < MIN_ROWS:
        after = f" after the {warmup_ms / 86_400_000:g}-day warm-up" if warmup_ms else ""
        raise DataError(
            f"{source}: {len(order)} normal rows{after} are too few to train on and hold out "
            f"{holdout:.0%} (at least {MIN_ROWS} each); collect a longer range"
        )
    return order[: len(order) - n_hold], order[len(order) - n_hold :]


def held_out_scores(
    bundle: Bundle, table: Table, rows: np.ndarray, inputs: ModelInputs | None = None
) -> np.ndarray:
    """Scores of the rows `rows` of a collected table by the detector's offline scorer, with
    every earlier row as history (behaviour state, windows); rows without a score (their
    entity's warm-up) left out. `inputs`: the bundle's inputs for the table, if known."""
    inputs = inputs if inputs is not None else collected_inputs(table, bundle)
    s = score_inputs(Scorer(bundle, provider="cpu"), inputs, rows=rows).scores.score[rows]
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


def gate_reasons(
    result: dict[str, Any], gate: Gate, live: dict[str, Any] | None = None
) -> list[str]:
    """Why the candidate (its `assess` result) is refused; `live`: the live model's on the
    same rows. Nothing: it passes."""
    reasons = []
    floor = 1.0 / max(result["rows_scored"], 1)  # one alarm is never a reason to refuse
    calibrated = result["calibrated_alert_ratio"] or 0.0
    allowed = gate.max_alert_ratio * max(calibrated, floor)
    if result["alert_ratio"] > allowed:
        reasons.append(
            f"the candidate alarms on {result['alert_ratio']:.2%} of the held-out recent rows, "
            f"more than {gate.max_alert_ratio:g} x its calibrated {calibrated:.2%}"
        )
    if live is not None:
        # The held-out rows exclude what the live model alarmed on (collect leaves its
        # episodes out), so its share there may be near 0: its calibrated one counts too.
        baseline = max(live["alert_ratio"], live["calibrated_alert_ratio"] or 0.0)
        if result["alert_ratio"] > gate.max_alert_ratio * max(baseline, floor):
            reasons.append(
                f"the candidate alarms on {result['alert_ratio']:.2%} of the held-out recent "
                f"rows, more than {gate.max_alert_ratio:g} x the live model's "
                f"{live['alert_ratio']:.2%} (calibrated "
                f"{live['calibrated_alert_ratio'] or 0.0:.2%})"
            )
    if gate.max_psi is not None and result["psi"] is not None and result["psi"] > gate.max_psi:
        reasons.append(
            f"the candidate's scores on held-out recent rows drift from its calibration "
            f"(PSI {result['psi']:.3f} > {gate.max_psi:g})"
        )
    return reasons


def _hints(live: Bundle, reasons: list[str], warmup_ms: int) -> list[str]:
    """What to change when a behaviour model's candidate is refused on a short warm-up."""
    spec = live.manifest.behaviour
    if not reasons or spec is None:
        return []
    longest = max(max(e.windows_days) for e in spec.entities)
    if warmup_ms >= longest * 86_400_000:
        return []
    return [
        f"the model derives behaviour features over windows of up to {longest:g} days: the "
        f"first training rows had little history behind them (--warmup "
        f"{warmup_ms / 86_400_000:g}d), unlike what a running detector feeds the model; "
        f"collect a longer range and give --warmup {longest:g}d or more"
    ]


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
    model_path: Path,
    data: Path,
    report: Path,
    gate: Gate,
    *,
    dry_run: bool,
    progress: bool,
    refit_vocabularies: bool = False,
    warmup_ms: int = 0,
) -> Outcome:
    if not is_model_dir(model_path):
        raise ConfigError(
            f"model.path {model_path} is not a registry model directory (with CURRENT): "
            "retrain publishes into the registry the detectors follow"
        )
    from trainer.build import build_bundle
    from trainer.data import Dataset

    live = load_bundle(resolve(model_path))
    cfg = config_of(live)
    table = read_collected(data, live)
    # Behaviour features are derived over every collected row in time order; the rows
    # trained on and held out are the normal ones after the warm-up (`split_rows`). Only
    # vocabularies chosen again look at the training rows alone.
    live_inputs = collected_inputs(table, live)
    train, held = split_rows(live_inputs, gate.holdout, data, warmup_ms, trainable(table))
    inputs = (
        collected_inputs(table, live, refit_vocabularies=True, fit_rows=train, cfg=cfg)
        if refit_vocabularies and live.manifest.categorical
        else live_inputs
    )
    files = [DataFile(path=str(data), sha256=sha256_file(data), rows=len(table.values))]
    report.mkdir(parents=True, exist_ok=True)
    candidate = build_bundle(
        Dataset.of(inputs.take(train), files), cfg, report / "candidate", progress=progress
    )
    models = {"live": live, "candidate": candidate}
    # The candidate's inputs are computed again from its own manifest, as a detector would.
    scores = {
        "live": held_out_scores(live, table, held, live_inputs),
        "candidate": held_out_scores(candidate, table, held),
    }
    results = {role: assess(b, scores[role]) for role, b in models.items()}
    reasons = gate_reasons(results["candidate"], gate, results["live"])
    m = live.manifest
    comparison = {
        "data": str(data),
        "rows": {
            "train": len(train),
            "holdout": len(held),
            # the warm-up, and rows collect left out: behaviour history, never trained on
            "history_only": len(table.values) - len(train) - len(held),
        },
        "gate": dataclasses.asdict(gate),
        "warmup_days": warmup_ms / 86_400_000,
        "inputs": {
            "features": candidate.features,
            "vocabularies": (
                ("refit" if refit_vocabularies else "kept") if m.categorical else None
            ),
            "behaviour": m.behaviour is not None,
            "bounds": m.bounds,
            # what the held-out rows were scored with: a running detector's history
            "history": "training rows, then the held-out rows, in time order",
        },
        "models": results,
        "passed": not reasons,
        "reasons": reasons,
        "hints": _hints(live, reasons, warmup_ms),
    }
    _plot(scores, results, report / "comparison.png")
    published = False
    if not reasons and not dry_run:
        publish(candidate.path, model_path.parent)
        published = True
    comparison["published"] = published
    (report / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    return Outcome(candidate, comparison, reasons, published)
