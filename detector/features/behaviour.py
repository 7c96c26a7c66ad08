"""Per-entity behaviour features, one implementation for the trainer and the detector.

Fraud shows in behaviour, not in one row. For each entity (a card, a terminal) this module
keeps, over windows of 1, 7 and 30 days (configurable), a count of transactions and a mean of
a numeric field, plus the time since the entity's previous transaction; the hour of day is
added per row. The trainer calls `offline_features` once over a whole file; the detector calls
`BehaviourState.update` batch after batch. Offline is literally a fresh state and one call, so
both compute the same numbers, bit for bit (tests/detector/test_behaviour.py checks it).

Windows are exponentially decayed, not hard sliding windows. For a window of w days the time
constant is tau = w days; on a transaction at time t (ms) with amount a, for an entity last
seen at t_last:

    decay = exp(-max(0, t - t_last) / tau)
    count_w = count_w * decay + 1          sum_w = sum_w * decay + a       mean_w = sum_w / count_w

A row's features include the row itself (as the Fraud Detection Handbook's windows do). Why
decayed: a hard 30-day window needs every transaction of the last 30 days per entity (hundreds
of rows per card); the decayed one needs one number per window and entity, updates in O(1), and
has no boundary that depends on where a batch starts, so it is exactly reproducible offline and
online. A transaction w days old weighs e^-1 ~ 0.37 in the w-day window.

Semantics at the edges, identical offline and online:
- late rows (t < t_last, arrival order is the order of the rows) are treated as happening at
  t_last: dt = 0, no decay, `since_previous` = 0; t_last stays the newest time seen;
- an entity unseen for more than `idle_days` restarts from nothing at its next row (counts
  and sums reset), so forgetting it with `expire` changes no feature of a row at or after the
  `now_ms` given to `expire`;
- `since_previous` is log1p(seconds since the entity's previous row), capped at the longest
  window: a first row, or one after a reset, reads log1p(longest window in seconds), as if the
  previous row were at least that long ago, and a 60-day gap reads the same as a new entity;
- `hour_sin`, `hour_cos`: the UTC time of day of the row on the unit circle (stateless).

An entity may be a pair of fields, `"entity": "card_id+terminal_id"`: its key is the two
values together, so its count says how often this card paid at this terminal lately (a
terminal new to the card reads near 0: "terminal_id: unusual for this card").

State is one array-backed store per entity kind: a dict key -> slot and float64 arrays
[capacity, n_windows] of counts and sums plus last_t [capacity], grown by doubling, with freed
slots reused. Each kind holds at most `max_entities` entities: past that, the entities with the
oldest last_t (event time, so replays evict the same ones) are forgotten, down to 95 % of the
bound so that the scan runs rarely. Eviction happens at the end of an `update` call, so the
offline and online paths agree exactly only while the live entities of a kind fit under the
bound (2 M by default); a forgotten entity starts again from nothing.

An `update` call is vectorised over entities: when an entity occurs several times in one call,
the rows are applied in rounds, round r holding the r-th occurrence of every entity that has
one. Entities are numbered by decreasing number of occurrences, so round r touches a prefix of
a gathered working copy of the state (slices, not scatters); rounds = the most rows of one
entity in the call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detector.contract.behaviour import (
    DAY_MS,
    KEY_SEPARATOR,
    BehaviourSpec,
    EntityBehaviour,
)
from detector.features.decode import epoch_ms

__all__ = [
    "BehaviourState",
    "offline_features",
    "with_derived",
]

_FORMAT = 1  # snapshot format version
_MIN_CAPACITY = 1024
_EVICT_TO = 0.95  # past max_entities, evict down to this share of it


class _Store:
    """The state of one entity kind: key -> slot, and per-slot arrays (NaN last_t = free)."""

    def __init__(self, n_windows: int, with_sums: bool, capacity: int = _MIN_CAPACITY) -> None:
        self.index: dict[str, int] = {}
        self.keys = np.empty(capacity, object)
        self.counts = np.zeros((capacity, n_windows))
        self.sums = np.zeros((capacity, n_windows)) if with_sums else None
        self.last_t = np.full(capacity, np.nan)
        self.size = 0  # slots [0, size) have been used
        self.free: list[int] = []

    def __len__(self) -> int:
        return len(self.index)

    def slots(self, uniques: list[str]) -> np.ndarray:
        """Slots of these distinct keys; new keys get a fresh slot (zeros, last_t = -inf)."""
        get = self.index.get
        slots = np.fromiter((get(k, -1) for k in uniques), np.int64, count=len(uniques))
        new = np.flatnonzero(slots < 0)
        if len(new):
            fresh = self._allocate(len(new))
            slots[new] = fresh
            new_keys = [uniques[i] for i in new.tolist()]
            self.keys[fresh] = new_keys
            self.index.update(zip(new_keys, fresh.tolist(), strict=True))
            self.counts[fresh] = 0.0
            if self.sums is not None:
                self.sums[fresh] = 0.0
            self.last_t[fresh] = -np.inf
        return slots

    def _allocate(self, n: int) -> np.ndarray:
        reused = self.free[-n:] if n <= len(self.free) else self.free[:]
        del self.free[len(self.free) - len(reused) :]
        m = n - len(reused)
        if self.size + m > len(self.last_t):
            self._grow(self.size + m)
        out = np.concatenate(
            [np.asarray(reused, np.int64), np.arange(self.size, self.size + m, dtype=np.int64)]
        )
        self.size += m
        return out

    def _grow(self, need: int) -> None:
        cap = len(self.last_t)
        while cap < need:
            cap *= 2
        extra = cap - len(self.last_t)
        self.keys = np.concatenate([self.keys, np.empty(extra, object)])
        self.counts = np.concatenate([self.counts, np.zeros((extra, self.counts.shape[1]))])
        if self.sums is not None:
            self.sums = np.concatenate([self.sums, np.zeros((extra, self.sums.shape[1]))])
        self.last_t = np.concatenate([self.last_t, np.full(extra, np.nan)])

    def live(self) -> np.ndarray:
        return np.flatnonzero(~np.isnan(self.last_t[: self.size]))

    def forget(self, slots: np.ndarray) -> int:
        index = self.index
        for k in self.keys[slots].tolist():
            del index[k]
        self.keys[slots] = None
        self.last_t[slots] = np.nan
        self.free.extend(slots.tolist())
        return len(slots)

    def bound(self, max_entities: int) -> int:
        """Forget the entities with the oldest last_t while more than max_entities are held."""
        if len(self) <= max_entities:
            return 0
        keep = max_entities - int(max_entities * (1 - _EVICT_TO))
        live = self.live()
        n = len(live) - keep
        oldest = live[np.argpartition(self.last_t[live], n - 1)[:n]]
        return self.forget(oldest)


def _check_rows(
    spec: BehaviourSpec,
    keys: Mapping[str, Sequence[str]],
    times_ms: np.ndarray,
    values: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, list[str]], dict[str, np.ndarray]]:
    """Validated float64 times, key lists and float64 values; raises before any state change."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times_ms must be one-dimensional, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("times_ms has non-finite values; reject those rows before update")
    n = len(t)
    ks: dict[str, list[str]] = {}
    for f in spec.entity_fields():
        if f not in keys:
            raise ValueError(f"keys has no {f!r} (entity fields: {spec.entity_fields()})")
        col = keys[f]
        ks[f] = col.tolist() if isinstance(col, np.ndarray) else list(col)
        if len(ks[f]) != n:
            raise ValueError(f"keys[{f!r}] has {len(ks[f])} rows, times_ms {n}")
    vs: dict[str, np.ndarray] = {}
    for f in spec.fields():
        if f not in values:
            raise ValueError(f"values has no {f!r} (mean_of fields: {spec.fields()})")
        v = np.asarray(values[f], dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"values[{f!r}] has shape {v.shape}, expected ({n},)")
        if not np.isfinite(v).all():
            raise ValueError(f"values[{f!r}] has non-finite values; reject those rows first")
        vs[f] = v
    return t, ks, vs


