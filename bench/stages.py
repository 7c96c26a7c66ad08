"""A windowed model's inference, whole graph against its two stages, on the daemon's batches.

    .venv/bin/python bench/stages.py [--batch 5000] [--threads 1] [--seconds 3] [--out DIR]

The bench's windowed model (W = 20, lags 3, window-mean, 52 features; `throughput.py`) scores
the windows that the daemon's entity state builds from batches of telemetry from 16 units,
through `Scorer.score` twice: once with the bundle's stages (each sample prepared once,
the windows gathered from the prepared rows) and once with model.onnx alone (every window
scaled and whitened whole, a part at a time). Alternating runs; outputs checked equal.
Writes stages.{json,md} to --out (bench/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import UNITS, make_windowed_model, telemetry  # noqa: E402

from detector.contract.bundle import load_bundle  # noqa: E402
from detector.features.windows import Windows  # noqa: E402
from detector.model.scorer import Scorer  # noqa: E402
from detector.state.windows import EntityState  # noqa: E402

NAMES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]


def daemon_batches(batch: int, n: int) -> list[Windows]:
    """The windows of `n` messages in batches, as the daemon's state hands them over."""
    x = telemetry(n, seed=3, anomalous=0.02)
    units = [f"unit-{i % UNITS}" for i in range(n)]
    state = EntityState(20, x.shape[1])
    out = []
    for lo in range(0, n - batch + 1, batch):
        w = state.windows(
            ["telemetry"] * batch,
            np.zeros(batch, np.int64),
            units[lo : lo + batch],
            np.arange(lo, lo + batch, dtype=np.float64),
            x[lo : lo + batch],
        )
        out.append(w.windows)
    return out[1:]  # the first batch is mostly warm-up


def windows_per_s(scorer: Scorer, batches: list[Windows], seconds: float) -> float:
    scorer.score(batches[0])
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds:
        for w in batches:
            scorer.score(w)
            n += len(w)
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=5000, help="messages per batch")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(make_windowed_model(Path(tmp), NAMES))
    staged = Scorer(bundle, provider="cpu", threads=a.threads)
    whole = Scorer(replace(bundle, stage_bytes=None), provider="cpu", threads=a.threads)
    batches = daemon_batches(a.batch, a.batch * 6)
    x, y = staged.score(batches[0]), whole.score(batches[0])
    worst = float(np.max(np.abs(x.score - y.score) / np.maximum(1.0, np.abs(y.score))))
    assert worst < 1e-4, f"the stages disagree with model.onnx by {worst:.2e}"
    runs: dict[str, list[float]] = {"stages": [], "model.onnx": []}
    for _ in range(a.rounds):
        runs["model.onnx"].append(windows_per_s(whole, batches, a.seconds))
        runs["stages"].append(windows_per_s(staged, batches, a.seconds))
    best = {k: max(v) for k, v in runs.items()}
    result = {
        "command": " ".join(["python bench/stages.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "batch": a.batch,
        "windows_per_batch": int(np.mean([len(w) for w in batches])),
        "threads": a.threads,
        "windows_per_s": runs,
        "best_windows_per_s": best,
        "speedup": best["stages"] / best["model.onnx"],
        "max_relative_score_difference": worst,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "stages.json").write_text(json.dumps(result, indent=2) + "\n")
    md = "\n".join(
        [
            f"# Windowed inference: model.onnx against its stages ({result['date']})",
            "",
            f"`{result['command']}`: the bench's windowed model (W = 20, lags 3, window-mean, "
            f"52 features), batches of {a.batch} messages from {UNITS} units as the daemon's "
            f"entity state hands them over, ONNX Runtime on the CPU with {a.threads} thread(s); "
            f"best of {a.rounds} alternating runs of {a.seconds:g} s.",
            "",
            "| graph | windows/s | runs |",
            "|---|---:|---|",
            *(
                f"| {k} | {best[k]:,.0f} | {', '.join(f'{r:,.0f}' for r in v)} |"
                for k, v in runs.items()
            ),
            "",
            f"Stages: **{result['speedup']:.2f}x**; scores equal within {worst:.1e}.",
            "",
        ]
    )
    (a.out / "stages.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
