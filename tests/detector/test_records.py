"""A batch reads the same columns from kafka-python's records and librdkafka's messages,
and each adapter speaks only the neutral types (`detector.kafka.types`, `detector.errors`)
and imports only its own client."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition as ClientPartition

from detector.errors import CommitFailed, ConfigError, KafkaError
from detector.kafka.batch import Batch, Record
from detector.kafka.kafka_python import KAFKA_PYTHON, KafkaSource
from detector.kafka.librdkafka import LIBRDKAFKA, RdKafkaSource, rd_config
from detector.kafka.types import TopicPartition
from detector.ops.settings import BatchSettings, KafkaSettings, Settings, TopicSettings

ROWS = [  # topic, partition, offset, key, value, timestamp, headers
    ("a", 0, 5, b"k1", b'{"x": 1}', 1_000, [("h", b"1")]),
    ("a", 1, 9, None, b'{"x": 2}', 1_001, []),
    ("a", 0, 6, b"k1", b'{"x": 3}', 1_002, []),
    ("b", 0, 2, b"k2", None, -1, []),
]


def kafka_python(rows: list[tuple]) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(t, p, -1, o, ts, 0, k, v, h, None, len(k or b""), len(v or b""), -1)
        for t, p, o, k, v, ts, h in rows
    ]


@dataclass
class Message:  # confluent_kafka.Message's reading methods (the C type cannot be built)
    t: str
    p: int
    o: int
    k: bytes | None
    v: bytes | None
    ts: int
    h: list[tuple[str, bytes]]

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v

    def timestamp(self) -> tuple[int, int]:
        return (0 if self.ts < 0 else 1, self.ts)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.h or None


@pytest.fixture(params=["kafka-python", "librdkafka"])
def batch(request: pytest.FixtureRequest) -> Batch:
    if request.param == "kafka-python":
        return Batch(kafka_python(ROWS), KAFKA_PYTHON)
    return Batch([Message(*r) for r in ROWS], LIBRDKAFKA)


def test_columns(batch: Batch) -> None:
    assert len(batch) == 4 and batch
    assert batch.values == [r[4] for r in ROWS]
    assert batch.timestamps == [r[5] for r in ROWS]
    assert batch.column("key", [0, 3]) == [b"k1", b"k2"]
    assert batch.column("partition", [1, 2]) == [1, 0]


def test_one_record_with_everything(batch: Batch) -> None:
    assert batch[0] == Record("a", 0, 5, b"k1", b'{"x": 1}', 1_000, [("h", b"1")])
    assert batch[3].headers == [] and batch[3].value is None


def test_last_offsets_per_partition(batch: Batch) -> None:
    last = batch.last_offsets()
    assert last == {
        TopicPartition("a", 0): 6,
        TopicPartition("a", 1): 9,
        TopicPartition("b", 0): 2,
    }
    assert {type(tp) for tp in last} == {TopicPartition}  # never a client's own
    assert batch.topic_counts() == {"a": 3, "b": 1}


def test_only_keeps_owned_partitions(batch: Batch) -> None:
    kept = batch.only(lambda t, p: (t, p) != ("a", 0))
    assert [kept[i].offset for i in range(len(kept))] == [9, 2]
    assert not batch.only(lambda t, p: False)


def test_rd_config_names_the_security_settings(tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    k = KafkaSettings(
        bootstrap_servers="b1:9093, b2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username="vigil",
        password="s3cret",
        ssl_cafile=ca,
        ssl_check_hostname=False,
    )
    cfg = rd_config(k)
    assert cfg["bootstrap.servers"] == "b1:9093,b2:9093"
    assert cfg["security.protocol"] == "sasl_ssl"
    assert cfg["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (cfg["sasl.username"], cfg["sasl.password"]) == ("vigil", "s3cret")
    assert cfg["ssl.ca.location"] == str(ca)
    assert cfg["ssl.endpoint.identification.algorithm"] == "none"
    assert "sasl.username" not in rd_config(KafkaSettings())


class FakeConsumer:
    """Records the commits a source sends (the throttle is pure logic; the broker side is
    proven by the integration tests)."""

    def __init__(self) -> None:
        self.commits: list[tuple[dict[tuple[str, int], int], bool]] = []

    def commit(self, offsets: list, asynchronous: bool) -> None:
        self.commits.append(({(p.topic, p.partition): p.offset for p in offsets}, asynchronous))

    def close(self) -> None:
        pass


def test_commits_go_out_at_most_once_per_interval_with_the_newest_offsets() -> None:
    settings = SimpleNamespace(kafka=KafkaSettings(commit_interval_ms=200))
    src = RdKafkaSource(settings)  # type: ignore[arg-type]
    fake = FakeConsumer()
    src.consumer = fake  # type: ignore[assignment]
    a0, a1 = TopicPartition("a", 0), TopicPartition("a", 1)
    src._owned = {a0, a1}
    src.commit({a0: 9})
    src.commit({a0: 19, a1: 4})  # within the interval: held back
    src.flush_commits()
    assert fake.commits == [({("a", 0): 10}, True)]
    src._next_commit = 0.0  # the interval has passed
    src.flush_commits()
    assert fake.commits[-1] == ({("a", 0): 20, ("a", 1): 5}, True)
    src.commit({a0: 29, a1: 7})
    src._owned = {a0}  # a1 revoked meanwhile: its offsets are its new owner's
    src.close()  # the newest offsets, synchronously, whatever the interval
    assert fake.commits[-1] == ({("a", 0): 30}, False)


class FakeKafkaPythonConsumer:
    """What `KafkaSource` calls of kafka-python's consumer, refusing partitions that are not
    kafka-python's own (as kafka-python does) and recording commits."""

    def __init__(self, owned: set[ClientPartition]) -> None:
        self.owned = owned
        self.commits: list[dict[ClientPartition, int]] = []
        self.callbacks: list = []

    def assignment(self) -> set[ClientPartition]:
        return set(self.owned)

    def highwater(self, tp: ClientPartition) -> int:
        assert type(tp) is ClientPartition
        return 100

    def commit_async(self, offsets: dict, callback) -> None:
        assert {type(tp) for tp in offsets} == {ClientPartition}
        self.commits.append({tp: o.offset for tp, o in offsets.items()})
        self.callbacks.append(lambda response: callback(offsets, response))

    def commit(self, offsets: dict) -> None:
        self.commit_async(offsets, lambda *_: None)

    def close(self, autocommit: bool) -> None:
        pass


