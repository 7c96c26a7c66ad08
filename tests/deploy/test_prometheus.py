"""The alert rules and the example Prometheus configuration, checked by promtool itself."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import problems_in
from tests.deploy.schemas import K8S_VERSIONS, validate

PROM = DEPLOY / "prometheus"
RULES = PROM / "vigil-detector.rules.yml"
RULE_TESTS = PROM / "vigil-detector.rules.test.yml"

# The alerts issue 6 asks for, each with promtool unit tests that make it fire.
REQUIRED_ALERTS = {
    "VigilDetectorDown",
    "VigilDetectorNotReady",
    "VigilConsumerLagGrowing",
    "VigilDeadLetterRateHigh",
    "VigilPublishFailing",
    "VigilNoBatchesWhileLagging",
    "VigilDecisionLatencyHigh",
    "VigilAnomalyRateSpike",
    # Drift and retraining: the model no longer describes the stream.
    "VigilScoreDrift",
    "VigilAlertRateAboveCalibration",
}


def promtool_run(promtool: str, *args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_pass_promtool_check(promtool: str) -> None:
    out = promtool_run(promtool, "check", "rules", RULES.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    out = promtool_run(promtool, "test", "rules", RULE_TESTS.name)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("alert", "threshold", "changed"),
    [
        ("VigilDeadLetterRateHigh", "> 0.01", "> 0.10"),
        ("VigilScoreDrift", "> 0.25\n", "> 0.5\n"),
        ("VigilAlertRateAboveCalibration", "> 5\n", "> 12\n"),
    ],
)
def test_rule_unit_tests_can_fail(
    promtool: str, tmp_path: Path, alert: str, threshold: str, changed: str
) -> None:
    """The unit tests compare rendered alerts exactly: a changed threshold breaks them."""
    suite = yaml.safe_load(RULE_TESTS.read_text())
    suite["tests"] = [
        case
        for case in suite["tests"]
        if any(t["alertname"] == alert for t in case["alert_rule_test"])
    ]
    (tmp_path / RULE_TESTS.name).write_text(yaml.safe_dump(suite))
    text = RULES.read_text()
    assert text.count(threshold) == 1, f"{threshold!r} must name {alert}'s threshold alone"
    (tmp_path / RULES.name).write_text(text.replace(threshold, changed))
    out = promtool_run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert out.returncode != 0
    assert alert in out.stdout + out.stderr


def test_every_alert_asked_for_exists_and_is_unit_tested() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts >= REQUIRED_ALERTS, REQUIRED_ALERTS - alerts
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        t["alertname"] for case in cases for t in case["alert_rule_test"] if t.get("exp_alerts")
    }
    assert alerts <= fired, f"alerts no unit test makes fire: {sorted(alerts - fired)}"
    quiet = {
        t["alertname"] for case in cases for t in case["alert_rule_test"] if not t.get("exp_alerts")
    }
    assert alerts <= quiet, f"alerts no unit test keeps quiet: {sorted(alerts - quiet)}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r.get("record"))
def test_rules_name_only_exported_series(rule: dict[str, Any]) -> None:
    assert problems_in(rule["expr"]) == []
    if "alert" in rule:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description"} <= rule["annotations"].keys()
        assert 'job="vigil-detector"' in rule["expr"], "select the detector's job explicitly"


def test_example_config_passes_promtool(promtool: str) -> None:
    out = promtool_run(promtool, "check", "config", "prometheus.example.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((PROM / "prometheus.example.yml").read_text())
    assert RULES.name in config["rule_files"]
    assert [s["job_name"] for s in config["scrape_configs"]] == ["vigil-detector"]


def test_rules_wrap_into_a_valid_prometheusrule() -> None:
    """deploy/README.md's recipe for the Prometheus Operator: the rule file indented under
    the `spec:` of a PrometheusRule, checked against the operator's CRD."""
    header = (
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"
        "metadata:\n  name: vigil-detector\n  namespace: vigil\nspec:\n"
    )
    indented = "".join(f"  {line}" for line in RULES.read_text().splitlines(True))  # sed
    doc = yaml.safe_load(header + indented)
    assert doc["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    validate(doc, K8S_VERSIONS[-1])
    assert (
        "sed 's/^/  /' deploy/prometheus/vigil-detector.rules.yml"
        in (DEPLOY / "README.md").read_text()
    )
