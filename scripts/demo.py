"""The Vigil demo: broker, training, detector, a live stream and live alerts. Ctrl-C stops it.

    make demo                              # pumps, from a fresh clone
    .venv/bin/python scripts/demo.py --scenario fraud
    .venv/bin/python scripts/demo.py --help

1. starts a local Apache Kafka broker (scripts/kafka-dev) unless --bootstrap is given;
2. trains a bundle on normal data:
   - telemetry (default): three days of four pumps' sensors;
   - fraud: 30 days of simulated card payments (trainer/transactions.py), legitimate ones
     only, with per-card and per-terminal behaviour features;
3. starts `vigil-detect run` on the stream's topic;
4. streams, and prints each alert as it arrives:
   - telemetry: normal samples, then injected faults (drift, spikes, stuck sensors,
     broken correlations);
   - fraud: the next days of payments, fraud included (large amounts, compromised terminals
     and cards), replayed in event-time order; each alert shows the simulator's truth.
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.synth import CHANNELS, simulate  # noqa: E402
from trainer.transactions import Transactions, card_key, terminal_key  # noqa: E402
from trainer.transactions import simulate as simulate_payments  # noqa: E402

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


# -- the fraud scenario ------------------------------------------------------------------------
FRAUD_TRAIN_DAYS = 30
FRAUD_BEHAVIOUR = {
    "entities": [
        {"entity": "card_id", "mean_of": "amount", "since_previous": True, "log_counts": True},
        {"entity": "terminal_id", "log_counts": True},
        # how often this card paid at this terminal: a terminal new to the card reads ~0
        {"entity": "card_id+terminal_id", "windows_days": [30], "log_counts": True},
    ]
}
FRAUD_KINDS = {1: "large amount", 2: "compromised terminal", 3: "compromised card"}


def payments(days: int) -> Transactions:
    """500 cards and 1000 terminals: the first FRAUD_TRAIN_DAYS train, the rest stream."""
    return simulate_payments(
        n_customers=500, n_terminals=1000, days=FRAUD_TRAIN_DAYS + days, seed=1
    )


def train_fraud(workdir: Path, t: Transactions) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, spec, model = workdir / "payments.parquet", workdir / "behaviour.json", workdir / "model"
    early = t.tx_time_days < FRAUD_TRAIN_DAYS
    say(
        f"simulated {len(t)} card payments over {t.tx_time_days[-1] + 1} days; training on the "
        f"{int((early & (t.tx_fraud == 0)).sum())} legitimate ones of the first "
        f"{FRAUD_TRAIN_DAYS} days -> {data}"
    )
    pq.write_table(
        pa.table(
            {
                "ts": t.tx_time_ms[early],
                "card_id": [card_key(c) for c in t.customer_id[early]],
                "terminal_id": [terminal_key(x) for x in t.terminal_id[early]],
                "amount": t.tx_amount[early],
                "fraud": t.tx_fraud[early],
            }
        ),
        data,
    )
    spec.write_text(orjson.dumps(FRAUD_BEHAVIOUR).decode())
    say("training the autoencoder on amount + per-card and per-terminal behaviour features")
    subprocess.run(
        [
            sys.executable, "-m", "trainer", "fit", "--data", str(data), "--out", str(model),
            "--features", "amount", "--behaviour", str(spec), "--time-column", "ts",
            "--bounds", "amount=0:", "--label-column", "fraud", "--name", "payments", "--scaling", "standard",
            "--batch-size", "1024", "--lr", "3e-3", "--epochs", "60", "--patience", "8",
            "--folds", "0", "--fpr", "0.005",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return model


def stream_fraud(
    bootstrap: str, topic: str, rate: float, t: Transactions, stop: threading.Event, sent: list[int]
) -> None:
    """The payments after the training days, in event-time order, at `rate` per second."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    first = int(np.searchsorted(t.tx_time_days, FRAUD_TRAIN_DAYS))
    for record in t.records(first):
        if stop.is_set():
            break
        producer.send(topic, key=str(record["card_id"]).encode(), value=orjson.dumps(record))
        sent[0] += 1
        time.sleep(1.0 / rate)
    else:
        say("replay finished: every simulated day was sent")
    producer.flush()
    producer.close()


class FraudView:
    """Alerts as lines with the simulator's truth about each transaction, and the tally."""

    def __init__(self, t: Transactions):
        fraud = t.tx_fraud == 1
        self.truth = {
            (card_key(int(c)), int(ms)): FRAUD_KINDS[int(k)]
            for c, ms, k in zip(
                t.customer_id[fraud], t.tx_time_ms[fraud], t.tx_fraud_scenario[fraud], strict=True
            )
        }
        self.alerts = self.on_fraud = 0

    def __call__(self, e: dict[str, Any]) -> str:
        entities = e.get("entities", {})
        when = datetime.fromisoformat(e["event_time"].replace("Z", "+00:00"))
        kind = self.truth.get((entities.get("card_id", ""), round(when.timestamp() * 1000)))
        self.alerts += 1
        self.on_fraud += kind is not None
        verdict = f"{RED}fraud: {kind}{RESET}" if kind else f"{DIM}legitimate{RESET}"
        return (
            f"{RED}ALERT{RESET} {e['event_time'][:16]} card {BOLD}{entities.get('card_id')}{RESET} "
            f"at {entities.get('terminal_id')}  severity {e['severity']:5.1f}  {reasons(e)}  "
            f"[truth: {verdict}]"
        )

    def summary(self, t: Transactions, sent: int) -> str:
        first = int(np.searchsorted(t.tx_time_days, FRAUD_TRAIN_DAYS))
        share = float(t.tx_fraud[first : first + sent].mean()) if sent else 0.0
        precision = self.on_fraud / self.alerts if self.alerts else 0.0
        return (
            f"{self.alerts} alerts, {self.on_fraud} of them on fraudulent transactions "
            f"({precision:.0%}), where fraud is {share:.1%} of the payments sent"
        )


