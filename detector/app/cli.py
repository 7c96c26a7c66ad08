"""vigil-detect: run the daemon, score a file offline, print the configuration."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.errors import BundleError, ConfigError, DataError, VigilError

__all__ = ["main"]

log = logging.getLogger("detector")


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags and --set KEY=VALUE pairs as nested settings."""
    flat: dict[str, Any] = {}
    for dotted, value in (
        ("model.path", a.model),
        ("kafka.bootstrap_servers", a.bootstrap_servers),
        ("kafka.group_id", a.group_id),
        ("topics.input", a.input_topic),
        ("http.port", a.metrics_port),
        ("model.provider", a.provider),
    ):
        if value is not None:
            flat[dotted] = value
    for item in a.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch.max_size=5000")
        k, v = item.split("=", 1)
        try:
            flat[k.strip()] = json.loads(v)
        except ValueError:
            flat[k.strip()] = v
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _add_settings_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML or YAML settings file")
    p.add_argument("--model", help="bundle directory (model.path)")
    p.add_argument("--bootstrap-servers", help="kafka.bootstrap_servers")
    p.add_argument("--group-id", help="kafka.group_id")
    p.add_argument("--input-topic", action="append", help="topics.input (repeatable)")
    p.add_argument("--metrics-port", type=int, help="http.port")
    p.add_argument("--provider", choices=["auto", "cuda", "cpu"], help="model.provider")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any setting by dotted name, e.g. --set payload.key_from=field",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vigil-detect", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="score Kafka topics until stopped (SIGTERM/SIGINT)")
    _add_settings_options(r)
    c = sub.add_parser("config", help="print the effective configuration, secrets masked")
    _add_settings_options(c)
    s = sub.add_parser("score", help="score a file offline (no Kafka)")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, type=Path, help="CSV to write")
    s.add_argument("--sep")
    s.add_argument("--transpose", action="store_true")
    s.add_argument("--drop-bad-rows", action="store_true")
    s.add_argument("--threshold", type=float, help="override the bundle's threshold")
    s.add_argument(
        "--entity-column",
        metavar="COL",
        help="windowed models: the column naming each row's entity; windows are built per "
        "entity in file order (default: all rows are one entity)",
    )
    s.add_argument(
        "--time-column",
        metavar="COL",
        help="models with behaviour features: each row's event time (epoch s or ms, ISO 8601); "
        "the features are derived per entity in one pass in time order, as the daemon does",
    )
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--emit-latent", action="store_true", help="add the latent code as columns")
    s.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    k = sub.add_parser(
        "check", help="verify a bundle: files, checksum, ONNX signature, golden sample"
    )
    k.add_argument("--model", required=True, type=Path)
    k.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    return ap


def _configure_logging(level: str, fmt: str) -> None:
    if fmt == "json":
        import orjson

        class Json(logging.Formatter):
            def format(self, r: logging.LogRecord) -> str:
                return orjson.dumps(
                    {
                        "ts": r.created,
                        "level": r.levelname,
                        "logger": r.name,
                        "message": r.getMessage(),
                    }
                ).decode()

        handler = logging.StreamHandler()
        handler.setFormatter(Json())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
        )
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _run(a: argparse.Namespace) -> int:
    from detector.app.service import run
    from detector.ops.settings import load_settings

    settings = load_settings(a.config, **_overrides(a))
    _configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: the user really wants out now
            os._exit(130)
        log.info("%s received: finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    reload = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    return run(settings, stop, reload)


def _config(a: argparse.Namespace) -> int:
    from detector.ops.settings import load_settings, masked

    print(json.dumps(masked(load_settings(a.config, **_overrides(a))), indent=2))
    return 0


def _score(a: argparse.Namespace) -> int:
    from detector.contract.bundle import load_bundle
    from detector.model.offline import score_file, write_csv
    from detector.model.scorer import Scorer

    scorer = Scorer(load_bundle(a.model), provider=a.provider)
    trained_per = scorer.bundle.manifest.training.config.get("entity_column")
    if scorer.window > 1 and trained_per and not a.entity_column:
        print(
            f"vigil-detect: warning: the model was trained on windows per '{trained_per}'; "
            f"without --entity-column {trained_per} all rows are scored as one entity",
            file=sys.stderr,
        )
    res = score_file(
        scorer,
        a.data,
        sep=a.sep,
        transpose=a.transpose,
        drop_bad_rows=a.drop_bad_rows,
        entity_column=a.entity_column,
        time_column=a.time_column,
        threshold=a.threshold,
        top_k=a.top_k,
        latent=a.emit_latent,
    )
    n = write_csv(res, a.out)
    print(
        json.dumps(
            {
                "rows": n,
                "anomalies": int(res.decisions.anomaly.sum()),
                "rows_warmup": int(res.warmup.sum()),
                "rows_dropped": res.table.rows_dropped,
                "threshold": res.threshold,
                "provider": scorer.provider,
                "out": str(a.out),
            }
        )
    )
    return 0


def _check(a: argparse.Namespace) -> int:
    from detector.contract.bundle import load_bundle
    from detector.model.scorer import Scorer

    bundle = load_bundle(a.model)
    scorer = Scorer(bundle, provider=a.provider)
    m = bundle.manifest
    print(
        json.dumps(
            {
                "ok": True,
                "name": m.name,
                "version": m.version,
                "features": len(m.features),
                "window": m.window,
                "threshold": m.threshold.model_dump(),
                "provider": scorer.provider,
            }
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        return {"run": _run, "config": _config, "score": _score, "check": _check}[a.command](a)
    except (ConfigError, BundleError, DataError) as e:
        # What to fix, not a stack trace; exit 2 as for any bad invocation.
        print(f"vigil-detect: error: {e}", file=sys.stderr)
        return 2
    except VigilError as e:
        print(f"vigil-detect: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
