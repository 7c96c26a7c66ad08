"""A/B: `vigil-detect run` of this tree against another commit, on one topic, in one run.

    .venv/bin/python bench/ab.py --ref c2f2fcb [--messages 300000] [--rounds 3]

For a change that must not slow the hot path (a refactor, say): the same dense and
windowed bundles, the same pre-produced topic and the same local broker for both trees,
and the runs alternate (this tree, then the other, `--rounds` times) so that a slow
stretch of the machine lands on both. Each run is bench/throughput.py's `vigil` run: a
fresh group from the earliest offset, timed from its first decided batch until every
message is decided. The other tree is checked out with `git worktree` into a temporary
folder, which is removed afterwards; the bundles are built by this tree's trainer.

Writes bench/results/ab.json and ab.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

from bench.throughput import (  # noqa: E402
    free_port,
    make_model,
    make_windowed_model,
    produce,
    vigil,
)

OUT = ROOT / "bench" / "results"


@contextlib.contextmanager
def tree(path: Path) -> Iterator[None]:
    """Detectors started inside run the `detector` package of `path`: `python -m` puts the
    working directory first on sys.path, and PYTHONPATH comes before the editable install."""
    cwd, pythonpath = Path.cwd(), os.environ.get("PYTHONPATH")
    os.chdir(path)
    os.environ["PYTHONPATH"] = str(path)
    try:
        yield
    finally:
        os.chdir(cwd)
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ref", required=True, help="the commit to compare with, e.g. HEAD~3")
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    ref = subprocess.run(
        ["git", "rev-parse", "--short", a.ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="vigil-ab-"))
    other = workdir / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(other), ref], cwd=ROOT, check=True
    )
    port = free_port()
    kafka_dir = workdir / "kafka"
    subprocess.run(
        [
            str(ROOT / "scripts" / "kafka-dev"),
            *("start", "--port", str(port), "--controller-port", str(free_port())),
            *("--dir", str(kafka_dir)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    bootstrap = f"127.0.0.1:{port}"
    runs: dict[str, dict[str, list[float]]] = {}
    try:
        model = make_model(workdir)
        from detector.contract.bundle import load_bundle

        names = load_bundle(model).features
        windowed = make_windowed_model(workdir, names)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("ab", a.partitions, 1)])
        admin.close()
        print(f"producing {a.messages} messages…", flush=True)
        produce(bootstrap, "ab", a.messages, names)
        for r in range(a.rounds):
            for kind, bundle in (("dense", model), ("windowed", windowed)):
                for label, path in ((f"this tree ({head})", ROOT), (f"{ref}", other)):
                    with tree(path):
                        run = vigil(bootstrap, "ab", bundle, a.messages, workdir)
                    runs.setdefault(kind, {}).setdefault(label, []).append(run["msg_per_s"])
                    print(
                        f"round {r + 1} {kind} {label}: {run['msg_per_s']:,.0f} msg/s", flush=True
                    )
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "kafka-dev"), "stop", "--dir", str(kafka_dir)],
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT)
    result = {
        "command": "python bench/ab.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "head": head + (" (with uncommitted changes)" if dirty else ""),
        "ref": ref,
        "messages": a.messages,
        "partitions": a.partitions,
        "runs_msg_per_s": runs,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ab.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# A/B: this tree against {ref} ({result['date']})",
        "",
        f"`{result['command']}`: {a.messages:,} messages, {a.partitions} partitions, "
        f"runs alternating, this tree = {result['head']}.",
        "",
        "| model | tree | runs (msg/s) | median | vs the other |",
        "|---|---|---|---:|---:|",
    ]
    for kind, by_tree in runs.items():
        (mine, a_runs), (theirs, b_runs) = by_tree.items()
        ma, mb = statistics.median(a_runs), statistics.median(b_runs)
        fmt = ", ".join
        lines.append(
            f"| {kind} | {mine} | {fmt(f'{x:,.0f}' for x in a_runs)} | {ma:,.0f} | {ma / mb:.2f} |"
        )
        lines.append(f"| {kind} | {theirs} | {fmt(f'{x:,.0f}' for x in b_runs)} | {mb:,.0f} | |")
    (a.out / "ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