def reasons(e: dict[str, Any]) -> str:
    """The event's two top features, observed and expected (categorical ones as text)."""

    def show(v: float | str) -> str:
        return v if isinstance(v, str) else f"{v:.2f}"

    return ", ".join(
        f"{f['name']} {show(f['value'])} (expected {show(f['expected'])})"
        for f in e["top_features"][:2]
    )


def describe_telemetry(e: dict[str, Any]) -> str:
    return (
        f"{RED}ALERT{RESET} {e['event_time'][11:23]} {BOLD}{e['key']}{RESET} "
        f"severity {e['severity']:5.1f}  {reasons(e)}  {DIM}offset {e['source']['offset']}{RESET}"
    )


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


def show_alerts(
    bootstrap: str,
    topic: str,
    stop: threading.Event,
    seen: list[int],
    describe: Callable[[dict[str, Any]], str],
) -> None:
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
                if e.get("episode", {}).get("state") == "close":
                    continue  # the end of an episode: nothing new to show
                seen[0] += 1
                print(describe(e), flush=True)
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
    ap.add_argument(
        "--scenario",
        choices=("telemetry", "fraud"),
        default="telemetry",
        help="pumps' sensor telemetry with injected faults, or card payments with fraud",
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
    ap.add_argument("--stream-days", type=int, default=60, help="fraud: days of payments to replay")
    ap.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    started_broker = a.bootstrap is None
    bootstrap = a.bootstrap or start_broker(a.port, a.workdir)
    detector = None
    stop = threading.Event()
    sent, seen = [0], [0]
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if a.scenario == "fraud":
            t = payments(a.stream_days)
            model, topic, key = train_fraud(a.workdir, t), "payments", "card_id"
            producer: Callable[[], None] = lambda: stream_fraud(  # noqa: E731
                bootstrap, topic, a.rate, t, stop, sent
            )
            view = FraudView(t)
            describe: Callable[[dict[str, Any]], str] = view
            # A replay: event times are the simulated days', so latency counts from the send;
            # the behaviour state survives a restart of the detector in its snapshot.
            scenario_env = {
                "VIGIL_PAYLOAD__LATENCY_FROM": "kafka_timestamp",
                "VIGIL_STATE__SNAPSHOT_PATH": str(a.workdir / "behaviour.npz"),
            }
        else:
            model, topic, key = train(a.workdir, a.train_steps), "telemetry", "pump"
            producer = lambda: stream(  # noqa: E731
                bootstrap, topic, a.rate, a.normal_steps, stop, sent
            )
            describe, scenario_env = describe_telemetry, {}
        create_topics(bootstrap, {topic: 4, "vigil.anomalies": 4, "vigil.dlq": 1})
        env = os.environ | {
            "VIGIL_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "VIGIL_MODEL__PATH": str(model),
            "VIGIL_TOPICS__INPUT": topic,
            "VIGIL_HTTP__PORT": str(a.metrics_port),
            "VIGIL_HTTP__HOST": "127.0.0.1",
            "VIGIL_KAFKA__GROUP_ID": f"vigil-demo-{a.scenario}",
            "VIGIL_KAFKA__AUTO_OFFSET_RESET": "latest",
            "VIGIL_PAYLOAD__KEY_FROM": "field",
            "VIGIL_PAYLOAD__KEY_FIELD": key,
            "VIGIL_PAYLOAD__TIME_FROM": "field",
            "VIGIL_PAYLOAD__TIME_FIELD": "ts",
            **scenario_env,
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
        what = "payments" if a.scenario == "fraud" else "normal telemetry"
        say(f"streaming {a.rate:.0f} msg/s of {what} to topic {topic}; Ctrl-C to stop")
        threads = [
            threading.Thread(target=producer),
            threading.Thread(
                target=show_alerts, args=(bootstrap, "vigil.anomalies", stop, seen, describe)
            ),
        ]
        for th in threads:
            th.start()
        stop.wait(a.duration)
        stop.set()
        for th in threads:
            th.join()
        time.sleep(1.0)
        scored = metric(a.metrics_port, "vigil_messages_scored_total")
        say(
            f"sent {sent[0]} messages; detector scored {scored:.0f}, published {seen[0]} alerts shown above"
        )
        if a.scenario == "fraud":
            say(view.summary(t, sent[0]))
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
