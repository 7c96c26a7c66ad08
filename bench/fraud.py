"""Unsupervised fraud detection on simulated card payments: Vigil's autoencoder against
Isolation Forest (issue: "the autoencoder must beat Isolation Forest on average precision").

Protocol, as fraud practitioners evaluate (Le Borgne et al., Fraud Detection Handbook):

- transactions from `trainer.transactions.simulate` (the handbook's simulator design, seeded);
- features computed for every row in time order: "raw" (what one row shows: amount, hour of
  day) and "behaviour" (raw plus `detector.features.behaviour` per-card and per-terminal decayed
  windows, and optionally amount / the card's 30-day mean amount, linear or log-scaled);
- `trainer.fraud_metrics.time_split`: a behaviour warm-up, then train days, a delay (labels
  not known yet), then test days; the test drops cards already known to be compromised;
- both models learn "normal" from the legitimate rows of the train days only (labels are known
  there, the delay says so); a second run trains on every train row, labels ignored;
- the autoencoder goes through the product's own path: `build_bundle` -> ONNX bundle ->
  `detector.model.offline.score_file` (the Scorer the daemon uses) on a Parquet file of test rows;
  Isolation Forest (scikit-learn, 200 trees, seeded) sees the same rows, standardised;
- ROC-AUC, average precision and card precision@100 per day (mean) on the test days.

Choices (feature transform, ratio feature, autoencoder size and scaling) are made on a
validation split carved from the train period only (its own train days, delay and validation
days); every configuration tried is reported with its validation figures. The test period is
used once, for the configurations chosen.

    .venv/bin/python bench/fraud.py              # writes bench/results/fraud.{json,md}
    .venv/bin/python bench/fraud.py --quick      # small simulation, short training, prints only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
import torch
from sklearn.ensemble import IsolationForest

import detector
from detector.contract.behaviour import BehaviourSpec, EntityBehaviour
from detector.features.behaviour import offline_features
from detector.model.offline import score_file
from detector.model.scorer import Scorer
from trainer.build import build_bundle
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.fraud_metrics import average_precision, fraud_metrics, time_split
from trainer.transactions import Transactions, card_key, simulate, terminal_key

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# -- simulation: the handbook's population and fraud rates, a shorter horizon ---------------
SIMULATION: dict[str, Any] = {
    "n_customers": 5000,
    "n_terminals": 10000,
    "radius": 5.0,
    "compromised_terminals_per_day": 2,
    "terminal_compromise_days": 28,
    "compromised_cards_per_day": 3,
    "card_compromise_days": 14,
}
# -- split, in days: warm-up | train | delay | test -------------------------------------------
WARMUP_DAYS = 30  # the 30-day behaviour windows fill up before anything is learned
TRAIN_DAYS = 60
DELAY_DAYS = 7  # frauds of the last week of training are assumed known by the test
TEST_DAYS = 30
# The validation split lives inside the train period: the same delay, and the last
# VALIDATION_DAYS of the train period as its "test".
VALIDATION_DAYS = 15
# At most this many rows of the train days, drawn at random (time order kept): CPU time.
MAX_TRAIN_ROWS = 150_000
K = 100  # card precision@k: cards investigators can check per day

# -- the models --------------------------------------------------------------------------------
# The autoencoder's budget: large batches and a higher learning rate than TrainConfig's
# defaults, so that a fit stops early in well under a minute of one CPU thread. Measured on
# this benchmark's validation split (behaviour/log-counts, default network): 100k rows in
# batches of 512 at lr 1e-3 for 40 epochs was still improving at the last epoch (AP 0.041);
# 200k rows in batches of 2048 at lr 3e-3 stopped at epoch 72 (best 64) with AP 0.157. The
# threshold (calibration) plays no part in the ranking metrics; quantile avoids POT's
# fallback warnings.
AE_BASE: dict[str, Any] = {
    "device": "cpu",
    "epochs": 100,
    "patience": 8,
    "batch_size": 2048,
    "lr": 3e-3,
    "folds": 0,
    "calibration": "quantile",
    "name": "fraud-bench",
}
# Configurations tried on validation (TrainConfig overrides), the first is the default.
AE_CONFIGS: dict[str, dict[str, Any]] = {
    "standard": {"scaling": "standard"},
    "whiten": {"scaling": "whiten"},
    "standard, latent 2": {"scaling": "standard", "latent": 2},
    "standard, latent 8": {"scaling": "standard", "latent": 8},
    "standard, hidden 128-64": {"scaling": "standard", "hidden": (128, 64)},
    "standard, denoising 0.1": {"scaling": "standard", "variant": "denoising"},
    "standard, latent 1": {"scaling": "standard", "latent": 1},
}
# Which are tried on which feature set: with 3 raw features the automatic code size is 2,
# and 1 is the only smaller one; with 13 behaviour features (14 with a ratio) it is 4.
TRIED = {
    "raw": ("standard", "whiten", "standard, latent 1"),
    "behaviour": (
        "standard",
        "whiten",
        "standard, latent 2",
        "standard, latent 8",
        "standard, hidden 128-64",
        "standard, denoising 0.1",
    ),
}
IFOREST: dict[str, Any] = {"n_estimators": 200}

# -- features ----------------------------------------------------------------------------------
BEHAVIOUR = BehaviourSpec(
    entities=(
        EntityBehaviour(entity="card_id", mean_of="amount", since_previous=True),
        EntityBehaviour(entity="terminal_id"),
    )
)
# Transforms: "log-counts" takes log1p of the counts only; "log1p" of amounts, card means and
# counts too (since_previous is a log already; hour_sin/cos are left alone).
TRANSFORMS = ("identity", "log-counts", "log1p")
# The ratio feature, amount against the card's 30-day mean amount (which includes the row):
# "log": log1p(amount) - log1p(mean), "linear": amount / mean.
RATIOS = {
    "log": "amount_to_card_mean_30d_log",
    "linear": "amount_to_card_mean_30d",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One feature matrix: a feature set, a transform, and which ratio feature (if any)."""

    features: str  # "raw" | "behaviour"
    transform: str  # one of TRANSFORMS
    ratio: str | None = None  # a key of RATIOS

    @property
    def key(self) -> str:
        return f"{self.features}/{self.transform}" + (f"+{self.ratio} ratio" if self.ratio else "")


