"""Behaviour features for training: the detector's own implementation, run once over a file.

`fit --behaviour SPEC.json --time-column ts` reads the entity and time columns beside the
numeric features, derives the spec's features with `detector.features.behaviour.with_derived` (a fresh
state and one pass in time order, exactly what the detector computes online, and what
`vigil-detect score` computes offline) and trains on the numeric features and the derived ones
together. The spec travels in the manifest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from detector.contract.behaviour import BehaviourSpec
from detector.errors import DataError
from detector.features.behaviour import with_derived
from trainer.data import Dataset

__all__ = ["load_spec", "with_behaviour"]


def load_spec(path: Path) -> BehaviourSpec:
    try:
        return BehaviourSpec.model_validate_json(path.read_bytes())
    except OSError as e:
        raise DataError(f"cannot read the behaviour spec {path}: {e.strerror}") from None
    except ValidationError as e:
        raise DataError(f"{path}: not a valid behaviour spec:\n{e}") from None


def with_behaviour(ds: Dataset, spec: BehaviourSpec, time_column: str) -> Dataset:
    """`ds` with the spec's features appended, derived in time order over all its rows."""
    try:
        names, x = with_derived(spec, ds.names, ds.values, ds.extra or {}, time_column)
    except ValueError as e:
        raise DataError(str(e)) from None
    return replace(ds, names=names, values=x)
