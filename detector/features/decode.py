"""Message bytes to one float32 matrix in manifest feature order, plus a reason for each
message that cannot be scored.

The whole batch goes through a fast path: msgspec parses each message straight into typed
fields (no dict per message, types checked in C), and numpy takes the values in one
conversion. Only if a message fails is the batch walked message by message to find which
ones are bad and why: bad input costs time only when it is there.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson

from detector.contract.categorical import Encoder
from detector.errors import ConfigError

__all__ = [
    "Decoded",
    "Mapping",
    "Reject",
    "decode_batch",
    "entity_key",
    "epoch_ms",
    "event_times",
    "kafka_times",
]


@dataclass(frozen=True)
class Mapping:
    """Where the features, the entity key and the event time are in each message."""

    features: tuple[str, ...]
    features_at: Literal["top", "field", "array"] = "top"
    features_field: str | None = None
    key_field: str | None = None  # None: the Kafka key is the entity key
    time_field: str | None = None  # None: the Kafka timestamp is the event time
    max_bytes: int = 1_048_576
    entities: tuple[str, ...] = ()  # string fields naming entities (behaviour features)
    # (low, high) per feature, in `features` order, from the manifest's declared bounds;
    # a value outside is dead-lettered as out_of_range. None: no bounds.
    bounds: tuple[tuple[float, float], ...] | None = None
    # Categorical features among `features` (string or integer values), coded on the way in.
    categorical: tuple[Encoder, ...] = ()

    def __post_init__(self) -> None:
        if self.bounds is not None and len(self.bounds) != len(self.features):
            raise ConfigError(f"bounds: {len(self.bounds)} for {len(self.features)} features")
        if unknown := {e.name for e in self.categorical} - set(self.features):
            raise ConfigError(f"categorical feature(s) {sorted(unknown)} are not features")
        if self.categorical and self.features_at == "array":
            raise ConfigError(
                "categorical features need named fields: payload.features_at 'array' holds "
                "numbers only"
            )
        own = [f for f in (self.key_field, self.time_field, self.features_field) if f]
        if len(set(own)) < len(own):
            raise ConfigError(
                "payload.key_field, payload.time_field and payload.features_field must "
                "name different fields"
            )
        if clash := set(self.entities) & {*self.features, self.time_field, self.features_field}:
            raise ConfigError(f"entity field(s) {sorted(c for c in clash if c)} clash")
        if not self.features_field and (clash := set(own) & set(self.features)):
            raise ConfigError(
                f"payload field(s) {sorted(clash)} are also model features: a key or "
                "event time cannot be a feature too"
            )
        if self.features_at == "array" and not self.features_field and (own or self.entities):
            raise ConfigError(
                "with payload.features_at = 'array' and no payload.features_field the "
                "message is a bare JSON array: it has no key or time field to read"
            )

    @functools.cached_property
    def numeric(self) -> tuple[str, ...]:
        cats = {e.name for e in self.categorical}
        return tuple(f for f in self.features if f not in cats)

    @functools.cached_property
    def numeric_at(self) -> np.ndarray:
        """Positions of the numeric features among `features`."""
        return np.array([self.features.index(f) for f in self.numeric], dtype=np.int64)

    @functools.cached_property
    def numeric_bounds(self) -> tuple[tuple[float, float], ...] | None:
        """`bounds` of the numeric features, in `numeric` order (categoricals have none)."""
        return None if self.bounds is None else tuple(self.bounds[i] for i in self.numeric_at)


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
    entities: dict[str, list[str]] | None = None  # [M] per entity field of the mapping
    categories: dict[str, list[str]] | None = None  # [M] raw text per categorical feature


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    categorical = {e.name for e in m.categorical}
    for name, v in zip(names, values, strict=True):
        if name in categorical:
            if type(v) is bool or not isinstance(v, str | int):
                raise _Bad(
                    "wrong_type",
                    f"categorical feature '{name}' is {type(v).__name__}, not a string or integer",
                )
            continue
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


def epoch_ms(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Event times to float64 epoch ms, vectorised: epoch seconds or milliseconds (told apart
    by magnitude) or ISO 8601 strings, as `_time_ms` reads one. ValueError for a bad one."""
    try:
        t = np.asarray(values, dtype=np.float64)
        return np.where(np.abs(t) > 1e11, t, t * 1000.0)
    except (TypeError, ValueError):  # ISO 8601 strings among the numbers
        try:
            return np.array(list(map(_time_ms, values)), dtype=np.float64)
        except _Bad as b:
            raise ValueError(b.detail) from None