VARIANTS = [
    Variant("raw", "identity"),
    Variant("raw", "log1p"),  # log-counts: the same as identity, raw has no counts
    *(Variant("behaviour", t, r) for t in TRANSFORMS for r in (None, *RATIOS)),
]


def behaviour_features(tx: Transactions) -> tuple[list[str], np.ndarray]:
    """The behaviour spec over every row, in time order (simulate's rows are)."""
    keys = {
        "card_id": [card_key(c) for c in tx.customer_id.tolist()],
        "terminal_id": [terminal_key(t) for t in tx.terminal_id.tolist()],
    }
    values = {"amount": tx.tx_amount}
    return BEHAVIOUR.names(), offline_features(BEHAVIOUR, keys, tx.tx_time_ms, values)


def _logged(name: str, transform: str) -> bool:
    if transform == "log1p":
        return name == "amount" or ".count_" in name or ".mean_" in name
    return transform == "log-counts" and ".count_" in name


def feature_matrix(
    v: Variant, amount: np.ndarray, names: list[str], beh: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """[N, F] float32 and the column names of one variant."""
    col = {n: beh[:, i] for i, n in enumerate(names)}
    cols = {"amount": amount, "hour_sin": col["hour_sin"], "hour_cos": col["hour_cos"]}
    if v.features == "behaviour":
        cols |= {n: c for n, c in col.items() if not n.startswith("hour_")}
    cols = {n: np.log1p(c) if _logged(n, v.transform) else c for n, c in cols.items()}
    mean = np.maximum(col["card_id.mean_amount_30d"], 0.01)  # a card of 0.00 payments only
    if v.ratio == "log":
        cols[RATIOS["log"]] = np.log1p(amount) - np.log1p(mean)
    elif v.ratio == "linear":
        cols[RATIOS["linear"]] = amount / mean
    return list(cols), np.stack(list(cols.values()), axis=1).astype(np.float32)


# -- the two models ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Fitted:
    scores: np.ndarray  # [test rows] float64, higher = more suspicious
    fit_seconds: float
    score_seconds: float
    info: dict[str, Any]


def run_autoencoder(
    names: list[str], x_train: np.ndarray, x_test: np.ndarray, cfg: TrainConfig
) -> Fitted:
    """build_bundle on the training rows, then the detector's offline scorer on a file of
    the test rows (features by name, as the daemon's bundle would receive them)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bundle = build_bundle(Dataset(names, x_train, [], 0), cfg, Path(tmp) / "bundle", False)
        fit_seconds = time.perf_counter() - start
        path = Path(tmp) / "test.parquet"
        pq.write_table(pa.table(dict(zip(names, x_test.T, strict=True))), path)
        start = time.perf_counter()
        scored = score_file(Scorer(bundle, provider="cpu"), path)
        score_seconds = time.perf_counter() - start
    training = bundle.manifest.training
    info = {
        "epochs": training.epochs,
        "best_epoch": training.best_epoch,
        "validation_loss": training.validation_loss,
        "threshold": scored.threshold,
        "alarm_rate": float(scored.decisions.anomaly.mean()),
    }
    return Fitted(scored.scores.score.astype(np.float64), fit_seconds, score_seconds, info)


def run_iforest(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> Fitted:
    start = time.perf_counter()
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    forest = IsolationForest(**IFOREST, random_state=seed).fit((x_train - mean) / std)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = -forest.score_samples((x_test - mean) / std)
    return Fitted(scores, fit_seconds, time.perf_counter() - start, {})


# -- metrics -----------------------------------------------------------------------------------
def evaluate(tx: Transactions, test: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The handbook's metrics on the test rows, and AP per fraud scenario (the frauds of that
    scenario against all legitimate rows) to show which frauds a score finds."""
    y, scenario = tx.tx_fraud[test], tx.tx_fraud_scenario[test]
    m = fraud_metrics(tx.tx_time_days[test], tx.customer_id[test], scores, y, k=K)
    by_scenario = {}
    for s in (1, 2, 3):
        keep = (scenario == 0) | (scenario == s)
        if (scenario == s).any():
            by_scenario[str(s)] = average_precision(y[keep], scores[keep])
    return {
        "roc_auc": m.roc_auc,
        "average_precision": m.average_precision,
        f"card_precision_at_{K}": m.card_precision_at_k,
        "ap_by_scenario": by_scenario,
    }


@dataclasses.dataclass(frozen=True)
class Split:
    train: np.ndarray  # bool [N], the train days
    test: np.ndarray  # bool [N], the evaluated days (known compromised cards left out)


def split(tx: Transactions, start: int, train: int, test: int) -> Split:
    tr, te = time_split(
        tx.tx_time_days,
        train,
        DELAY_DAYS,
        test,
        start,
        customer_ids=tx.customer_id,
        y_true=tx.tx_fraud,
    )
    return Split(tr, te)


@dataclasses.dataclass(frozen=True)
class Bench:
    """What every run shares: the transactions, the feature matrices, the settings."""

    tx: Transactions
    matrices: dict[str, tuple[list[str], np.ndarray]]  # variant key -> (names, [N, F])
    ae: TrainConfig  # the base autoencoder configuration (AE_BASE)
    max_train_rows: int

    def train_rows(self, mask: np.ndarray, legit_only: bool, seed: int) -> np.ndarray:
        """Indices of the training rows: the legitimate ones (or all), at most
        max_train_rows drawn at random, in time order."""
        rows = np.flatnonzero(mask & (self.tx.tx_fraud == 0) if legit_only else mask)
        if len(rows) > self.max_train_rows:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(rows, self.max_train_rows, replace=False))
        return rows

    def run(
        self,
        s: Split,
        variant: str,
        ae_config: str | None,
        seed: int,
        legit_only: bool = True,
    ) -> dict[str, Any]:
        """Fit on the split's train rows, score its test rows: the autoencoder with the
        named configuration, or the forest when ae_config is None. The seed draws the
        training rows and seeds the model."""
        names, x = self.matrices[variant]
        rows = self.train_rows(s.train, legit_only, seed)
        x_test = x[s.test]
        if ae_config is None:
            fitted = run_iforest(x[rows], x_test, seed)
        else:
            cfg = dataclasses.replace(self.ae, **AE_CONFIGS[ae_config], seed=seed)
            fitted = run_autoencoder(names, x[rows], x_test, cfg)
        return {
            **evaluate(self.tx, s.test, fitted.scores),
            "train_rows": len(rows),
            "fit_seconds": round(fitted.fit_seconds, 2),
            "score_seconds": round(fitted.score_seconds, 2),
            **fitted.info,
        }


