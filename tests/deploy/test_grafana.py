"""The Grafana dashboard: Grafana's own types accept it, and its queries are real PromQL over
series the detector exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, HERE
from tests.deploy.promql import check_with_promtool, problems_in

DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
DASHBOARD = DEPLOY / "grafana" / "vigil-detector.json"
# What Grafana puts in place of its variables before a query reaches Prometheus.
VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "job": "vigil-detector",
    "instance": ".*",
}
# What the issue asks the dashboard to show, as series each must use somewhere.
REQUIRED_SERIES = {
    "throughput": "vigil_messages_consumed_total",
    "anomalies": "vigil_anomalies_total",
    "DLQ by reason": "vigil_invalid_messages_total",
    "decision latency": "vigil_decision_latency_seconds_bucket",
    "consumer lag": "vigil_consumer_lag_messages",
    "inference time": "vigil_inference_seconds_bucket",
    "batch size": "vigil_batch_size_messages_bucket",
    "score distribution": "vigil_score_bucket",
    "severity": "vigil_severity_ratio_bucket",
    "readiness": "vigil_ready",
    "model info": "vigil_model_info",
    "score drift": "vigil_score_drift_psi",
    "recent alert ratio": "vigil_recent_alert_ratio",
    "calibrated alert ratio": "vigil_calibrated_alert_ratio",
    "alerts by card, terminal or machine": "vigil_entity_anomalies",
}


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    out = [
        (f"panel {p['id']} {p.get('title')!r} target {t['refId']}", t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: expected label_values(SELECTOR, LABEL), got {q!r}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def substitute(expr: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def test_dashboards_are_found() -> None:
    assert DASHBOARD in DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_types_accept_the_dashboard(
    path: Path, grafana_node_modules: Path, tmp_path: Path
) -> None:
    assert typecheck(path.read_text(), grafana_node_modules, tmp_path) == ""


def test_grafana_types_reject_a_broken_dashboard(
    grafana_node_modules: Path, tmp_path: Path
) -> None:
    broken = load()
    broken["panels"][1]["options"]["reduceOptions"]["calc"] = ["mean"]  # calcs, misspelt
    errors = typecheck(json.dumps(broken), grafana_node_modules, tmp_path)
    assert "'\"calc\"' does not exist" in errors


def typecheck(dashboard_json: str, node_modules: Path, work: Path) -> str:
    """tsc's complaints about the dashboard as a `CheckedDashboard` (empty when none)."""
    for name in ("dashboard.ts", "tsconfig.json"):
        shutil.copy(HERE / "grafana_check" / name, work / name)
    (work / "node_modules").symlink_to(node_modules)
    (work / "check.ts").write_text(
        'import type { CheckedDashboard } from "./dashboard";\n'
        f"export const dashboard: CheckedDashboard = {dashboard_json};\n"
    )
    tsc = node_modules / "typescript" / "bin" / "tsc"
    out = subprocess.run(
        ["node", str(tsc), "-p", str(work)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode in (0, 2), out.stdout + out.stderr  # 2: type errors found
    return out.stdout + out.stderr


def test_queries_parse_in_promtool(promtool: str, tmp_path: Path) -> None:
    check_with_promtool(promtool, [substitute(q) for _, q in queries(load())], tmp_path)


def test_queries_name_only_exported_series() -> None:
    problems = [f"{where}: {p}" for where, q in queries(load()) for p in problems_in(substitute(q))]
    assert problems == []


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(q for _, q in queries(load()))
    missing = {what for what, series in REQUIRED_SERIES.items() if series not in exprs}
    assert not missing
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "group_left (name, version) vigil_model_info" in exprs, "rates by model version"


def test_drift_panel_marks_the_psi_thresholds() -> None:
    """PSI: below 0.1 fine, 0.1 to 0.25 moderate, above 0.25 retrain (detector/contract/drift.py),
    drawn on the panel that plots it."""
    (panel,) = [
        p
        for p in panels(load())
        if any("vigil_score_drift_psi" in t["expr"] for t in p.get("targets", []))
    ]
    defaults = panel["fieldConfig"]["defaults"]
    steps = [s["value"] for s in defaults["thresholds"]["steps"]]
    assert steps == [None, 0.1, 0.25]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    rows = [p["title"] for p in load()["panels"] if p["type"] == "row"]
    assert "Drift and retraining" in rows


def test_every_query_uses_the_datasource_variable() -> None:
    d = load()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["datasource"] == ref, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == ref, p["title"]
            assert '{job=~"$job", instance=~"$instance"}' in t["expr"], (p["title"], t["expr"])


def test_layout_has_unique_ids_and_no_overlaps() -> None:
    d = load()
    ps = list(panels(d))
    assert len({p["id"] for p in ps}) == len(ps)
    taken: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells


def test_provisioning_points_at_the_dashboards() -> None:
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "vigil.yaml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
