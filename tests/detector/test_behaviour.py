"""Behaviour features: the vectorised state against a per-row reference, batch invariance,
known values, bounds, snapshots, and the payment simulator."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from detector.contract.behaviour import BehaviourSpec, EntityBehaviour
from detector.features.behaviour import BehaviourState, offline_features
from trainer.transactions import card_key, simulate, terminal_key

DAY = 86_400_000
T0 = 1_775_000_000_000  # an epoch-ms instant in 2026

SPEC = BehaviourSpec(
    entities=(
        EntityBehaviour(entity="card_id", mean_of="amount", since_previous=True),
        EntityBehaviour(entity="terminal_id", windows_days=(0.5, 3), since_previous=True),
        # a card at a terminal: how often this card paid here lately
        EntityBehaviour(entity="card_id+terminal_id", windows_days=(7,), log_counts=True),
    ),
    idle_days=40,  # short, so that random gaps exercise the reset
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(spec: BehaviourSpec, rows: list[tuple[str, str, int, float]]) -> np.ndarray:
    """The features by the definition, one row at a time with dicts and math."""
    idle = spec.idle_days * DAY
    states: list[dict[str, tuple[list[float], list[float], float]]] = [{} for _ in spec.entities]
    out = []
    for card, term, t, amount in rows:
        feats: list[float] = []
        fields = {"card_id": card, "terminal_id": term}
        for e, state in zip(spec.entities, states, strict=True):
            key = "\x1f".join(fields[f] for f in e.fields)
            taus = [w * DAY for w in e.windows_days]
            cap_s = max(e.windows_days) * 86_400
            prev = state.get(key)
            if prev is None or t - prev[2] > idle:
                counts, sums, last, since = [1.0] * len(taus), [amount] * len(taus), t, cap_s
            else:
                dt = max(0.0, t - prev[2])
                decay = [math.exp(-dt / tau) for tau in taus]
                counts = [c * d + 1 for c, d in zip(prev[0], decay, strict=True)]
                sums = [s * d + amount for s, d in zip(prev[1], decay, strict=True)]
                last, since = max(prev[2], t), min(dt / 1000, cap_s)
            state[key] = (counts, sums, last)
            if e.count:
                feats += [math.log1p(c) for c in counts] if e.log_counts else counts
            if e.mean_of:
                feats += [s / c for s, c in zip(sums, counts, strict=True)]
            if e.since_previous:
                feats.append(math.log1p(since))
        tod = (t % DAY) / DAY
        out.append([*feats, math.sin(2 * math.pi * tod), math.cos(2 * math.pi * tod)])
    return np.array(out).reshape(len(rows), len(spec.names()))


def columns(rows: list[tuple[str, str, int, float]]) -> tuple[dict, np.ndarray, dict]:
    keys = {"card_id": [r[0] for r in rows], "terminal_id": [r[1] for r in rows]}
    times = np.array([r[2] for r in rows], np.int64)
    return keys, times, {"amount": np.array([r[3] for r in rows], np.float64)}


# Time steps: ties, small and large steps, late rows, and gaps past idle_days
_step = st.one_of(
    st.just(0),
    st.integers(-2 * DAY, 3 * DAY),
    st.integers(0, 10 * DAY),
    st.integers(30 * DAY, 60 * DAY),
)
_rows = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3", "c4"]),
        st.sampled_from(["t1", "t2", "t3"]),
        _step,
        st.floats(0, 5000, allow_nan=False).map(lambda a: round(a, 2)),
    ),
    min_size=1,
    max_size=80,
).map(
    lambda rs: [
        (c, term, T0 + int(s), a)
        for (c, term, _, a), s in zip(rs, np.cumsum([r[2] for r in rs]), strict=True)
    ]
)


@FAST
@given(rows=_rows)
def test_vectorised_update_matches_the_per_row_reference(rows: list) -> None:
    got = BehaviourState(SPEC).update(*columns(rows))
    np.testing.assert_allclose(got, reference(SPEC, rows), rtol=1e-9, atol=1e-12)


@FAST
@given(rows=_rows, cuts=st.lists(st.integers(0, 80), max_size=6))
def test_batches_give_exactly_the_features_of_one_call(rows: list, cuts: list[int]) -> None:
    keys, times, values = columns(rows)
    whole = BehaviourState(SPEC).update(keys, times, values)
    state = BehaviourState(SPEC)
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    parts = [
        state.update(
            {k: v[lo:hi] for k, v in keys.items()},
            times[lo:hi],
            {"amount": values["amount"][lo:hi]},
        )
        for lo, hi in itertools.pairwise(bounds)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_known_values_of_two_transactions_a_day_apart() -> None:
    spec = BehaviourSpec(
        entities=(EntityBehaviour(entity="card_id", mean_of="amount", since_previous=True),)
    )
    assert spec.names() == [
        "card_id.count_1d",
        "card_id.count_7d",
        "card_id.count_30d",
        "card_id.mean_amount_1d",
        "card_id.mean_amount_7d",
        "card_id.mean_amount_30d",
        "card_id.since_previous_log_s",
        "hour_sin",
        "hour_cos",
    ]
    assert spec.fields() == ["amount"]
    six_am = 1_775_001_600_000 - 18 * 3_600_000  # a UTC midnight + 6 h
    assert six_am % DAY == 6 * 3_600_000
    f = BehaviourState(spec).update(
        {"card_id": ["a", "a"]}, np.array([six_am, six_am + DAY]), {"amount": np.array([10.0, 40])}
    )
    e1, e7, e30 = math.exp(-1), math.exp(-1 / 7), math.exp(-1 / 30)
    first = [1, 1, 1, 10, 10, 10, math.log1p(30 * 86_400), 1, 0]
    second = [
        1 + e1,
        1 + e7,
        1 + e30,
        (10 * e1 + 40) / (1 + e1),
        (10 * e7 + 40) / (1 + e7),
        (10 * e30 + 40) / (1 + e30),
        math.log1p(86_400),
        1,
        0,
    ]
    np.testing.assert_allclose(f, [first, second], rtol=1e-12, atol=1e-12)


def test_late_rows_count_at_the_newest_time_and_offline_sorts() -> None:
    spec = BehaviourSpec(entities=(EntityBehaviour(entity="k", since_previous=True),))
    keys, t = {"k": ["a", "a", "a"]}, np.array([T0 + DAY, T0, T0 + DAY])
    f = BehaviourState(spec).update(keys, t)
    # the late row sees no decay and a zero gap; t_last stays T0 + DAY
    np.testing.assert_allclose(f[:, 0], [1, 2, 3])
    np.testing.assert_allclose(f[1:, 3], [0, 0])
    # offline sorts by time and answers in the caller's order
    g = offline_features(spec, keys, t)
    np.testing.assert_allclose(g[:, 0], [1 + math.exp(-1), 1, 2 + math.exp(-1)])


def test_bounded_entities_evict_the_oldest_and_expire_forgets_the_idle() -> None:
    spec = BehaviourSpec(entities=(EntityBehaviour(entity="k"),), max_entities=5, idle_days=30)
    state = BehaviourState(spec)
    state.update({"k": [f"e{i}" for i in range(8)]}, T0 + np.arange(8) * 1000)
    assert len(state) == 5 and state.evicted == 3
    assert state.entity_counts() == {"k": 5}
    # an evicted entity starts again; a kept one goes on
    f = state.update({"k": ["e0", "e7"]}, np.array([T0 + 9000, T0 + 9000]))
    assert f[0, 0] == 1 and f[1, 0] > 1.99
    assert len(state) == 5 and state.evicted == 4  # e3 (the oldest) made room for e0

    # expire is feature-neutral for rows at or after now_ms
    spec = spec.model_copy(update={"max_entities": 100})
    a, b = BehaviourState(spec), BehaviourState(spec)
    first = {"k": ["old", "new"]}, np.array([T0, T0 + 20 * DAY])
    a.update(*first)
    b.update(*first)
    now = T0 + 31 * DAY
    assert a.expire(now) == 1 and a.expired == 1 and len(a) == 1
    later = {"k": ["old", "new"]}, np.array([now, now + 1])
    np.testing.assert_array_equal(a.update(*later), b.update(*later))


def test_snapshot_round_trip_continues_identically_and_refuses_another_spec(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    n = 400
    rows = [
        (f"c{rng.integers(30)}", f"t{rng.integers(7)}", T0 + int(t), float(a))
        for t, a in zip(np.sort(rng.integers(0, 60 * DAY, n)), rng.uniform(1, 300, n), strict=True)
    ]
    rows.insert(0, ("gone", "gone", T0 - 50 * DAY, 5.0))  # idle past idle_days by row 249
    keys, times, values = columns(rows)
    whole = BehaviourState(SPEC).update(keys, times, values)
    state = BehaviourState(SPEC)
    state.update(
        {k: v[:250] for k, v in keys.items()}, times[:250], {"amount": values["amount"][:250]}
    )
    assert state.expire(int(times[249])) == 3  # "gone" of each kind; the snapshot holds live ones
    path = tmp_path / "behaviour.npz"
    state.save(path)
    loaded = BehaviourState.load(SPEC, path)
    assert loaded.entity_counts() == state.entity_counts()
    rest = loaded.update(
        {k: v[250:] for k, v in keys.items()}, times[250:], {"amount": values["amount"][250:]}
    )
    np.testing.assert_array_equal(rest, whole[250:])

    other = SPEC.model_copy(update={"hour_of_day": False})
    with pytest.raises(ValueError, match="different behaviour spec"):
        BehaviourState.load(other, path)


def test_spec_round_trips_through_json_and_rejects_mistakes() -> None:
    assert BehaviourSpec.model_validate(SPEC.model_dump(mode="json")) == SPEC
    assert BehaviourSpec.model_validate_json(SPEC.model_dump_json()) == SPEC
    with pytest.raises(ValidationError):
        BehaviourSpec.model_validate({**SPEC.model_dump(), "extra": 1})
    with pytest.raises(ValidationError, match="longest window"):
        BehaviourSpec(entities=(EntityBehaviour(entity="k"),), idle_days=10)
    with pytest.raises(ValidationError, match="once"):
        BehaviourSpec(entities=(EntityBehaviour(entity="k"), EntityBehaviour(entity="k")))
    with pytest.raises(ValidationError, match="no feature"):
        EntityBehaviour(entity="k", count=False)
    state = BehaviourState(SPEC)
    with pytest.raises(ValueError, match="non-finite"):
        state.update({"card_id": ["a"], "terminal_id": ["b"]}, np.array([np.nan]), {"amount": [1]})
    with pytest.raises(ValueError, match="amount"):
        state.update({"card_id": ["a"], "terminal_id": ["b"]}, np.array([T0]), {})
    with pytest.raises(ValueError, match="strings"):
        state.update({"card_id": ["a"], "terminal_id": [None]}, np.array([T0]), {"amount": [1]})
    assert len(state) == 0  # a refused batch changes nothing


def test_simulated_payments() -> None:
    tx = simulate(n_customers=300, n_terminals=600, days=30, seed=1)
    spec = BehaviourSpec(
        entities=(
            EntityBehaviour(entity="card_id", mean_of="amount", since_previous=True),
            EntityBehaviour(entity="terminal_id"),
        )
    )
    keys = {
        "card_id": [card_key(c) for c in tx.customer_id.tolist()],
        "terminal_id": [terminal_key(t) for t in tx.terminal_id.tolist()],
    }
    f = offline_features(spec, keys, tx.tx_time_ms, {"amount": tx.tx_amount})
    names = spec.names()
    assert f.shape == (len(tx), len(names)) and np.isfinite(f).all()
    counts = f[:, [i for i, n in enumerate(names) if ".count_" in n]]
    assert (counts >= 1).all()
    # longer windows remember more
    c1, c7, c30 = (f[:, names.index(f"card_id.count_{w}")] for w in ("1d", "7d", "30d"))
    assert (c7 >= c1 - 1e-12).all() and (c30 >= c7 - 1e-12).all()
    # a compromised card's abused rows (x5 amounts) stand out against the card's 30-day mean
    ratio = tx.tx_amount / f[:, names.index("card_id.mean_amount_30d")]
    scenario = tx.tx_fraud_scenario
    assert (scenario == 3).sum() > 20
    assert ratio[scenario == 3].mean() > 2 * ratio[scenario == 0].mean()


def test_log_counts_are_log1p_of_the_counts() -> None:
    rng = np.random.default_rng(3)
    n = 500
    keys = {"card": [f"c{i}" for i in rng.integers(0, 20, n)]}
    t = np.sort(rng.uniform(0, 40 * 86_400_000, n))
    plain = BehaviourSpec(entities=(EntityBehaviour(entity="card"),), hour_of_day=False)
    logged = BehaviourSpec(
        entities=(EntityBehaviour(entity="card", log_counts=True),), hour_of_day=False
    )
    assert logged.names() == ["card.log_count_1d", "card.log_count_7d", "card.log_count_30d"]
    np.testing.assert_array_equal(
        offline_features(logged, keys, t), np.log1p(offline_features(plain, keys, t))
    )


def test_a_pair_entity_counts_a_card_at_a_terminal() -> None:
    """'card_id+terminal_id' keys on both values: a terminal new to the card reads 1 (this
    row only) however busy the card and the terminal are."""
    spec = BehaviourSpec(
        entities=(EntityBehaviour(entity="card_id+terminal_id", windows_days=(30,)),),
        hour_of_day=False,
    )
    assert spec.entity_fields() == ["card_id", "terminal_id"]
    assert spec.names() == ["card_id+terminal_id.count_30d"]
    rows = [("c1", "t1"), ("c1", "t1"), ("c2", "t1"), ("c1", "t1"), ("c1", "t2"), ("c1 t", "1")]
    keys = {"card_id": [r[0] for r in rows], "terminal_id": [r[1] for r in rows]}
    got = offline_features(spec, keys, np.full(len(rows), T0, np.float64))
    np.testing.assert_array_equal(got[:, 0], [1, 2, 1, 3, 1, 1])
    with pytest.raises(ValidationError, match="distinct field names"):
        EntityBehaviour(entity="card_id+card_id")
    with pytest.raises(ValueError, match="keys has no 'terminal_id'"):
        BehaviourState(spec).update({"card_id": ["c1"]}, np.array([T0], np.float64))
