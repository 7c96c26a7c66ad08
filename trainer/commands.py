"""What each `vigil-train` command does with its parsed options: call the module that does
the work, print what the user reads. Heavy imports (torch, pyarrow) happen here, per
command, so that `--help` and option errors stay fast."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from trainer.config import TrainConfig

__all__ = [
    "COMMANDS",
    "GATE_REFUSED",
    "collect",
    "evaluate",
    "fit",
    "models",
    "publish",
    "retrain",
    "rollback",
    "synth",
    "train_config",
]

GATE_REFUSED = 3  # exit code of a retrain whose candidate the gate refused


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The training configuration that `fit`'s options give."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(a).items() if k in names and v is not None}
    if a.fpr is not None:
        values["quantile"] = 1.0 - a.fpr
    if a.calibration is None and "quantile" in values:
        values["calibration"] = "quantile"  # asking for a false-positive rate means the quantile
    return TrainConfig(**values)


def fit(a: argparse.Namespace) -> int:
    cfg = train_config(a)
    cfg.check()  # before loading torch or reading what may be a large file

    from trainer.build import build_bundle
    from trainer.collect import parse_duration_ms
    from trainer.prepare import fit_dataset

    spec = None
    if a.behaviour is not None:
        from trainer.behaviour import load_spec

        if not a.time_column:
            raise ValueError("--behaviour needs --time-column (the event time of each row)")
        spec = load_spec(a.behaviour)
    prepared = fit_dataset(
        a.data,
        cfg,
        features=a.features,
        drop=a.drop,
        categorical=a.categorical,
        behaviour=spec,
        time_column=a.time_column,
        label_column=a.label_column,
        bounds=a.bounds,
        sep=a.sep,
        transpose=a.transpose,
        drop_bad_rows=a.drop_bad_rows,
        warmup_ms=parse_duration_ms(a.warmup),
    )
    for note in prepared.notes:
        _note(note)
    ds = prepared.dataset
    bundle = build_bundle(ds, cfg, a.out, progress=not a.no_progress)
    m = bundle.manifest
    summary = {
        "bundle": str(bundle.path),
        "name": m.name,
        "version": m.version,
        "features": len(m.features),
        "model": cfg.model,
        "window": m.window,
        "rows": len(ds.values),
        "threshold": m.threshold.model_dump(),
        "validation": m.validation,
        "epochs": m.training.epochs,
        "best_epoch": m.training.best_epoch,
    }
    print(json.dumps(summary, indent=2))
    return 0


def evaluate(a: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_file

    metrics = evaluate_file(
        a.model,
        a.data,
        a.label_column,
        plot=a.plot,
        threshold=a.threshold,
        entity_column=a.entity_column,
        time_column=a.time_column,
        card_column=a.card_column,
        k=a.k,
        sep=a.sep,
        transpose=a.transpose,
        drop_bad_rows=a.drop_bad_rows,
    )
    print(json.dumps(metrics, indent=2))
    return 0


def synth(a: argparse.Namespace) -> int:
    from trainer.synth import simulate, write_file

    t = simulate(a.steps, a.entities, seed=a.seed, fault_rate=a.fault_rate, drift=a.drift)
    write_file(t, a.out)
    print(f"wrote {len(t.values)} rows ({int(t.label.sum())} in fault episodes) to {a.out}")
    return 0


def publish(a: argparse.Namespace) -> int:
    from detector.model.registry import publish as publish_bundle

    b = publish_bundle(a.bundle, a.registry, make_current=not a.no_current)
    state = "copied in" if a.no_current else "live"
    print(f"{b.manifest.name} {b.manifest.version} published to {b.path} ({state})")
    return 0


def models(a: argparse.Namespace) -> int:
    from detector.model.registry import list_versions

    rows = list_versions(a.registry)
    if not rows:
        print(f"no models in {a.registry}")
    for e in rows:
        mark = "*" if e.live else " "
        rate = e.validation.get("calibration_alarm_rate", float("nan"))
        print(
            f"{mark} {e.name:<20} {e.version:<28} threshold {e.threshold:<10.4g} "
            f"val loss {e.validation.get('loss', float('nan')):<10.4g} calib. alarm rate {rate:.4f}"
        )
    return 0


def rollback(a: argparse.Namespace) -> int:
    from detector.errors import ConfigError
    from detector.model.registry import is_model_dir
    from detector.model.registry import rollback as roll_back

    names = [p for p in a.registry.iterdir() if is_model_dir(p)] if a.registry.is_dir() else []
    if a.name:
        names = [a.registry / a.name]
    if len(names) != 1:
        raise ConfigError(
            f"{a.registry}: name the model with --name (found {[p.name for p in names]})"
        )
    version = roll_back(names[0], a.to)
    print(f"{names[0].name} now serves {version}")
    return 0


def collect(a: argparse.Namespace) -> int:
    from detector.ops.settings import load_settings
    from trainer.collect import collect as collect_range
    from trainer.collect import parse_duration_ms, parse_when

    settings = load_settings(a.config)
    now = int(time.time() * 1000)
    result = collect_range(
        settings,
        a.out,
        parse_when(a.since, now),
        parse_when(a.until, now),
        margin_ms=parse_duration_ms(a.margin),
        drop_alerted_entities=a.drop_alerted_entities,
        progress=not a.no_progress,
    )
    print(json.dumps(result.summary(), indent=2))
    return 0


def retrain(a: argparse.Namespace) -> int:
    from detector.ops.settings import load_settings
    from trainer.collect import parse_duration_ms
    from trainer.retrain import Gate
    from trainer.retrain import retrain as retrain_model

    settings = load_settings(a.config)
    report = a.report or Path(f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    outcome = retrain_model(
        Path(settings.model.path),
        a.data,
        report,
        Gate(a.max_alert_ratio, a.max_psi, a.holdout),
        dry_run=a.dry_run,
        progress=not a.no_progress,
        refit_vocabularies=a.refit_vocabularies,
        warmup_ms=parse_duration_ms(a.warmup),
    )
    print(json.dumps(outcome.comparison, indent=2))
    if outcome.reasons:
        for r in outcome.reasons:
            _note(f"vigil-train: candidate refused: {r}")
        for h in outcome.comparison.get("hints", []):
            _note(f"vigil-train: hint: {h}")
        return GATE_REFUSED
    return 0


COMMANDS = {
    "fit": fit,
    "evaluate": evaluate,
    "synth": synth,
    "publish": publish,
    "models": models,
    "rollback": rollback,
    "collect": collect,
    "retrain": retrain,
}
