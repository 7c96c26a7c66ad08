"""From normal data to a bundle: split, fit, export, calibrate, write."""

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
from detector.bundle import (
    REPORT_FILE,
    Bundle,
    Golden,
    Manifest,
    Threshold,
    Training,
    load_bundle,
    write_bundle,
)
from detector.scorer import Scorer
from trainer.calibrate import error_stats, pot_threshold, quantile_threshold
from trainer.config import TrainConfig
from trainer.data import Dataset, time_split
from trainer.export import check_parity, export_onnx, with_metadata
from trainer.fit import FitResult, fit
from trainer.report import render_report

__all__ = ["build_bundle", "calibrate", "cross_fitted_scores"]

log = logging.getLogger(__name__)
GOLDEN_ROWS = 8


def calibrate(scores: np.ndarray, cfg: TrainConfig) -> Threshold:
    if cfg.calibration == "pot":
        return pot_threshold(scores, risk=cfg.pot_risk, level=cfg.pot_level, margin=cfg.margin)
    return quantile_threshold(scores, q=cfg.quantile, margin=cfg.margin)


def _scores(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        score, fe, *_ = model(torch.from_numpy(x))
    return score.numpy(), fe.numpy()


def cross_fitted_scores(x: np.ndarray, cfg: TrainConfig, progress: bool) -> np.ndarray:
    """Score every row with a model fitted on the other K-1 time blocks."""
    blocks = np.array_split(np.arange(len(x)), cfg.folds)
    out = np.empty(len(x), dtype=np.float32)
    for k, idx in enumerate(blocks):
        rest = np.concatenate([b for j, b in enumerate(blocks) if j != k])
        tr, va, _ = time_split(len(rest), cfg.validation_fraction, 0.0)
        fold = fit(x[rest][tr], x[rest][va], replace(cfg, seed=cfg.seed + k + 1), progress)
        out[idx] = _scores(fold.model, x[idx])[0]
        log.info("fold %d/%d: %d held-out rows scored", k + 1, cfg.folds, len(idx))
    return out


def _libraries() -> dict[str, str]:
    return {
        "vigil": detector.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build_bundle(data: Dataset, cfg: TrainConfig, out: str | Path, progress: bool = True) -> Bundle:
    x = data.values
    if cfg.folds > 1:
        train, val, _ = time_split(len(x), cfg.validation_fraction, 0.0)
        cal_scores = cross_fitted_scores(x, cfg, progress)
        cal_rows = len(x)
        golden_x = x[val][:GOLDEN_ROWS]
    else:
        train, val, cal = time_split(len(x), cfg.validation_fraction, cfg.calibration_fraction)
        if cal.stop == cal.start:  # no calibration block: calibrate on validation data
            cal = val
        if val.stop == val.start:
            val = cal
        cal_scores = None
        cal_rows = cal.stop - cal.start
        golden_x = x[cal][:GOLDEN_ROWS]
    if len(x[val]) == 0:
        raise ValueError("no held-out normal data: set validation or calibration fraction above 0")
    result: FitResult = fit(x[train], x[val], cfg, progress)
    if cal_scores is None:
        cal_scores = _scores(result.model, x[cal])[0]
    threshold = calibrate(cal_scores, cfg)
    val_scores, val_fe = _scores(result.model, x[val])

    graph = export_onnx(result.model, x[train])
    created = datetime.now(UTC).replace(microsecond=0)
    version = f"{created:%Y%m%dT%H%M%SZ}-{hashlib.sha256(graph).hexdigest()[:8]}"
    essentials = {
        "schema_version": 1,
        "name": cfg.name,
        "version": version,
        "window": 1,
        "features": data.names,
        "threshold": threshold.value,
        "threshold_method": threshold.method,
    }
    model_bytes = with_metadata(graph, {"vigil." + k: json.dumps(v) for k, v in essentials.items()})
    parity = check_parity(model_bytes, result.model, x[val][:4096])

    manifest = Manifest(
        schema_version=1,
        name=cfg.name,
        version=version,
        created_at=created,
        features=data.names,
        window=1,
        score=(
            "mean squared reconstruction error over features, in "
            + ("min-max scaled units" if cfg.loss == "bce" else "standardised units (z-scores)")
        ),
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
            config=cfg.to_dict() | {"rows_dropped": data.rows_dropped},
        ),
        validation={
            "loss": result.val_loss[result.best_epoch - 1],
            "score_p50": float(np.quantile(val_scores, 0.5)),
            "score_p99": float(np.quantile(val_scores, 0.99)),
            "calibration_alarm_rate": float(np.mean(cal_scores > threshold.value)),
            "onnx_parity_max_error": parity,
        },
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
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
    path = write_bundle(out, manifest, model_bytes, {REPORT_FILE: report})
    bundle = load_bundle(path)
    Scorer(bundle, provider="cpu")  # the detector's own checks, before anyone else relies on it
    return bundle
