"""Per-entity ring buffers for windowed models in the live daemon.

Each (topic, partition, entity key) keeps its last W-1 samples. For a batch, rows are
grouped by entity with numpy, each entity's new rows are stacked under its history, and
the windows ending at every new row are referenced by where they end: a loop per entity,
not per message. The same windows as `detector/features/windows.py` builds for a file.

Policy, documented in the README:
- warm-up: an entity's first W-1 samples only fill its buffer; they are not scored,
  are counted, and never go to the dead-letter topic;
- late and out-of-order samples (event time older than the newest one of the entity)
  are dropped and counted: a window is always in time order; equal times are kept;
- bounded: at most `max_entities` entities (the least recently seen is evicted) and an
  idle TTL; evictions are counted and an evicted entity warms up again;
- state belongs to partitions: on revocation it is dropped, on assignment it is rebuilt
  from the stream (a warm-up after every rebalance or restart).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from detector.features.windows import Windows

__all__ = ["EntityState", "Windowed"]

Key = tuple[str, int, str]  # topic, partition, entity


@dataclass(frozen=True)
class Windowed:
    windows: Windows  # by reference, in batch order of their newest samples
    rows: np.ndarray  # [M] positions (in the decoded batch) of each window's newest sample
    warmup: int  # rows that only filled a buffer
    late: int  # rows dropped as late or out of order


@dataclass
class _Buffer:
    samples: np.ndarray  # [<= W-1, F]
    newest_ms: float
    seen: float  # monotonic time, for the idle TTL


class EntityState:
    def __init__(
        self, window: int, n_features: int, max_entities: int = 100_000, idle_ttl_s: float = 3600.0
    ):
        self.window, self.n_features = window, n_features
        self.max_entities, self.idle_ttl_s = max_entities, idle_ttl_s
        self.buffers: OrderedDict[Key, _Buffer] = OrderedDict()  # least recently seen first
        self.evicted = 0
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self.buffers)

    def windows(
        self,
        topics: list[str],
        partitions: np.ndarray,
        keys: list[str | None],
        times_ms: np.ndarray,
        x: np.ndarray,
    ) -> Windowed:
        """Windows for the decoded rows `x` (batch order = time order per partition)."""
        w, n = self.window, len(x)
        if n == 0:
            return Windowed(self._no_windows(), np.zeros(0, np.int64), 0, 0)
        # Each row's entity as a small integer: one dict lookup per row.
        ids: dict[Key, int] = {}
        entity = np.fromiter(
            (
                ids.setdefault((t, p, k or ""), len(ids))
                for t, p, k in zip(topics, partitions.tolist(), keys, strict=True)
            ),
            dtype=np.int64,
            count=n,
        )
        order = np.argsort(entity, kind="stable")
        bounds = np.flatnonzero(np.diff(entity[order])) + 1
        now = time.monotonic()
        runs: list[np.ndarray] = []  # the history and new rows of entities with windows
        cuts: list[tuple[np.ndarray, np.ndarray]] = []  # (batch rows, where they are in runs)
        at = 0  # where the next run starts
        warmup = late = 0
        # Ids run 0, 1, ... in first-seen order, so the groups of the sorted ids come in the
        # order of the dict's keys.
        for key, group in zip(ids, np.split(order, bounds), strict=True):
            buf = self.buffers.pop(key, None)
            t = np.nan_to_num(times_ms[group], nan=-np.inf)
            newest = buf.newest_ms if buf is not None else -np.inf
            running = np.maximum.accumulate(np.concatenate([[newest], t]))[:-1]
            ok = t >= running
            late += int((~ok).sum())
            group, t = group[ok], t[ok]
            hist = buf.samples if buf is not None else np.zeros((0, self.n_features), np.float32)
            stacked = np.concatenate([hist, x[group]]) if len(group) else hist
            h = len(hist)
            # the new row at stacked position h+i has a full window when h+i >= W-1
            first_full = max(0, w - 1 - h)
            warmup += min(len(group), first_full)
            if len(group) > first_full:
                cuts.append((group[first_full:], at + h + np.arange(first_full, len(group))))
                runs.append(stacked)
                at += len(stacked)
            keep = stacked[-(w - 1) :] if w > 1 else stacked[:0]
            self.buffers[key] = _Buffer(
                np.array(keep, dtype=np.float32), float(t.max()) if len(t) else newest, now
            )
        self._bound(now)
        if not cuts:
            return Windowed(self._no_windows(), np.zeros(0, np.int64), warmup, late)
        # The windows in batch order: the rows are copied once (not W times), by reference.
        scored = np.zeros(n, dtype=bool)
        for rows, _ in cuts:
            scored[rows] = True
        place = np.cumsum(scored) - 1
        ends = np.empty(int(scored.sum()), dtype=np.int64)
        for rows, at_rows in cuts:
            ends[place[rows]] = at_rows
        windows = Windows(np.concatenate(runs, dtype=np.float32), ends, w)
        return Windowed(windows, np.flatnonzero(scored), warmup, late)

    def _no_windows(self) -> Windows:
        return Windows(
            np.zeros((0, self.n_features), np.float32), np.zeros(0, np.int64), self.window
        )

    def drop_partitions(self, revoked: Iterable[tuple[str, int]]) -> int:
        gone = set(revoked)
        keys = [k for k in self.buffers if (k[0], k[1]) in gone]
        for k in keys:
            del self.buffers[k]
        return len(keys)

    def _bound(self, now: float) -> None:
        while len(self.buffers) > self.max_entities:
            self.buffers.popitem(last=False)
            self.evicted += 1
        if now - self._last_sweep > min(60.0, self.idle_ttl_s):
            self._last_sweep = now
            while self.buffers:
                oldest = next(iter(self.buffers.values()))
                if now - oldest.seen <= self.idle_ttl_s:
                    break
                self.buffers.popitem(last=False)
                self.evicted += 1
