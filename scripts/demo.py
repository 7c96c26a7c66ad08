"""The Vigil demo: broker, training, detector, live telemetry and live alerts. Ctrl-C stops it.

    make demo                      # everything, from a fresh clone
    .venv/bin/python scripts/demo.py --help

1. starts a local Apache Kafka broker (scripts/kafka-dev) unless --bootstrap is given;
2. generates three days of normal telemetry from four pumps and trains a bundle on it;
3. starts `vigil-detect run` on the telemetry topic;
4. streams normal telemetry, then telemetry with injected faults (drift, spikes, stuck
   sensors, broken correlations), and prints each alert as it arrives.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.synth import CHANNELS, simulate  # noqa: E402

BOLD, RED, YELLOW, DIM, RESET = "\033[1m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"


def say(msg: str) -> None:
    print(f"{BOLD}vigil-demo:{RESET} {msg}", flush=True)


def start_broker(port: int, workdir: Path) -> str:
    say(f"starting Apache Kafka on 127.0.0.1:{port} (first run downloads the jars, 1-2 min)")
    subprocess.run(
        [
            str(ROOT / "scripts" / "kafka-dev"),
            "start",
            "--port",
            str(port),
            "--dir",
            str(workdir / "kafka"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return f"127.0.0.1:{port}"


def train(workdir: Path, steps: int) -> Path:
    data, model = workdir / "normal.csv", workdir / "model"
    say(f"generating {steps} samples x 4 pumps of normal telemetry -> {data}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "synth",
            "--out",
            str(data),
            "--steps",
            str(steps),
            "--entities",
            "4",
            "--seed",
            "1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    say("training the autoencoder (calibrated at a 0.1% false-alarm rate on held-out normal data)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "fit",
            "--data",
            str(data),
            "--out",
            str(model),
            "--drop",
            "timestamp_ms,entity,fault,label",
            "--name",
            "pumps",
            "--fpr",
            "0.001",
            "--epochs",
            "120",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return model


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    for name, partitions in topics.items():
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name, partitions, 1)])
    admin.close()


def stream(
    bootstrap: str,
    topic: str,
    rate: float,
    normal_steps: int,
    stop: threading.Event,
    sent: list[int],
) -> None:
    """Normal telemetry first, then rounds with faults, stamped with the current time."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    round_no = 0
    while not stop.is_set():
        t = simulate(
            normal_steps if round_no == 0 else 400,
            4,
            seed=100 + round_no,
            fault_rate=0.0 if round_no == 0 else 0.08,
        )
        if round_no == 1:
            say(
                f"{YELLOW}now injecting faults: drift, spikes, stuck sensors, broken correlations{RESET}"
            )
        for i in range(len(t.values)):
            if stop.is_set():
                break
            doc = {
                "ts": int(time.time() * 1000),
                "pump": str(t.entity[i]),
                **{c: round(float(v), 4) for c, v in zip(CHANNELS, t.values[i], strict=True)},
            }
            if t.fault[i]:
                doc["injected_fault"] = str(t.fault[i])  # ignored by the model; shown in alerts
            producer.send(topic, key=t.entity[i].encode(), value=orjson.dumps(doc))
            sent[0] += 1
            time.sleep(1.0 / rate)
        round_no += 1
    producer.flush()
    producer.close()


def show_alerts(bootstrap: str, topic: str, stop: threading.Event, seen: list[int]) -> None:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        group_id=f"vigil-demo-viewer-{os.getpid()}",
    )
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=300).values():
            for r in records:
                e = orjson.loads(r.value)
                seen[0] += 1
                top = ", ".join(
                    f"{f['name']} {f['value']:.2f} (expected {f['expected']:.2f})"
                    for f in e["top_features"][:2]
                )
                print(
                    f"{RED}ALERT{RESET} {e['event_time'][11:23]} {BOLD}{e['key']}{RESET} "
                    f"severity {e['severity']:5.1f}  {top}  {DIM}offset {e['source']['offset']}{RESET}",
                    flush=True,
                )
    consumer.close()


def metric(port: int, name: str) -> float:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return float("nan")
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--port", type=int, default=9092, help="port of the broker to start")
    ap.add_argument("--metrics-port", type=int, default=9108)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second")
    ap.add_argument(
        "--train-steps", type=int, default=4320, help="normal samples per pump (3 days)"
    )
    ap.add_argument(
        "--normal-steps", type=int, default=300, help="normal samples per pump before faults"
    )
    ap.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    started_broker = a.bootstrap is None
    bootstrap = a.bootstrap or start_broker(a.port, a.workdir)
    detector = None
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        model = train(a.workdir, a.train_steps)
        create_topics(bootstrap, {"telemetry": 4, "vigil.anomalies": 4, "vigil.dlq": 1})
        env = os.environ | {
            "VIGIL_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "VIGIL_MODEL__PATH": str(model),
            "VIGIL_TOPICS__INPUT": "telemetry",
            "VIGIL_HTTP__PORT": str(a.metrics_port),
            "VIGIL_HTTP__HOST": "127.0.0.1",
            "VIGIL_KAFKA__GROUP_ID": "vigil-demo",
            "VIGIL_KAFKA__AUTO_OFFSET_RESET": "latest",
            "VIGIL_PAYLOAD__KEY_FROM": "field",
            "VIGIL_PAYLOAD__KEY_FIELD": "pump",
            "VIGIL_PAYLOAD__TIME_FROM": "field",
            "VIGIL_PAYLOAD__TIME_FIELD": "ts",
        }
        log = (a.workdir / "detector.log").open("wb")
        detector = subprocess.Popen(
            [sys.executable, "-m", "detector", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{a.metrics_port}/readyz", timeout=2
                    ).status
                    == 200
                ):
                    break
            except OSError:
                pass
            if detector.poll() is not None or time.monotonic() > deadline:
                say(f"the detector did not become ready; see {a.workdir / 'detector.log'}")
                return 1
            time.sleep(0.3)
        say(
            f"detector ready. Metrics: http://127.0.0.1:{a.metrics_port}/metrics  "
            f"probes: /healthz /readyz  log: {a.workdir / 'detector.log'}"
        )
        say(f"alerts also land on topic vigil.anomalies: kcat -b {bootstrap} -C -t vigil.anomalies")
        say(f"streaming {a.rate:.0f} msg/s of normal telemetry; Ctrl-C to stop")
        sent, seen = [0], [0]
        threads = [
            threading.Thread(
                target=stream, args=(bootstrap, "telemetry", a.rate, a.normal_steps, stop, sent)
            ),
            threading.Thread(target=show_alerts, args=(bootstrap, "vigil.anomalies", stop, seen)),
        ]
        for t in threads:
            t.start()
        stop.wait(a.duration)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1.0)
        scored = metric(a.metrics_port, "vigil_messages_scored_total")
        say(
            f"sent {sent[0]} messages; detector scored {scored:.0f}, published {seen[0]} alerts shown above"
        )
        return 0
    finally:
        stop.set()
        if detector is not None and detector.poll() is None:
            detector.send_signal(signal.SIGTERM)
            try:
                code = detector.wait(timeout=30)
                say(f"detector stopped (exit {code})")
            except subprocess.TimeoutExpired:
                detector.kill()
        if started_broker:
            subprocess.run(
                [str(ROOT / "scripts" / "kafka-dev"), "stop", "--dir", str(a.workdir / "kafka")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            say("broker stopped")


if __name__ == "__main__":
    sys.exit(main())
