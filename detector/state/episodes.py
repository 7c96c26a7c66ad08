"""Alarm persistence and episodes: fewer, clearer alerts.

An entity's episode opens when at least k of its last n decisions exceed the threshold,
continues while alarms keep coming, and closes after `close_after` consecutive normal
decisions. Events say whether they open, continue or close an episode, so one fault gives
one stream of events with a beginning and an end instead of thousands of duplicates.
With k = n = 1 every alarming decision is published (as open or continue).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Episodes", "Transition"]

Key = Hashable  # the entity key (bytes or str)
_NAMESPACE = uuid.UUID("0b5f2c8e-6a0e-4a5e-9a57-7669676c0002")


@dataclass
class _Track:
    recent: deque[bool]
    open: bool = False
    episode_id: str = ""
    started_ms: float | None = None
    alarms: int = 0
    normal_run: int = 0
    partition: tuple[str, int] | None = None


@dataclass(frozen=True)
class Transition:
    row: int  # position in the decided rows
    state: str  # "open", "continue" or "close"
    episode_id: str
    started_ms: float | None
    alarms: int  # alarming decisions in the episode so far


class Episodes:
    def __init__(
        self,
        k: int = 1,
        n: int = 1,
        close_after: int = 3,
        continue_every: int = 1,
        max_entities: int = 100_000,
    ):
        if not 1 <= k <= n:
            raise ValueError("alert persistence needs 1 <= k <= n")
        self.k, self.n, self.close_after = k, n, close_after
        self.continue_every, self.max_entities = continue_every, max_entities
        self.tracks: OrderedDict[Key, _Track] = OrderedDict()

    def update(
        self,
        alarm: np.ndarray,
        event_ms: np.ndarray,
        keys: Sequence[Key],
        source_of: Callable[[int], tuple[str, int, int]],
    ) -> list[Transition]:
        """Feed a batch's decisions in order; return the rows that publish an event.
        Only alarming rows and rows of entities with an open track are looked at one by
        one; `source_of(j)` gives the (topic, partition, offset) of row j."""
        out: list[Transition] = []
        tracked = self.tracks
        relevant = set(tracked) | {keys[j] for j in np.flatnonzero(alarm)}
        if not relevant:
            return out
        alarms = alarm.tolist()  # Python bools: no numpy scalar per row in the loop
        for j, key in enumerate(keys):
            if key not in relevant:
                continue
            a = alarms[j]
            t = tracked.get(key)
            if t is None:
                if not a:
                    continue
                topic, partition, _ = source_of(j)
                t = tracked[key] = _Track(recent=deque(maxlen=self.n), partition=(topic, partition))
            tracked.move_to_end(key)
            t.recent.append(a)
            if t.open:
                if a:
                    t.alarms += 1
                    t.normal_run = 0
                    if self.continue_every and t.alarms % self.continue_every == 0:
                        out.append(Transition(j, "continue", t.episode_id, t.started_ms, t.alarms))
                else:
                    t.normal_run += 1
                    if t.normal_run >= self.close_after:
                        out.append(Transition(j, "close", t.episode_id, t.started_ms, t.alarms))
                        del tracked[key]
            elif a and sum(t.recent) >= self.k:
                t.open, t.alarms, t.normal_run = True, 1, 0
                t.started_ms = float(event_ms[j]) if np.isfinite(event_ms[j]) else None
                t.episode_id = str(uuid.uuid5(_NAMESPACE, "/".join(map(str, source_of(j)))))
                out.append(Transition(j, "open", t.episode_id, t.started_ms, 1))
            elif not any(t.recent):
                del tracked[key]
        while len(tracked) > self.max_entities:
            tracked.popitem(last=False)
        return out

    def drop_partitions(self, revoked: set[tuple[str, int]]) -> None:
        for key in [k for k, t in self.tracks.items() if t.partition in revoked]:
            del self.tracks[key]
