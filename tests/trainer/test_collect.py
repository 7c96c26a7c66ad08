"""The pure parts of `vigil-train collect`: time ranges and anomaly-episode spans."""

from __future__ import annotations

import numpy as np
import pytest

from detector.contract.events import iso_ms
from detector.errors import ConfigError
from trainer.collect import Episodes, parse_duration_ms, parse_when
from trainer.retrain import Gate, gate_reasons

NOW = 1_800_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("7d", NOW - 7 * 86_400_000),
        ("12h", NOW - 12 * 3_600_000),
        ("1.5h", NOW - 5_400_000),
        ("30m", NOW - 1_800_000),
        ("2026-11-01T00:00:00Z", 1_793_491_200_000),
        ("2026-11-01T01:00:00+01:00", 1_793_491_200_000),
        ("2026-11-01", 1_793_491_200_000),  # no zone: UTC
    ],
)
def test_parse_when(text: str, expected: int) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "-3d", ""])
def test_unreadable_times_say_what_to_write(text: str) -> None:
    with pytest.raises(ConfigError, match="7d, 12h or 30m"):
        parse_when(text, NOW)


def test_parse_duration() -> None:
    assert parse_duration_ms("30m") == 1_800_000
    assert parse_duration_ms("0s") == 0
    with pytest.raises(ConfigError):
        parse_duration_ms("now")


def _event(key: str | None, minute: int, episode: str) -> dict:
    ms = NOW + minute * 60_000
    return {"key": key, "event_time": iso_ms(ms), "episode": {"id": episode}}


def test_episode_spans_are_widened_merged_and_per_entity() -> None:
    events = [
        _event("a", 10, "e1"),
        _event("a", 12, "e1"),  # e1: minutes 10..12
        _event("a", 15, "e2"),  # e2 at 15: overlaps e1 once both are widened by 2
        _event("b", 40, "e3"),
    ]
    ep = Episodes.from_events(events, margin_ms=2 * 60_000)
    assert ep.spans["a"] == [(NOW + 8 * 60_000, NOW + 17 * 60_000)]
    minutes = np.array([7, 8, 13, 17, 18, 40, 40], dtype=np.float64)
    keys = ["a", "a", "a", "a", "a", "a", "b"]
    inside = ep.inside(keys, NOW + minutes * 60_000)
    assert inside.tolist() == [False, True, True, True, False, False, True]


def test_events_without_time_are_matched_by_source() -> None:
    ep = Episodes.from_events(
        [{"key": "a", "event_time": None, "source": {"topic": "t", "partition": 0, "offset": 5}}],
        0,
    )
    assert ep.sources == {("t", 0, 5)} and not ep.spans


def test_gate() -> None:
    ok = {"alert_ratio": 0.01, "calibrated_alert_ratio": 0.005, "rows_scored": 1000, "psi": 0.5}
    assert gate_reasons(ok, Gate()) == []
    assert "PSI 0.500 > 0.25" in gate_reasons(ok, Gate(max_psi=0.25))[0]
    loud = ok | {"alert_ratio": 0.02}
    assert "more than 3 x its calibrated 0.50%" in gate_reasons(loud, Gate())[0]
    # A calibrated rate of 0 on few rows: one alarm in 100 rows is not a reason to refuse.
    assert gate_reasons(ok | {"calibrated_alert_ratio": 0.0, "rows_scored": 100}, Gate()) == []


def test_gate_refuses_a_candidate_that_alarms_far_more_than_the_live_model() -> None:
    # Calibrated on training rows whose card histories were short, the candidate's own
    # promise (4%) says little: on held-out payments with a detector's history it alarms on
    # 11%, the live model on 1%.
    candidate = {"alert_ratio": 0.11, "calibrated_alert_ratio": 0.04, "rows_scored": 2000}
    live = {"alert_ratio": 0.01, "calibrated_alert_ratio": 0.005, "rows_scored": 2000}
    (reason,) = gate_reasons(candidate | {"psi": None}, Gate(), live | {"psi": None})
    assert "more than 3 x the live model's 1.00% (calibrated 0.50%)" in reason
    # The live model's held-out share is low by construction (collect leaves out what it
    # alarmed on): its calibrated share counts as well.
    quiet = live | {"alert_ratio": 0.0, "calibrated_alert_ratio": 0.01}
    near = candidate | {"alert_ratio": 0.02, "psi": None}
    assert gate_reasons(near, Gate(), quiet) == []