def _key(v: Any) -> str:
    if isinstance(v, str):
        return v
    if type(v) is not bool and isinstance(v, int):
        return str(v)
    raise _Bad("bad_key", f"entity key {str(v)[:40]!r} must be a string or integer")


def decode_batch(values: Sequence[bytes | None], m: Mapping) -> Decoded:
    """Decode a batch of message values. Pure: no Kafka, no I/O.

    Each message gets the verdict `_decode_one` gives it; the fast path only reaches the
    same verdicts sooner when every message of the batch is good."""
    schema = _schema(m)
    fast = _decode_all(values, m, schema)
    if fast is not None:
        return fast
    rows: list[_Row] = []
    index: list[int] = []
    rejects: list[Reject] = []
    for i, v in enumerate(values):
        got = _decode_one(v, m, schema)
        if isinstance(got, _Bad):
            rejects.append(Reject(i, got.reason, got.detail))
        else:
            rows.append(got)
            index.append(i)
    numeric = np.array([r[0] for r in rows], dtype=np.float64).reshape(len(rows), len(m.numeric))
    x, categories = _assemble(numeric, [r[4] for r in rows], m)
    return Decoded(
        x=x,
        index=np.asarray(index, dtype=np.int64),
        keys=[r[1] for r in rows] if m.key_field else None,  # type: ignore[misc]
        times_ms=np.array([r[2] for r in rows], dtype=np.float64) if m.time_field else None,
        rejects=rejects,
        entities={e: [r[3][i] for r in rows] for i, e in enumerate(m.entities)}
        if m.entities
        else None,
        categories=categories,
    )


# One message's numeric features, entity key, event time in ms (None where not in the
# payload), the values of the mapping's entity fields and its categorical values as text.
_Row = tuple[Sequence[float], str | None, float | None, tuple[str, ...], tuple[str, ...]]


def _assemble(
    numeric: np.ndarray, categorical: Sequence[Sequence[str | int]], m: Mapping
) -> tuple[np.ndarray, dict[str, list[str]] | None]:
    """The float32 rows in feature order: numeric values, and the categorical features'
    codes; plus the categorical values as text (for events)."""
    if not m.categorical:
        return numeric.astype(np.float32), None
    x = np.empty((len(numeric), len(m.features)), dtype=np.float32)
    x[:, m.numeric_at] = numeric
    columns = list(zip(*categorical, strict=True)) or [()] * len(m.categorical)
    text = {}
    for enc, col in zip(m.categorical, columns, strict=True):
        text[enc.name] = list(map(str, col))  # str(str) is the same object
        x[:, m.features.index(enc.name)] = enc.encode(text[enc.name])
    return x, text


@dataclass(frozen=True)
class _Schema:
    """A msgspec decoder for the payload: it parses straight into typed fields, rejecting a
    string, null or boolean where a number belongs, without building a dict per message."""

    decoder: msgspec.json.Decoder[Any]
    features: Callable[[Any], Sequence[float]]  # a decoded message to its numeric features
    key: Callable[[Any], str | int] | None
    time: Callable[[Any], float | str] | None
    entities: tuple[Callable[[Any], str | int], ...] = ()
    # a decoded message to its categorical values, in `Mapping.categorical` order
    categories: Callable[[Any], Sequence[str | int]] | None = None


