"""The bundle contract: a directory with `model.onnx`, `manifest.json` and `report.png`
(and for windowed models `prepare.onnx` and `network.onnx`, model.onnx in two stages).

The trainer writes bundles through `write_bundle`; the detector reads them with
`load_bundle`, which refuses anything corrupt, truncated or inconsistent with a message
that says what is wrong. The model file name is fixed: nothing in a manifest is ever
used as a path, and models are ONNX only (nothing is unpickled).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detector.contract.behaviour import BehaviourSpec
from detector.contract.categorical import Categorical, Encoder
from detector.errors import BundleError

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "NETWORK_FILE",
    "PREPARE_FILE",
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "Bundle",
    "DataFile",
    "ErrorStats",
    "Golden",
    "Manifest",
    "Stages",
    "Threshold",
    "Training",
    "load_bundle",
    "sha256_file",
    "write_bundle",
]

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.png"
PREPARE_FILE = "prepare.onnx"
NETWORK_FILE = "network.onnx"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FEATURES = 100_000
MAX_WINDOW = 10_000

# Names of the ONNX graph's input and outputs: part of the contract.
INPUT_NAME = "x"
OUTPUT_SCORE = "score"
OUTPUT_FEATURE_ERROR = "feature_error"
OUTPUT_RECONSTRUCTION = "reconstruction"
OUTPUT_LATENT = "latent"
# The two stages of a windowed model: prepare [S, F] -> [S - L + 1, D], consecutive samples
# of one entity in, what the network sees of each position out; network [N, W - L + 1, D]
# -> the outputs above.
PREPARE_INPUT = "samples"
PREPARE_OUTPUT = "prepared"
NETWORK_INPUT = "prepared"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Threshold(_Frozen):
    """Alarm when score > value. `method` says how value was chosen on normal data."""

    value: float = Field(gt=0)
    method: Literal["quantile", "pot", "manual"]
    params: dict[str, float | int | str] = Field(default_factory=dict)

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("threshold must be a finite number")
        return v


class ErrorStats(_Frozen):
    """Mean and std of each feature's squared error on validation data (standardised)."""

    mean: list[float]
    std: list[float]


class DataFile(_Frozen):
    path: str
    sha256: str
    rows: int = Field(ge=0)


class Training(_Frozen):
    files: list[DataFile]
    rows_train: int = Field(ge=0)
    rows_validation: int = Field(ge=0)
    rows_calibration: int = Field(ge=0)
    epochs: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    train_loss: float
    validation_loss: float
    duration_seconds: float
    device: str
    config: dict[str, Any]


class Golden(_Frozen):
    """A few input rows and their expected scores, for self-tests after loading."""

    inputs: list[list[float]] | list[list[list[float]]]
    scores: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Golden:
        if len(self.inputs) != len(self.scores) or not self.scores:
            raise ValueError("golden inputs and scores must be non-empty and of equal length")
        return self


