"""Which behaviour features a model derives per entity: the spec its manifest records.

The derivation itself (the per-entity stores and their update) is the detector's
`detector.features.behaviour`; this module holds only what the trainer and every detector
must agree on, so that reading a manifest does not load the state stores.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DAY_MS", "KEY_SEPARATOR", "BehaviourSpec", "EntityBehaviour"]

DAY_MS = 86_400_000.0


def _window_name(days: float) -> str:
    return f"{days:g}d"


# Joins the values of a composite entity's fields into one key: a control character that
# identifiers do not hold, so that ("a b", "c") and ("a", "b c") stay apart.
KEY_SEPARATOR = "\x1f"


class EntityBehaviour(BaseModel):
    """The features of one entity kind, keyed by a payload field, or by several joined with
    '+' (`card_id+terminal_id`: a card at a terminal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entity: str = Field(min_length=1)  # payload field naming the entity, e.g. "card_id"
    windows_days: tuple[float, ...] = (1, 7, 30)  # decay time constants, in days
    count: bool = True  # decayed transaction count per window
    # log1p of the counts: a busy terminal's hundreds and a card's few on one scale
    # (bench/fraud.py: validation AP of the autoencoder 0.113 -> 0.159)
    log_counts: bool = False
    mean_of: str | None = None  # numeric payload field averaged per window, e.g. "amount"
    since_previous: bool = False  # log1p(seconds since the entity's previous row)

    @property
    def fields(self) -> tuple[str, ...]:
        """The payload fields whose values make up the entity's key."""
        return tuple(self.entity.split("+"))

    @model_validator(mode="after")
    def _check(self) -> EntityBehaviour:
        if not all(self.fields) or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"{self.entity}: join distinct field names with '+'")
        w = self.windows_days
        if not w or any(not (math.isfinite(d) and d > 0) for d in w):
            raise ValueError(f"{self.entity}: windows_days must be positive numbers, got {w}")
        if len({_window_name(d) for d in w}) != len(w):
            raise ValueError(f"{self.entity}: windows_days has duplicates: {w}")
        if self.log_counts and not self.count:
            raise ValueError(f"{self.entity}: log_counts needs count")
        if not (self.count or self.mean_of or self.since_previous):
            raise ValueError(
                f"{self.entity}: no feature enabled; set count, mean_of or since_previous"
            )
        return self

    def names(self) -> list[str]:
        e, ws = self.entity, [_window_name(d) for d in self.windows_days]
        count = "log_count" if self.log_counts else "count"
        out = [f"{e}.{count}_{w}" for w in ws] if self.count else []
        if self.mean_of:
            out += [f"{e}.mean_{self.mean_of}_{w}" for w in ws]
        if self.since_previous:
            out.append(f"{e}.since_previous_log_s")
        return out


class BehaviourSpec(BaseModel):
    """Which behaviour features to compute; stored in the bundle manifest as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entities: tuple[EntityBehaviour, ...] = Field(min_length=1)
    hour_of_day: bool = True  # hour_sin, hour_cos of the UTC time of day
    max_entities: int = Field(2_000_000, ge=1)  # per entity kind
    idle_days: float = Field(180.0, gt=0)  # entities unseen this long are forgotten

    @model_validator(mode="after")
    def _check(self) -> BehaviourSpec:
        kinds = [e.entity for e in self.entities]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each entity may appear once in entities, got {kinds}")
        longest = max(max(e.windows_days) for e in self.entities)
        if not math.isfinite(self.idle_days) or self.idle_days < longest:
            raise ValueError(
                f"idle_days ({self.idle_days}) must be at least the longest window ({longest:g})"
            )
        return self

    def names(self) -> list[str]:
        """The feature names, in the column order of `BehaviourState.update`."""
        out = [n for e in self.entities for n in e.names()]
        return out + (["hour_sin", "hour_cos"] if self.hour_of_day else [])

    def entity_fields(self) -> list[str]:
        """The payload fields that name entities, each once, in spec order."""
        return list(dict.fromkeys(f for e in self.entities for f in e.fields))

    def fields(self) -> list[str]:
        """The numeric payload fields read (the `mean_of` fields), without duplicates."""
        return list(dict.fromkeys(e.mean_of for e in self.entities if e.mean_of))
