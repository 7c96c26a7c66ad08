"""Batch in, scores out: one ONNX Runtime session per bundle, no Kafka, no files.

The daemon and the offline scorer both call `Scorer.score` and `decide`: there is one
scoring path.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from detector.contract.bundle import (
    INPUT_NAME,
    MODEL_FILE,
    NETWORK_FILE,
    NETWORK_INPUT,
    OUTPUT_FEATURE_ERROR,
    OUTPUT_LATENT,
    OUTPUT_RECONSTRUCTION,
    OUTPUT_SCORE,
    PREPARE_FILE,
    PREPARE_INPUT,
    Bundle,
)
from detector.errors import BundleError, ConfigError
from detector.features.windows import Windows
from detector.model.cpus import cpu_budget

__all__ = [
    "CHUNK_VALUES",
    "Decisions",
    "Provider",
    "Scorer",
    "Scores",
    "decide",
    "gpu_present",
    "top_features",
]

log = logging.getLogger(__name__)
ort.set_default_logger_severity(3)  # errors only: provider fallbacks are reported by us

Provider = Literal["auto", "cuda", "cpu"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
GOLDEN_RTOL = 1e-3
GOLDEN_ATOL = 1e-5
# On CPU a batch runs in chunks of at most this many input values (2 MiB of float32).
# ONNX Runtime's arena keeps its largest run's intermediates for good: a batch of 5,000
# windowed inputs (W = 20, lags 3) held 485 MB, chunks of about 500 windows 134 MB, at the
# same windows/s. Dense batches of 52 features run whole up to 10,000 rows.
CHUNK_VALUES = 1 << 19


@dataclass(frozen=True)
class Scores:
    score: np.ndarray  # [N] float32
    feature_error: np.ndarray  # [N, F] squared error per feature, standardised units
    reconstruction: np.ndarray  # [N, F] expected values, original units
    latent: np.ndarray | None = None  # [N, K] when asked for

    @staticmethod
    def concat(parts: list[Scores], n_features: int) -> Scores:
        """Parts of one result, in order; no parts: an empty result."""
        if not parts:
            empty = np.zeros((0, n_features), np.float32)
            return Scores(np.zeros(0, np.float32), empty, empty, None)
        latent = [p.latent for p in parts if p.latent is not None]
        return Scores(
            score=np.concatenate([p.score for p in parts]),
            feature_error=np.concatenate([p.feature_error for p in parts]),
            reconstruction=np.concatenate([p.reconstruction for p in parts]),
            latent=np.concatenate(latent) if len(latent) == len(parts) else None,
        )


@dataclass(frozen=True)
class Decisions:
    anomaly: np.ndarray  # [N] bool
    severity: np.ndarray  # [N] score / threshold
    top_index: np.ndarray  # [N, k] feature indices, largest share of the error first
    top_share: np.ndarray  # [N, k] share of the row's error


def _session_options(threads: int | None, spinning: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        # ONNX Runtime's pool threads busy-wait after each run by default, so that the next
        # one starts sooner. Between a stream's batches that is most of a core burnt for
        # nothing: measured here at 500 msg/s, 82% of a core with it and 15% without; it costs
        # 13-400 us per back-to-back call (batch 1-2000), well under 1 us per message.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def _open(
    bundle: Bundle, name: str, data: bytes, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad models
        raise BundleError(f"{bundle.path}: ONNX Runtime cannot load {name}: {e}") from e


def gpu_present() -> bool:
    """Whether a CUDA driver with at least one device is there, asked of the driver itself
    (libcuda), so that 'auto' on a CPU machine stays quiet and fast."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return (
            cuda.cuInit(0) == 0
            and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
            and count.value > 0
        )
    except OSError:
        return False


def _providers_for(provider: Provider) -> list[str]:
    if provider == "cpu":
        return [_CPU]
    if not gpu_present():
        if provider == "cuda":
            raise ConfigError(
                "provider 'cuda' asked for, but no CUDA GPU was found; use 'auto' or 'cpu'"
            )
        return [_CPU]
    # get_available_providers() lists CUDA whenever the GPU build is installed, GPU or not:
    # only the session's own provider list says what is really active.
    if _CUDA not in ort.get_available_providers():
        if provider == "cuda":
            raise ConfigError("provider 'cuda' asked for, but this onnxruntime has no CUDA support")
        return [_CPU]
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:  # finds CUDA/cuDNN from the nvidia-* wheels (torch's) when present
            preload()
        except Exception as e:
            log.debug("onnxruntime.preload_dlls failed: %s", e)
    return [_CUDA, _CPU]


