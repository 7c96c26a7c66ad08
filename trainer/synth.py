"""Synthetic plant telemetry for the demo and the tests (numpy only, no torch).

Several entities (pumps), eight correlated channels driven by a daily load cycle and the
ambient temperature, with sensor noise; optionally fault episodes of four kinds:

- drift: one channel ramps away from its true value
- spike: a few isolated readings far off
- stuck: one channel freezes at its last value while the process moves on
- decoupled: one channel stops following the load (a broken correlation)

and optionally wear (`drift`), a slow change of normal behaviour that calls for retraining
rather than alarms: between a third and two thirds of the series the motor draws more
current, runs hotter and vibrates more at the same load, then stays so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CHANNELS", "FAULT_KINDS", "Telemetry", "simulate", "write_file"]

CHANNELS = [
    "flow_m3h",
    "pressure_bar",
    "motor_current_a",
    "speed_rpm",
    "bearing_temp_c",
    "vibration_mms",
    "outlet_temp_c",
    "power_kw",
]
FAULT_KINDS = ["drift", "spike", "stuck", "decoupled"]
_NOISE = np.array([1.0, 0.05, 0.3, 10.0, 0.5, 0.05, 0.3, 0.5])


@dataclass(frozen=True)
class Telemetry:
    timestamp_ms: np.ndarray  # [N] int64, in time order, all entities interleaved
    entity: np.ndarray  # [N] str
    values: np.ndarray  # [N, C] float32, columns as CHANNELS
    fault: np.ndarray  # [N] str: "" when normal, else the fault kind

    @property
    def label(self) -> np.ndarray:
        return (self.fault != "").astype(np.int8)

    def columns(self) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {"timestamp_ms": self.timestamp_ms, "entity": self.entity}
        cols |= {name: self.values[:, j] for j, name in enumerate(CHANNELS)}
        return cols | {"fault": self.fault, "label": self.label}


def _ar1(rng: np.random.Generator, n: int, rho: float, sigma: float) -> np.ndarray:
    e = rng.normal(0.0, sigma * np.sqrt(1 - rho**2), n)
    out = np.empty(n)
    acc = rng.normal(0.0, sigma)
    for i in range(n):  # short series (one per entity): a loop is clearer than lfilter here
        acc = rho * acc + e[i]
        out[i] = acc
    return out


_WEAR = np.array([0.0, 0.0, 3.0, 0.0, 4.0, 0.4, 0.0, 0.0])  # per unit of wear, in raw units


def _wear(n: int, drift: float) -> np.ndarray:
    """[n, C] offsets: 0 for the first third, a linear ramp, `drift` x _WEAR for the last."""
    ramp = np.clip((np.arange(n) - n / 3) / (n / 3), 0.0, 1.0)
    return drift * ramp[:, None] * _WEAR


def _entity_signals(rng: np.random.Generator, t_s: np.ndarray, phase: float) -> np.ndarray:
    day = 2 * np.pi * t_s / 86_400.0
    load = np.clip(0.6 + 0.25 * np.sin(day + phase) + _ar1(rng, len(t_s), 0.98, 0.06), 0.05, 1.2)
    ambient = 20.0 + 5.0 * np.sin(day - np.pi / 2) + _ar1(rng, len(t_s), 0.99, 0.8)
    flow = 100.0 * load
    pressure = 2.0 + 3.0 * load
    clean = np.stack(
        [
            flow,
            pressure,
            10.0 + 25.0 * load + 0.05 * ambient,
            1500.0 + 1200.0 * load,
            ambient + 30.0 * load,
            0.5 + 1.5 * load**2,
            ambient + 15.0 * load,
            0.9 * pressure * flow / 10.0,
        ],
        axis=1,
    )
    return clean + rng.normal(0.0, 1.0, clean.shape) * _NOISE


def _inject(
    rng: np.random.Generator, x: np.ndarray, kinds: np.ndarray, fault_rate: float, episode: int
) -> None:
    n = len(x)
    n_episodes = round(fault_rate * n / episode)
    if n_episodes == 0:
        return
    starts = np.sort(
        rng.choice(np.arange(episode, max(episode + 1, n - episode)), n_episodes, replace=False)
    )
    scale = x.std(axis=0) + 1e-6
    for s in starts:
        e = min(n, s + episode)
        if (kinds[max(0, s - episode) : e] != "").any():
            continue  # keep episodes apart so each one is a clear, labelled event
        kind = FAULT_KINDS[rng.integers(len(FAULT_KINDS))]
        c = rng.integers(x.shape[1])
        if kind == "drift":
            x[s:e, c] += np.linspace(1.0, 6.0, e - s) * scale[c] * rng.choice([-1, 1])
        elif kind == "spike":
            e = s + 3
            x[s:e, c] += 8.0 * scale[c] * rng.choice([-1, 1])
        elif kind == "stuck":
            x[s:e, c] = x[s - 1, c] + 2.0 * scale[c] * rng.choice([-1, 1])
        else:  # decoupled: right marginal, wrong relationship with the rest
            x[s:e, c] = x[:, c].mean() + rng.normal(0.0, 1.5 * scale[c], e - s)
        kinds[s:e] = kind


def simulate(
    steps: int,
    entities: int = 4,
    *,
    seed: int = 0,
    fault_rate: float = 0.0,
    episode: int = 30,
    step_seconds: float = 60.0,
    start_ms: int = 1_767_225_600_000,  # 2026-01-01T00:00:00Z
    drift: float = 0.0,
) -> Telemetry:
    """`steps` samples per entity, interleaved by time. `fault_rate` is the share of each
    entity's samples inside fault episodes (roughly; episodes never overlap). `drift` is the
    wear reached in the last third (0: none; 1: several noise widths on three channels)."""
    rng = np.random.default_rng(seed)
    t_s = np.arange(steps) * step_seconds
    per_entity = []
    for _ in range(entities):
        x = _entity_signals(rng, t_s, phase=rng.uniform(-0.5, 0.5)) + _wear(steps, drift)
        kinds = np.full(steps, "", dtype=object)
        _inject(rng, x, kinds, fault_rate, episode)
        per_entity.append((x, kinds))
    values = np.stack([x for x, _ in per_entity], axis=1).reshape(steps * entities, len(CHANNELS))
    fault = np.stack([k for _, k in per_entity], axis=1).reshape(-1).astype(str)
    names = np.array([f"pump-{i + 1:02d}" for i in range(entities)])
    return Telemetry(
        timestamp_ms=np.repeat(start_ms + (t_s * 1000).astype(np.int64), entities),
        entity=np.tile(names, steps),
        values=values.astype(np.float32),
        fault=fault,
    )


def write_file(t: Telemetry, out: Path) -> None:
    """Write telemetry as .parquet, .jsonl (.ndjson) or CSV (any other suffix)."""
    import pyarrow as pa

    table = pa.table(t.columns())
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    elif suffix in (".jsonl", ".ndjson"):
        import orjson

        with out.open("wb") as f:
            for row in table.to_pylist():
                f.write(orjson.dumps(row) + b"\n")
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, out)
