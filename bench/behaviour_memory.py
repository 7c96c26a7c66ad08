"""Memory and speed of the behaviour state (`detector/features/behaviour.py`) at a million cards.

    .venv/bin/python bench/behaviour_memory.py [--cards 1000000] [--tx-per-card 4]
                                               [--batch 5000] [--no-offline]

Online: streams `cards x tx-per-card` transactions (each pass visits every card once, in a
random order, at increasing times) through one `BehaviourState` in batches of `--batch` rows,
with card keys like "C0000001" built afresh per batch as a decoder would. Reports the RSS
(VmRSS of /proc/self/status) before and after, the bytes per entity, the update throughput
(rows/s, key building excluded) and per-batch latency, and the snapshot size and save/load
times. Offline: the trainer's path, `offline_features` over the default payment simulation
(5000 cards, 10000 terminals, 183 days: ~1.8 M rows) in one call.
Writes bench/results/behaviour_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.features.behaviour import (  # noqa: E402
    BehaviourSpec,
    BehaviourState,
    EntityBehaviour,
    offline_features,
)

CARD = EntityBehaviour(entity="card_id", mean_of="amount", since_previous=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def online(cards: int, passes: int, batch: int) -> dict[str, float | int]:
    rng = np.random.default_rng(0)
    spec = BehaviourSpec(entities=(CARD,))
    gc.collect()
    before = rss_mb()
    state = BehaviourState(spec)
    t_ms = 1_775_000_000_000
    step_ms = max(1, 30 * 86_400_000 // (cards * passes))  # the stream spans about 30 days
    lat: list[float] = []
    for _ in range(passes):
        order = rng.permutation(cards)
        for lo in range(0, cards, batch):
            ids = order[lo : lo + batch]
            keys = [f"C{i:07d}" for i in ids.tolist()]  # fresh strings, as decoded
            times = t_ms + np.arange(len(ids), dtype=np.int64) * step_ms
            t_ms = int(times[-1]) + step_ms
            amounts = np.round(rng.uniform(1, 200, len(ids)), 2)
            t0 = time.perf_counter()
            state.update({"card_id": keys}, times, {"amount": amounts})
            lat.append(time.perf_counter() - t0)
    del keys, ids, order
    gc.collect()
    after = rss_mb()
    entities = len(state)
    array_bytes = state.nbytes()
    with tempfile.TemporaryDirectory(prefix="vigil-behaviour-") as tmp:
        path = Path(tmp) / "state.npz"
        t0 = time.perf_counter()
        state.save(path)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        BehaviourState.load(spec, path)
        load_s = time.perf_counter() - t0
        snapshot_mb = path.stat().st_size / 2**20
    ms = np.array(lat) * 1000
    rows = cards * passes
    return {
        "cards": entities,
        "rows": rows,
        "batch_rows": batch,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "bytes_per_entity_rss": round((after - before) * 2**20 / entities),
        "bytes_per_entity_arrays": round(array_bytes / entities),
        "update_rows_per_s": round(rows / sum(lat)),
        "batch_ms_p50": round(float(np.percentile(ms, 50)), 2),
        "batch_ms_p99": round(float(np.percentile(ms, 99)), 2),
        "snapshot_mb": round(snapshot_mb, 1),
        "snapshot_save_s": round(save_s, 2),
        "snapshot_load_s": round(load_s, 2),
    }


def offline() -> dict[str, float | int]:
    from trainer.transactions import card_key, simulate, terminal_key

    tx = simulate(seed=0)
    keys = {
        "card_id": [card_key(c) for c in tx.customer_id.tolist()],
        "terminal_id": [terminal_key(t) for t in tx.terminal_id.tolist()],
    }
    spec = BehaviourSpec(entities=(CARD, EntityBehaviour(entity="terminal_id")))
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        f = offline_features(spec, keys, tx.tx_time_ms, {"amount": tx.tx_amount})
        runs.append(time.perf_counter() - t0)
    return {
        "rows": len(tx),
        "features": f.shape[1],
        "max_rows_per_card": int(np.bincount(tx.customer_id).max()),
        "max_rows_per_terminal": int(np.bincount(tx.terminal_id).max()),
        "seconds_first": round(runs[0], 2),
        "seconds_best_of_3": round(min(runs), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cards", type=int, default=1_000_000)
    ap.add_argument("--tx-per-card", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--no-offline", action="store_true", help="skip the 1.8 M-row offline run")
    a = ap.parse_args()
    result: dict[str, object] = {"online": online(a.cards, a.tx_per_card, a.batch)}
    if not a.no_offline:
        result["offline"] = offline()
    result["command"] = " ".join([".venv/bin/python bench/behaviour_memory.py", *sys.argv[1:]])
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "behaviour_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    on = result["online"]
    assert isinstance(on, dict)
    md = (
        f"# Behaviour state at {on['cards']:,} cards ({result['date']})\n\n"
        f"`{result['command']}`\n\n"
        f"Online: {on['rows']:,} transactions in batches of {on['batch_rows']:,} rows "
        f"(card_id: counts and mean amount over 1/7/30 days, time since previous; hour of day). "
        f"RSS went from {on['rss_before_mb']:,} MB to {on['rss_after_mb']:,} MB: "
        f"{on['bytes_per_entity_rss']} bytes per card, of which {on['bytes_per_entity_arrays']} "
        f"are the numpy arrays (capacity grows by doubling) and the rest the key dict and "
        f"the key strings. `update` ran at {on['update_rows_per_s']:,} rows/s "
        f"(batch p50 {on['batch_ms_p50']} ms, p99 {on['batch_ms_p99']} ms). A snapshot is "
        f"{on['snapshot_mb']} MB, saved in {on['snapshot_save_s']} s and loaded in "
        f"{on['snapshot_load_s']} s.\n"
    )
    off = result.get("offline")
    if isinstance(off, dict):
        md += (
            f"\nOffline: `offline_features` over the default payment simulation, {off['rows']:,} "
            f"rows x {off['features']} features (cards and terminals; up to "
            f"{off['max_rows_per_card']} rows for one card, so as many rounds), in one call: "
            f"{off['seconds_best_of_3']} s (best of 3; first call {off['seconds_first']} s).\n"
        )
    (out / "behaviour_memory.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
