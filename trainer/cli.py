"""vigil-train: fit a bundle, evaluate it, generate synthetic telemetry."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path

from detector.errors import VigilError
from trainer.config import MODELS, SCORES, TrainConfig
from trainer.retrain import Gate

__all__ = ["main"]


def _bounds(s: str) -> dict[str, tuple[float | None, float | None]]:
    out: dict[str, tuple[float | None, float | None]] = {}
    for part in _csv_list(s):
        name, sep, rng = part.partition("=")
        low, colon, high = rng.partition(":")
        if not (sep and colon and name):
            raise argparse.ArgumentTypeError(f"'{part}': expected NAME=LOW:HIGH (amount=0:)")
        try:
            out[name] = (float(low) if low else None, float(high) if high else None)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{part}': bounds must be numbers") from None
    return out


def _csv_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _csv_list(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sep", help="delimiter for text files (',' '\\t' ';'), or 'whitespace'")
    p.add_argument(
        "--transpose", action="store_true", help="headerless matrix is stored features x rows"
    )
    p.add_argument(
        "--drop-bad-rows",
        action="store_true",
        help="drop rows with missing, NaN or infinite values (and report how many)",
    )


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="vigil-train", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit an autoencoder on normal data and write a bundle")
    f.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="PATH",
        help="normal data file (repeat for several, in time order)",
    )
    f.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    sel = f.add_mutually_exclusive_group()
    sel.add_argument("--features", type=_csv_list, help="columns to use, in this order")
    sel.add_argument("--drop", type=_csv_list, help="columns to leave out (e.g. timestamp,label)")
    _add_input_options(f)
    f.add_argument("--name", default=d.name)
    f.add_argument(
        "--model",
        choices=MODELS,
        default=d.model,
        help="dense (rows, or flattened windows), conv (1-D convolutional), lstm or gru "
        f"(recurrent); conv, lstm and gru need --window 2 or more (default {d.model})",
    )
    f.add_argument(
        "--window",
        type=int,
        default=d.window,
        help="samples per window: the model sees each entity's last W samples and scores them "
        f"as --score says (default {d.window}: single rows)",
    )
    f.add_argument(
        "--score",
        choices=SCORES,
        default=d.score,
        help="windowed models: the newest sample's error, or the mean of the errors of all the "
        "window's samples (less noise, so weak lasting faults stand out; up to W samples later) "
        "(default %(default)s)",
    )
    f.add_argument(
        "--entity-column",
        metavar="COL",
        default=d.entity_column,
        help="column naming the entity (machine, pump, account) of each row: windows are built "
        "per entity in file order and never straddle two; never a feature. Without it all "
        "rows are one entity",
    )
    f.add_argument(
        "--behaviour",
        type=Path,
        metavar="SPEC.json",
        help="per-entity behaviour features to derive (detector/features/behaviour.py: counts and means "
        "over decayed 1/7/30-day windows per card or terminal, time since previous, hour of "
        "day); the detector derives them the same way from the stream. Needs --time-column",
    )
    f.add_argument(
        "--label-column",
        metavar="COL",
        help="a label column (1: known fraud or fault, 0: normal): labelled rows are left out "
        "of training, after behaviour features are derived over every row; never a feature",
    )
    f.add_argument(
        "--categorical",
        type=_csv_list,
        metavar="COL,...",
        help="categorical columns (text or integer ids): coded by a vocabulary or hashing, "
        "reconstructed as distributions (cross-entropy). Default: the file's text columns, "
        "reported; 'none' for none",
    )
    f.add_argument(
        "--min-count",
        type=int,
        default=d.min_count,
        help="categorical values seen fewer times share the reserved 'other' code "
        "(default %(default)s)",
    )
    f.add_argument(
        "--vocabulary-max",
        type=int,
        default=d.vocabulary_max,
        help="more distinct categorical values than this: feature hashing (default %(default)s)",
    )
    f.add_argument("--hash-buckets", type=int, default=d.hash_buckets, help="(default %(default)s)")
    f.add_argument(
        "--onehot-max",
        type=int,
        default=d.onehot_max,
        help="categoricals with up to this many codes go in one-hot, larger ones through a "
        "learned embedding (default %(default)s)",
    )
    f.add_argument(
        "--bounds",
        type=_bounds,
        metavar="NAME=LOW:HIGH,...",
        help="valid ranges of payload features, either end open (amount=0: means amount >= 0); "
        "the detector dead-letters a message outside them as out_of_range",
    )
    f.add_argument(
        "--time-column",
        metavar="COL",
        help="with --behaviour: the event time of each row (epoch s or ms, or ISO 8601)",
    )
    f.add_argument(
        "--hidden",
        type=_ints,
        default=d.hidden,
        help="layer sizes, mirrored by the decoder: dense widths, conv channels or recurrent "
        f"units (default {','.join(map(str, d.hidden))})",
    )
    f.add_argument(
        "--kernel-size", type=int, default=d.kernel_size, help="conv: taps over time (odd)"
    )
    f.add_argument("--latent", type=int, default=d.latent)
    f.add_argument("--activation", choices=["relu", "tanh", "gelu"], default=d.activation)
    f.add_argument(
        "--variant", choices=["plain", "denoising", "sparse", "contractive"], default=d.variant
    )
    f.add_argument("--noise-std", type=float, default=d.noise_std)
    f.add_argument("--sparsity", type=float, default=d.sparsity)
    f.add_argument("--contraction", type=float, default=d.contraction)
    f.add_argument("--loss", choices=["mse", "bce"], default=d.loss)
    f.add_argument(
        "--scaling",
        choices=["auto", "standard", "whiten"],
        default=d.scaling,
        help="z-scores, or z-scores then ZCA whitening: the score becomes about the "
        "Mahalanobis distance, which sees broken correlations (default %(default)s: "
        "whiten with --loss mse)",
    )
    f.add_argument(
        "--lags",
        type=int,
        default=d.lags,
        metavar="L",
        help="windowed models with whitening: stack each L consecutive samples and whiten them "
        "together, with their covariance across lags, so that broken dynamics count like "
        "broken correlations; the score approaches the lagged (dynamic PCA) Hotelling T^2. "
        "Needs --window L or more (default %(default)s: each sample whitened on its own)",
    )
    f.add_argument(
        "--whiten-floor",
        type=float,
        default=d.whiten_floor,
        help="eigenvalues below this x the largest are raised to it (default %(default)s)",
    )
    f.add_argument("--epochs", type=int, default=d.epochs)
    f.add_argument("--batch-size", type=int, default=d.batch_size)
    f.add_argument("--lr", type=float, default=d.lr)
    f.add_argument("--weight-decay", type=float, default=d.weight_decay)
    f.add_argument("--patience", type=int, default=d.patience)
    f.add_argument("--seed", type=int, default=d.seed)
    f.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    f.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    f.add_argument("--calibration-fraction", type=float, default=d.calibration_fraction)
    f.add_argument(
        "--calibration",
        choices=["quantile", "pot"],
        help=f"threshold method (default {d.calibration}; quantile when --quantile or --fpr is given)",
    )
    f.add_argument("--quantile", type=float)
    f.add_argument("--fpr", type=float, help="target false-positive rate (sets --quantile 1-FPR)")
    f.add_argument("--pot-risk", type=float, default=d.pot_risk)
    f.add_argument("--pot-level", type=float, default=d.pot_level)
    f.add_argument("--margin", type=float, default=d.margin)
    f.add_argument(
        "--folds",
        type=int,
        default=d.folds,
        help="cross-fitted calibration over K time blocks (0: one held-out block; "
        "default -1: 5 below 5,000 rows, else 0)",
    )
    f.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="score a labelled file and report detection quality")
    e.add_argument("--model", required=True, type=Path, help="bundle directory")
    e.add_argument("--data", required=True)
    e.add_argument("--label-column", required=True)
    e.add_argument("--plot", type=Path, help="timeline PNG (default: <data>.timeline.png)")
    e.add_argument("--threshold", type=float, help="override the bundle's threshold")
    e.add_argument(
        "--entity-column",
        metavar="COL",
        help="windowed models: the column naming each row's entity (default: one entity)",
    )
    e.add_argument(
        "--time-column",
        metavar="COL",
        help="each row's event time: needed by models with behaviour features and by --card-column",
    )
    e.add_argument(
        "--card-column",
        metavar="COL",
        help="payments: also report the fraud metrics practitioners use, ROC-AUC, average "
        "precision and card precision@k per day (needs --time-column)",
    )
    e.add_argument("--k", type=int, default=100, help="cards a day an analyst checks (CP@k)")
    _add_input_options(e)

    p = sub.add_parser("publish", help="copy a bundle into a model registry and make it current")
    p.add_argument("bundle", type=Path)
    p.add_argument("--registry", required=True, type=Path)
    p.add_argument(
        "--no-current", action="store_true", help="copy in, but leave the live version as it is"
    )
    m = sub.add_parser("models", help="list the versions in a registry and which one is live")
    m.add_argument("--registry", required=True, type=Path)
    r = sub.add_parser("rollback", help="make an earlier version current")
    r.add_argument("--registry", required=True, type=Path)
    r.add_argument("--name", help="model name (needed when the registry holds several)")
    r.add_argument("--to", help="version to make current (default: the one before the live one)")

    s = sub.add_parser("synth", help="write synthetic plant telemetry (for demos and tests)")
    s.add_argument("--out", required=True, type=Path, help=".csv, .parquet or .jsonl")
    s.add_argument("--steps", type=int, default=2880, help="samples per entity (default 2 days)")
    s.add_argument("--entities", type=int, default=4)
    s.add_argument("--fault-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--drift", type=float, default=0.0, help="wear reached in the last third")

    detector_settings = (
        "Kafka, topics, payload mapping and model.path come from the detector's settings: "
        "VIGIL_* environment variables and --config, as for `vigil-detect run`."
    )
    c = sub.add_parser(
        "collect",
        help="read recent normal data from the input topic into Parquet",
        description=detector_settings,
    )
    c.add_argument("--config", type=Path, help="the detector's TOML or YAML settings file")
    c.add_argument("--since", required=True, help="'7d', '12h', '30m' ago, or an ISO 8601 time")
    c.add_argument("--until", default="now", help="same forms; default now")
    c.add_argument("--margin", default="30m", help="left out around each anomaly episode")
    c.add_argument(
        "--drop-alerted-entities", action="store_true", help="leave out entities that alarmed"
    )
    c.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    c.add_argument("--no-progress", action="store_true")
    rt = sub.add_parser(
        "retrain",
        help="fit a candidate on collected data, compare with the live model, publish if it passes",
        description=detector_settings,
    )
    rt.add_argument("--config", type=Path, help="the detector's TOML or YAML settings file")
    rt.add_argument("--data", required=True, type=Path, help="Parquet from `vigil-train collect`")
    rt.add_argument("--report", type=Path, help="where the candidate and comparison go")
    g = Gate()
    rt.add_argument("--max-alert-ratio", type=float, default=g.max_alert_ratio)
    rt.add_argument("--max-psi", type=float, default=g.max_psi)
    rt.add_argument("--holdout", type=float, default=g.holdout)
    rt.add_argument("--dry-run", action="store_true", help="compare, never publish")
    rt.add_argument("--no-progress", action="store_true")
    return ap


def _config(a: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(a).items() if k in names and v is not None}
    if a.fpr is not None:
        values["quantile"] = 1.0 - a.fpr
    if a.calibration is None and "quantile" in values:
        values["calibration"] = "quantile"  # asking for a false-positive rate means the quantile
    return TrainConfig(**values)


def _categorical_columns(a: argparse.Namespace, aside: list[str]) -> list[str]:
    """--categorical as given, or the text columns of the first file that would otherwise
    be features (reported)."""
    if a.categorical is not None:
        return [] if a.categorical == ["none"] else a.categorical
    from detector.features.tables import text_columns

    skip = {*aside, *(a.drop or []), a.entity_column, a.label_column}
    text = [c for c in text_columns(a.data[0], a.sep) if c not in skip]
    if a.features:
        text = [c for c in text if c in a.features]
    if text:
        print(
            f"categorical features (text columns): {', '.join(text)}; name them with "
            "--categorical, or --drop them",
            file=sys.stderr,
        )
    return text


def _fit(a: argparse.Namespace) -> int:
    cfg = _config(a)
    cfg.check()  # before loading torch or reading what may be a large file

    from trainer import data
    from trainer.build import build_bundle

    spec = None
    if a.behaviour is not None:
        from trainer.behaviour import load_spec

        if not a.time_column:
            raise ValueError("--behaviour needs --time-column (the event time of each row)")
        spec = load_spec(a.behaviour)
    aside = [*spec.entity_fields(), a.time_column] if spec is not None else []
    categorical = _categorical_columns(a, aside)
    features = [f for f in a.features if f not in categorical] if a.features else None
    ds = data.load(
        a.data,
        features=features,
        drop=[d for d in a.drop or [] if d not in categorical] or None,
        sep=a.sep,
        transpose=a.transpose,
        drop_bad_rows=a.drop_bad_rows,
        entity_column=a.entity_column,
        aside=[*aside, *categorical, *([a.label_column] if a.label_column else [])],
    )
    if ds.rows_dropped:
        print(
            f"dropped {ds.rows_dropped} rows with missing, NaN or infinite values", file=sys.stderr
        )
    if categorical:
        from trainer.categorical import with_categorical

        ds = with_categorical(ds, categorical, cfg)
    if spec is not None:
        from trainer.behaviour import with_behaviour

        ds = with_behaviour(ds, spec, a.time_column)
    if a.label_column:
        if cfg.window > 1:
            raise ValueError(
                "--label-column leaves rows out, which would join windows across the gaps: "
                "for windowed models, cut labelled stretches out of the files instead"
            )
        ds, left_out = data.without_labelled(ds, a.label_column)
        print(f"left out {left_out} labelled rows ('{a.label_column}' not 0)", file=sys.stderr)
    bundle = build_bundle(
        ds, cfg, a.out, progress=not a.no_progress, behaviour=spec, bounds=a.bounds
    )
    m = bundle.manifest
    print(
        json.dumps(
            {
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
            },
            indent=2,
        )
    )
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    import numpy as np

    from detector.contract.bundle import load_bundle
    from detector.model.offline import score_file
    from detector.model.scorer import Scorer
    from trainer.evaluate import detection_metrics, timeline_plot

    scorer = Scorer(load_bundle(a.model), provider="cpu")
    res = score_file(
        scorer,
        a.data,
        sep=a.sep,
        transpose=a.transpose,
        drop_bad_rows=a.drop_bad_rows,
        keep=[a.label_column, *([a.card_column, a.time_column] if a.card_column else [])],
        entity_column=a.entity_column,
        threshold=a.threshold,
        time_column=a.time_column,
    )
    extra_cols = res.table.extra or {}
    labels = np.asarray(extra_cols[a.label_column]).astype(float) > 0
    scored = ~res.warmup  # rows in their entity's warm-up have no score: not counted
    metrics = detection_metrics(labels[scored], res.scores.score[scored], res.threshold)
    if a.card_column:
        from detector.features.decode import epoch_ms
        from trainer.fraud_metrics import fraud_metrics

        if not a.time_column:
            raise ValueError("--card-column needs --time-column (card precision is per day)")
        days = epoch_ms(extra_cols[a.time_column]) // 86_400_000
        fm = fraud_metrics(
            days[scored],
            extra_cols[a.card_column][scored],
            res.scores.score[scored],
            labels[scored],
            a.k,
        )
        metrics |= {"fraud": asdict(fm)}
    plot = a.plot or Path(f"{a.data}.timeline.png")
    plot.write_bytes(
        timeline_plot(res.scores.score, labels, res.threshold, f"{a.model.name} on {a.data}")
    )
    extra = {"rows_warmup": int(res.warmup.sum()), "plot": str(plot)}
    print(json.dumps(metrics | extra, indent=2))
    return 0


def _synth(a: argparse.Namespace) -> int:
    import pyarrow as pa

    from trainer.synth import simulate

    t = simulate(a.steps, a.entities, seed=a.seed, fault_rate=a.fault_rate, drift=a.drift)
    table = pa.table(t.columns())
    suffix = a.out.suffix.lower()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, a.out)
    elif suffix in (".jsonl", ".ndjson"):
        import orjson

        with a.out.open("wb") as f:
            for row in table.to_pylist():
                f.write(orjson.dumps(row) + b"\n")
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, a.out)
    print(f"wrote {len(t.values)} rows ({int(t.label.sum())} in fault episodes) to {a.out}")
    return 0


def _publish(a: argparse.Namespace) -> int:
    from detector.model.registry import publish

    b = publish(a.bundle, a.registry, make_current=not a.no_current)
    state = "copied in" if a.no_current else "live"
    print(f"{b.manifest.name} {b.manifest.version} published to {b.path} ({state})")
    return 0


def _models(a: argparse.Namespace) -> int:
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


def _rollback(a: argparse.Namespace) -> int:
    from detector.errors import ConfigError
    from detector.model.registry import is_model_dir, rollback

    names = [p for p in a.registry.iterdir() if is_model_dir(p)] if a.registry.is_dir() else []
    if a.name:
        names = [a.registry / a.name]
    if len(names) != 1:
        raise ConfigError(
            f"{a.registry}: name the model with --name (found {[p.name for p in names]})"
        )
    version = rollback(names[0], a.to)
    print(f"{names[0].name} now serves {version}")
    return 0


def _collect(a: argparse.Namespace) -> int:
    from detector.ops.settings import load_settings
    from trainer.collect import collect, parse_duration_ms, parse_when

    settings = load_settings(a.config)
    now = int(time.time() * 1000)
    result = collect(
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


GATE_REFUSED = 3


def _retrain(a: argparse.Namespace) -> int:
    from detector.ops.settings import load_settings
    from trainer.retrain import retrain

    settings = load_settings(a.config)
    report = a.report or Path(f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    gate = Gate(a.max_alert_ratio, a.max_psi, a.holdout)
    outcome = retrain(
        Path(settings.model.path),
        a.data,
        report,
        gate,
        dry_run=a.dry_run,
        progress=not a.no_progress,
    )
    print(json.dumps(outcome.comparison, indent=2))
    if outcome.reasons:
        for r in outcome.reasons:
            print(f"vigil-train: candidate refused: {r}", file=sys.stderr)
        return GATE_REFUSED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        commands = {
            "fit": _fit,
            "evaluate": _evaluate,
            "synth": _synth,
            "publish": _publish,
            "models": _models,
            "rollback": _rollback,
            "collect": _collect,
            "retrain": _retrain,
        }
        return commands[a.command](a)
    except VigilError as e:
        print(f"vigil-train: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad option values surfaced by the calibration or split maths
        print(f"vigil-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vigil-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
