"""Keeping dashboards and alert rules honest: every PromQL expression must parse, and name
only series the detector really exports, with labels those series really have.

The list comes from the detector itself (a fresh `detector.ops.metrics.Metrics()`), never from
a copy that could drift.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

__all__ = [
    "TARGET_LABELS",
    "check_with_promtool",
    "exported_series",
    "known_values",
    "problems_in",
]

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself makes for each target.
SCRAPE_SERIES: Mapping[str, frozenset[str]] = {"up": frozenset()}


def _promql_parser() -> ModuleType:
    try:
        import promql_parser
    except ImportError:
        pytest.fail(
            "promql-parser is missing from the virtualenv: run scripts/install-deploy-tools"
        )
    return promql_parser


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Series name -> label names, for every series a detector's /metrics can contain."""
    from prometheus_client.metrics import MetricWrapperBase

    from detector.ops.metrics import Metrics

    metrics = Metrics()
    labels: dict[str, tuple[str, ...]] = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            # prometheus_client has no public accessor for a metric's label names.
            labels[collector._name] = tuple(collector._labelnames)
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        # A custom collector's families (GaugeMetricFamily, ...) carry their label names
        # themselves, even while they have no samples.
        names = frozenset(labels.get(family.name, getattr(family, "_labelnames", ())))
        if family.type == "counter":
            series[f"{family.name}_total"] = names
        elif family.type == "histogram":
            series[f"{family.name}_bucket"] = names | {"le"}
            series[f"{family.name}_sum"] = names
            series[f"{family.name}_count"] = names
        else:
            series[family.name] = names
    return series


@cache
def known_values() -> dict[tuple[str, str], frozenset[str]]:
    """(series, label) -> its values, for the labels the detector pre-declares (kind,
    operation, reason): a matcher on another value would never match anything."""
    from detector.ops.metrics import Metrics

    values: dict[tuple[str, str], set[str]] = {}
    for family in Metrics().registry.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label != "le":
                    values.setdefault((sample.name, label), set()).add(value)
    return {k: frozenset(v) for k, v in values.items()}


def problems_in(expr: str, extra: Mapping[str, frozenset[str]] = SCRAPE_SERIES) -> list[str]:
    """Why `expr` does not parse, or which series or labels it names that do not exist."""
    p = _promql_parser()
    try:
        ast = p.parse(expr)
    except ValueError as e:
        return [f"does not parse: {e}"]
    known = exported_series() | dict(extra)
    problems: list[str] = []

    def visit(node: object) -> None:
        if not isinstance(node, p.VectorSelector):
            return
        name = node.name or next(
            (m.value for m in node.matchers.matchers if m.name == "__name__"), None
        )
        if name not in known:
            problems.append(f"series {name!r} is not exported by the detector")
            return
        for m in node.matchers.matchers:
            if m.name not in known[name] | TARGET_LABELS | {"__name__"}:
                problems.append(f"{name} has no label {m.name!r} (it has {sorted(known[name])})")
            values = known_values().get((name, m.name))
            if values is not None and m.op == p.MatchOp.Equal and m.value not in values:
                problems.append(f"{name}{{{m.name}={m.value!r}}} never exists: {sorted(values)}")

    p.walk(ast, pre_visit=visit)
    return problems


def check_with_promtool(promtool: str, exprs: Iterable[str], where: Path) -> None:
    """Make promtool parse each expression, as a recording rule of a throwaway rule file."""
    rules = [{"record": f"vigil_check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    assert rules, "no expressions to check"
    path = where / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"promtool rejects an expression:\n{out.stdout}{out.stderr}"
    assert re.search(rf"SUCCESS: {len(rules)} rules found", out.stdout), out.stdout
