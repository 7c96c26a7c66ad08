import uuid
from datetime import UTC, datetime

import jsonschema
import numpy as np
import orjson

from detector.contract.categorical import OTHER, Categorical
from detector.contract.events import (
    EventRows,
    Source,
    dlq_headers,
    event_id,
    event_schema,
    iso_ms,
    iso_ms_many,
    make_events,
    make_score_records,
)

SCHEMA = event_schema()


def _rows(**extra: object) -> EventRows:
    return EventRows(
        sources=[Source("telemetry", 3, 1234), Source("telemetry", 0, 7)],
        keys=["pump-1", None],
        event_time_ms=np.array([1_767_225_600_123.0, np.nan]),
        score=np.array([0.5, 0.3], dtype=np.float32),
        observed=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32),
        expected=np.array([[1.1, 2.0, 0.0], [4.0, 5.0, 2.0]], dtype=np.float32),
        top_index=np.array([[2, 0], [2, 1]]),
        top_share=np.array([[0.9, 0.1], [0.75, 0.25]], dtype=np.float32),
        **extra,  # type: ignore[arg-type]
    )


def _events(rows: EventRows) -> list[dict[str, object]]:
    return make_events(
        rows,
        detected_ms=1_767_225_600_200.0,
        model=("m", "v1"),
        threshold=0.25,
        features=["a", "b", "c"],
    )


def _event() -> dict[str, object]:
    return _events(_rows())[0]


def test_event_matches_the_published_json_schema() -> None:
    e = _event()
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(e)
    assert e["severity"] == 2.0
    assert e["event_time"] == "2026-01-01T00:00:00.123Z"
    assert e["top_features"][0] == {"name": "c", "value": 3.0, "expected": 0.0, "share": 0.9}


def test_each_row_becomes_its_own_event() -> None:
    episode_id = "0b5f2c8e-6a0e-4a5e-9a57-7669676c0003"
    episodes = [{"id": episode_id, "state": "open", "started_at": None, "alarms": 1}] * 2
    first, second = _events(_rows(episodes=episodes))
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for e in (first, second):
        validator.validate(orjson.loads(orjson.dumps(e)))
    assert second["key"] is None and second["event_time"] is None  # no time: null, not 1970
    assert second["source"] == {"topic": "telemetry", "partition": 0, "offset": 7}
    assert second["score"] == float(np.float32(0.3))
    assert [f["name"] for f in second["top_features"]] == ["c", "b"]  # type: ignore[attr-defined]
    assert second["top_features"][0]["expected"] == 2.0  # type: ignore[index]
    assert second["episode"] == episodes[1]
    assert first["event_id"] != second["event_id"]


def test_a_categorical_top_feature_names_values_not_codes() -> None:
    coding = Categorical(values=("open", "shut"))
    cats = [{"c": ("jammed", coding)}, {"c": ("shut", coding)}]
    e = _events(_rows(categorical=cats))[0]
    assert e["top_features"][0] == {  # type: ignore[index]
        "name": "c",
        "value": "jammed",
        "expected": OTHER,  # code 0: any value not seen in training
        "share": 0.9,
        "categorical": True,
    }


def test_times_are_formatted_as_datetime_would_in_one_pass() -> None:
    ms = np.array([0.0, 1.5, -1.5, 1_767_225_600_123.9, 253_402_300_799_000.0, np.nan, np.inf])
    want = [
        datetime.fromtimestamp(v / 1000.0, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
        if np.isfinite(v)
        else None
        for v in ms
    ]
    assert iso_ms_many(ms) == want
    # An event time past what ISO 8601 can write (a payload may say 1e300) has no text.
    assert iso_ms_many(np.array([1e300, -1e20, 253_402_300_800_000.0])) == [None] * 3
    assert iso_ms(-62_135_596_800_000.0) == "0001-01-01T00:00:00.000Z"
    assert iso_ms(1_767_225_600_123.0) == "2026-01-01T00:00:00.123Z"
    assert iso_ms(None) is None


def test_score_records_carry_one_message_each() -> None:
    records = make_score_records(
        sources=[Source("t", 1, 5), Source("t", 1, 6)],
        keys=["a", None],
        event_time_ms=np.array([1_767_225_600_123.0, np.nan]),
        model_version="v1",
        score=np.array([0.5, 0.1], dtype=np.float32),
        threshold=0.25,
        anomaly=np.array([True, False]),
    )
    first, second = map(orjson.loads, records)
    assert first == {
        "source": {"topic": "t", "partition": 1, "offset": 5},
        "key": "a",
        "event_time": "2026-01-01T00:00:00.123Z",
        "model_version": "v1",
        "score": 0.5,
        "threshold": 0.25,
        "anomaly": True,
    }
    assert second["event_time"] is None and second["anomaly"] is False


def test_event_id_is_a_function_of_the_source_message() -> None:
    assert event_id(Source("t", 0, 1)) == event_id(Source("t", 0, 1))
    namespace = uuid.UUID("0b5f2c8e-6a0e-4a5e-9a57-7669676c0001")  # ids stay stable across releases
    for src in (Source("t", 0, 1), Source("télémetrie", 11, 2**40), Source("", 0, 0)):
        name = f"{src.topic}/{src.partition}/{src.offset}"
        assert event_id(src) == str(uuid.uuid5(namespace, name))
    assert len({event_id(Source("t", p, o)) for p in range(3) for o in range(100)}) == 300


def test_dlq_headers_keep_the_originals_and_say_why() -> None:
    h = dict(dlq_headers([("trace", b"x")], Source("t", 2, 9), "not_json", "bad", "v1"))
    assert h["trace"] == b"x"
    assert h["vigil.reason"] == b"not_json"
    assert (h["vigil.source.partition"], h["vigil.source.offset"]) == (b"2", b"9")
    assert h["vigil.model.version"] == b"v1"