class Stages(_Frozen):
    """model.onnx of a windowed model in two graphs, `prepare.onnx` and `network.onnx`.

    Scaling (and whitening, over `lags` consecutive samples) is per sample, and overlapping
    windows share their samples: a detector that prepares a run of an entity's samples once
    and gathers the windows from it does that work once per sample rather than once per
    window holding it (W times). model.onnx stays the reference; the golden sample checks
    that the stages reproduce it.
    """

    lags: int = Field(ge=1)
    prepare_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    network_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(_Frozen):
    schema_version: int
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    version: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._+-]+$")
    created_at: datetime
    features: list[str] = Field(min_length=1, max_length=MAX_FEATURES)
    window: int = Field(default=1, ge=1, le=MAX_WINDOW)
    score: str = "mean squared reconstruction error over features, in standardised units"
    threshold: Threshold
    feature_error: ErrorStats
    training: Training
    validation: dict[str, float]
    # Deciles of held-out normal scores: the reference of the detector's drift statistic
    # (detector/contract/drift.py). Absent in bundles written before it existed.
    score_reference: list[float] | None = Field(default=None, min_length=1, max_length=99)
    # Per-entity behaviour features (detector/features/behaviour.py) that the detector derives from
    # the stream, with their own state; the other features come from the payload as is.
    behaviour: BehaviourSpec | None = None
    # Declared valid ranges of payload features (`fit --bounds amount=0:`): the detector
    # dead-letters a message outside them as out_of_range. None for an open end.
    bounds: dict[str, tuple[float | None, float | None]] | None = None
    # Categorical payload features and their codes (detector/contract/categorical.py): the message
    # carries the raw value, the model's input its code.
    categorical: dict[str, Categorical] | None = None
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Windowed models from the trainer of 2026-12-04 on; absent: model.onnx alone.
    stages: Stages | None = None
    libraries: dict[str, str]
    golden: Golden

    @property
    def payload_features(self) -> list[str]:
        """The features read from each message; the rest are derived (behaviour)."""
        if self.behaviour is None:
            return self.features
        derived = set(self.behaviour.names())
        return [f for f in self.features if f not in derived]

    def payload_bounds(self) -> tuple[tuple[float, float], ...] | None:
        """(low, high) of each payload feature in order, open ends infinite; None: none."""
        if not self.bounds:
            return None
        inf = float("inf")
        return tuple(
            (
                -inf if (b := self.bounds.get(f, (None, None)))[0] is None else float(b[0]),
                inf if b[1] is None else float(b[1]),
            )
            for f in self.payload_features
        )

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"bundle schema version {v} is not supported by this detector "
                f"(it reads version {SCHEMA_VERSION}); retrain or upgrade Vigil"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.features)
        if len(set(self.features)) != n:
            raise ValueError("feature names must be unique")
        if len(self.feature_error.mean) != n or len(self.feature_error.std) != n:
            raise ValueError(f"feature_error statistics must have {n} entries, one per feature")
        if self.behaviour is not None:
            derived = self.behaviour.names()
            missing = [f for f in derived if f not in self.features]
            if missing:
                raise ValueError(f"behaviour features {missing[:5]} are not model features")
            if self.window != 1:
                raise ValueError("behaviour features are for single-row models (window 1)")
            entities = self.behaviour.entity_fields()
            if clash := set(entities) & set(self.features):
                raise ValueError(f"entity fields {sorted(clash)} cannot be model features")
            if unread := set(self.behaviour.fields()) - set(self.payload_features):
                raise ValueError(f"behaviour reads {sorted(unread)}: add them to the features")
            if averaged := set(self.behaviour.fields()) & set(self.categorical or {}):
                raise ValueError(f"behaviour averages categorical features {sorted(averaged)}")
        for name in self.categorical or {}:
            if name not in self.payload_features:
                raise ValueError(f"categorical '{name}' is not a payload feature")
            if name in (self.bounds or {}):
                raise ValueError(f"categorical '{name}' cannot have numeric bounds")
        if self.categorical and self.window != 1:
            raise ValueError("categorical features are for single-row models (window 1)")
        if self.stages is not None and not (self.window > 1 and self.stages.lags <= self.window):
            raise ValueError(
                f"stages with {self.stages.lags} lags need a window of more samples than 1 and "
                f"at least as many as the lags (this one has {self.window})"
            )
        for name, (low, high) in (self.bounds or {}).items():
            if name not in self.payload_features:
                raise ValueError(f"bounds name '{name}', which is not a payload feature")
            if low is not None and high is not None and low > high:
                raise ValueError(f"bounds of '{name}': {low} is above {high}")
        ref = self.score_reference
        if ref is not None and (
            not all(map(math.isfinite, ref)) or any(b < a for a, b in itertools.pairwise(ref))
        ):
            raise ValueError("score_reference must be finite and non-decreasing")
        return self


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    model_bytes: bytes
    stage_bytes: tuple[bytes, bytes] | None = None  # prepare.onnx, network.onnx

    @property
    def features(self) -> list[str]:
        return self.manifest.features

    @property
    def label(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"

    @cached_property
    def encoders(self) -> tuple[Encoder, ...]:
        """The categorical features' encoders, in feature order; built once per bundle."""
        cats = self.manifest.categorical or {}
        return tuple(Encoder(f, cats[f]) for f in self.manifest.features if f in cats)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and check a bundle's files. Running the model (I/O shapes, golden sample)
    is `detector.model.scorer.Scorer`'s job, so that it happens in the session that serves."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(
            f"{root}: not a bundle directory (expected {MODEL_FILE} and {MANIFEST_FILE})"
        )
    manifest_path = root / MANIFEST_FILE
    model_path = root / MODEL_FILE
    for p in (manifest_path, model_path):
        if not p.is_file():
            raise BundleError(f"{root}: {p.name} is missing; is this a Vigil bundle?")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes; refusing it")
    try:
        raw = json.loads(manifest_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e}); the bundle is corrupt") from e
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"{manifest_path}: invalid manifest:\n{_explain(e)}") from e
    model_bytes = model_path.read_bytes()
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest.model_sha256:
        raise BundleError(
            f"{model_path}: sha256 {digest[:12]}… does not match the manifest's "
            f"{manifest.model_sha256[:12]}…; the model file is corrupt, truncated or was replaced"
        )
    stages = None
    if (s := manifest.stages) is not None:
        stages = (
            _read_checked(root / PREPARE_FILE, s.prepare_sha256),
            _read_checked(root / NETWORK_FILE, s.network_sha256),
        )
    return Bundle(path=root, manifest=manifest, model_bytes=model_bytes, stage_bytes=stages)


def _read_checked(path: Path, sha256: str) -> bytes:
    if not path.is_file():
        raise BundleError(f"{path}: missing, but the manifest lists it among the model's stages")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BundleError(
            f"{path}: sha256 {digest[:12]}… does not match the manifest's {sha256[:12]}…; "
            "the file is corrupt, truncated or was replaced"
        )
    return data


def write_bundle(
    out: str | os.PathLike[str],
    manifest: Manifest,
    model_bytes: bytes,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a bundle atomically: into a temporary sibling directory, then rename."""
    root = Path(out)
    if hashlib.sha256(model_bytes).hexdigest() != manifest.model_sha256:
        raise BundleError("manifest.model_sha256 does not match the model bytes being written")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    (tmp / MODEL_FILE).write_bytes(model_bytes)
    (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    for name, data in (extra_files or {}).items():
        if Path(name).name != name:
            raise BundleError(f"bundle extra file {name!r} must be a plain file name")
        (tmp / name).write_bytes(data)
    if root.exists():
        old = root.with_name(f".{root.name}.old")
        if old.exists():
            _rmtree(old)
        root.rename(old)
        tmp.rename(root)
        _rmtree(old)
    else:
        tmp.rename(root)
    return root


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
