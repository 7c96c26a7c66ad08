"""Inference alone: ONNX Runtime against PyTorch eager, same model, same device.

    .venv/bin/python bench/inference.py [--quick]

Two models trained on synthetic 52-feature telemetry (TEP-shaped): the dense row model and
the windowed model recommended for sensor telemetry (W = 20, lags 3, window-mean). For each,
rows (windows) per second by batch size for:

- ONNX Runtime on the CPU, and on CUDA when a GPU is present: plain `run` (host arrays in
  and out) and, on CUDA, with IO binding (input and outputs stay on the device: the
  compute alone);
- PyTorch eager (`torch.no_grad`) on the CPU, and on CUDA when present.

Every output is computed on both sides (score, per-feature error, reconstruction, code).
Writes bench/results/inference.json and .md; on a machine without a GPU the CUDA rows are
simply absent, and the file says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from throughput import telemetry  # noqa: E402

from trainer.config import TrainConfig  # noqa: E402
from trainer.export import export_onnx  # noqa: E402
from trainer.fit import fit  # noqa: E402

BATCHES = (1, 64, 256, 1024, 4096, 16384)


def windows(x: np.ndarray, w: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(x, w, axis=0).transpose(0, 2, 1).copy()


def rate(fn, rows: int, seconds: float) -> float:
    """Rows per second of `fn` over at least `seconds` (after two warm-up calls)."""
    fn()
    fn()
    n, t0 = 0, time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return rows * n / dt


def ort_rates(model: bytes, x: np.ndarray, device: str, seconds: float) -> dict[str, dict]:
    if device == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    else:
        providers = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model, providers=providers)
    if sess.get_providers()[0] != providers[0]:  # listed is not the same as running
        return {}
    out: dict[str, dict] = {"run": {}}
    for b in BATCHES:
        xb = x[:b]
        out["run"][str(b)] = rate(lambda xb=xb: sess.run(None, {"x": xb}), len(xb), seconds)
    if device == "cuda":
        out["iobinding"] = {}
        for b in BATCHES:
            xb = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x[:b]), "cuda", 0)
            binding = sess.io_binding()
            binding.bind_ortvalue_input("x", xb)
            for o in sess.get_outputs():
                binding.bind_output(o.name, "cuda")

            def go(binding=binding) -> None:
                sess.run_with_iobinding(binding)

            out["iobinding"][str(b)] = rate(go, b, seconds)
    return out


def torch_rates(model: torch.nn.Module, x: np.ndarray, device: str, seconds: float) -> dict:
    m = model.to(device).eval()
    out = {}
    for b in BATCHES:
        xb = torch.from_numpy(np.ascontiguousarray(x[:b])).to(device)

        def go(xb=xb) -> None:
            with torch.no_grad():
                m(xb)
            if device == "cuda":
                torch.cuda.synchronize()

        out[str(b)] = rate(go, b, seconds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short runs; print, write nothing")
    a = ap.parse_args()
    seconds = 0.3 if a.quick else 1.5
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    torch.set_num_threads(os.cpu_count() or 1)
    x = telemetry(40_000, seed=0)
    models = {
        "dense": (TrainConfig(epochs=3 if a.quick else 20, device="cpu"), x),
        "windowed W=20 L=3 window-mean": (
            TrainConfig(
                window=20, lags=3, score="window-mean", epochs=2 if a.quick else 10, device="cpu"
            ),
            windows(x, 20),
        ),
    }
    results: dict[str, dict] = {}
    for name, (cfg, inputs) in models.items():
        n = len(x) * 3 // 4
        model = fit(x[:n], x[n:], cfg, progress=False).model.scoring(cfg.score)
        onnx_bytes = export_onnx(model, inputs[:16])
        probe = inputs[: max(BATCHES)]
        r: dict[str, dict] = {}
        for dev in devices:
            r[f"onnxruntime {dev}"] = ort_rates(onnx_bytes, probe, dev, seconds)
            r[f"torch eager {dev}"] = torch_rates(model, probe, dev, seconds)
        results[name] = r
        print(name, json.dumps(r, indent=1), flush=True)
    if a.quick:
        return 0
    results_doc = {
        "results_rows_per_s": results,
        "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        },
        "command": "python bench/inference.py",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = ROOT / "bench" / "results"
    (out / "inference.json").write_text(json.dumps(results_doc, indent=2) + "\n")
    md = [
        f"# Inference alone ({results_doc['date']}, {os.cpu_count()} cores, "
        f"GPU: {results_doc['gpu'] or 'none on this machine'})",
        "",
        "`python bench/inference.py`: rows (windows) per second by batch size, every output "
        "computed (score, per-feature error, reconstruction, code).",
        "",
    ]
    for name, r in results.items():
        md += [f"## {name}", "", "| engine | " + " | ".join(map(str, BATCHES)) + " |"]
        md.append("|---|" + "---:|" * len(BATCHES))
        for engine, v in r.items():
            if "torch" in engine:
                rows = [(engine, v)]
            else:  # an empty dict: the provider did not run here
                rows = [(engine, v.get("run", {}))]
                if "iobinding" in v:
                    rows.append((f"{engine}, IO binding", v["iobinding"]))
            for label, by in rows:
                if by:
                    md.append(
                        f"| {label} | " + " | ".join(f"{by[str(b)]:,.0f}" for b in BATCHES) + " |"
                    )
        md.append("")
    (out / "inference.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
