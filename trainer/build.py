"""From normal data to a bundle: split, fit, export, calibrate, write.

The split is by rows in time order (file order); each part's windows are built on its own
rows, per entity, so that no window straddles two entities or two parts: a held-out score
is always that of a model that never saw the window's newest sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import detector
from detector.contract.behaviour import BehaviourSpec
from detector.contract.bundle import (
    NETWORK_FILE,
    PREPARE_FILE,
    REPORT_FILE,
    Bundle,
    Golden,
    Manifest,
    Stages,
    Threshold,
    Training,
    load_bundle,
    write_bundle,
)
from detector.contract.drift import reference_edges
from detector.model.scorer import Scorer
from trainer.calibrate import error_stats, pot_threshold, quantile_threshold
from trainer.config import TrainConfig
from trainer.data import Dataset, Windows, group_codes, time_split
from trainer.export import check_parity, export_onnx, export_stages, with_metadata
from trainer.fit import FitResult, as_windows, fit
from trainer.report import render_report

__all__ = ["build_bundle", "calibrate", "cross_fitted_scores"]

log = logging.getLogger(__name__)
GOLDEN_ROWS = 8


def calibrate(scores: np.ndarray, cfg: TrainConfig) -> Threshold:
    if cfg.calibration == "pot":
        try:
            return pot_threshold(scores, risk=cfg.pot_risk, level=cfg.pot_level, margin=cfg.margin)
        except ValueError as e:
            log.warning("%s; calibrating with the %.4g quantile instead", e, 1 - cfg.pot_risk)
            return quantile_threshold(scores, q=1 - cfg.pot_risk, margin=cfg.margin)
    return quantile_threshold(scores, q=cfg.quantile, margin=cfg.margin)


def _scores(model: torch.nn.Module, x: np.ndarray | Windows) -> tuple[np.ndarray, np.ndarray]:
    """Scores [M] and feature errors [M, F] of rows or windows, in bounded batches."""
    parts = []
    with torch.no_grad():
        for xb in as_windows(x, 1).batches(65536):
            score, fe, *_ = model(torch.from_numpy(xb))
            parts.append((score.numpy(), fe.numpy()))
    if not parts:
        raise ValueError("no windows to score: hold out more rows per entity or lower --window")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def cross_fitted_scores(
    x: np.ndarray,
    cfg: TrainConfig,
    progress: bool,
    entities: np.ndarray | None = None,
    categorical: dict[int, int] | None = None,
) -> np.ndarray:
    """Score every row with a model fitted on the other K-1 time blocks. With windows, the
    rows in their entity's warm-up within a block have no window and are left out."""
    blocks = np.array_split(np.arange(len(x)), cfg.folds)
    # A window never spans two blocks: the training rows of a fold join blocks that are not
    # neighbours in time. So the group key is (entity, block).
    block_of = np.repeat(np.arange(cfg.folds), [len(b) for b in blocks])
    groups = group_codes(entities, len(x)) * cfg.folds + block_of
    scores: list[np.ndarray] = []
    for k, idx in enumerate(blocks):
        rest = np.concatenate([b for j, b in enumerate(blocks) if j != k])
        tr, va, _ = time_split(len(rest), cfg.validation_fraction, 0.0)
        train = Windows.build(x, cfg.window, groups, rest[tr])
        val = Windows.build(x, cfg.window, groups, rest[va])
        fold = fit(train, val, replace(cfg, seed=cfg.seed + k + 1), progress, categorical)
        held_out = Windows.build(x, cfg.window, groups, idx)
        scores.append(_scores(fold.model.scoring(cfg.score), held_out)[0])
        log.info("fold %d/%d: %d held-out windows scored", k + 1, cfg.folds, len(held_out))
    return np.concatenate(scores)