@functools.lru_cache(maxsize=16)
def _schema(m: Mapping) -> _Schema:
    n = len(m.features)
    # Numeric feature fields first, then the categorical ones (strings or integers).
    names = [*m.numeric, *(e.name for e in m.categorical)]
    feature_fields: list[tuple[str, Any]] = [(f"f{i}", float) for i in range(len(m.numeric))]
    feature_fields += [(f"c{j}", str | int) for j in range(len(m.categorical))]
    feature_rename = {field: name for (field, _), name in zip(feature_fields, names, strict=True)}
    if m.features_at == "array":
        inner: Any = Annotated[list[float], msgspec.Meta(min_length=n, max_length=n)]
        if not m.features_field:
            return _Schema(msgspec.json.Decoder(inner), lambda doc: doc, None, None)
    else:
        inner = msgspec.defstruct("Features", feature_fields, rename=feature_rename, gc=False)
    fields: list[tuple[str, Any]] = []
    rename: dict[str, str] = {}
    if m.key_field:
        fields.append(("key", str | int))
        rename["key"] = m.key_field
    if m.time_field:
        fields.append(("time", float | str))
        rename["time"] = m.time_field
    entity_of: list[Callable[[Any], str | int]] = []
    for i, e in enumerate(m.entities):  # the key field may name an entity too: read it once
        if e == m.key_field:
            entity_of.append(operator.attrgetter("key"))
            continue
        fields.append((f"e{i}", str | int))
        rename[f"e{i}"] = e
        entity_of.append(operator.attrgetter(f"e{i}"))
    if m.features_field:
        fields.append(("features", inner))
        rename["features"] = m.features_field
    elif fields:  # features at the top level, beside the key and time
        fields += feature_fields
        rename |= feature_rename
    else:
        features, categories = _split(msgspec.structs.astuple, 0, len(m.numeric), m)
        return _Schema(msgspec.json.Decoder(inner), features, None, None, (), categories)
    outer = msgspec.defstruct("Message", fields, rename=rename, gc=False)
    categories = None
    if m.features_at == "array":
        features: Callable[[Any], Sequence[float]] = operator.attrgetter("features")
    elif m.features_field:
        get = operator.attrgetter("features")
        features, categories = _split(
            lambda doc: msgspec.structs.astuple(get(doc)), 0, len(m.numeric), m
        )
    else:
        features, categories = _split(msgspec.structs.astuple, len(fields) - n, len(m.numeric), m)
    return _Schema(
        msgspec.json.Decoder(outer),
        features,
        operator.attrgetter("key") if m.key_field else None,
        operator.attrgetter("time") if m.time_field else None,
        tuple(entity_of),
        categories,
    )


def _split(
    astuple: Callable[[Any], tuple[Any, ...]], skip: int, k: int, m: Mapping
) -> tuple[Callable[[Any], Sequence[float]], Callable[[Any], Sequence[str | int]] | None]:
    """Getters of a message's numeric features and of its categorical values, from the
    field tuple where the features start at `skip`, the k numeric ones first."""
    if not m.categorical:
        return (lambda doc: astuple(doc)[skip:]) if skip else astuple, None
    return (lambda doc: astuple(doc)[skip : skip + k]), (lambda doc: astuple(doc)[skip + k :])


def _decode_all(values: Sequence[bytes | None], m: Mapping, s: _Schema) -> Decoded | None:
    """The whole batch at C speed, or None as soon as any message is not good."""
    try:
        if not values or min(map(len, values)) == 0 or max(map(len, values)) > m.max_bytes:  # type: ignore[arg-type]
            return None
        docs = list(map(s.decoder.decode, values))  # type: ignore[arg-type]
        # Every decoded message has exactly len(m.numeric) numbers (struct fields, or an
        # array of checked length): one flat pass, half the time of np.array on row tuples.
        k = len(m.numeric)
        flat = itertools.chain.from_iterable(map(s.features, docs))
        numeric = np.fromiter(flat, dtype=np.float64, count=len(docs) * k)
    except (msgspec.MsgspecError, ValueError, TypeError):  # TypeError: a None value
        return None
    numeric = numeric.reshape(len(docs), k)
    if not (np.isfinite(numeric).all() and (np.abs(numeric) <= _FLOAT32_MAX).all()):
        return None
    if m.numeric_bounds is not None:  # on the values as sent, as `_decode_one` checks them
        low, high = np.array(m.numeric_bounds).T
        if ((numeric < low) | (numeric > high)).any():
            return None
    x, categories = _assemble(numeric, list(map(s.categories, docs)) if s.categories else [], m)
    keys = None
    if s.key is not None:
        keys = list(map(str, map(s.key, docs)))  # str(str) is the same object
    times = None
    if s.time is not None:
        try:
            times = epoch_ms(list(map(s.time, docs)))
        except ValueError:
            return None
        if not np.isfinite(times).all():
            return None
    entities = None
    if m.entities:
        entities = {
            e: list(map(str, map(get, docs))) for e, get in zip(m.entities, s.entities, strict=True)
        }
    return Decoded(
        x=x,
        index=np.arange(len(values), dtype=np.int64),
        keys=keys,
        times_ms=times,
        rejects=[],
        entities=entities,
        categories=categories,
    )


