"""Helpers for tests against the real broker: a detector process, produce, read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition

from tests.conftest import free_port


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class DetectorProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def health(self, path: str = "/readyz") -> dict[str, Any]:
        code, body = self.get(path)
        return orjson.loads(body) | {"code": code} if body else {"code": code}

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                if s.name == name and (
                    labels is None or all(s.labels.get(k) == v for k, v in labels.items())
                ):
                    return float(s.value)
        return 0.0

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(
            lambda: self.health()["code"] == 200 or self.proc.poll() is not None,
            timeout,
            "readiness",
        )
        if self.proc.poll() is not None:
            raise AssertionError(
                f"detector exited with {self.proc.returncode}:\n{self.log.read_text()}"
            )

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


STARTED: list[DetectorProcess] = []  # killed after each test by tests/integration/conftest.py


def start_detector(
    tmp_path: Path, bootstrap: str, model: Path, topic: str, group: str, **extra: str
) -> DetectorProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env |= {
        "VIGIL_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "VIGIL_KAFKA__GROUP_ID": group,
        "VIGIL_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "VIGIL_TOPICS__INPUT": topic,
        "VIGIL_TOPICS__ANOMALIES": f"{topic}.anomalies",
        "VIGIL_TOPICS__DLQ": f"{topic}.dlq",
        "VIGIL_MODEL__PATH": str(model),
        "VIGIL_MODEL__PROVIDER": "cpu",
        "VIGIL_HTTP__HOST": "127.0.0.1",
        "VIGIL_HTTP__PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"VIGIL_{k.upper()}": v for k, v in extra.items()}
    log = tmp_path / f"detector-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "run"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    d = DetectorProcess(proc, port, log)
    STARTED.append(d)
    return d


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Send (key, value) pairs; return (partition, offset) of each, in order."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    futures = [p.send(topic, key=k, value=v) for k, v in records]
    p.flush()
    out = []
    for f in futures:
        md = f.get(timeout=30)
        out.append((md.partition, md.offset))
    p.close()
    return out


def read_all(bootstrap: str, topic: str, timeout: float = 30) -> list[Any]:
    """Every record currently in a topic (all partitions)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = wait_for(lambda: c.partitions_for_topic(topic), timeout, f"topic {topic}")
    tps = [TopicPartition(topic, p) for p in parts]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while any(c.position(tp) < end[tp] for tp in tps):
        for recs in c.poll(timeout_ms=500).values():
            records.extend(recs)
        if time.monotonic() > deadline:
            raise AssertionError(f"could not read {topic} to its end")
    c.close()
    return records


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (absent: nothing committed)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: m.offset for tp, m in committed.items() if tp.topic == topic}


def committed_all(bootstrap: str, group: str, topic: str) -> bool:
    """Whether the group's committed offsets reached the end of every partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        end = c.end_offsets(tps)
        committed = admin.list_group_offsets(group).get(group, {})
        return bool(tps) and all(
            end[tp] == 0 or (tp in committed and committed[tp].offset >= end[tp]) for tp in tps
        )
    finally:
        c.close()
        admin.close()