# -- the benchmark -----------------------------------------------------------------------------
def mean_over(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of the metrics and times, and the range of the AP."""
    out: dict[str, Any] = {
        k: float(np.mean([r[k] for r in runs]))
        for k in ("roc_auc", "average_precision", f"card_precision_at_{K}", "fit_seconds")
    }
    out["ap_by_scenario"] = {
        s: float(np.mean([r["ap_by_scenario"][s] for r in runs])) for s in runs[0]["ap_by_scenario"]
    }
    aps = [r["average_precision"] for r in runs]
    out["average_precision_range"] = [min(aps), max(aps)]
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _line(key: str, m: dict[str, Any]) -> str:
    return (
        f"{key:58s} ROC-AUC {m['roc_auc']:.4f}  AP {m['average_precision']:.4f}  "
        f"CP@{K} {m[f'card_precision_at_{K}']:.4f}  fit {m['fit_seconds']:.1f} s"
    )


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    sim = SIMULATION | {"days": args.days, "seed": args.seed}
    if args.customers:
        sim |= {"n_customers": args.customers, "n_terminals": 2 * args.customers}
    start = time.perf_counter()
    tx = simulate(**sim)
    sim_seconds = time.perf_counter() - start
    start = time.perf_counter()
    beh_names, beh = behaviour_features(tx)
    behaviour_seconds = time.perf_counter() - start
    log(
        f"{len(tx)} transactions ({tx.tx_fraud.mean():.2%} fraud) in {sim_seconds:.1f} s; "
        f"behaviour features in {behaviour_seconds:.1f} s"
    )
    matrices = {v.key: feature_matrix(v, tx.tx_amount, beh_names, beh) for v in VARIANTS}
    cfg0 = TrainConfig(**AE_BASE | {"epochs": args.epochs})  # seeded per run
    bench = Bench(tx, matrices, cfg0, args.max_train_rows)
    seed = args.model_seeds[0]  # validation runs: the first model seed

    # 1. Validation, inside the train period: every feature variant with the default
    # autoencoder and with the forest; then the autoencoder configurations on the
    # autoencoder's best variant of each feature set.
    fit_days = TRAIN_DAYS - DELAY_DAYS - VALIDATION_DAYS
    val = split(tx, WARMUP_DAYS, fit_days, VALIDATION_DAYS)
    validation: dict[str, dict[str, Any]] = {}  # "model | variant[ | AE config]" -> metrics

    def validate(variant: str, ae_config: str | None) -> None:
        key = f"iforest | {variant}" if ae_config is None else f"autoencoder | {variant}"
        key += f" | {ae_config}" if ae_config else ""
        if key not in validation:
            validation[key] = bench.run(val, variant, ae_config, seed)
            log("validation " + _line(key, validation[key]))

    def best(model: str, features: str) -> list[str]:
        keys = [k for k in validation if k.startswith(f"{model} | {features}/")]
        return max(keys, key=lambda k: validation[k]["average_precision"]).split(" | ")

    for v in VARIANTS:
        validate(v.key, "standard")
        validate(v.key, None)
    chosen: dict[str, tuple[str, str | None]] = {}  # "model | features" -> (variant, config)
    for features in ("raw", "behaviour"):
        variant = best("autoencoder", features)[1]
        for name in TRIED[features]:
            validate(variant, name)
        picked = best("autoencoder", features)
        chosen[f"autoencoder | {features}"] = (picked[1], picked[2])
        chosen[f"iforest | {features}"] = (best("iforest", features)[1], None)

    # 2. Test: the chosen configurations, fitted on the whole train period, once per model
    # seed; on behaviour features also fitted on every train row, frauds included (first
    # seed only: CPU time).
    test = split(tx, WARMUP_DAYS, TRAIN_DAYS, TEST_DAYS)
    results: dict[str, dict[str, Any]] = {}
    for key, (variant, ae_config) in chosen.items():
        runs = [(key, True)] + ([(f"{key} | all train rows", False)] if "behav" in key else [])
        for label, legit_only in runs:
            per_seed = []
            for s in args.model_seeds if legit_only else args.model_seeds[:1]:
                per_seed.append(bench.run(test, variant, ae_config, s, legit_only))
                log(f"test seed {s} " + _line(label, per_seed[-1]))
            results[label] = {"variant": variant, "ae_config": ae_config}
            results[label] |= {"mean": mean_over(per_seed), "seeds": per_seed}

    y_test = tx.tx_fraud[test.test]
    return {
        "simulation": sim,
        "transactions": len(tx),
        "fraud_share": float(tx.tx_fraud.mean()),
        "fraud_by_scenario": {str(s): int((tx.tx_fraud_scenario == s).sum()) for s in (1, 2, 3)},
        "split": {
            "warmup_days": WARMUP_DAYS,
            "train_days": [WARMUP_DAYS, WARMUP_DAYS + TRAIN_DAYS - 1],
            "delay_days": DELAY_DAYS,
            "test_days": [
                WARMUP_DAYS + TRAIN_DAYS + DELAY_DAYS,
                WARMUP_DAYS + TRAIN_DAYS + DELAY_DAYS + TEST_DAYS - 1,
            ],
            "validation": {
                "train_days": [WARMUP_DAYS, WARMUP_DAYS + fit_days - 1],
                "delay_days": DELAY_DAYS,
                "validation_days": [
                    WARMUP_DAYS + fit_days + DELAY_DAYS,
                    WARMUP_DAYS + TRAIN_DAYS - 1,
                ],
                "rows": int(val.test.sum()),
                "fraud_share": float(tx.tx_fraud[val.test].mean()),
            },
            "max_train_rows": args.max_train_rows,
            "test_rows": len(y_test),
            "test_fraud": int(y_test.sum()),
            "test_fraud_share": float(y_test.mean()),  # the AP of a random score
            "test_fraud_by_scenario": {
                str(s): int((tx.tx_fraud_scenario[test.test] == s).sum()) for s in (1, 2, 3)
            },
        },
        "features": {
            "behaviour_spec": json.loads(BEHAVIOUR.model_dump_json()),
            "variants": {v.key: matrices[v.key][0] for v in VARIANTS},
            "log-counts": "log1p on *.count_*",
            "log1p": "log1p on amount, card_id.mean_amount_*, *.count_*",
            "untouched": "card_id.since_previous_log_s (a log already), hour_sin, hour_cos",
            "log ratio": f"{RATIOS['log']} = log1p(amount) - log1p(card_id.mean_amount_30d)",
            "linear ratio": f"{RATIOS['linear']} = amount / card_id.mean_amount_30d",
        },
        "autoencoder_base": cfg0.to_dict(),
        "autoencoder_configs": {k: _jsonable(v) for k, v in AE_CONFIGS.items()},
        "iforest": IFOREST | {"random_state": "the model seed", "input": "z-scores of train rows"},
        "model_seeds": args.model_seeds,
        "k": K,
        "validation": validation,
        "chosen": {k: {"variant": v, "ae_config": a} for k, (v, a) in chosen.items()},
        "test": results,
        "seconds": {
            "simulation": round(sim_seconds, 1),
            "behaviour_features": round(behaviour_seconds, 1),
            "total": round(time.perf_counter() - begin, 1),
        },
        "environment": environment(args),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    exe = Path(sys.executable)
    python = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else "python"
    return {
        "command": shlex.join([python, "bench/fraud.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "torch_threads": args.threads,
        "load_average": round(os.getloadavg()[0], 1),  # other work slows the timings down
        "libraries": {
            "vigil": detector.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }


# -- report ------------------------------------------------------------------------------------
def _f(v: float) -> str:
    return "–" if v != v else f"{v:.3f}"  # NaN


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _metric_row(label: str, m: dict[str, Any]) -> list[str]:
    s = m["ap_by_scenario"]
    ap = _f(m["average_precision"])
    if (
        "average_precision_range" in m
        and m["average_precision_range"][0] != m["average_precision_range"][1]
    ):
        lo, hi = m["average_precision_range"]
        ap += f" ({lo:.3f}–{hi:.3f})"
    return [
        label,
        _f(m["roc_auc"]),
        ap,
        _f(m[f"card_precision_at_{K}"]),
        *(_f(s.get(str(i), float("nan"))) for i in (1, 2, 3)),
        f"{m['fit_seconds']:.0f}",
    ]


HEADER = ["", "ROC-AUC", "AP", f"CP@{K}", "AP sc. 1", "AP sc. 2", "AP sc. 3", "fit s"]


def verdict(result: dict[str, Any]) -> str:
    """One line per feature set: does the autoencoder beat the forest on test AP?"""
    t = result["test"]
    lines = []
    for features in ("raw", "behaviour"):
        ae = t[f"autoencoder | {features}"]["mean"]
        forest = t[f"iforest | {features}"]["mean"]
        a, f = ae["average_precision"], forest["average_precision"]
        word = "beats" if a > f else "does not beat"
        apart = (
            ae["average_precision_range"][0] > forest["average_precision_range"][1]
            or ae["average_precision_range"][1] < forest["average_precision_range"][0]
        )
        spread = "their seed ranges do not overlap" if apart else "their seed ranges overlap"
        lines.append(
            f"- {features} features: the autoencoder {word} Isolation Forest on average "
            f"precision ({a:.3f} against {f:.3f}, ratio {a / f:.2f}; {spread})."
        )
    return "\n".join(lines)


def _best(validation: dict[str, Any], model: str, match: str, exclude: str = "") -> float:
    """The best validation AP of a model over the variants whose key contains `match`; for
    the autoencoder, its default configuration only (the one every variant was run with)."""
    aps = [
        m["average_precision"]
        for k, m in validation.items()
        if k.startswith(model)
        and match in k
        and not (exclude and exclude in k)
        and (model == "iforest" or k.endswith(" | standard"))
    ]
    return max(aps) if aps else float("nan")


def findings(result: dict[str, Any]) -> str:
    """Observations computed from the figures, worded by their signs, not written ahead."""
    t, v, sp = result["test"], result["validation"], result["split"]
    share2 = sp["test_fraud_by_scenario"]["2"] / sp["test_fraud"]
    ap2 = max(m["mean"]["ap_by_scenario"]["2"] for m in t.values())
    aucs = [m["mean"]["roc_auc"] for m in t.values()]
    n2 = sp["test_fraud_by_scenario"]["2"]
    base2 = n2 / (sp["test_rows"] - sp["test_fraud"] + n2)  # AP of chance on that subset
    chance = ap2 < 1.5 * base2
    out = [
        f"- {100 * share2:.0f}% of the test frauds are scenario 2 (every payment at a "
        "compromised terminal, which otherwise looks like the terminal's usual payments); "
        f"the best AP any model reaches on them is {ap2:.4f}, against {base2:.4f} by chance"
        + (
            ": no anomaly score finds them (they need labels: terminal risk from confirmed "
            "frauds), which caps every AP here"
            if chance
            else ""
        )
        + f". ROC-AUC ranges over {min(aucs):.3f}–{max(aucs):.3f}.",
    ]
    for features in ("raw", "behaviour"):
        ae, forest = t[f"autoencoder | {features}"], t[f"iforest | {features}"]
        lo, hi = ae["mean"]["average_precision_range"]
        flo, fhi = forest["mean"]["average_precision_range"]
        out.append(
            f"- {features}: autoencoder AP {lo:.3f}–{hi:.3f} over the seeds, forest "
            f"{flo:.3f}–{fhi:.3f}; CP@{K} {ae['mean'][f'card_precision_at_{K}']:.3f} against "
            f"{forest['mean'][f'card_precision_at_{K}']:.3f}."
        )
    for model in ("autoencoder", "iforest"):
        clean = t[f"{model} | behaviour"]["mean"]["average_precision"]
        dirty = t[f"{model} | behaviour | all train rows"]["mean"]["average_precision"]
        word = "lowers" if dirty < clean else "raises"
        out.append(
            f"- {model}, behaviour features: training on every train row (frauds unlabelled, "
            f"one seed) {word} the test AP from {clean:.3f} to {dirty:.3f}."
        )
    for model in ("autoencoder", "iforest"):
        default = " (default configuration)" if model == "autoencoder" else ""
        plain = _best(v, model, "behaviour/", exclude="ratio")
        for ratio in RATIOS:
            with_ratio = _best(v, model, f"+{ratio} ratio")
            word = "raises" if with_ratio > plain else "lowers"
            out.append(
                f"- {model}, validation: the {ratio} ratio feature {word} the best behaviour "
                f"AP from {plain:.3f} to {with_ratio:.3f}{default}."
            )
        logged = _best(v, model, "/log1p")
        kept = _best(v, model, "", exclude="/log1p")
        word = "lowers" if logged < kept else "raises"
        out.append(
            f"- {model}, validation: log1p on the amounts {word} the best AP from {kept:.3f} "
            f"to {logged:.3f}{default}."
        )
    return "\n".join(out)


def render(result: dict[str, Any]) -> str:
    env, sp, sim = result["environment"], result["split"], result["simulation"]
    vs, feats = sp["validation"], result["features"]
    seeds = ", ".join(map(str, result["model_seeds"]))
    test_rows = [
        _metric_row(
            f"{k.replace(' | ', ', ')} ({m['variant']}"
            + (f"; {m['ae_config']}" if m["ae_config"] else "")
            + ")",
            m["mean"],
        )
        for k, m in result["test"].items()
    ]
    val_rows = [_metric_row(k.replace(" | ", ", "), m) for k, m in result["validation"].items()]
    scen = sp["test_fraud_by_scenario"]
    return f"""# Unsupervised fraud detection: autoencoder against Isolation Forest

Written by `bench/fraud.py`; rerun it rather than editing this file.

- command: `{env["command"]}`
- date: {env["date"]}
- machine: {env["machine"]}; torch threads {env["torch_threads"]}; load average at the end
  {env["load_average"]}; whole run {result["seconds"]["total"] / 60:.1f} min
- libraries: {", ".join(f"{k} {v}" for k, v in env["libraries"].items())}

## Data and protocol

`trainer.transactions.simulate({", ".join(f"{k}={v}" for k, v in sim.items())})`:
{result["transactions"]} transactions, {100 * result["fraud_share"]:.2f}% fraud (by scenario:
{result["fraud_by_scenario"]}). Scenario 1: amount above 220; 2: every payment at a
compromised terminal for 28 days; 3: a third of a leaked card's payments for 14 days, amount
× 5.

Days {sp["train_days"][0]}..{sp["train_days"][1]} train (the first {sp["warmup_days"]} days
only fill the behaviour windows), {sp["delay_days"]} days delay, days
{sp["test_days"][0]}..{sp["test_days"][1]} test (`trainer.fraud_metrics.time_split`, cards
known compromised before the delay left out): {sp["test_rows"]} test rows,
{sp["test_fraud"]} frauds ({100 * sp["test_fraud_share"]:.2f}%, the AP of a random score;
by scenario {scen}). Models learn from the legitimate rows of the train days (at most
{sp["max_train_rows"]} drawn at random, time order kept); "all train rows" also keeps the
frauds, unlabelled. Autoencoder: `build_bundle`, then the bundle scored by
`detector.model.offline.score_file` on a Parquet file of the test rows (score = the bundle's
anomaly score, mean squared reconstruction error). Isolation Forest: {IFOREST["n_estimators"]}
trees, z-scores of the same rows, score = −score_samples. CP@{K}: card precision top-{K}
per day, mean over the test days. "AP sc. s": average precision of the frauds of scenario s
against all legitimate rows (which frauds a score finds).

Features: raw = amount, hour_sin, hour_cos; behaviour = raw + `detector.features.behaviour`
per card (count and mean amount over 1/7/30 days, log seconds since the previous payment)
and per terminal (count over 1/7/30 days). "+log ratio" adds {feats["log ratio"]};
"+linear ratio" adds {feats["linear ratio"]}. "log-counts": {feats["log-counts"]}; "log1p":
{feats["log1p"]}; never transformed: {feats["untouched"]}.

## Test period (configurations chosen on validation)

Means over model seeds {seeds} (each draws its own training rows and initialises its own
model; one simulation), AP range over the seeds in brackets; "fit s" includes the bundle's
ONNX export and checks for the autoencoder.

{_table(HEADER, test_rows)}

{verdict(result)}

What the figures say:

{findings(result)}

## Every configuration tried, on the validation split

Train days {vs["train_days"][0]}..{vs["train_days"][1]}, delay {vs["delay_days"]},
validation days {vs["validation_days"][0]}..{vs["validation_days"][1]} ({vs["rows"]} rows,
{100 * vs["fraud_share"]:.2f}% fraud), all inside the train period. Every feature variant
with the default autoencoder ("standard": z-scores, hidden 64-32, automatic code size) and
the forest; then every autoencoder configuration on the autoencoder's best variant. The
highest validation AP is chosen, per model and feature set.

{_table(HEADER, val_rows)}

Not tried: windowed autoencoders over each card's last W payments (`--window W
--entity-column card_id`, where `--score newest|window-mean` would apply; with one row per
input the score is that row's own error), supervised models (they would see scenario 2),
more than one simulation seed.
"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0, help="simulation seed")
    ap.add_argument(
        "--model-seeds",
        type=lambda v: [int(p) for p in v.split(",")],
        default=[0, 1, 2],
        help="seeds of the test runs (training rows drawn, model); validation uses the first",
    )
    ap.add_argument("--days", type=int, default=WARMUP_DAYS + TRAIN_DAYS + DELAY_DAYS + TEST_DAYS)
    ap.add_argument("--customers", type=int, default=0, help="0: the handbook's 5000")
    ap.add_argument("--epochs", type=int, default=AE_BASE["epochs"])
    ap.add_argument("--max-train-rows", type=int, default=MAX_TRAIN_ROWS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--quick", action="store_true", help="1000 customers, 5 epochs, one seed; prints only"
    )
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where fraud.json/.md go")
    args = ap.parse_args(argv)
    if args.quick:
        args.customers, args.epochs = args.customers or 1000, min(args.epochs, 5)
        args.model_seeds = args.model_seeds[:1]
    result = benchmark(args)
    text = render(result)
    print(text)
    if not args.quick:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "fraud.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out_dir / "fraud.md").write_text(text)
        log(f"wrote {args.out_dir}/fraud.json and fraud.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
