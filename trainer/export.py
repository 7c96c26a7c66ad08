"""ONNX export of the scoring model, and the parity check that guards it."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from detector.contract.bundle import (
    INPUT_NAME,
    NETWORK_INPUT,
    OUTPUT_FEATURE_ERROR,
    OUTPUT_LATENT,
    OUTPUT_RECONSTRUCTION,
    OUTPUT_SCORE,
    PREPARE_INPUT,
    PREPARE_OUTPUT,
)
from trainer.model import ScoringModel

__all__ = [
    "OPSET",
    "PARITY_TOL",
    "ExportError",
    "check_parity",
    "export_onnx",
    "export_stages",
    "with_metadata",
]

OPSET = 18
PARITY_TOL = 1e-4
OUTPUTS = [OUTPUT_SCORE, OUTPUT_FEATURE_ERROR, OUTPUT_RECONSTRUCTION, OUTPUT_LATENT]


class ExportError(RuntimeError):
    pass


def export_onnx(model: ScoringModel, example: np.ndarray) -> bytes:
    """Export with a dynamic batch dimension (the only dynamic one: window and features are
    fixed). `example` is rows [B, F] or windows [B, W, F]; it needs at least 2 of them, or
    the exporter specialises the batch dimension to 1."""
    return _export(model.eval(), _at_least_two(example), INPUT_NAME, OUTPUTS)


class _Prepare(torch.nn.Module):
    """A run of consecutive samples [S, F] -> what the network sees of each position
    [S - L + 1, D]: z-scores, stacked over L lags, whitened."""

    def __init__(self, model: ScoringModel):
        super().__init__()
        self.model = model

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model.scale_inputs(samples.unsqueeze(0)).squeeze(0)


class _Network(torch.nn.Module):
    """Windows of prepared vectors [N, W - L + 1, D] -> the scoring outputs."""

    def __init__(self, model: ScoringModel):
        super().__init__()
        self.model = model

    def forward(self, prepared: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.head(prepared)


def export_stages(model: ScoringModel, example: np.ndarray) -> tuple[bytes, bytes]:
    """A windowed model as two graphs (the bundle's `stages`): `prepare` with a dynamic
    number of samples, `network` with a dynamic batch. `example`: windows [B, W, F]."""
    model = model.eval()
    windows = _at_least_two(example)
    samples = windows.reshape(-1, windows.shape[-1])
    with torch.no_grad():
        prepared = model.scale_inputs(torch.from_numpy(windows)).numpy()
    prepare = _export(
        _Prepare(model), samples, PREPARE_INPUT, [PREPARE_OUTPUT], ("samples", max(2, model.lags))
    )
    network = _export(_Network(model), prepared, NETWORK_INPUT, OUTPUTS)
    return prepare, network


def _at_least_two(example: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(example[: max(2, min(len(example), 16))], dtype=np.float32)
    return np.concatenate([x, x]) if len(x) < 2 else x


def _export(
    module: torch.nn.Module,
    example: np.ndarray,
    input_name: str,
    outputs: list[str],
    dim: tuple[str, int] = ("batch", 1),
) -> bytes:
    """Export with the first dimension dynamic (`dim`: its name and least size)."""
    x = torch.from_numpy(example)
    rows = torch.export.Dim(dim[0], min=dim[1])
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (x,),
            dynamo=True,
            input_names=[input_name],
            output_names=outputs,
            dynamic_shapes=({0: rows},),
            opset_version=OPSET,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def with_metadata(model_bytes: bytes, props: dict[str, str]) -> bytes:
    proto = onnx.load_model_from_string(model_bytes)
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    return buf.getvalue()


def check_parity(model_bytes: bytes, model: ScoringModel, x: np.ndarray) -> float:
    """Run the ONNX model in ONNX Runtime and torch on the same rows (or windows); fail unless the
    scores and per-feature errors agree within PARITY_TOL (absolute, or relative for
    large values)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_SCORE, OUTPUT_FEATURE_ERROR], {INPUT_NAME: x.astype(np.float32)})
    with torch.no_grad():
        want = model(torch.from_numpy(x.astype(np.float32)))
    worst = 0.0
    for g, w in zip(got, want[:2], strict=True):
        w = w.numpy()
        diff = np.abs(g - w) / np.maximum(1.0, np.abs(w))
        worst = max(worst, float(diff.max(initial=0.0)))
    if worst > PARITY_TOL:
        raise ExportError(
            f"ONNX Runtime and torch disagree by {worst:.2e} (> {PARITY_TOL}); export refused"
        )
    return worst