class Scorer:
    """An ONNX Runtime session for one bundle, checked before it is trusted."""

    def __init__(
        self,
        bundle: Bundle,
        provider: Provider = "auto",
        threads: int | None = None,
        spinning: bool = False,
        chunk_values: int = CHUNK_VALUES,
    ):
        self.bundle = bundle
        self.features = bundle.manifest.features
        self.window = bundle.manifest.window
        # Unset: as many as this process may use (affinity, container CPU limit), which
        # ONNX Runtime's own default (the host's physical cores) does not see.
        self.threads = threads or cpu_budget()
        options = _session_options(self.threads, spinning)
        providers = _providers_for(provider)
        self.session = _open(bundle, MODEL_FILE, bundle.model_bytes, options, providers)
        # A windowed model in two stages (bundle.Stages): each sample prepared once.
        # (`replace(bundle, stage_bytes=None)` scores with model.onnx alone.)
        self._stages: tuple[ort.InferenceSession, ort.InferenceSession] | None = None
        stages = bundle.manifest.stages
        self._lags = stages.lags if stages is not None else 1
        if bundle.stage_bytes is not None:
            prepare, network = bundle.stage_bytes
            self._stages = (
                _open(bundle, PREPARE_FILE, prepare, options, providers),
                _open(bundle, NETWORK_FILE, network, options, providers),
            )
        self.provider = self.session.get_providers()[0]
        if provider == "cuda" and self.provider != _CUDA:
            raise ConfigError(
                "provider 'cuda' asked for, but CUDA could not be initialised "
                "(no GPU, or CUDA/cuDNN libraries missing); use provider 'auto' or 'cpu'"
            )
        self._check_signature()
        self._outputs = [o.name for o in self.session.get_outputs()]
        # A GPU's memory is not the process's RSS, and it wants its batches whole.
        per_row = self.window * len(self.features)
        self._chunk_rows = max(1, chunk_values // per_row) if self.provider == _CPU else None
        self.self_test()

    @property
    def threshold(self) -> float:
        return self.bundle.manifest.threshold.value

    def _check_signature(self) -> None:
        where = f"{self.bundle.path}/model.onnx"
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            names = [i.name for i in inputs]
            raise BundleError(f"{where}: expected one input named '{INPUT_NAME}', found {names}")
        shape = inputs[0].shape
        want = [len(self.features)] if self.window == 1 else [self.window, len(self.features)]
        if len(shape) != 1 + len(want) or list(shape[1:]) != want:
            raise BundleError(
                f"{where}: input '{INPUT_NAME}' has shape {shape}, but the manifest's "
                f"{len(self.features)} features and window {self.window} need [N, "
                f"{', '.join(map(str, want))}]"
            )
        if isinstance(shape[0], int) and shape[0] != -1:
            raise BundleError(
                f"{where}: the batch dimension is fixed to {shape[0]}; re-export it dynamic"
            )
        if inputs[0].type != "tensor(float)":
            raise BundleError(
                f"{where}: input '{INPUT_NAME}' must be float32, not {inputs[0].type}"
            )
        outputs = {o.name for o in self.session.get_outputs()}
        missing = {OUTPUT_SCORE, OUTPUT_FEATURE_ERROR, OUTPUT_RECONSTRUCTION} - outputs
        if missing:
            raise BundleError(
                f"{where}: outputs {sorted(missing)} are missing (has {sorted(outputs)})"
            )
        if self._stages is None:
            return
        prepare, network = self._stages
        for session, file, name in (
            (prepare, PREPARE_FILE, PREPARE_INPUT),
            (network, NETWORK_FILE, NETWORK_INPUT),
        ):
            names = [i.name for i in session.get_inputs()]
            if names != [name]:
                raise BundleError(
                    f"{self.bundle.path}/{file}: expected one input named '{name}', found {names}"
                )
        if differ := {o.name for o in network.get_outputs()} ^ outputs:
            raise BundleError(
                f"{self.bundle.path}/{NETWORK_FILE}: its outputs differ from model.onnx's in "
                f"{sorted(differ)}"
            )

    def self_test(self) -> None:
        """Score the manifest's golden sample; refuse the bundle unless it reproduces."""
        golden = self.bundle.manifest.golden
        x = np.asarray(golden.inputs, dtype=np.float32)
        try:
            got = self.score(x).score
        except Exception as e:
            raise BundleError(f"{self.bundle.path}: the golden sample failed to run: {e}") from e
        want = np.asarray(golden.scores, dtype=np.float32)
        if got.shape != want.shape or not np.allclose(
            got, want, rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL
        ):
            raise BundleError(
                f"{self.bundle.path}: golden sample scores {np.round(got[:3], 6).tolist()} differ "
                f"from the manifest's {np.round(want[:3], 6).tolist()}; the model and manifest "
                "do not belong together"
            )

    def score(self, x: np.ndarray | Windows, *, latent: bool = False) -> Scores:
        """x: float32 [N, F] (or [N, W, F] or `Windows` for windowed models), raw units."""
        if isinstance(x, Windows):
            return self.score_windows(x, latent=latent)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._stages is not None and x.ndim == 3:
            return self.score_windows(Windows.of(x), latent=latent)
        names = self._names(latent)
        if len(x) == 0:
            return Scores.concat([], len(self.features))
        step = self._chunk_rows
        if step is None or len(x) <= step:
            return self._scores(self.session.run(names, {INPUT_NAME: x}))
        runs = [
            self.session.run(names, {INPUT_NAME: x[i : i + step]}) for i in range(0, len(x), step)
        ]
        return self._scores([np.concatenate(parts) for parts in zip(*runs, strict=True)])

    def score_windows(self, windows: Windows, *, latent: bool = False) -> Scores:
        """Windows by reference (rows of raw units, and where each window ends); the
        result is in the order of `windows.ends`. A model in stages prepares each row once
        (with L lags, each run of L rows) and its network reads the windows of prepared
        vectors; a model without stages scores [B, W, F] windows a part at a time."""
        if self._stages is None:
            step = self._chunk_rows or max(1, len(windows))
            parts = [
                self.score(windows.take(slice(i, i + step)), latent=latent)
                for i in range(0, len(windows), step)
            ]
            return Scores.concat(parts, len(self.features))
        if len(windows) == 0:
            return Scores.concat([], len(self.features))
        prepare, network = self._stages
        names = self._names(latent)
        # In row order, so that a part's windows share one span of rows: each row is
        # prepared once, plus W - 1 rows again where two parts meet.
        order = np.argsort(windows.ends, kind="stable")
        ends = windows.ends[order]
        firsts = ends - (self.window - 1)  # the first lag vector of a window starts there
        positions = np.arange(self.window - self._lags + 1)
        step = self._chunk_rows or len(ends)
        runs = []
        for i in range(0, len(ends), step):
            lo, hi = int(firsts[i]), int(ends[min(i + step, len(ends)) - 1]) + 1
            prepared = prepare.run(None, {PREPARE_INPUT: windows.rows[lo:hi]})[0]
            batch = prepared[firsts[i : i + step, None] - lo + positions]  # [B, P, D]
            runs.append(network.run(names, {NETWORK_INPUT: batch}))
        out = [np.concatenate(parts) for parts in zip(*runs, strict=True)]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return self._scores([o[back] for o in out])

    def _names(self, latent: bool) -> list[str]:
        names = [OUTPUT_SCORE, OUTPUT_FEATURE_ERROR, OUTPUT_RECONSTRUCTION]
        if latent and OUTPUT_LATENT in self._outputs:
            names.append(OUTPUT_LATENT)
        return names

    @staticmethod
    def _scores(out: list[np.ndarray]) -> Scores:
        return Scores(
            score=out[0],
            feature_error=out[1],
            reconstruction=out[2],
            latent=out[3] if len(out) > 3 else None,
        )


def decide(scores: Scores, threshold: float, top_k: int = 3) -> Decisions:
    """Alarm when score > threshold; rank each row's features by their share of the error
    (`top_k` 0: rank none, for a caller that ranks only the rows it reports)."""
    top, share = top_features(scores.feature_error, top_k)
    return Decisions(
        anomaly=scores.score > threshold,
        severity=scores.score / np.float32(threshold),
        top_index=top,
        top_share=share,
    )


def top_features(feature_error: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """([N, k] indices, [N, k] shares): each row's k features with the largest share of its
    error, largest first."""
    fe = feature_error
    n, f = fe.shape
    k = max(0, min(top_k, f))
    if k == 0 or n == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=fe.dtype)
    total = fe.sum(axis=1, keepdims=True)
    share = np.divide(fe, total, out=np.zeros_like(fe), where=total > 0)
    if k < f:
        part = np.argpartition(-share, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(share, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
    else:
        top = np.argsort(-share, axis=1, kind="stable")
    return top, np.take_along_axis(share, top, axis=1)
