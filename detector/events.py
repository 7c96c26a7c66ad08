"""Anomaly events, score records and dead-letter records: what the detector publishes.

The event schema is kept as JSON Schema in `schemas/anomaly-event.schema.json`; a test
checks real events against it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from detector.categorical import Categorical

__all__ = [
    "CONTENT_TYPE",
    "EVENT_SCHEMA_VERSION",
    "Outgoing",
    "Source",
    "dlq_headers",
    "event_id",
    "event_schema",
    "iso_ms",
    "make_event",
    "make_score_record",
]

CONTENT_TYPE = b"application/json"
EVENT_SCHEMA_VERSION = 1
# event_id = uuid5(namespace, "topic/partition/offset"): the same input message always
# yields the same id, so duplicates after a crash or rebalance are recognisable.
_NAMESPACE = uuid.UUID("0b5f2c8e-6a0e-4a5e-9a57-7669676c0001")


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: Any) -> Source:
        """Where a consumed record came from (anything with topic, partition, offset)."""
        return cls(record.topic, record.partition, record.offset)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def event_schema() -> dict[str, Any]:
    """The JSON Schema of anomaly events, for consumers and tests."""
    return orjson.loads(
        (Path(__file__).parent / "schemas" / "anomaly-event.schema.json").read_bytes()
    )


def event_id(src: Source) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{src.topic}/{src.partition}/{src.offset}"))


def iso_ms(epoch_ms: float | None) -> str | None:
    if epoch_ms is None or not np.isfinite(epoch_ms):
        return None
    return (
        datetime.fromtimestamp(epoch_ms / 1000.0, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def make_event(
    *,
    src: Source,
    key: str | None,
    event_time_ms: float | None,
    detected_ms: float,
    model: tuple[str, str],
    score: float,
    threshold: float,
    features: list[str],
    observed: np.ndarray,
    expected: np.ndarray,
    top_index: np.ndarray,
    top_share: np.ndarray,
    episode: dict[str, object] | None = None,
    entities: dict[str, str] | None = None,
    categorical: dict[str, tuple[str, Categorical]] | None = None,
    payload: dict[str, float | str] | None = None,
) -> dict[str, object]:
    """`categorical`: each categorical feature's observed text and coding, so that its top
    feature entry names values instead of codes. `payload`: the message's own feature values,
    for models that derive the others (behaviour features)."""
    event = {
        "schema_version": EVENT_SCHEMA_VERSION,
        "event_id": event_id(src),
        "detected_at": iso_ms(detected_ms),
        "key": key,
        "event_time": iso_ms(event_time_ms),
        "source": {"topic": src.topic, "partition": src.partition, "offset": src.offset},
        "model": {"name": model[0], "version": model[1]},
        "score": float(score),
        "threshold": float(threshold),
        "severity": float(score / threshold),
        "top_features": [
            _contribution(features[j], observed[j], expected[j], s, categorical)
            for j, s in zip(top_index, top_share, strict=True)
        ],
    }
    if entities:
        event["entities"] = entities
    if payload:
        event["payload"] = payload
    if episode is not None:
        event["episode"] = episode
    return event


def _contribution(
    name: str,
    observed: float,
    expected: float,
    share: float,
    categorical: dict[str, tuple[str, Categorical]] | None,
) -> dict[str, object]:
    if categorical and name in categorical:
        text, coding = categorical[name]
        return {
            "name": name,
            "value": text,
            "expected": coding.label(int(expected)),
            "share": round(float(share), 6),
            "categorical": True,
        }
    return {
        "name": name,
        "value": float(observed),
        "expected": float(expected),
        "share": round(float(share), 6),
    }


def make_score_record(
    *,
    src: Source,
    key: str | None,
    event_time_ms: float | None,
    model_version: str,
    score: float,
    threshold: float,
    anomaly: bool,
) -> bytes:
    return orjson.dumps(
        {
            "source": {"topic": src.topic, "partition": src.partition, "offset": src.offset},
            "key": key,
            "event_time": iso_ms(event_time_ms),
            "model_version": model_version,
            "score": score,
            "threshold": threshold,
            "anomaly": anomaly,
        }
    )


def dlq_headers(
    original: list[tuple[str, bytes]] | None,
    src: Source,
    reason: str,
    detail: str,
    model_version: str,
) -> list[tuple[str, bytes]]:
    """The original headers, then why and where from."""
    return [
        *(original or []),
        ("vigil.reason", reason.encode()),
        ("vigil.detail", detail.encode("utf-8", "replace")[:1000]),
        ("vigil.source.topic", src.topic.encode()),
        ("vigil.source.partition", str(src.partition).encode()),
        ("vigil.source.offset", str(src.offset).encode()),
        ("vigil.model.version", model_version.encode()),
    ]