def _decode_one(v: bytes | None, m: Mapping, s: _Schema) -> _Row | _Bad:
    """One message's row, or the reason it cannot be scored."""
    if not v:
        return _Bad("empty", "message has no value (tombstone or empty)")
    if len(v) > m.max_bytes:
        return _Bad("too_large", f"{len(v)} bytes > payload.max_bytes {m.max_bytes}")
    try:
        doc = s.decoder.decode(v)
    except msgspec.MsgspecError as e:
        return _diagnose(v, m, e)
    values = s.features(doc)
    for name, value in zip(m.numeric, values, strict=True):
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            return _Bad("not_finite", f"feature '{name}' = {value!r} is not a finite float32")
    for name, value, (low, high) in zip(m.numeric, values, m.numeric_bounds or (), strict=False):
        if not low <= value <= high:
            return _Bad("out_of_range", f"feature '{name}' = {value!r} is outside [{low}, {high}]")
    try:
        key = str(s.key(doc)) if s.key is not None else None
        time_ms = _time_ms(s.time(doc)) if s.time is not None else None
    except _Bad as b:
        return b
    categories = tuple(map(str, s.categories(doc))) if s.categories else ()
    return values, key, time_ms, tuple(str(get(doc)) for get in s.entities), categories


def _diagnose(v: bytes, m: Mapping, e: msgspec.MsgspecError) -> _Bad:
    """Why the schema refused a message, in the words of REASONS."""
    try:
        doc = orjson.loads(v)
    except orjson.JSONDecodeError as je:
        return _Bad("not_json", f"not valid JSON: {je}"[:300])
    try:
        _row_slow(doc, m)
        if m.key_field:
            if not isinstance(doc, dict) or m.key_field not in doc:
                raise _Bad("bad_key", f"entity key field '{m.key_field}' is missing")
            _key(doc[m.key_field])
        if m.time_field:
            if not isinstance(doc, dict) or m.time_field not in doc:
                raise _Bad("bad_time", f"event time field '{m.time_field}' is missing")
            _time_ms(doc[m.time_field])
        for e in m.entities:
            if not isinstance(doc, dict) or e not in doc:
                raise _Bad("bad_key", f"entity field '{e}' is missing")
            _key(doc[e])
    except _Bad as b:
        return b
    # Refused by the schema though each check above passes (an edge the two parsers see
    # differently, such as an integer beyond 64 bits): say what the schema said.
    reason = "not_json" if isinstance(e, msgspec.DecodeError) else "wrong_type"
    return _Bad(reason, str(e)[:300])


def event_times(d: Decoded, timestamps_ms: Sequence[int]) -> np.ndarray:
    """[M] epoch ms of each decoded row: from the payload's time field when the mapping has
    one, else the Kafka timestamp of its message."""
    return d.times_ms if d.times_ms is not None else kafka_times(d, timestamps_ms)


def kafka_times(d: Decoded, timestamps_ms: Sequence[int]) -> np.ndarray:
    """[M] the Kafka timestamp (epoch ms) of each decoded row's message, NaN when the broker
    has none."""
    ts = np.fromiter((timestamps_ms[i] for i in d.index), dtype=np.float64, count=len(d.index))
    return np.where(ts >= 0, ts, np.nan)


def entity_key(d: Decoded, j: int, kafka_key: bytes | None) -> str | None:
    """The entity of decoded row j: the payload's key field, else the Kafka key."""
    if d.keys is not None:
        return d.keys[j]
    return kafka_key.decode("utf-8", "replace") if kafka_key is not None else None
