"""Property-based tests: whatever arrives, the decoder never raises, every message is
either a finite row or a reject with a known reason, and the counts add up."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.contract.categorical import Categorical, Encoder
from detector.contract.events import REASONS
from detector.errors import ConfigError
from detector.features.decode import Mapping, decode_batch
from detector.ops.settings import load_settings

FEATURES = ("a", "b", "c")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
documents = st.one_of(
    st.dictionaries(st.sampled_from([*FEATURES, "x", "ts", "ü", "a\x00"]), json_values, max_size=6),
    st.fixed_dictionaries({f: st.floats(width=64) | st.integers() for f in FEATURES}),
    st.fixed_dictionaries(  # well formed for the mapping with a key and a time field
        {f: st.floats(width=32) | st.integers(-100, 100) for f in FEATURES},
        optional={
            "x": st.text(max_size=5) | st.integers() | st.booleans(),
            "ts": st.integers(0, 2**42)
            | st.floats(0, 2e12)
            | st.sampled_from([5e10, 1e11, 100_000_000_001, 1.7e12])  # seconds or ms
            | st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01 10:00", "soon"]),
        },
    ),
    json_values,
)


def encode(doc: object) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return b"\xff"


messages = st.one_of(
    st.binary(max_size=200),
    documents.map(encode),
    st.just(b'{"a": 1, "b": 2, "c": 3}'),
    st.just(b'{"a": 1e400, "b": 2, "c": 3}'),
    st.just(b"[" * 2000 + b"]" * 2000),  # deep nesting
    st.none(),
)
mappings = st.sampled_from(
    [
        Mapping(features=FEATURES, max_bytes=150),
        Mapping(features=FEATURES, features_at="array"),
        Mapping(features=FEATURES, features_at="field", features_field="a"),
        Mapping(features=FEATURES, key_field="x", time_field="ts"),
        Mapping(features=FEATURES, key_field="x", entities=("x", "ü")),
        Mapping(features=FEATURES, bounds=((0.0, float("inf")), (-1e3, 1e3), (-1.0, 1.0))),
        Mapping(features=FEATURES, categorical=(Encoder("b", Categorical(values=("x", "1"))),)),
        Mapping(
            features=FEATURES,
            features_at="field",
            features_field="x",
            key_field="ts",
            categorical=(
                Encoder("a", Categorical(buckets=5)),
                Encoder("c", Categorical(buckets=2)),
            ),
        ),
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=30), mappings)
def test_decoder_never_raises_and_accounts_for_every_message(
    values: list[bytes | None], m: Mapping
) -> None:
    d = decode_batch(values, m)
    assert d.x.shape == (len(d.index), len(FEATURES)) and d.x.dtype == np.float32
    assert np.isfinite(d.x).all()
    assert sorted([*d.index.tolist(), *(r.index for r in d.rejects)]) == list(range(len(values)))
    assert all(r.reason in REASONS and r.detail for r in d.rejects)
    if d.keys is not None:
        assert len(d.keys) == len(d.index)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=20), mappings)
def test_a_message_gets_the_same_verdict_alone_or_in_any_batch(
    values: list[bytes | None], m: Mapping
) -> None:
    """The batch fast path and the message-by-message path never disagree."""
    batch = decode_batch(values, m)
    alone = [decode_batch([v], m) for v in values]
    assert [(r.index, r.reason, r.detail) for r in batch.rejects] == [
        (i, r.reason, r.detail) for i, d in enumerate(alone) for r in d.rejects
    ]
    kept = [d for d in alone if len(d.index)]
    np.testing.assert_array_equal(
        batch.x, np.concatenate([d.x for d in kept]) if kept else batch.x[:0]
    )
    if batch.keys is not None:
        assert batch.keys == [k for d in kept for k in d.keys or []]
    if batch.times_ms is not None:
        np.testing.assert_array_equal(
            batch.times_ms, np.concatenate([d.times_ms for d in kept]) if kept else []
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=3, max_size=3))
def test_well_formed_rows_round_trip(row: list[float]) -> None:
    d = decode_batch(
        [orjson.dumps(dict(zip(FEATURES, row, strict=True)))], Mapping(features=FEATURES)
    )
    assert not d.rejects
    np.testing.assert_array_equal(d.x[0], np.array(row, dtype=np.float32))


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["batch", "kafka", "payload", "topics", "model", "zzz"]),
        st.dictionaries(st.text(max_size=12), json_scalars, max_size=3),
        max_size=3,
    )
)
def test_any_settings_either_load_or_fail_with_config_error(overrides: dict) -> None:
    try:
        load_settings(None, **overrides)
    except ConfigError as e:  # any other exception type fails the test
        assert str(e).startswith("invalid configuration")
