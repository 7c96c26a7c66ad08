"""Peak memory of `vigil-train fit` on a large file: 5 million rows x 50 features.

    .venv/bin/python bench/load_memory.py [--rows 5000000] [--features 50] [--format parquet|csv]

Writes the file once (synthetic correlated telemetry, in a temporary directory), then runs
`vigil-train fit --epochs 1` on it in a child process and reads the child's peak RSS
(getrusage). Writes bench/results/load_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, rows: int, features: int, fmt: str) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, features)).astype(np.float32)
    writer = None
    chunk = 500_000
    for lo in range(0, rows, chunk):
        n = min(chunk, rows - lo)
        x = rng.normal(size=(n, 5)).astype(np.float32) @ mix + 0.1 * rng.normal(
            size=(n, features)
        ).astype(np.float32)
        table = pa.table({f"f{i}": x[:, i] for i in range(features)})
        if fmt == "parquet":
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        else:
            with path.open("ab") as f:
                pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=lo == 0))
    if writer is not None:
        writer.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--format", choices=["parquet", "csv"], default="csv")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-load-") as tmp:
        data = Path(tmp) / f"big.{a.format}"
        t0 = time.perf_counter()
        write(data, a.rows, a.features, a.format)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                "fit",
                "--data",
                str(data),
                "--out",
                str(Path(tmp) / "b"),
                "--epochs",
                "1",
                "--batch-size",
                "4096",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
        )
        fit_s = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size_mb = data.stat().st_size / 2**20
    result = {
        "rows": a.rows,
        "features": a.features,
        "format": a.format,
        "file_mb": round(size_mb),
        "write_seconds": round(write_s, 1),
        "fit_seconds_one_epoch": round(fit_s, 1),
        "peak_rss_mb": round(peak_mb),
        "matrix_mb_float32": round(a.rows * a.features * 4 / 2**20),
        "command": "python bench/load_memory.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# Training on a large file ({result['date']})\n\n`{result['command'].strip()}`\n\n"
        f"{a.rows:,} rows x {a.features} features ({a.format}, {size_mb:,.0f} MB): `vigil-train fit "
        f"--epochs 1` took {fit_s:.0f} s with a peak RSS of {peak_mb:,.0f} MB (the float32 matrix "
        f"alone is {result['matrix_mb_float32']:,} MB) on this 24 GiB machine.\n"
    )
    (out / "load_memory.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
