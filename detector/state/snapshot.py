"""The behaviour state's snapshot file: loaded at start, written when due and at shutdown.

A snapshot is written between batches, when no batch is in flight, so one taken at
shutdown is exact; one taken on a timer can be up to `snapshot_every_s` behind a crash.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from detector.contract.behaviour import BehaviourSpec
from detector.features.behaviour import BehaviourState

__all__ = ["BehaviourSnapshots"]

log = logging.getLogger(__name__)


class BehaviourSnapshots:
    def __init__(self, path: Path | None, every_s: float):
        self.path, self.every_s = path, every_s
        self._written_at = time.monotonic()

    def restore(self, spec: BehaviourSpec) -> BehaviourState:
        """The behaviour state of the last run, if its snapshot fits `spec`; else a fresh one."""
        path = self.path
        if path is None or not path.exists():
            return BehaviourState(spec)
        try:
            state = BehaviourState.load(spec, path)
        except (ValueError, OSError) as e:
            log.warning("behaviour snapshot %s not used, starting afresh: %s", path, e)
            return BehaviourState(spec)
        log.info("behaviour state restored from %s: %d entities", path, len(state))
        return state

    def maybe_write(self, state: BehaviourState | None, force: bool = False) -> None:
        """Write `state` when the interval has passed (or `force`)."""
        if state is None or self.path is None:
            return
        if not force and time.monotonic() - self._written_at < self.every_s:
            return
        self._written_at = time.monotonic()
        try:
            state.save(self.path)
        except OSError as e:
            log.warning("cannot write the behaviour snapshot %s: %s", self.path, e)
