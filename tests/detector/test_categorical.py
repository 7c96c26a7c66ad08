"""Categorical codes: the encoder, its contract in the manifest, and the decoder's use of it."""

import time
import zlib

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from detector.contract.categorical import OTHER, Categorical, Encoder, as_text
from detector.errors import ConfigError
from detector.features.decode import Mapping, decode_batch

VOCAB = Categorical(values=("card", "cash", "5411"))


def test_vocabulary_codes_known_values_and_sends_the_rest_to_the_reserved_code() -> None:
    enc = Encoder("mode", VOCAB)
    codes = enc.encode(["cash", "card", "online", "", "5411", "Cash"])
    np.testing.assert_array_equal(codes, [2, 1, 0, 0, 3, 0])
    assert codes.dtype == np.float32
    assert [VOCAB.label(c) for c in (0, 1, 3, 99)] == [OTHER, "card", "5411", OTHER]
    assert VOCAB.size == 4


def test_integers_and_their_text_are_one_value() -> None:
    assert as_text([5411, "5411", None]) == ["5411", "5411", ""]
    enc = Encoder("mcc", VOCAB)
    np.testing.assert_array_equal(enc.encode(as_text([5411])), enc.encode(["5411"]))


def test_hashing_is_stable_in_range_and_keeps_empty_apart() -> None:
    spec = Categorical(buckets=64)
    values = [f"T{i:05d}" for i in range(5000)]
    codes = Encoder("terminal", spec).encode([*values, ""])
    assert codes[-1] == 0
    assert codes[:-1].min() >= 1 and codes[:-1].max() <= 64
    # The code is 1 + crc32(utf-8) mod buckets: the same on every process and machine.
    assert codes[7] == 1 + zlib.crc32(b"T00007") % 64
    assert len(np.unique(codes[:-1])) == 64  # 5000 values spread over every bucket
    assert spec.label(5) == "#bucket-5" and spec.label(0) == OTHER


def test_a_huge_vocabulary_encodes_fast_and_exactly() -> None:
    values = tuple(f"card-{i}" for i in range(500_000))
    enc = Encoder("card", Categorical(values=values))
    batch = [values[i] for i in range(0, 500_000, 97)] + ["card-x"]
    started = time.perf_counter()
    codes = enc.encode(batch)
    elapsed = time.perf_counter() - started
    np.testing.assert_array_equal(codes[:-1], np.arange(0, 500_000, 97) + 1)
    assert codes[-1] == 0
    assert float(codes.max()) == (len(batch) - 2) * 97 + 1  # exact in float32 (< 2^24)
    assert elapsed < 0.5, elapsed  # ~5000 lookups: C-speed maps, not a Python loop per value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either a vocabulary"),
        ({"values": ("a",), "buckets": 3}, "either a vocabulary"),
        ({"values": ("a", "a")}, "unique"),
        ({"values": ("a", "")}, "empty string"),
        ({"buckets": -1}, "greater than or equal"),
    ],
)
def test_a_bad_coding_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Categorical(**kwargs)


MAPPING = Mapping(
    features=("amount", "mode", "hour"),
    key_field="card",
    categorical=(Encoder("mode", VOCAB),),
)


def test_decoder_codes_categoricals_in_feature_order_and_keeps_the_text() -> None:
    values = [
        orjson.dumps({"card": "c1", "amount": 12.5, "mode": "cash", "hour": 3}),
        orjson.dumps({"card": "c2", "amount": 1, "mode": 5411, "hour": 4}),
        orjson.dumps({"card": "c3", "amount": 2, "mode": "", "hour": 5}),
        orjson.dumps({"card": "c4", "amount": 3, "mode": "online", "hour": 6}),
    ]
    d = decode_batch(values, MAPPING)
    assert d.rejects == []
    np.testing.assert_array_equal(d.x, [[12.5, 2, 3], [1, 3, 4], [2, 0, 5], [3, 0, 6]])
    assert d.categories == {"mode": ["cash", "5411", "", "online"]}
    # The message-by-message path (taken when any message is bad) says the same.
    slow = decode_batch([*values, b"{}"], MAPPING)
    np.testing.assert_array_equal(slow.x, d.x)
    assert slow.categories == d.categories


@pytest.mark.parametrize(
    ("doc", "reason", "detail"),
    [
        ({"card": "c", "amount": 1, "mode": 1.5, "hour": 1}, "wrong_type", "not a string"),
        ({"card": "c", "amount": 1, "mode": None, "hour": 1}, "wrong_type", "not a string"),
        ({"card": "c", "amount": 1, "mode": True, "hour": 1}, "wrong_type", "not a string"),
        ({"card": "c", "amount": 1, "mode": ["cash"], "hour": 1}, "wrong_type", "not a string"),
        ({"card": "c", "amount": 1, "hour": 1}, "missing_feature", "mode"),
        ({"card": "c", "amount": "cash", "mode": "cash", "hour": 1}, "wrong_type", "amount"),
    ],
)
def test_bad_categorical_values_are_rejected_with_reasons(
    doc: dict, reason: str, detail: str
) -> None:
    d = decode_batch([orjson.dumps(doc)], MAPPING)
    assert len(d.x) == 0
    assert d.rejects[0].reason == reason
    assert detail in d.rejects[0].detail


def test_categoricals_need_named_fields() -> None:
    with pytest.raises(ConfigError, match="not features"):
        Mapping(features=("a",), categorical=(Encoder("b", VOCAB),))
    with pytest.raises(ConfigError, match="numbers only"):
        Mapping(features=("a",), features_at="array", categorical=(Encoder("a", VOCAB),))
