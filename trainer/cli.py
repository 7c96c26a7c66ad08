"""vigil-train: fit a bundle, evaluate it, generate synthetic telemetry, collect recent data
from the stream and retrain through a gate.

This module parses the command line; `trainer.commands` runs each command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from detector.errors import VigilError
from trainer.config import MODELS, SCORES, Gate, TrainConfig

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
    ap = argparse.ArgumentParser(prog="vigil-train", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    f = _add_fit(sub)
    _add_fit_features(f)
    _add_fit_training(f)
    _add_evaluate(sub)
    _add_registry(sub)
    _add_synth(sub)
    _add_collect(sub)
    _add_retrain(sub)
    return ap


_Sub = argparse._SubParsersAction  # the `sub` of ArgumentParser.add_subparsers


def _add_fit(sub: _Sub) -> argparse.ArgumentParser:
    """fit: the data, the model's kind and windows."""
    d = TrainConfig()
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
    return f


def _add_fit_features(f: argparse.ArgumentParser) -> None:
    """fit: behaviour, labels, categorical features, bounds."""
    d = TrainConfig()
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
        "--warmup",
        metavar="DURATION",
        default="0s",
        help="with --behaviour: the rows of the first DURATION ('30d') only build per-entity "
        "history and are not trained on, so that the model learns behaviour features as a "
        "detector that has run a while computes them (default %(default)s)",
    )


def _add_fit_training(f: argparse.ArgumentParser) -> None:
    """fit: network, scaling, optimisation, calibration."""
    d = TrainConfig()
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


def _add_evaluate(sub: _Sub) -> None:
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


def _add_registry(sub: _Sub) -> None:
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


def _add_synth(sub: _Sub) -> None:
    s = sub.add_parser("synth", help="write synthetic plant telemetry (for demos and tests)")
    s.add_argument("--out", required=True, type=Path, help=".csv, .parquet or .jsonl")
    s.add_argument("--steps", type=int, default=2880, help="samples per entity (default 2 days)")
    s.add_argument("--entities", type=int, default=4)
    s.add_argument("--fault-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--drift", type=float, default=0.0, help="wear reached in the last third")


_DETECTOR_SETTINGS = (
    "Kafka, topics, payload mapping and model.path come from the detector's settings: "
    "VIGIL_* environment variables and --config, as for `vigil-detect run`."
)


def _add_collect(sub: _Sub) -> None:
    c = sub.add_parser(
        "collect",
        help="read recent normal data from the input topic into Parquet",
        description=_DETECTOR_SETTINGS,
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


def _add_retrain(sub: _Sub) -> None:
    rt = sub.add_parser(
        "retrain",
        help="fit a candidate on collected data, compare with the live model, publish if it passes",
        description=_DETECTOR_SETTINGS,
    )
    rt.add_argument("--config", type=Path, help="the detector's TOML or YAML settings file")
    rt.add_argument("--data", required=True, type=Path, help="Parquet from `vigil-train collect`")
    rt.add_argument("--report", type=Path, help="where the candidate and comparison go")
    g = Gate()
    rt.add_argument("--max-alert-ratio", type=float, default=g.max_alert_ratio)
    rt.add_argument("--max-psi", type=float, default=g.max_psi)
    rt.add_argument("--holdout", type=float, default=g.holdout)
    rt.add_argument(
        "--warmup",
        metavar="DURATION",
        default="0s",
        help="models with behaviour features: the collected rows of the first DURATION "
        "('30d', at least the longest behaviour window) only build per-entity history; "
        "neither trained on nor held out (default %(default)s)",
    )
    rt.add_argument(
        "--refit-vocabularies",
        action="store_true",
        help="choose the categorical features' vocabularies again on the collected training "
        "rows (default: keep the live model's, so codes keep their meaning)",
    )
    rt.add_argument("--dry-run", action="store_true", help="compare, never publish")
    rt.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from trainer.commands import COMMANDS

    try:
        return COMMANDS[a.command](a)
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