def _libraries() -> dict[str, str]:
    return {
        "vigil": detector.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _score_text(cfg: TrainConfig, categorical: bool = False) -> str:
    units = "min-max scaled units" if cfg.loss == "bce" else "standardised units (z-scores)"
    if cfg.scaling == "whiten":
        units = "ZCA-whitened z-scores (Hotelling's T^2 / features, less what the model explains)"
    if cfg.lags > 1:
        vectors = (
            f"the z-scores of each {cfg.lags} consecutive samples stacked ({cfg.lags} x features "
            "values) and ZCA-whitened together, with their covariance across lags (lagged "
            f"Hotelling's T^2 / ({cfg.lags} x features), less what the model explains)"
        )
        window = f"the last {cfg.window} samples of one entity, oldest first"
        if cfg.score == "window-mean":
            return (
                "mean squared reconstruction error over the values of every lag vector of each "
                f"window ({window}: {cfg.positions} vectors) and over those vectors: score "
                f"'window-mean', lags {cfg.lags}, in {vectors}. feature_error: each feature's "
                "share, its lags' errors averaged"
            )
        return (
            "mean squared reconstruction error over the values of the newest lag vector of "
            f"each window ({window}): score 'newest', lags {cfg.lags}, in {vectors}. "
            "feature_error: each feature's share, its lags' errors averaged"
        )
    if cfg.window == 1 and categorical:
        return (
            "mean over features of each numeric feature's squared reconstruction error, in "
            f"{units}, and each categorical feature's cross-entropy of the value seen, divided "
            "by the feature's entropy on the training rows"
        )
    if cfg.window == 1:
        return f"mean squared reconstruction error over features, in {units}"
    window = f"(the last {cfg.window} samples of one entity, oldest first)"
    if cfg.score == "window-mean":
        return (
            "mean squared reconstruction error over features and over all samples of each "
            f"window {window}: score 'window-mean', in {units}"
        )
    return (
        "mean squared reconstruction error over features of the newest sample of each window "
        f"{window}: score 'newest', in {units}"
    )


def build_bundle(
    data: Dataset,
    cfg: TrainConfig,
    out: str | Path,
    progress: bool = True,
    behaviour: BehaviourSpec | None = None,
    bounds: dict[str, tuple[float | None, float | None]] | None = None,
) -> Bundle:
    """Fit, calibrate, export and write a bundle. `behaviour`: the spec that derived some of
    `data`'s features (`detector.features.inputs`; default `data.behaviour`); the detector
    derives them the same way. `bounds`: declared ranges of payload features (default
    `data.bounds`), recorded in the manifest."""
    behaviour = behaviour if behaviour is not None else data.behaviour
    bounds = bounds if bounds is not None else data.bounds
    cfg = cfg.resolved(len(data.values))
    cfg.check()
    for name, (low, high) in (bounds or {}).items():
        if name not in data.names:
            raise ValueError(f"--bounds names '{name}', which is not a feature")
        col = data.values[:, data.names.index(name)]
        outside = int((col < low).sum()) if low is not None else 0
        outside += int((col > high).sum()) if high is not None else 0
        if outside:
            raise ValueError(
                f"{outside} training rows have '{name}' outside its bounds [{low}, {high}]"
            )
    x, groups = data.values, group_codes(data.entities, len(data.values))
    # Columns holding categorical codes, and how many codes each has.
    codes = {data.names.index(n): c.size for n, c in (data.categorical or {}).items()}
    if cfg.folds > 1:
        train, val, _ = time_split(len(x), cfg.validation_fraction, 0.0)
        cal_scores = cross_fitted_scores(x, cfg, progress, data.entities, codes)
        cal_rows = len(x)
        cal = val  # golden sample
    else:
        train, val, cal = time_split(len(x), cfg.validation_fraction, cfg.calibration_fraction)
        if cal.stop == cal.start:  # no calibration block: calibrate on validation data
            cal = val
        if val.stop == val.start:
            val = cal
        cal_scores = None
        cal_rows = cal.stop - cal.start
    if val.stop == val.start:
        raise ValueError("no held-out normal data: set validation or calibration fraction above 0")
    train_w, val_w, cal_w = (Windows.build(x, cfg.window, groups, s) for s in (train, val, cal))
    for part, w in (("validation", val_w), ("calibration", cal_w)):
        if len(w) == 0:
            raise ValueError(
                f"the {part} rows hold no full window of {cfg.window} samples of one entity; "
                f"raise --{part}-fraction or lower --window"
            )
    result: FitResult = fit(train_w, val_w, cfg, progress, codes)
    model = result.model.scoring(cfg.score)
    if cal_scores is None:
        cal_scores = _scores(model, cal_w)[0]
    threshold = calibrate(cal_scores, cfg)
    val_scores, val_fe = _scores(model, val_w)
    golden_x = cal_w.take(slice(0, GOLDEN_ROWS))

    example = train_w.take(slice(0, 16))
    graph = export_onnx(model, example)
    stage_files: dict[str, bytes] = {}
    stages = None
    if cfg.window > 1:
        prepare, network = export_stages(model, example)
        stage_files = {PREPARE_FILE: prepare, NETWORK_FILE: network}
        stages = Stages(
            lags=cfg.lags,
            prepare_sha256=hashlib.sha256(prepare).hexdigest(),
            network_sha256=hashlib.sha256(network).hexdigest(),
        )
    created = datetime.now(UTC).replace(microsecond=0)
    version = f"{created:%Y%m%dT%H%M%SZ}-{hashlib.sha256(graph).hexdigest()[:8]}"
    essentials = {
        "schema_version": 1,
        "name": cfg.name,
        "version": version,
        "window": cfg.window,
        "model_type": cfg.model,
        "score": cfg.score,
        "lags": cfg.lags,
        "features": data.names,
        "threshold": threshold.value,
        "threshold_method": threshold.method,
    }
    model_bytes = with_metadata(graph, {"vigil." + k: json.dumps(v) for k, v in essentials.items()})
    parity = check_parity(model_bytes, model, val_w.take(slice(0, 4096)))

    manifest = Manifest(
        schema_version=1,
        name=cfg.name,
        version=version,
        created_at=created,
        features=data.names,
        window=cfg.window,
        score=_score_text(cfg, bool(codes)),
        threshold=threshold,
        feature_error=error_stats(val_fe),
        training=Training(
            files=data.files,
            rows_train=train.stop - train.start,
            rows_validation=val.stop - val.start,
            rows_calibration=cal_rows,
            epochs=len(result.train_loss),
            best_epoch=result.best_epoch,
            train_loss=result.train_loss[result.best_epoch - 1],
            validation_loss=result.val_loss[result.best_epoch - 1],
            duration_seconds=round(result.seconds, 3),
            device=result.device,
            config=cfg.to_dict()
            | {
                "rows_dropped": data.rows_dropped,
                "windows": {
                    "train": len(train_w),
                    "validation": len(val_w),
                    "calibration": len(cal_scores),
                },
            },
        ),
        validation={
            "loss": result.val_loss[result.best_epoch - 1],
            "score_p50": float(np.quantile(val_scores, 0.5)),
            "score_p99": float(np.quantile(val_scores, 0.99)),
            "calibration_alarm_rate": float(np.mean(cal_scores > threshold.value)),
            "onnx_parity_max_error": parity,
        },
        score_reference=reference_edges(cal_scores),
        behaviour=behaviour,
        bounds=bounds or None,
        categorical=data.categorical,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        stages=stages,
        libraries=_libraries(),
        golden=Golden(inputs=golden_x.tolist(), scores=[0.0] * len(golden_x)),
    )
    # Golden scores come from ONNX Runtime itself: the detector's self-test reproduces them.
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    golden_scores = session.run(["score"], {"x": golden_x.astype(np.float32)})[0]
    manifest = manifest.model_copy(
        update={"golden": Golden(inputs=golden_x.tolist(), scores=golden_scores.tolist())}
    )
    report = render_report(
        result.train_loss,
        result.val_loss,
        result.best_epoch,
        cal_scores,
        threshold.value,
        f"{cfg.name} {version}",
    )
    path = write_bundle(out, manifest, model_bytes, {REPORT_FILE: report} | stage_files)
    bundle = load_bundle(path)
    Scorer(bundle, provider="cpu")  # the detector's own checks, before anyone else relies on it
    return bundle
