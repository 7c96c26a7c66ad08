import math

import numpy as np
import orjson
import pytest

from detector.contract.events import REASONS
from detector.features.decode import Mapping, decode_batch

F = ("a", "b", "c")
TOP = Mapping(features=F)


def msg(**kv: object) -> bytes:
    return orjson.dumps(kv)


def test_fast_path_keeps_manifest_order_and_positions() -> None:
    values = [msg(c=3.0, a=1, b=2.5, extra="ignored"), msg(a=-1, b=0, c=1e30)]
    d = decode_batch(values, TOP)
    assert d.rejects == []
    np.testing.assert_array_equal(d.index, [0, 1])
    assert d.x.dtype == np.float32
    np.testing.assert_allclose(d.x, [[1, 2.5, 3], [-1, 0, 1e30]], rtol=1e-6)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"x" * 2000, "too_large"),
        (b"{not json", "not_json"),
        (b'{"a": NaN, "b": 1, "c": 2}', "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"text"', "not_object"),
        (orjson.dumps({"a": 1, "b": 2}), "missing_feature"),
        (orjson.dumps({"a": 1, "b": "2", "c": 3}), "wrong_type"),
        (orjson.dumps({"a": 1, "b": None, "c": 3}), "wrong_type"),
        (orjson.dumps({"a": 1, "b": True, "c": 3}), "wrong_type"),
        (orjson.dumps({"a": 1, "b": [2], "c": 3}), "wrong_type"),
        (b'{"a": 1, "b": 1e39, "c": 3}', "not_finite"),
        (b'{"a": 1, "b": 100000000000000000000000000000000000000000, "c": 3}', "not_finite"),
    ],
)
def test_each_bad_message_gets_its_reason_and_good_ones_survive(
    value: bytes | None, reason: str
) -> None:
    m = Mapping(features=F, max_bytes=1000)
    good = msg(a=1, b=2, c=3)
    d = decode_batch([good, value, good], m)
    assert [(r.index, r.reason) for r in d.rejects] == [(1, reason)]
    assert reason in REASONS
    assert d.rejects[0].detail
    np.testing.assert_array_equal(d.index, [0, 2])
    np.testing.assert_array_equal(d.x, [[1, 2, 3], [1, 2, 3]])


def test_features_under_a_field() -> None:
    m = Mapping(features=F, features_at="field", features_field="v")
    d = decode_batch([orjson.dumps({"v": {"a": 1, "b": 2, "c": 3}}), orjson.dumps({"w": 1})], m)
    np.testing.assert_array_equal(d.x, [[1, 2, 3]])
    assert [r.reason for r in d.rejects] == ["missing_feature"]


def test_features_as_array_in_manifest_order() -> None:
    m = Mapping(features=F, features_at="array")
    d = decode_batch([b"[1,2,3]", b"[1,2]", b'[1,"x",3]', b'{"a":1}'], m)
    np.testing.assert_array_equal(d.x, [[1, 2, 3]])
    assert [r.reason for r in d.rejects] == ["wrong_length", "wrong_type", "not_object"]


def test_array_under_field() -> None:
    m = Mapping(features=F, features_at="array", features_field="v")
    d = decode_batch([orjson.dumps({"v": [1, 2, 3]})], m)
    np.testing.assert_array_equal(d.x, [[1, 2, 3]])


def test_key_and_time_from_fields() -> None:
    m = Mapping(features=F, key_field="id", time_field="ts")
    values = [
        msg(a=1, b=2, c=3, id="pump-1", ts=1_767_225_600_000),  # epoch ms
        msg(a=1, b=2, c=3, id=7, ts=1_767_225_600.5),  # epoch seconds
        msg(a=1, b=2, c=3, id="p", ts="2026-01-01T00:00:00Z"),  # ISO 8601
        msg(a=1, b=2, c=3, id=None, ts=1),
        msg(a=1, b=2, c=3, id="p", ts="yesterday"),
        msg(a=1, b=2, c=3, ts=1),
    ]
    d = decode_batch(values, m)
    assert d.keys == ["pump-1", "7", "p"]
    assert d.times_ms is not None
    np.testing.assert_allclose(
        d.times_ms, [1_767_225_600_000, 1_767_225_600_500, 1_767_225_600_000]
    )
    assert [(r.index, r.reason) for r in d.rejects] == [
        (3, "bad_key"),
        (4, "bad_time"),
        (5, "bad_key"),
    ]


def test_single_feature_models() -> None:
    d = decode_batch([msg(a=1.5), msg(a=2)], Mapping(features=("a",)))
    np.testing.assert_array_equal(d.x, [[1.5], [2.0]])


def test_counts_add_up_on_a_mixed_batch() -> None:
    rng = np.random.default_rng(1)
    values: list[bytes | None] = []
    for i in range(500):
        kind = rng.integers(5)
        values.append(
            msg(a=float(i), b=1, c=2)
            if kind < 3
            else b"garbage"
            if kind == 3
            else msg(a="x", b=1, c=2)
        )
    d = decode_batch(values, TOP)
    assert len(d.index) + len(d.rejects) == len(values)
    assert sorted(list(d.index) + [r.index for r in d.rejects]) == list(range(500))
    assert all(math.isfinite(v) for v in d.x.ravel())


def test_entity_fields_are_read_as_strings_and_a_missing_one_is_dead_lettered() -> None:
    m = Mapping(features=("amount",), key_field="card", entities=("card", "terminal"))
    d = decode_batch(
        [
            msg(amount=5, card="C1", terminal=7),
            msg(amount=5, terminal="T2"),
            msg(amount=5, card="C3"),
            msg(amount=5, card="C4", terminal=True),
        ],
        m,
    )
    assert d.entities == {"card": ["C1"], "terminal": ["7"]}
    assert d.keys == ["C1"]  # the key field names an entity too: read once, used twice
    assert [(r.index, r.reason) for r in d.rejects] == [
        (1, "bad_key"),
        (2, "bad_key"),
        (3, "bad_key"),
    ]
    assert "terminal" in d.rejects[1].detail


def test_an_entity_field_cannot_be_a_feature() -> None:
    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match="entity"):
        Mapping(features=("amount", "card"), entities=("card",))


def test_values_outside_declared_bounds_are_dead_lettered() -> None:
    inf = float("inf")
    m = Mapping(features=("amount", "b"), bounds=((0.0, inf), (-1.0, 1.0)))
    d = decode_batch([msg(amount=3, b=0), msg(amount=-0.01, b=0), msg(amount=1, b=2)], m)
    np.testing.assert_array_equal(d.index, [0])
    assert [(r.index, r.reason) for r in d.rejects] == [(1, "out_of_range"), (2, "out_of_range")]
    assert "'amount' = -0.01" in d.rejects[0].detail


def test_bounds_judge_the_value_as_sent_not_its_float32_rounding() -> None:
    """-1e-100 rounds to -0.0 in float32, which is within [0, inf): the batch path and the
    message path must both see the value as sent (found by the property test)."""
    m = Mapping(features=F, bounds=((0.0, math.inf), (-math.inf, math.inf), (-1.0, 1.0)))
    bad = msg(a=-1e-100, b=0.0, c=0.0)
    for batch in ([bad], [bad, msg(a=1, b=2, c=0.5)]):
        d = decode_batch(batch, m)
        assert [(r.index, r.reason) for r in d.rejects] == [(0, "out_of_range")]
