"""Recent normal data from the input topic, for retraining (`vigil-train collect`).

Reads a time range of the detector's input topics (found with offsets-for-times, never by
scanning from the start) with the detector's own decoder and payload mapping, and leaves
out what must not teach the model "normal":

- messages the decoder refuses (the ones the detector dead-letters, for the same reasons);
- messages of an entity inside one of its anomaly episodes, as recorded on the events topic,
  widened by a margin on both sides (a fault starts before its first alarm);
- optionally every message of an entity that alarmed at all in the range.

No consumer group: it never commits, and never disturbs the detectors' group. Memory is
bounded: rows go to Parquet in row groups as they are decoded.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from detector.contract.bundle import Bundle, load_bundle
from detector.errors import ConfigError
from detector.features.decode import Mapping, decode_batch, entity_key, event_times
from detector.kafka.kafka_python import client_config
from detector.model.registry import resolve
from detector.model.watcher import mapping_for
from detector.ops.settings import Settings

__all__ = ["Collected", "Episodes", "collect", "parse_duration_ms", "parse_when"]

ROW_GROUP = 100_000
TIME_COLUMN, ENTITY_COLUMN = "timestamp_ms", "entity"
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_when(text: str, now_ms: int) -> int:
    """'now', a duration ago ('7d', '12h', '30m') or an ISO 8601 time -> epoch ms."""
    t = text.strip().lower()
    if t == "now":
        return now_ms
    if m := _AGO.match(t):
        return now_ms - int(float(m[1]) * _UNIT_S[m[2]] * 1000)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"cannot read the time {text!r}: give 'now', a duration ago like 7d, 12h or 30m, "
            "or an ISO 8601 time like 2026-11-01T00:00:00Z"
        ) from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def parse_duration_ms(text: str) -> int:
    """'30m', '2h', '0s' -> milliseconds."""
    if m := _AGO.match(text.strip().lower()):
        return int(float(m[1]) * _UNIT_S[m[2]] * 1000)
    raise ConfigError(f"cannot read the duration {text!r}: give e.g. 30m, 2h or 0s")


@dataclass
class Episodes:
    """Per entity, the time spans to leave out: each anomaly episode's first to last event
    time, widened by `margin_ms`, merged where they overlap."""

    margin_ms: int
    spans: dict[str | None, list[tuple[float, float]]] = field(default_factory=dict)
    sources: set[tuple[str, int, int]] = field(default_factory=set)  # events without a time

    @classmethod
    def from_events(cls, events: list[dict], margin_ms: int) -> Episodes:
        by_episode: dict[tuple[str | None, str], list[float]] = defaultdict(list)
        out = cls(margin_ms)
        for e in events:
            t = e.get("event_time")
            if t is None:
                s = e.get("source", {})
                out.sources.add((s.get("topic"), s.get("partition"), s.get("offset")))
                continue
            ms = datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000
            episode = (e.get("episode") or {}).get("id") or e.get("event_id", "")
            by_episode[(e.get("key"), episode)].append(ms)
        spans: dict[str | None, list[tuple[float, float]]] = defaultdict(list)
        for (key, _), times in by_episode.items():
            spans[key].append((min(times) - margin_ms, max(times) + margin_ms))
        for key, s in spans.items():
            merged: list[tuple[float, float]] = []
            for a, b in sorted(s):
                if merged and a <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                else:
                    merged.append((a, b))
            out.spans[key] = merged
        return out

    def inside(self, keys: list[str | None], times_ms: np.ndarray) -> np.ndarray:
        """[M] bool: whether each (entity, time) falls inside one of its entity's spans."""
        hit = np.zeros(len(keys), dtype=bool)
        rows_of: dict[str | None, list[int]] = defaultdict(list)
        for j, key in enumerate(keys):  # the batch's entities, not every entity that alarmed
            rows_of[key].append(j)
        for key, rows in rows_of.items():
            spans = self.spans.get(key)
            if not spans:
                continue
            starts = np.array([a for a, _ in spans])
            ends = np.array([b for _, b in spans])
            t = times_ms[rows]
            i = np.searchsorted(starts, t, side="right") - 1
            hit[rows] = (i >= 0) & (t <= ends[np.maximum(i, 0)])
        return hit


@dataclass(frozen=True)
class Collected:
    out: Path
    since_ms: int
    until_ms: int
    messages: int
    kept: int
    dropped: dict[str, int]  # reason -> messages
    seconds: float

    def summary(self) -> dict[str, object]:
        return {
            "out": str(self.out),
            "since": datetime.fromtimestamp(self.since_ms / 1000, UTC).isoformat(),
            "until": datetime.fromtimestamp(self.until_ms / 1000, UTC).isoformat(),
            "messages": self.messages,
            "kept": self.kept,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 2),
        }


