"""Behaviour features for training: the detector's own implementation, run once over a file.

`fit --behaviour SPEC.json --time-column ts` reads the entity and time columns beside the
numeric features; `detector.features.inputs.model_inputs` derives the spec's features with
`detector.features.behaviour.with_derived` (a fresh state and one pass in time order, exactly
what the detector computes online, and what `vigil-detect score` computes offline) and the
model trains on the numeric features and the derived ones together. The spec travels in the
manifest.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from detector.contract.behaviour import BehaviourSpec
from detector.errors import DataError

__all__ = ["load_spec"]


def load_spec(path: Path) -> BehaviourSpec:
    try:
        return BehaviourSpec.model_validate_json(path.read_bytes())
    except OSError as e:
        raise DataError(f"cannot read the behaviour spec {path}: {e.strerror}") from None
    except ValidationError as e:
        raise DataError(f"{path}: not a valid behaviour spec:\n{e}") from None
