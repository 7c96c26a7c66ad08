import numpy as np
import pytest

from detector.state.episodes import Episodes


def run(ep: Episodes, alarms: str, key: str = "k") -> list[tuple[int, str, int]]:
    a = np.array([c == "x" for c in alarms])
    out = ep.update(a, np.arange(len(a), dtype=float), [key] * len(a), lambda j: ("t", 0, j))
    return [(t.row, t.state, t.alarms) for t in out]


def test_every_alarm_is_published_with_k_equal_n_equal_1() -> None:
    ep = Episodes(k=1, n=1, close_after=2)
    assert run(ep, "..xx.x..x") == [
        (2, "open", 1),
        (3, "continue", 2),
        (5, "continue", 3),
        (7, "close", 3),
        (8, "open", 1),
    ]


def test_k_of_n_suppresses_isolated_alarms() -> None:
    ep = Episodes(k=2, n=3, close_after=2)
    assert run(ep, "x..x..x..") == []  # never 2 of the last 3
    assert run(ep, "xx.x...") == [(1, "open", 1), (3, "continue", 2), (5, "close", 2)]


def test_continue_events_can_be_thinned_and_episodes_are_per_entity() -> None:
    ep = Episodes(k=1, n=1, close_after=1, continue_every=3)
    assert run(ep, "xxxxxxx.", key="a") == [
        (0, "open", 1),
        (2, "continue", 3),
        (5, "continue", 6),
        (7, "close", 7),
    ]
    assert run(ep, "x", key="b") == [(0, "open", 1)]
    assert run(ep, ".", key="a") == []  # a's episode is closed; b's is untouched
    assert len(ep.tracks) == 1


def test_episode_ids_are_stable_for_replays() -> None:
    a = Episodes().update(np.array([True]), np.zeros(1), ["k"], lambda j: ("t", 0, 7))
    b = Episodes().update(np.array([True]), np.zeros(1), ["k"], lambda j: ("t", 0, 7))
    assert a[0].episode_id == b[0].episode_id


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        Episodes(k=3, n=2)
