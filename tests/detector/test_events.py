import jsonschema
import numpy as np

from detector.events import Source, dlq_headers, event_id, event_schema, make_event

SCHEMA = event_schema()


def _event() -> dict[str, object]:
    return make_event(
        src=Source("telemetry", 3, 1234),
        key="pump-1",
        event_time_ms=1_767_225_600_123.0,
        detected_ms=1_767_225_600_200.0,
        model=("m", "v1"),
        score=0.5,
        threshold=0.25,
        features=["a", "b", "c"],
        observed=np.array([1.0, 2.0, 3.0]),
        expected=np.array([1.1, 2.0, 0.0]),
        top_index=np.array([2, 0]),
        top_share=np.array([0.9, 0.1]),
    )


def test_event_matches_the_published_json_schema() -> None:
    e = _event()
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(e)
    assert e["severity"] == 2.0
    assert e["event_time"] == "2026-01-01T00:00:00.123Z"
    assert e["top_features"][0] == {"name": "c", "value": 3.0, "expected": 0.0, "share": 0.9}


def test_event_id_is_a_function_of_the_source_message() -> None:
    assert event_id(Source("t", 0, 1)) == event_id(Source("t", 0, 1))
    assert len({event_id(Source("t", p, o)) for p in range(3) for o in range(100)}) == 300


def test_dlq_headers_keep_the_originals_and_say_why() -> None:
    h = dict(dlq_headers([("trace", b"x")], Source("t", 2, 9), "not_json", "bad", "v1"))
    assert h["trace"] == b"x"
    assert h["vigil.reason"] == b"not_json"
    assert (h["vigil.source.partition"], h["vigil.source.offset"]) == (b"2", b"9")
    assert h["vigil.model.version"] == b"v1"