def test_kafka_python_source_speaks_neutral_partitions_and_errors() -> None:
    errors: list[Exception] = []
    settings = SimpleNamespace(kafka=KafkaSettings(commit_interval_ms=0))
    src = KafkaSource(settings, on_commit_error=errors.append)  # type: ignore[arg-type]
    a0, a1 = ClientPartition("a", 0), ClientPartition("a", 1)
    fake = FakeKafkaPythonConsumer({a0, a1})
    src.consumer = fake  # type: ignore[assignment]
    # The rebalance listener hears kafka-python's partitions; the loop gets its own.
    src.rebalance.on_partitions_assigned([a0, a1])
    src.rebalance.on_partitions_revoked([a1])
    revoked = src.take_revoked()
    assert revoked == {TopicPartition("a", 1)} and {type(tp) for tp in revoked} == {TopicPartition}
    # Commits and lag take neutral partitions and hand kafka-python its own.
    src.commit({TopicPartition("a", 0): 9})
    assert fake.commits == [{a0: 10}]
    assert src.lag({TopicPartition("a", 0): 49}) == {TopicPartition("a", 0): 50}
    # A failed commit is sent again with the next, and reported as a CommitFailed.
    fake.callbacks.pop()(Exception("CommitFailedError: the group rebalanced"))
    assert len(errors) == 1 and isinstance(errors[0], CommitFailed)
    src.flush_commits()
    assert fake.commits[-1] == {a0: 10}


@pytest.mark.parametrize(
    ("module", "loaded"),
    [
        ("detector.kafka", set()),  # the neutral layer loads a client only when one is chosen
        ("detector.kafka.librdkafka", {"confluent_kafka"}),
        ("detector.kafka.kafka_python", {"kafka"}),
    ],
)
def test_each_adapter_imports_only_its_own_client(module: str, loaded: set[str]) -> None:
    code = (
        f"import sys, {module}\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'kafka', 'confluent_kafka'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(loaded))


def _settings(**kafka: object) -> Settings:
    """What the sources read of the settings (a whole Settings wants a model bundle)."""
    return SimpleNamespace(  # type: ignore[return-value]
        kafka=KafkaSettings(**kafka),  # type: ignore[arg-type]
        topics=TopicSettings(input=["nowhere"]),
        batch=BatchSettings(),
    )


@pytest.mark.parametrize("source", [KafkaSource, RdKafkaSource])
def test_a_refused_client_configuration_is_a_config_error(source: type, tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"^Kafka client configuration: "):
        source(_settings(security_protocol="SSL", ssl_cafile=ca)).connect()


@pytest.mark.slow
@pytest.mark.parametrize("source", [KafkaSource, RdKafkaSource])
def test_an_unreachable_broker_is_a_kafka_error(source: type) -> None:
    from tests.conftest import free_port

    s = _settings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(KafkaError) as caught:
        source(s).connect()
    assert type(caught.value) is KafkaError  # not a client's own, not a ConfigError
    assert time.monotonic() - t0 < 30  # one attempt: the loop retries and reports health
