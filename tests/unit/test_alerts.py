"""The alert rules (charts/k8s-job-dispatcher/files/alerts.yaml): Prometheus's own promtool checks
them and runs their unit tests (tests/alerts/alerts_test.yaml), every alert is tested firing and
not firing, every threshold is a chart value with the same default, and every metric they read is
one a worker serves.

promtool comes with Debian's `prometheus` package, which stack/install-deps.sh installs (CI runs
it): without it these tests fail, saying so, rather than pass unchecked."""

from __future__ import annotations

import re
from typing import Any

import yaml
from harness.monitoring import CHART, REPO, RULES, RULES_JOB, promtool, served

RULE_TESTS = REPO / "tests" / "alerts" / "alerts_test.yaml"
THRESHOLD = re.compile(r"(\S+)\s+# threshold: (\w+)$", re.M)


def alerts() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    assert group["name"] == "k8s-job-dispatcher"
    return list(group["rules"])


def test_promtool_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_both_firing_and_not_firing() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", ())
    ]
    names = [rule["alert"] for rule in alerts()]

    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert sorted(firing) == sorted(names)
    assert sorted(quiet) == sorted(names)


def test_every_threshold_of_the_rules_is_a_chart_value_with_the_same_default() -> None:
    marked = {name: value for value, name in THRESHOLD.findall(RULES.read_text())}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = values["metrics"]["prometheusRule"]["thresholds"]

    assert sorted(marked) == sorted(defaults)
    assert marked == {name: str(value) for name, value in defaults.items()}


def test_every_rule_reads_the_dispatchers_scrape_job_and_metrics_a_worker_serves() -> None:
    for rule in alerts():
        expr = rule["expr"]
        selectors = re.findall(r"\b(dispatcher_\w+)(\{[^}]*\})?", expr)
        assert selectors, rule["alert"]
        for name, labels in selectors:
            assert name in served(), (rule["alert"], name)
            assert f'job="{RULES_JOB}"' in labels, (rule["alert"], name)
