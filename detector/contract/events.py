"""Anomaly events, score records and dead-letter records: what the detector publishes.

The event schema is kept as JSON Schema in `schemas/anomaly-event.schema.json`; a test
checks real events against it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from detector.contract.categorical import Categorical

__all__ = [
    "CONTENT_TYPE",
    "EVENT_SCHEMA_VERSION",
    "REASONS",
    "EventRows",
    "Source",
    "dlq_headers",
    "event_id",
    "event_schema",
    "iso_ms",
    "iso_ms_many",
    "make_events",
    "make_score_records",
]

# Every reason a message can be dead-lettered for; a bounded label set for metrics.
REASONS = (
    "empty",
    "too_large",
    "not_json",
    "not_object",
    "missing_feature",
    "wrong_type",
    "not_finite",
    "wrong_length",
    "bad_key",
    "bad_time",
    "out_of_range",
)

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


def event_schema() -> dict[str, Any]:
    """The JSON Schema of anomaly events, for consumers and tests."""
    return orjson.loads(
        (Path(__file__).parent / "schemas" / "anomaly-event.schema.json").read_bytes()
    )


def event_id(src: Source) -> str:
    """uuid5(namespace, "topic/partition/offset") as text. The same bytes as `uuid.uuid5`
    (a test holds them equal), without building a UUID object: 1 us instead of 3.7, once
    per event."""
    name = f"{src.topic}/{src.partition}/{src.offset}".encode()
    h = bytearray(hashlib.sha1(_NAMESPACE.bytes + name).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def iso_ms(epoch_ms: float | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC text with milliseconds ("...T12:00:00.123Z")."""
    return iso_ms_many(np.array([np.nan if epoch_ms is None else epoch_ms]))[0]


# Years 1 to 9999, what ISO 8601 (and the event schema's date-time) can write.
_MIN_MS, _MAX_MS = -62_135_596_800_000.0, 253_402_300_799_999.0


def iso_ms_many(epoch_ms: np.ndarray) -> list[str | None]:
    """`iso_ms` of a whole column at once (None where not finite or beyond year 9999): numpy
    formats the batch, where datetime took 2 us per value."""
    ms = np.asarray(epoch_ms, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN compares False: not ok, as it should be
        ok = (ms >= _MIN_MS) & (ms <= _MAX_MS)
    stamps = np.floor(np.where(ok, ms, 0.0)).astype(np.int64).astype("datetime64[ms]")
    text = np.datetime_as_string(stamps, unit="ms", timezone="UTC").tolist()
    return text if ok.all() else [t if k else None for t, k in zip(text, ok.tolist(), strict=True)]


@dataclass(frozen=True)
class EventRows:
    """The decided rows that publish an event, as columns (M rows, F features, top k)."""

    sources: list[Source]
    keys: list[str | None]
    event_time_ms: np.ndarray  # [M]
    score: np.ndarray  # [M]
    observed: np.ndarray  # [M, F] raw units
    expected: np.ndarray  # [M, F] raw units
    top_index: np.ndarray  # [M, k] feature indices, largest share first
    top_share: np.ndarray  # [M, k]
    episodes: list[dict[str, object]] | None = None
    entities: list[dict[str, str]] | None = None
    # each categorical feature's observed text and coding, so that its top feature entry
    # names values instead of codes
    categorical: list[dict[str, tuple[str, Categorical]]] | None = None
    # the message's own feature values, for models that derive the others (behaviour)
    payload: list[dict[str, float | str]] | None = None


def make_events(
    rows: EventRows,
    *,
    detected_ms: float,
    model: tuple[str, str],
    threshold: float,
    features: list[str],
) -> list[dict[str, object]]:
    """One event per row. The numbers come out of numpy a column at a time: a batch of a
    fault's events costs a few microseconds each, not a Python conversion per value."""
    detected = iso_ms(detected_ms)
    times = iso_ms_many(rows.event_time_ms)
    score = rows.score.astype(np.float64)
    severity = (score / threshold).tolist()
    top = rows.top_index
    names = [[features[j] for j in row] for row in top.tolist()]
    values = np.take_along_axis(rows.observed, top, axis=1).astype(np.float64).tolist()
    expected = np.take_along_axis(rows.expected, top, axis=1).astype(np.float64).tolist()
    shares = rows.top_share.astype(np.float64).tolist()
    events: list[dict[str, object]] = []
    for i, (src, key, s) in enumerate(zip(rows.sources, rows.keys, score.tolist(), strict=True)):
        categorical = rows.categorical[i] if rows.categorical else None
        event: dict[str, object] = {
            "schema_version": EVENT_SCHEMA_VERSION,
            "event_id": event_id(src),
            "detected_at": detected,
            "key": key,
            "event_time": times[i],
            "source": {"topic": src.topic, "partition": src.partition, "offset": src.offset},
            "model": {"name": model[0], "version": model[1]},
            "score": s,
            "threshold": float(threshold),
            "severity": severity[i],
            "top_features": [
                _contribution(name, v, e, share, categorical)
                for name, v, e, share in zip(
                    names[i], values[i], expected[i], shares[i], strict=True
                )
            ],
        }
        if rows.entities and rows.entities[i]:
            event["entities"] = rows.entities[i]
        if rows.payload and rows.payload[i]:
            event["payload"] = rows.payload[i]
        if rows.episodes is not None:
            event["episode"] = rows.episodes[i]
        events.append(event)
    return events


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
            "share": round(share, 6),
            "categorical": True,
        }
    return {"name": name, "value": observed, "expected": expected, "share": round(share, 6)}


def make_score_records(
    *,
    sources: list[Source],
    keys: list[str | None],
    event_time_ms: np.ndarray,
    model_version: str,
    score: np.ndarray,
    threshold: float,
    anomaly: np.ndarray,
) -> list[bytes]:
    """One small record per decided message, for the scores topic."""
    return [
        orjson.dumps(
            {
                "source": {"topic": src.topic, "partition": src.partition, "offset": src.offset},
                "key": key,
                "event_time": t,
                "model_version": model_version,
                "score": s,
                "threshold": threshold,
                "anomaly": a,
            }
        )
        for src, key, t, s, a in zip(
            sources,
            keys,
            iso_ms_many(event_time_ms),
            score.astype(np.float64).tolist(),
            anomaly.tolist(),
            strict=True,
        )
    ]


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
