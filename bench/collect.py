"""`vigil-train collect` against the real local broker: throughput and memory.

    .venv/bin/python bench/collect.py [--messages 1000000]

Produces N telemetry messages (52 features, about 1 KB each, 4 partitions) and a few
thousand anomaly events about them, then runs `vigil-train collect` as a user would (a
subprocess, settings from VIGIL_* variables) over the whole range twice: once over the first
quarter, once over everything. Peak RSS (from /proc, sampled every 50 ms) should not grow
with the range: rows go to Parquet in row groups. Writes bench/results/collect.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from kafka import KafkaProducer  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from throughput import free_port, make_model, telemetry  # noqa: E402

from detector.contract.events import iso_ms  # noqa: E402
from detector.model.registry import publish  # noqa: E402

STEP_MS = 100  # message times 100 ms apart, ending now: within the broker's 7-day retention


def produce(bootstrap: str, topic: str, n: int, names: list[str], start_ms: int) -> int:
    """Send n messages and check that the broker acknowledged every one."""
    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=512 * 1024,
        delivery_timeout_ms=600_000,  # a 2-core machine queues a lot: wait rather than drop
    )
    base = telemetry(10_000, seed=1)
    size, failed = 0, []
    for i in range(n):
        value = orjson.dumps(
            {k: round(float(v), 6) for k, v in zip(names, base[i % len(base)], strict=True)}
        )
        size += len(value)
        f = p.send(
            topic, key=f"unit-{i % 16}".encode(), value=value, timestamp_ms=start_ms + i * STEP_MS
        )
        f.add_errback(failed.append)
    p.flush()
    p.close()
    if failed:
        raise SystemExit(f"{len(failed)} of {n} messages not acknowledged: {failed[0]}")
    return size // n


def produce_events(bootstrap: str, topic: str, n_messages: int, every: int, start_ms: int) -> int:
    """An anomaly episode of 5 events every `every` messages, as the detector writes them."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    count = 0
    for start in range(every, n_messages, every):
        for j in range(5):
            i = start + 16 * j  # the same unit, five samples in a row
            event = {
                "key": f"unit-{i % 16}",
                "event_time": iso_ms(start_ms + i * STEP_MS),
                "episode": {"id": f"ep-{start}", "state": "open" if j == 0 else "continue"},
            }
            p.send(topic, key=event["key"].encode(), value=orjson.dumps(event))
            count += 1
    p.flush()
    p.close()
    return count


def run_collect(env: dict[str, str], since_ms: int, until_ms: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "trainer.cli", "collect", "--no-progress", "--margin", "1s"]
    cmd += ["--since", iso_ms(since_ms), "--until", iso_ms(until_ms), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0.0]

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                break
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    t.join()
    if proc.returncode != 0:
        raise SystemExit(stderr.decode())
    summary = json.loads(stdout)
    return summary | {
        "wall_s": round(wall, 2),
        "msg_per_s": round(summary["messages"] / wall),
        "peak_rss_mb": round(peak[0], 1),
        "parquet_mb": round(out.stat().st_size / 2**20, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-collect-"))
    port = free_port()
    script = str(ROOT / "scripts" / "kafka-dev")
    kafka_dir = str(workdir / "kafka")
    start = [script, "start", "--port", str(port), "--controller-port", str(free_port())]
    subprocess.run(
        [*start, "--dir", kafka_dir],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        model = make_model(workdir)
        publish(model, workdir / "registry")
        from detector.contract.bundle import load_bundle

        names = load_bundle(model).features
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("plant", a.partitions, 1), NewTopic("plant.events", 1, 1)])
        admin.close()
        print(f"producing {a.messages} messages…", flush=True)
        t0 = time.perf_counter()
        start_ms = int(time.time() * 1000) - a.messages * STEP_MS
        msg_bytes = produce(bootstrap, "plant", a.messages, names, start_ms)
        events = produce_events(bootstrap, "plant.events", a.messages, 2000, start_ms)
        print(f"produced in {time.perf_counter() - t0:.0f} s; {events} events", flush=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")} | {
            "VIGIL_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "VIGIL_TOPICS__INPUT": "plant",
            "VIGIL_TOPICS__ANOMALIES": "plant.events",
            "VIGIL_MODEL__PATH": str(workdir / "registry" / "bench"),
        }
        last = start_ms + (a.messages - 1) * STEP_MS
        quarter = start_ms + (a.messages // 4 - 1) * STEP_MS
        runs = {}
        for label, until in (("first quarter", quarter), ("all", last)):
            runs[label] = run_collect(env, start_ms, until, workdir / f"{label[:3]}.parquet")
            expected = a.messages // 4 if label == "first quarter" else a.messages
            if runs[label]["messages"] != expected:
                raise SystemExit(f"{label}: read {runs[label]['messages']}, expected {expected}")
            print(label, runs[label], flush=True)
    finally:
        subprocess.run([script, "stop", "--dir", kafka_dir], stdout=subprocess.DEVNULL)
    results = {
        "messages": a.messages,
        "message_bytes": msg_bytes,
        "partitions": a.partitions,
        "events": events,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join(["python", "bench/collect.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = ROOT / "bench" / "results"
    (out / "collect.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = "\n".join(
        f"| {label} | {r['messages']:,} | {r['kept']:,} | "
        f"{sum(r['dropped'].values()):,} | {r['wall_s']} | {r['msg_per_s']:,} | "
        f"{r['peak_rss_mb']} | {r['parquet_mb']} |"
        for label, r in runs.items()
    )
    (out / "collect.md").write_text(
        f"""# `vigil-train collect`: throughput and memory

Written by `bench/collect.py`; rerun it rather than editing this file.

- command: `{results["command"]}`, {results["date"]}
- machine: {os.cpu_count()} cores, {platform.platform()}; local single-node broker (kafka-dev)
- topic: {a.messages:,} messages of about {msg_bytes} bytes (52 features as JSON),
  {a.partitions} partitions; {events:,} anomaly events (an episode of 5 every 2,000 messages,
  left out with a 1 s margin; messages 100 ms apart)
- the command as a user runs it: a subprocess, settings from `VIGIL_*`, no consumer group;
  peak RSS sampled from /proc every 50 ms

Every produced message was acknowledged; "messages read" is what the time range holds.

| range | messages read | kept | left out | wall s | msg/s | peak RSS MB | Parquet MB |
|---|---|---|---|---|---|---|---|
{rows}

Memory does not grow with the range: rows are decoded a poll at a time and written to
Parquet in row groups of 100,000.
"""
    )
    print((out / "collect.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
