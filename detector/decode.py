"""Message bytes to one float32 matrix in manifest feature order, plus a reason for each
message that cannot be scored.

The whole batch goes through a fast path (orjson per message, C-level item lookups, one
numpy conversion). Only if that fails is the batch walked message by message to find
which ones are bad and why: bad input costs time only when it is there.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import orjson

__all__ = ["REASONS", "Decoded", "Mapping", "Reject", "decode_batch", "entity_key", "event_times"]

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
)


@dataclass(frozen=True)
class Mapping:
    """Where the features, the entity key and the event time are in each message."""

    features: tuple[str, ...]
    features_at: Literal["top", "field", "array"] = "top"
    features_field: str | None = None
    key_field: str | None = None  # None: the Kafka key is the entity key
    time_field: str | None = None  # None: the Kafka timestamp is the event time
    max_bytes: int = 1_048_576


@dataclass(frozen=True)
class Reject:
    index: int  # position in the batch
    reason: str  # one of REASONS
    detail: str


@dataclass(frozen=True)
class Decoded:
    x: np.ndarray  # [M, F] float32, finite
    index: np.ndarray  # [M] int64: position of each row in the batch
    keys: list[str | None] | None  # [M] when the key comes from a field
    times_ms: np.ndarray | None  # [M] float64 epoch ms when the time comes from a field
    rejects: list[Reject]


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _getter(m: Mapping) -> Callable[[Any], Any]:
    """A C-level function from a decoded document to its feature values in order."""
    if m.features_at == "array":
        if m.features_field:
            return operator.itemgetter(m.features_field)
        return lambda doc: doc
    pick = operator.itemgetter(*m.features)
    if len(m.features) == 1:
        single = pick
        pick = lambda d: (single(d),)  # noqa: E731 - itemgetter of one key returns a scalar
    if m.features_at == "field":
        inner = operator.itemgetter(m.features_field)
        return lambda doc: pick(inner(doc))
    return pick


def _row_slow(doc: Any, m: Mapping) -> list[float]:
    """The feature values of one document, or _Bad with the precise reason."""
    if not isinstance(doc, dict) and not (m.features_at == "array" and not m.features_field):
        raise _Bad("not_object", f"expected a JSON object, got {type(doc).__name__}")
    if m.features_at == "field" or (m.features_at == "array" and m.features_field):
        if m.features_field not in doc:
            raise _Bad("missing_feature", f"field '{m.features_field}' is missing")
        doc = doc[m.features_field]
    if m.features_at == "array":
        if not isinstance(doc, list):
            raise _Bad("not_object", f"expected a JSON array of {len(m.features)} numbers")
        if len(doc) != len(m.features):
            raise _Bad(
                "wrong_length", f"array has {len(doc)} values, the model needs {len(m.features)}"
            )
        values = doc
        names: Sequence[str] = m.features
    else:
        if not isinstance(doc, dict):
            raise _Bad("not_object", f"'{m.features_field}' must be a JSON object")
        missing = [f for f in m.features if f not in doc]
        if missing:
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            raise _Bad("missing_feature", f"missing feature(s) {missing[:5]}{more}")
        values = [doc[f] for f in m.features]
        names = m.features
    for name, v in zip(names, values, strict=True):
        if type(v) is bool or not isinstance(v, int | float):
            raise _Bad("wrong_type", f"feature '{name}' is {type(v).__name__}, not a number")
        if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
            raise _Bad("not_finite", f"feature '{name}' = {v!r} is not a finite float32")
    return values


def _time_ms(v: Any) -> float:
    """Epoch seconds or milliseconds (told apart by magnitude), or ISO 8601."""
    if type(v) is not bool and isinstance(v, int | float) and math.isfinite(v):
        return float(v) if abs(v) > 1e11 else float(v) * 1000.0
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000.0
        except ValueError:
            pass
    raise _Bad("bad_time", f"event time {str(v)[:40]!r} is not epoch seconds/ms or ISO 8601")


def _key(v: Any) -> str:
    if isinstance(v, str):
        return v
    if type(v) is not bool and isinstance(v, int):
        return str(v)
    raise _Bad("bad_key", f"entity key {str(v)[:40]!r} must be a string or integer")


def decode_batch(values: Sequence[bytes | None], m: Mapping) -> Decoded:
    """Decode a batch of message values. Pure: no Kafka, no I/O."""
    rejects: list[Reject] = []
    docs: list[Any] = []
    index: list[int] = []
    try:  # fast path: no empty, oversized or unparsable message (C-level map, no loop)
        if values and min(map(len, values)) > 0 and max(map(len, values)) <= m.max_bytes:  # type: ignore[arg-type]
            docs = list(map(orjson.loads, values))  # type: ignore[arg-type]
            index = list(range(len(values)))
    except (TypeError, orjson.JSONDecodeError):
        docs, index = [], []
    if len(docs) != len(values):
        docs, index = [], []
        for i, v in enumerate(values):
            if not v:
                rejects.append(Reject(i, "empty", "message has no value (tombstone or empty)"))
            elif len(v) > m.max_bytes:
                rejects.append(
                    Reject(i, "too_large", f"{len(v)} bytes > payload.max_bytes {m.max_bytes}")
                )
            else:
                try:
                    docs.append(orjson.loads(v))
                    index.append(i)
                except orjson.JSONDecodeError as e:
                    rejects.append(Reject(i, "not_json", f"not valid JSON: {e}"[:300]))
    n_features = len(m.features)
    x: np.ndarray | None = None
    try:  # fast path: every document well formed
        get = _getter(m)
        # No dtype: numpy infers one, so a string or null anywhere yields a non-numeric
        # array and sends the batch down the slow path instead of being coerced.
        x = np.array([get(d) for d in docs])
        if x.dtype.kind not in "fiu" or x.shape != (len(docs), n_features):
            x = None
    except (KeyError, TypeError, ValueError, IndexError):
        x = None
    if x is not None and len(docs):
        x = x.astype(np.float64, copy=False)
        if not (np.isfinite(x).all() and (np.abs(x) <= _FLOAT32_MAX).all()):
            x = None
        else:
            # numpy takes JSON true/false for 1/0. Only messages whose bytes hold a
            # boolean literal can have one, so only those are checked value by value.
            try:
                for j, i in enumerate(index):
                    v = values[i]
                    if b"true" in v or b"false" in v:  # type: ignore[operator]
                        _row_slow(docs[j], m)
            except _Bad:
                x = None
    if x is None:  # slow path: find each bad message and its reason
        rows, kept_docs, kept_index = [], [], []
        for doc, i in zip(docs, index, strict=True):
            try:
                rows.append(_row_slow(doc, m))
                kept_docs.append(doc)
                kept_index.append(i)
            except _Bad as b:
                rejects.append(Reject(i, b.reason, b.detail))
        docs, index = kept_docs, kept_index
        x = np.array(rows, dtype=np.float64).reshape(len(rows), n_features)
    keys: list[str | None] | None = None
    times: np.ndarray | None = None
    if m.key_field or m.time_field:
        keep = np.ones(len(docs), dtype=bool)
        keys = [None] * len(docs) if m.key_field else None
        times = np.full(len(docs), np.nan) if m.time_field else None
        for j, doc in enumerate(docs):
            try:
                if keys is not None:
                    if not isinstance(doc, dict) or m.key_field not in doc:
                        raise _Bad("bad_key", f"entity key field '{m.key_field}' is missing")
                    keys[j] = _key(doc[m.key_field])
                if times is not None:
                    if not isinstance(doc, dict) or m.time_field not in doc:
                        raise _Bad("bad_time", f"event time field '{m.time_field}' is missing")
                    times[j] = _time_ms(doc[m.time_field])
            except _Bad as b:
                rejects.append(Reject(index[j], b.reason, b.detail))
                keep[j] = False
        if not keep.all():
            x = x[keep]
            index = [i for i, k in zip(index, keep, strict=True) if k]
            keys = [k for k, ok in zip(keys, keep, strict=True) if ok] if keys is not None else None
            times = times[keep] if times is not None else None
    rejects.sort(key=lambda r: r.index)
    return Decoded(
        x=x.astype(np.float32),
        index=np.asarray(index, dtype=np.int64),
        keys=keys,
        times_ms=times,
        rejects=rejects,
    )


def event_times(d: Decoded, timestamps_ms: Sequence[int]) -> np.ndarray:
    """[M] epoch ms of each decoded row: from the payload's time field when the mapping has
    one, else the Kafka timestamp of its message (NaN when the broker has none)."""
    if d.times_ms is not None:
        return d.times_ms
    ts = np.fromiter((timestamps_ms[i] for i in d.index), dtype=np.float64, count=len(d.index))
    return np.where(ts >= 0, ts, np.nan)


def entity_key(d: Decoded, j: int, kafka_key: bytes | None) -> str | None:
    """The entity of decoded row j: the payload's key field, else the Kafka key."""
    if d.keys is not None:
        return d.keys[j]
    return kafka_key.decode("utf-8", "replace") if kafka_key is not None else None