def _factorize(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct keys in first-seen order and each row's index among them."""
    uniques = list(dict.fromkeys(keys))
    bad = [k for k in uniques if not isinstance(k, str)]
    if bad:
        raise ValueError(f"entity keys must be strings, got {bad[:3]!r}")
    code = {k: i for i, k in enumerate(uniques)}
    return uniques, np.fromiter(map(code.__getitem__, keys), np.int64, count=len(keys))


class BehaviourState:
    """Per-entity decayed windows; `update` turns rows into features and advances the state."""

    def __init__(self, spec: BehaviourSpec) -> None:
        self.spec = spec
        self.names = spec.names()
        self._stores = [_Store(len(e.windows_days), bool(e.mean_of)) for e in spec.entities]
        self._neg_inv_tau = [
            -1.0 / (np.asarray(e.windows_days, np.float64) * DAY_MS) for e in spec.entities
        ]
        self._idle_ms = spec.idle_days * DAY_MS
        self.evicted = 0  # entities forgotten because a kind held more than max_entities
        self.expired = 0  # entities forgotten by `expire` (idle longer than idle_days)

    def __len__(self) -> int:
        return sum(len(s) for s in self._stores)

    def entity_counts(self) -> dict[str, int]:
        """Entities held, per entity kind."""
        return {e.entity: len(s) for e, s in zip(self.spec.entities, self._stores, strict=True)}

    def nbytes(self) -> int:
        """Bytes of the per-slot arrays (allocated capacity); the key dict and strings come on
        top (bench/behaviour_memory.py measures the whole)."""
        total = 0
        for s in self._stores:
            total += s.counts.nbytes + s.last_t.nbytes + s.keys.nbytes
            total += s.sums.nbytes if s.sums is not None else 0
        return total

    def update(
        self,
        keys: Mapping[str, Sequence[str]],
        times_ms: np.ndarray,
        values: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Features [N, len(names)] float64 of the rows, applied in order (row i sees the rows
        before it of the same entity, in this call and in earlier ones).

        keys: entity field -> N string keys (every field of `spec.entity_fields()`).
        times_ms: N event times, epoch milliseconds (finite; late rows are allowed).
        values: numeric field -> N finite values (every `spec.fields()`)."""
        t, ks, vs = _check_rows(self.spec, keys, times_ms, values or {})
        # may refuse: no change yet
        coded = [_factorize(_entity_keys(e, ks)) for e in self.spec.entities]
        n = len(t)
        out = np.empty((n, len(self.names)))
        col = 0
        for e, store, neg_inv_tau, (uniques, codes) in zip(
            self.spec.entities, self._stores, self._neg_inv_tau, coded, strict=True
        ):
            v = vs.get(e.mean_of or "")
            feats = self._apply(e, store, neg_inv_tau, uniques, codes, t, v)
            out[:, col : col + feats.shape[1]] = feats
            col += feats.shape[1]
            self.evicted += store.bound(self.spec.max_entities)
        if self.spec.hour_of_day:
            angle = (2 * np.pi / DAY_MS) * np.mod(t, DAY_MS)
            out[:, col] = np.sin(angle)
            out[:, col + 1] = np.cos(angle)
        return out

    def _apply(
        self,
        e: EntityBehaviour,
        store: _Store,
        neg_inv_tau: np.ndarray,
        uniques: list[str],
        codes: np.ndarray,
        t: np.ndarray,
        v: np.ndarray | None,
    ) -> np.ndarray:
        """One entity kind: the rows' [N, n_features(e)] features, and the store advanced."""
        n, nw = len(t), len(neg_inv_tau)
        occ = np.bincount(codes, minlength=len(uniques))
        by_occ = np.argsort(-occ, kind="stable")  # entity numbers, most rows first
        relabel = np.empty_like(by_occ)
        relabel[by_occ] = np.arange(len(by_occ))
        ent = relabel[codes]  # row -> entity number
        occ = occ[by_occ]
        slots = store.slots([uniques[i] for i in by_occ.tolist()])

        # Rows in round order: round r holds the r-th row of entities 0 .. k_r - 1
        small = np.uint16 if len(uniques) <= 1 << 16 else np.int64  # uint16 sorts by radix
        by_ent = np.argsort(ent.astype(small), kind="stable")
        first = np.cumsum(occ) - occ
        rank = np.empty(n, np.int64)
        rank[by_ent] = np.arange(n) - first[ent[by_ent]]
        per_round = np.bincount(rank)
        bounds = np.concatenate([[0], np.cumsum(per_round)])
        round_of = np.repeat(np.arange(len(per_round)), per_round)
        pos = by_ent[first[np.arange(n) - bounds[round_of]] + round_of]

        tr = t[pos]
        vr = v[pos] if v is not None else None
        counts = store.counts[slots]
        sums = store.sums[slots] if store.sums is not None else None
        last = store.last_t[slots]
        # working columns, in round order: counts, sums, gap in ms
        work = np.empty((n, 2 * nw + 1))
        idle = self._idle_ms
        for r in range(len(per_round)):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            k = hi - lo
            ti = tr[lo:hi]
            gap = ti - last[:k]  # +inf for a new entity (last = -inf)
            dt = np.where(gap > idle, np.inf, np.maximum(gap, 0.0))  # inf: start afresh
            decay = np.exp(dt[:, None] * neg_inv_tau)
            c = counts[:k]
            c *= decay
            c += 1.0
            work[lo:hi, :nw] = c
            if sums is not None and vr is not None:
                s = sums[:k]
                s *= decay
                s += vr[lo:hi, None]
                work[lo:hi, nw : 2 * nw] = s
            np.maximum(last[:k], ti, out=last[:k])
            work[lo:hi, 2 * nw] = dt
        store.counts[slots] = counts
        if store.sums is not None and sums is not None:
            store.sums[slots] = sums
        store.last_t[slots] = last

        cols = [np.log1p(work[:, :nw]) if e.log_counts else work[:, :nw]] if e.count else []
        if e.mean_of:
            cols.append(work[:, nw : 2 * nw] / work[:, :nw])
        if e.since_previous:
            cap_s = max(e.windows_days) * DAY_MS / 1000.0
            cols.append(np.log1p(np.minimum(work[:, 2 * nw] / 1000.0, cap_s))[:, None])
        feats = np.empty((n, sum(c.shape[1] for c in cols)))
        feats[pos] = np.concatenate(cols, axis=1)
        return feats

    def expire(self, now_ms: float) -> int:
        """Forget entities whose newest row is more than idle_days before now_ms; returns how
        many. Their next row at or after now_ms would have reset them anyway."""
        limit = float(now_ms) - self._idle_ms
        gone = 0
        for store in self._stores:
            stale = np.flatnonzero(store.last_t[: store.size] < limit)
            gone += store.forget(stale)
        self.expired += gone
        return gone

    def save(self, path: str | Path) -> None:
        """Snapshot the state to an .npz file (written to a temporary name, then renamed)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "spec": np.array(self.spec.model_dump_json()),
            "evicted": np.array(self.evicted),
            "expired": np.array(self.expired),
        }
        for i, store in enumerate(self._stores):
            live = store.live()
            arrays[f"keys_{i}"] = np.array(store.keys[live].tolist(), dtype=str)
            arrays[f"counts_{i}"] = store.counts[live]
            if store.sums is not None:
                arrays[f"sums_{i}"] = store.sums[live]
            arrays[f"last_t_{i}"] = store.last_t[live]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, spec: BehaviourSpec, path: str | Path) -> BehaviourState:
        """The state saved at `path`; ValueError when it was written for another spec."""
        with np.load(Path(path), allow_pickle=False) as z:
            if "spec" not in z.files or "format" not in z.files:
                raise ValueError(f"{path} is not a behaviour-state snapshot")
            if int(z["format"]) != _FORMAT:
                raise ValueError(f"{path}: snapshot format {int(z['format'])}, expected {_FORMAT}")
            stored = json.loads(str(z["spec"]))
            if BehaviourSpec.model_validate(stored) != spec:
                raise ValueError(
                    f"{path} was written for a different behaviour spec: {json.dumps(stored)} "
                    f"!= {spec.model_dump_json()}; delete the snapshot or load it with its spec"
                )
            state = cls(spec)
            state.evicted, state.expired = int(z["evicted"]), int(z["expired"])
            for i, (e, store) in enumerate(zip(spec.entities, state._stores, strict=True)):
                keys = z[f"keys_{i}"].tolist()
                n = len(keys)
                nw = len(e.windows_days)
                counts, last = z[f"counts_{i}"], z[f"last_t_{i}"]
                sums = z[f"sums_{i}"] if e.mean_of else None
                if (
                    counts.shape != (n, nw)
                    or last.shape != (n,)
                    or (sums is not None and sums.shape != (n, nw))
                ):
                    raise ValueError(f"{path}: arrays of {e.entity!r} have inconsistent shapes")
                slots = store.slots(keys)
                if len(store) != n:
                    raise ValueError(f"{path}: duplicate keys for {e.entity!r}")
                store.counts[slots] = counts
                if sums is not None and store.sums is not None:
                    store.sums[slots] = sums
                store.last_t[slots] = last
        return state


def _entity_keys(e: EntityBehaviour, keys: Mapping[str, list[str]]) -> list[str]:
    """Each row's key of entity kind `e`: its field's value, or its fields' values joined."""
    if len(e.fields) == 1:
        return keys[e.entity]
    return list(map(KEY_SEPARATOR.join, zip(*(keys[f] for f in e.fields), strict=True)))


def offline_features(
    spec: BehaviourSpec,
    keys: Mapping[str, Sequence[str]],
    times_ms: np.ndarray,
    values: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Features of a whole file: a fresh state and one `update` over the rows in time order.

    Rows not already in time order are sorted (stably) by time for the computation and the
    features come back in the caller's row order, so each row sees exactly the rows before it
    in time, as a detector reading the stream in time order would."""
    t, ks, vs = _check_rows(spec, keys, times_ms, values or {})
    state = BehaviourState(spec)
    if len(t) < 2 or bool(np.all(t[1:] >= t[:-1])):
        return state.update(ks, t, vs)
    order = np.argsort(t, kind="stable")
    idx = order.tolist()
    out = np.empty((len(t), len(spec.names())))
    out[order] = state.update(
        {k: [col[i] for i in idx] for k, col in ks.items()},
        t[order],
        {f: v[order] for f, v in vs.items()},
    )
    return out


def with_derived(
    spec: BehaviourSpec,
    names: Sequence[str],
    x: np.ndarray,
    columns: Mapping[str, np.ndarray],
    time_column: str,
) -> tuple[list[str], np.ndarray]:
    """A file's payload features `x` (columns `names`) with the spec's features appended,
    derived in one offline pass; `columns` holds the entity and time columns. Used by the
    trainer and by the offline scorer alike."""
    missing = [c for c in [*spec.entity_fields(), time_column] if c not in columns]
    if missing:
        raise ValueError(f"behaviour features need the column(s) {missing}")
    if unread := [f for f in spec.fields() if f not in names]:
        raise ValueError(f"behaviour averages {unread}, which are not among the features")
    keys = {f: [str(v) for v in columns[f]] for f in spec.entity_fields()}
    values = {f: x[:, list(names).index(f)].astype(np.float64) for f in spec.fields()}
    try:
        times = epoch_ms(columns[time_column])
    except ValueError as e:
        raise ValueError(f"time column '{time_column}': {e}") from None
    derived = offline_features(spec, keys, times, values)
    return [*names, *spec.names()], np.concatenate([x, derived.astype(x.dtype)], axis=1)
