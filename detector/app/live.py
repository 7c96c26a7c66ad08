"""The live model and everything the loop derives from it, as one immutable value.

A swap builds a new `LiveModel` from the candidate scorer and replaces the old one whole,
between two batches: no attribute is ever half-updated, and every batch is decided by one
model's mapping, threshold, feature order and state layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.contract.behaviour import BehaviourSpec
from detector.errors import ConfigError
from detector.features.decode import Mapping
from detector.model.scorer import Scorer
from detector.model.watcher import mapping_with
from detector.ops.metrics import Reference

__all__ = ["LiveModel", "StateLayout", "reference_of"]


@dataclass(frozen=True)
class StateLayout:
    """What per-entity state depends on: two models with equal layouts share it."""

    window: int
    features: tuple[str, ...]
    behaviour: BehaviourSpec | None


@dataclass(frozen=True, eq=False)
class LiveModel:
    scorer: Scorer
    mapping: Mapping  # where the model's payload features are in a message
    threshold: float  # the bundle's, or model.threshold when set
    name: str
    version: str
    layout: StateLayout
    # Behaviour models: the columns of the model's input taken from the payload, and the
    # columns filled with derived features (both in the model's feature order).
    from_payload: np.ndarray | None
    derived: np.ndarray | None
    shadow: Scorer | None
    shadow_order: np.ndarray | None  # the live feature order -> the shadow's

    @classmethod
    def of(
        cls,
        scorer: Scorer,
        mapping: Mapping,
        threshold: float | None = None,
        shadow: Scorer | None = None,
    ) -> LiveModel:
        """`scorer` made live; `mapping` is the payload mapping of the settings (its model
        fields are replaced by this model's)."""
        m = scorer.bundle.manifest
        spec = m.behaviour
        from_payload = derived = None
        if spec is not None:
            from_payload = np.array([m.features.index(f) for f in m.payload_features])
            derived = np.array([m.features.index(f) for f in spec.names()])
        shadow_order = None
        if shadow is not None:
            _check_shadow(scorer, shadow)
            shadow_order = np.array([scorer.features.index(f) for f in shadow.features])
        return cls(
            scorer=scorer,
            mapping=mapping_with(mapping, scorer.bundle),
            threshold=threshold or scorer.threshold,
            name=m.name,
            version=m.version,
            layout=StateLayout(scorer.window, tuple(scorer.features), spec),
            from_payload=from_payload,
            derived=derived,
            shadow=shadow,
            shadow_order=shadow_order,
        )

    @property
    def model_id(self) -> tuple[str, str]:
        return self.name, self.version

    @property
    def features(self) -> list[str]:
        return self.scorer.features

    def reference(self) -> Reference:
        return reference_of(self.scorer, self.threshold)


def reference_of(scorer: Scorer, threshold: float) -> Reference:
    """What the drift and alert-ratio gauges compare a model's recent scores with. An
    overridden threshold has no calibrated alarm rate."""
    m = scorer.bundle.manifest
    calibrated = m.validation.get("calibration_alarm_rate")
    return Reference(
        threshold, calibrated if threshold == scorer.threshold else None, m.score_reference
    )


def _check_shadow(live: Scorer, shadow: Scorer) -> None:
    if missing := set(live.features) ^ set(shadow.features):
        raise ConfigError(
            f"the shadow model's features differ from the live model's: {sorted(missing)[:5]}"
        )
    coded = live.bundle.manifest.categorical or {}
    if numeric := set(shadow.bundle.manifest.categorical or {}) - set(coded):
        raise ConfigError(
            f"the shadow model reads {sorted(numeric)} as categorical, the live model "
            "as numbers: shadow-score a model with the same kinds of features"
        )
