"""The detector's per-batch work without Kafka: decode, score, decide, build events, record
metrics, through the same `Detector.process` the daemon runs (source and sink stubbed).

    .venv/bin/python bench/hot_path.py [--batch 2000] [--repeats 30] [--out bench/results]

Writes hot_path.{json,md} to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.app.live import LiveModel  # noqa: E402
from detector.app.loop import Detector  # noqa: E402
from detector.contract.bundle import load_bundle  # noqa: E402
from detector.kafka import Batch  # noqa: E402
from detector.kafka.memory import MEMORY, MemoryDelivery, MemoryRecord  # noqa: E402
from detector.model.scorer import Scorer  # noqa: E402
from detector.model.watcher import mapping_for  # noqa: E402
from detector.ops.http import Health  # noqa: E402
from detector.ops.metrics import Metrics  # noqa: E402
from detector.ops.settings import load_settings  # noqa: E402
from trainer.synth import CHANNELS, simulate  # noqa: E402


class NoKafka:
    """Source and sink in one: commits nothing; what it sends counts as acknowledged."""

    def commit(self, last: Any) -> None: ...
    def lag(self, last: Any) -> dict[Any, int]:
        return {}

    def take_revoked(self) -> set[Any]:
        return set()

    sent = 0

    def send(self, records: list[Any]) -> MemoryDelivery:
        self.sent += len(records)
        d = MemoryDelivery(records)
        d.acknowledged = True
        return d

    def wait(self, d: MemoryDelivery) -> None: ...


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    from trainer.build import build_bundle
    from trainer.config import TrainConfig
    from trainer.data import Dataset

    normal = simulate(3000, 4, seed=0)
    model = Path(tempfile.mkdtemp(prefix="vigil-hot-")) / "b"
    build_bundle(
        Dataset(list(CHANNELS), normal.values, [], 0), TrainConfig(epochs=20), model, progress=False
    )
    live = simulate(a.batch // 4 + 1, 4, seed=1, fault_rate=0.02)
    now = int(time.time() * 1000)
    batch = [
        MemoryRecord(
            "t",
            0,
            i,
            live.entity[i].encode(),
            orjson.dumps(dict(zip(CHANNELS, map(float, live.values[i]), strict=True))),
            now,
        )
        for i in range(a.batch)
    ]
    stub = NoKafka()
    settings = load_settings(None, model={"path": str(model)})
    bundle = load_bundle(model)
    d = Detector(
        settings,
        LiveModel.of(Scorer(bundle, "cpu"), mapping_for(settings, bundle)),
        stub,
        stub,
        Metrics(),
        Health(),
        threading.Event(),
    )  # type: ignore[arg-type]
    for _ in range(3):
        d.process(Batch(batch, MEMORY))
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        d.process(Batch(batch, MEMORY))  # a fresh Batch per poll, as the daemon's
    us = (time.perf_counter() - t0) / (a.repeats * a.batch) * 1e6
    assert stub.sent > 0, "no anomaly events were built: the batch does not exercise events"
    result = {
        "batch": a.batch,
        "repeats": a.repeats,
        "features": len(CHANNELS),
        "message_bytes": sum(len(r.value) for r in batch) // len(batch),
        "us_per_message": round(us, 2),
        "events_per_batch": stub.sent / (a.repeats + 3),
        "messages_per_second": round(1e6 / us),
        "command": "python bench/hot_path.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "hot_path.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# Detector hot path without Kafka ({result['date']})\n\n`{result['command'].strip()}`\n\n"
        f"`Detector.process` on batches of {a.batch} JSON messages ({result['message_bytes']} bytes, "
        f"{len(CHANNELS)} features, 2% in fault episodes): {us:.2f} µs per message, "
        f"{result['messages_per_second']:,} messages/s on one core.\n"
    )
    (out / "hot_path.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