def _consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(
        **client_config(settings.kafka),
        group_id=None,  # never the detectors' group; nothing is committed
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a range partly gone to retention: read what is left
        max_poll_records=5000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def _input_topics(c: KafkaConsumer, settings: Settings) -> list[str]:
    t = settings.topics
    if t.input_pattern:
        return sorted(x for x in c.topics() if re.fullmatch(t.input_pattern, x))
    return list(t.input)


def _ranges(
    c: KafkaConsumer, topics: list[str], since_ms: int, until_ms: int
) -> dict[TopicPartition, tuple[int, int]]:
    """[start, stop) offsets of each partition whose messages carry times in the range."""
    tps = []
    for topic in topics:
        parts = c.partitions_for_topic(topic)
        if not parts:
            raise ConfigError(f"topic {topic!r} does not exist on {c.config['bootstrap_servers']}")
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    end = c.end_offsets(tps)
    first = c.offsets_for_times(dict.fromkeys(tps, since_ms))
    after = c.offsets_for_times(dict.fromkeys(tps, until_ms + 1))
    return {
        tp: (
            first[tp].offset if first[tp] is not None else end[tp],
            after[tp].offset if after[tp] is not None else end[tp],
        )
        for tp in tps
    }


def _read(
    c: KafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], progress: bool
) -> Iterator[list]:
    """Batches of records inside the ranges, partition by partition interleaved."""
    todo = {tp: r for tp, r in ranges.items() if r[1] > r[0]}
    if not todo:
        return
    c.assign(list(todo))
    for tp, (start, _) in todo.items():
        c.seek(tp, start)
    total = sum(b - a for a, b in todo.values())
    from tqdm import tqdm

    with tqdm(total=total, unit="msg", disable=not progress, desc="collect") as bar:
        while todo:
            for tp, records in c.poll(timeout_ms=1000).items():
                inside = [r for r in records if tp in todo and r.offset < todo[tp][1]]
                if inside:
                    bar.update(len(inside))
                    yield inside
            # Also partitions that returned nothing: retention may have moved them past `stop`.
            for tp in [tp for tp, (_, stop) in todo.items() if c.position(tp) >= stop]:
                todo.pop(tp)
                c.pause(tp)


def _events(settings: Settings, since_ms: int, margin_ms: int) -> list[dict]:
    """Events published from the start of the range on: an event is published after the
    message it is about, possibly much later (a backlog), so read to the topic's end."""
    topic = settings.topics.anomalies
    c = _consumer(settings)
    try:
        if not c.partitions_for_topic(topic):
            return []  # no events topic yet: nothing alarmed
        end = 2**62  # offsets-for-times finds nothing that late: every range runs to the end
        ranges = _ranges(c, [topic], since_ms - margin_ms, end)
        return [orjson.loads(r.value) for batch in _read(c, ranges, False) for r in batch]
    finally:
        c.close()


def collect(
    settings: Settings,
    out: Path,
    since_ms: int,
    until_ms: int,
    *,
    margin_ms: int = 30 * 60_000,
    drop_alerted_entities: bool = False,
    bundle: Bundle | None = None,
    progress: bool = True,
) -> Collected:
    if until_ms <= since_ms:
        raise ConfigError("--until must be after --since")
    t0 = time.monotonic()
    bundle = bundle or load_bundle(resolve(settings.model.path))
    mapping: Mapping = mapping_for(settings, bundle)
    events = _events(settings, since_ms, margin_ms)
    episodes = Episodes.from_events(events, margin_ms)
    alerted = {e.get("key") for e in events}
    features = list(mapping.features)
    schema = pa.schema(
        [(TIME_COLUMN, pa.int64()), (ENTITY_COLUMN, pa.string())]
        + [(f, pa.float32()) for f in features]
    )
    dropped: Counter[str] = Counter()
    kept = messages = 0
    pending: list[pa.RecordBatch] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".partial")
    c = _consumer(settings)
    try:
        ranges = _ranges(c, _input_topics(c, settings), since_ms, until_ms)
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _read(c, ranges, progress):
                messages += len(batch)
                d = decode_batch([r.value for r in batch], mapping)
                for r in d.rejects:
                    dropped[f"dead-lettered: {r.reason}"] += 1
                times = event_times(d, [r.timestamp for r in batch])
                keys = [entity_key(d, j, batch[i].key) for j, i in enumerate(d.index)]
                timed, inside = np.isfinite(times), episodes.inside(keys, times)
                dropped["no event time"] += int((~timed).sum())
                dropped["inside an anomaly episode"] += int((inside & timed).sum())
                keep = timed & ~inside
                if episodes.sources:
                    src = [(batch[i].topic, batch[i].partition, batch[i].offset) for i in d.index]
                    alarmed = np.array([s in episodes.sources for s in src], dtype=bool)
                    dropped["inside an anomaly episode"] += int((alarmed & keep).sum())
                    keep &= ~alarmed
                if drop_alerted_entities and alerted:
                    of_alerted = np.array([k in alerted for k in keys], dtype=bool)
                    dropped["entity had alerts"] += int((of_alerted & keep).sum())
                    keep &= ~of_alerted
                rows = np.flatnonzero(keep)
                kept += len(rows)
                columns = [
                    pa.array(times[rows].astype(np.int64)),
                    pa.array([keys[j] for j in rows], pa.string()),
                    *(pa.array(d.x[rows, j]) for j in range(len(features))),
                ]
                pending.append(pa.RecordBatch.from_arrays(columns, schema=schema))
                if sum(b.num_rows for b in pending) >= ROW_GROUP:
                    writer.write_table(pa.Table.from_batches(pending))
                    pending = []
            if pending:
                writer.write_table(pa.Table.from_batches(pending))
    finally:
        c.close()
    tmp.replace(out)
    return Collected(
        out,
        since_ms,
        until_ms,
        messages,
        kept,
        {k: v for k, v in sorted(dropped.items()) if v},
        time.monotonic() - t0,
    )
