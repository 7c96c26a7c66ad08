"""The records one decided batch sends: anomaly events for its episode transitions, a
dead letter per rejected message, and a score record per row when `topics.scores` is set.

Pure functions of the batch, its decisions and the live model: nothing here sends, waits or
changes state, so what a batch publishes can be read (and tested) apart from the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from detector.app.live import LiveModel
from detector.contract.events import (
    CONTENT_TYPE,
    EventRows,
    Source,
    dlq_headers,
    iso_ms_many,
    make_events,
    make_score_records,
)
from detector.features.decode import Decoded, entity_key
from detector.kafka import Batch, Outgoing
from detector.model.scorer import Decisions, Scores, top_features
from detector.ops.settings import TopicSettings
from detector.state.episodes import Transition

__all__ = ["Decided", "records_of"]


@dataclass(frozen=True)
class Decided:
    """A batch with its decisions: the rows that were scored, in batch order."""

    batch: Batch
    decoded: Decoded  # the scored rows (warm-up and late rows of windowed models left out)
    event_ms: np.ndarray  # [M] each scored row's event time
    scores: Scores
    decisions: Decisions
    raw_keys: list  # [M] the key field's value, or the Kafka key's bytes

    def keys(self, rows: list[int]) -> list[str | None]:
        """The entity key of each of `rows`, as events carry it."""
        d, raw = self.decoded, self.raw_keys
        return [entity_key(d, j, raw[j]) for j in rows]

    def sources(self, rows: np.ndarray) -> list[Source]:
        """Where the scored rows `rows` came from, without a full Record each."""
        index, position = self.decoded.index, self.batch.position
        return [Source(*position(i)) for i in index[rows].tolist()]


def records_of(
    d: Decided,
    transitions: list[Transition],
    live: LiveModel,
    topics: TopicSettings,
    top_k: int,
    now_ms: float,
) -> list[Outgoing]:
    """Everything batch `d` publishes, in the order it is sent."""
    headers = [("content-type", CONTENT_TYPE), ("vigil.model.version", live.version.encode())]
    out = _events(d, transitions, live, topics.anomalies, headers, top_k, now_ms)
    out += _dead_letters(d, topics.dlq, live.version)
    if topics.scores:
        out += _score_records(d, live, topics.scores, headers)
    return out


def _events(
    d: Decided,
    transitions: list[Transition],
    live: LiveModel,
    topic: str,
    headers: list[tuple[str, bytes]],
    top_k: int,
    now_ms: float,
) -> list[Outgoing]:
    if not transitions:
        return []
    rows = np.array([tr.row for tr in transitions], dtype=np.int64)
    keys = d.keys(rows.tolist())
    started = np.array([np.nan if tr.started_ms is None else tr.started_ms for tr in transitions])
    episodes: list[dict[str, object]] = [
        {"id": tr.episode_id, "state": tr.state, "started_at": at, "alarms": tr.alarms}
        for tr, at in zip(transitions, iso_ms_many(started), strict=True)
    ]
    events = make_events(
        _event_rows(d, live, rows, keys, episodes, top_k),
        detected_ms=now_ms,
        model=live.model_id,
        threshold=live.threshold,
        features=live.features,
    )
    return [
        Outgoing(topic, _encoded(key), orjson.dumps(event), headers)
        for event, key in zip(events, keys, strict=True)
    ]


def _event_rows(
    d: Decided,
    live: LiveModel,
    rows: np.ndarray,
    keys: list[str | None],
    episodes: list[dict[str, object]],
    top_k: int,
) -> EventRows:
    """The columns of the decided rows `rows` that publish an event."""
    decoded, rows_list = d.decoded, rows.tolist()
    top, share = top_features(d.scores.feature_error[rows], top_k)
    entities = categorical = payload = None
    if decoded.entities:
        entities = [{e: v[j] for e, v in decoded.entities.items()} for j in rows_list]
    if decoded.categories:
        cats, coded = decoded.categories, live.mapping.categorical
        categorical = [{e.name: (cats[e.name][j], e.spec) for e in coded} for j in rows_list]
    if live.from_payload is not None:
        payload = [_payload_values(decoded, live, j) for j in rows_list]
    return EventRows(
        sources=d.sources(rows),
        keys=keys,
        event_time_ms=d.event_ms[rows],
        score=d.scores.score[rows],
        observed=decoded.x[rows],
        expected=d.scores.reconstruction[rows],
        top_index=top,
        top_share=share,
        episodes=episodes,
        entities=entities,
        categorical=categorical,
        payload=payload,
    )


def _payload_values(decoded: Decoded, live: LiveModel, j: int) -> dict[str, float | str]:
    """The message's own feature values (a payment's amount), for models whose other
    features are derived: the event then shows what was paid beside how it looked."""
    assert live.from_payload is not None
    text = decoded.categories or {}
    return {
        f: text[f][j] if f in text else float(decoded.x[j, col])
        for f, col in zip(live.mapping.features, live.from_payload, strict=True)
    }


def _dead_letters(d: Decided, topic: str, version: str) -> list[Outgoing]:
    out = []
    for rej in d.decoded.rejects:
        r = d.batch[rej.index]
        headers = dlq_headers(r.headers, Source.of(r), rej.reason, rej.detail, version)
        out.append(Outgoing(topic, r.key, r.value or b"", headers))
    return out


def _score_records(
    d: Decided, live: LiveModel, topic: str, headers: list[tuple[str, bytes]]
) -> list[Outgoing]:
    """A record per scored row: positions and keys only, no full Record."""
    everything = np.arange(len(d.decoded.index))
    keys = d.keys(everything.tolist())
    values = make_score_records(
        sources=d.sources(everything),
        keys=keys,
        event_time_ms=d.event_ms,
        model_version=live.version,
        score=d.scores.score,
        threshold=live.threshold,
        anomaly=d.decisions.anomaly,
    )
    return [
        Outgoing(topic, _encoded(key), value, headers)
        for key, value in zip(keys, values, strict=True)
    ]


def _encoded(key: str | None) -> bytes | None:
    return key.encode() if key is not None else None
