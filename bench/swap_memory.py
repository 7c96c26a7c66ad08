"""Resident memory of a detector's model swaps: 50 consecutive load-verify-swap cycles.

    .venv/bin/python bench/swap_memory.py [--swaps 50]

Each cycle does what the model watcher does for a new version: load the bundle, create an
ONNX Runtime session, run the golden-sample self-test, score a batch, then drop the old
session. Writes bench/results/swap_memory.{json,md}.
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

from detector.contract.bundle import load_bundle  # noqa: E402
from detector.model.scorer import Scorer  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def two_bundles(workdir: Path) -> list[Path]:
    from trainer.build import build_bundle
    from trainer.config import TrainConfig
    from trainer.data import Dataset

    rng = np.random.default_rng(0)
    x = (
        rng.normal(size=(3000, 4)) @ rng.normal(size=(4, 52)) + 0.1 * rng.normal(size=(3000, 52))
    ).astype(np.float32)
    ds = Dataset([f"f{i}" for i in range(52)], x, [], 0)
    out = []
    for seed in (1, 2):
        out.append(
            build_bundle(
                ds, TrainConfig(epochs=3, seed=seed, folds=0), workdir / f"b{seed}", progress=False
            ).path
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--swaps", type=int, default=50)
    a = ap.parse_args()
    paths = two_bundles(Path(tempfile.mkdtemp(prefix="vigil-swap-")))
    x = np.random.default_rng(1).normal(size=(2000, 52)).astype(np.float32)
    live = Scorer(load_bundle(paths[0]), provider="cpu")
    live.score(x)
    gc.collect()
    samples = [rss_mb()]
    t0 = time.perf_counter()
    for i in range(a.swaps):
        candidate = Scorer(
            load_bundle(paths[(i + 1) % 2]), provider="cpu"
        )  # verify off the hot path
        candidate.score(x)
        live = candidate  # the swap; the old session is released here
        gc.collect()
        samples.append(rss_mb())
    seconds = (time.perf_counter() - t0) / a.swaps
    first_half = float(np.mean(samples[1 : a.swaps // 2 + 1]))
    second_half = float(np.mean(samples[a.swaps // 2 + 1 :]))
    result = {
        "swaps": a.swaps,
        "rss_mb_before": samples[0],
        "rss_mb_after": samples[-1],
        "rss_mb_max": max(samples),
        "growth_mb": samples[-1] - samples[0],
        "growth_second_half_vs_first_mb": second_half - first_half,
        "seconds_per_swap": seconds,
        "rss_mb_samples": samples,
        "command": "python bench/swap_memory.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# Memory across model swaps ({result['date']})\n\n`{result['command'].strip()}`\n\n"
        f"{a.swaps} load-verify-swap cycles of a 52-feature dense bundle: RSS {samples[0]:.0f} MB before, "
        f"{samples[-1]:.0f} MB after, {max(samples):.0f} MB at most; mean of the second half minus the "
        f"first half {result['growth_second_half_vs_first_mb']:+.1f} MB; {seconds * 1000:.0f} ms per swap.\n"
    )
    (out / "swap_memory.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
