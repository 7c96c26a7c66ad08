"""Recent normal data from the input topic, for retraining (`vigil-train collect`).

Reads a time range of the detector's input topics (found with offsets-for-times, never by
scanning from the start) with the detector's own decoder and payload mapping, and marks
what must not teach the model "normal":

- messages the decoder refuses (the ones the detector dead-letters, for the same reasons)
  are not written, nor messages without an event time;
- messages of an entity inside one of its anomaly episodes, as recorded on the events topic,
  widened by a margin on both sides (a fault starts before its first alarm), and optionally
  every message of an entity that alarmed at all in the range, are written with the reason
  in `left_out`: never trained on, but part of the history that behaviour features are
  derived from, as they are part of a running detector's state.

It writes what retraining reads (`trainer/retrain.py`, through the one input path of
`detector.features.inputs`): the event time (`timestamp_ms`), the entity key (`entity`),
`left_out`, the raw values of the fields that name entities for behaviour features
(`card_id`, `terminal_id`, ...), and the payload features as sent: numbers as float32,
categorical values as their text (not the live model's codes, so that new vocabularies can
be chosen).

It reads through the client-neutral `detector.kafka.PartitionReader` (`kafka.client`
chooses the client). No consumer group: it never commits, and never disturbs the
detectors' group. Memory is bounded: rows go to Parquet in row groups as they are decoded.
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

from detector.contract.bundle import Bundle, load_bundle
from detector.errors import ConfigError
from detector.features.decode import Decoded, Mapping, decode_batch, entity_key, event_times
from detector.kafka import Batch, PartitionReader, TopicPartition, open_reader
from detector.model.registry import resolve
from detector.model.watcher import mapping_for
from detector.ops.settings import Settings

__all__ = [
    "ENTITY_COLUMN",
    "LEFT_OUT_COLUMN",
    "TIME_COLUMN",
    "Collected",
    "Episodes",
    "collect",
    "parse_duration_ms",
    "parse_when",
    "schema_for",
]

ROW_GROUP = 100_000
TIME_COLUMN, ENTITY_COLUMN, LEFT_OUT_COLUMN = "timestamp_ms", "entity", "left_out"
EPISODE, ALERTED = "inside an anomaly episode", "entity had alerts"
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
    kept: int  # rows that may teach "normal"
    dropped: dict[str, int]  # reason -> messages not kept
    seconds: float
    written: int = 0  # rows in the file: the kept ones, and the left-out ones with a time

    def summary(self) -> dict[str, object]:
        return {
            "out": str(self.out),
            "since": datetime.fromtimestamp(self.since_ms / 1000, UTC).isoformat(),
            "until": datetime.fromtimestamp(self.until_ms / 1000, UTC).isoformat(),
            "messages": self.messages,
            "kept": self.kept,
            "dropped": self.dropped,
            "written": self.written,
            "seconds": round(self.seconds, 2),
        }


def _input_topics(reader: PartitionReader, settings: Settings) -> list[str]:
    t = settings.topics
    if t.input_pattern:
        return sorted(reader.topics_matching(t.input_pattern))
    return list(t.input)


def _ranges(
    reader: PartitionReader, topics: list[str], since_ms: int, until_ms: int, must_exist: bool
) -> dict[TopicPartition, tuple[int, int]]:
    """[start, stop) offsets of each partition whose messages carry times in the range."""
    tps = reader.partitions(topics)
    if must_exist and (gone := sorted(set(topics) - {tp.topic for tp in tps})):
        raise ConfigError(f"topic(s) {gone} do not exist on the broker")
    if not tps:
        return {}
    first = reader.offsets_for_time(tps, since_ms)
    after = reader.offsets_for_time(tps, until_ms + 1)
    return {tp: (first[tp], after[tp]) for tp in tps}


def _read(
    reader: PartitionReader, ranges: dict[TopicPartition, tuple[int, int]], progress: bool
) -> Iterator[Batch]:
    """Batches of the records inside the ranges."""
    todo = {tp: r for tp, r in ranges.items() if r[1] > r[0]}
    if not todo:
        return
    from tqdm import tqdm

    with tqdm(
        total=sum(b - a for a, b in todo.values()), unit="msg", disable=not progress, desc="collect"
    ) as bar:
        for batch in reader.read(todo):
            if batch:
                bar.update(len(batch))
                yield batch


def _events(
    reader: PartitionReader, settings: Settings, since_ms: int, margin_ms: int
) -> list[dict]:
    """Events published from the start of the range on: an event is published after the
    message it is about, possibly much later (a backlog), so read to the topic's end."""
    topic = settings.topics.anomalies
    start = reader.offsets_for_time(reader.partitions([topic]), since_ms - margin_ms)
    if not start:
        return []  # no events topic yet: nothing alarmed
    end = reader.end_offsets(list(start))
    ranges = {tp: (start[tp], end[tp]) for tp in start}
    return [orjson.loads(v) for batch in _read(reader, ranges, False) for v in batch.values if v]


def schema_for(mapping: Mapping) -> pa.Schema:
    """The collected file's columns: event time, entity key, why the row must not be trained
    on (null: it may), the entity fields of behaviour features, then the payload features
    (numbers as float32, categorical values as text)."""
    own = {TIME_COLUMN, ENTITY_COLUMN, LEFT_OUT_COLUMN}
    if clash := sorted(own & {*mapping.entities, *mapping.features}):
        raise ConfigError(
            f"payload field(s) {clash} have the names of collect's own columns {sorted(own)}"
        )
    categorical = {e.name for e in mapping.categorical}
    return pa.schema(
        [(TIME_COLUMN, pa.int64()), (ENTITY_COLUMN, pa.string()), (LEFT_OUT_COLUMN, pa.string())]
        + [(e, pa.string()) for e in mapping.entities]
        + [(f, pa.string() if f in categorical else pa.float32()) for f in mapping.features]
    )


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
    reader: PartitionReader | None = None,
) -> Collected:
    """Write the normal rows of the range to `out`. `reader`: the Kafka reader to use
    (default: `detector.kafka.open_reader(settings)`, closed at the end)."""
    if until_ms <= since_ms:
        raise ConfigError("--until must be after --since")
    t0 = time.monotonic()
    bundle = bundle or load_bundle(resolve(settings.model.path))
    mapping: Mapping = mapping_for(settings, bundle)
    schema = schema_for(mapping)
    own = reader is None
    reader = reader if reader is not None else open_reader(settings)
    try:
        events = _events(reader, settings, since_ms, margin_ms)
        episodes = Episodes.from_events(events, margin_ms)
        alerted = {e.get("key") for e in events}
        ranges = _ranges(reader, _input_topics(reader, settings), since_ms, until_ms, True)
        dropped: Counter[str] = Counter()
        kept = messages = written = 0
        pending: list[pa.RecordBatch] = []
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".partial")
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _read(reader, ranges, progress):
                messages += len(batch)
                d = decode_batch(batch.values, mapping)
                for r in d.rejects:
                    dropped[f"dead-lettered: {r.reason}"] += 1
                times = event_times(d, batch.timestamps)
                kafka_keys = batch.column("key", d.index) if d.keys is None else None
                keys = [
                    entity_key(d, j, kafka_keys[j] if kafka_keys is not None else None)
                    for j in range(len(d.index))
                ]
                timed, inside = np.isfinite(times), episodes.inside(keys, times)
                dropped["no event time"] += int((~timed).sum())
                # Why each timed row must not teach "normal" (None: it may). Such rows are
                # written all the same: they are history (behaviour state) for the others.
                reason = np.full(len(times), None, dtype=object)
                reason[inside] = EPISODE
                if episodes.sources:
                    src = [batch.position(int(i)) for i in d.index]
                    alarmed = np.array([s in episodes.sources for s in src], dtype=bool)
                    reason[alarmed] = EPISODE
                if drop_alerted_entities and alerted:
                    of_alerted = np.array([k in alerted for k in keys], dtype=bool)
                    reason[of_alerted & (reason == None)] = ALERTED  # noqa: E711
                for why in (EPISODE, ALERTED):
                    dropped[why] += int(((reason == why) & timed).sum())
                rows = np.flatnonzero(timed)
                kept += int((reason[rows] == None).sum())  # noqa: E711
                written += len(rows)
                pending.append(_record_batch(d, rows, times, keys, reason, mapping, schema))
                if sum(b.num_rows for b in pending) >= ROW_GROUP:
                    writer.write_table(pa.Table.from_batches(pending))
                    pending = []
            if pending:
                writer.write_table(pa.Table.from_batches(pending))
    finally:
        if own:
            reader.close()
    tmp.replace(out)
    return Collected(
        out,
        since_ms,
        until_ms,
        messages,
        kept,
        {k: v for k, v in sorted(dropped.items()) if v},
        time.monotonic() - t0,
        written,
    )


def _record_batch(
    d: Decoded,
    rows: np.ndarray,
    times: np.ndarray,
    keys: list[str | None],
    reason: np.ndarray,
    mapping: Mapping,
    schema: pa.Schema,
) -> pa.RecordBatch:
    """The rows `rows` of one decoded batch, in the collected file's columns."""
    picked = rows.tolist()
    columns = [
        pa.array(times[rows].astype(np.int64)),
        pa.array([keys[j] for j in picked], pa.string()),
        pa.array(reason[rows].tolist(), pa.string()),
    ]
    for e in mapping.entities:
        assert d.entities is not None
        values = d.entities[e]
        columns.append(pa.array([values[j] for j in picked], pa.string()))
    for j, f in enumerate(mapping.features):
        if d.categories is not None and f in d.categories:
            text = d.categories[f]
            columns.append(pa.array([text[i] for i in picked], pa.string()))
        else:
            columns.append(pa.array(d.x[rows, j]))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
