"""The Prometheus alert rules: valid for the real promtool, unit-tested alert by alert, and shaped
so that an operator who gets paged can act (severity, summary, description, a runbook section).

promtool (Debian package `prometheus`) checks the rules and runs their unit tests in
dashboards/prometheus/driftd-alerts.test.yml. The structure checks below need no promtool: they
hold every rule to the monitoring-mixins conventions, every runbook link to a heading of
docs/runbooks.md, every metric to docs/metrics.md, and every alert to a test that fires it and
one that keeps it silent. That the metrics exist in a running daemon is the contract test's job.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.serve import Server

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "dashboards" / "prometheus"
RULES = RULES_DIR / "driftd-alerts.yml"
RULE_TESTS = RULES_DIR / "driftd-alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# The one place an operator sets the runbooks' address: an external label of their Prometheus.
RUNBOOK_LABEL = "driftd_runbook_base"
RUNBOOK_URL = (
    "{{ with $externalLabels.driftd_runbook_base }}{{ . }}{{ else }}docs/runbooks.md{{ end }}#"
)
SEVERITIES = {"critical", "warning", "info"}
ALERT_NAME = re.compile(r"^Driftd[A-Z][A-Za-z0-9]*$")
# What issue 8 asks alerts for; more may be added, none of these removed.
REQUIRED_ALERTS = {
    "DriftdDriftDetected",
    "DriftdQualityDegraded",
    "DriftdCheckStale",
    "DriftdJobFailed",
    "DriftdRetuneStale",
    "DriftdNoLeader",
    "DriftdMultipleLeaders",
    "DriftdIngestBackpressure",
    "DriftdSamplesDropped",
    "DriftdAutoRollback",
}
# Alerts about the replicas as a whole, not about one deployment.
NOT_PER_DEPLOYMENT = {"DriftdNoLeader", "DriftdMultipleLeaders"}
# A rate() or increase() needs at least four samples in its range to be robust to one missed
# scrape; at the slowest scrape interval driftd supports (60 s) that is 4 minutes.
SLOWEST_SCRAPE_SECONDS = 60
MIN_SAMPLES_IN_RANGE = 4

METRIC = re.compile(r"driftd_[a-z0-9_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
RANGE_FUNCTION = re.compile(r"\b(rate|increase)\(")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)

Rule = dict[str, Any]


def _rules() -> list[Rule]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> list[Rule]:
    return [rule for rule in _rules() if "alert" in rule]


@functools.cache
def _rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return tests


def _seconds(duration: str) -> int:
    match = DURATION.match(duration)
    if not duration or match is None:
        raise ValueError(f"{duration!r} is not a duration such as 15m or 1h30m")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as -."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


@functools.cache
def _runbook_anchors() -> set[str]:
    return {_anchor(heading) for heading in HEADING.findall(RUNBOOKS.read_text())}


def _ranges_of_rate_functions(expr: str) -> list[str]:
    """The range of every rate()/increase() in ``expr``: the first ``[...]`` after its name."""
    ranges = []
    for match in RANGE_FUNCTION.finditer(expr):
        start = expr.index("[", match.end())
        ranges.append(expr[start + 1 : expr.index("]", start)])
    return ranges


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`): rules not run")
    return promtool


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_accepts_the_rules_with_its_linter() -> None:
    result = _run("check", "rules", RULES.name)
    assert result.returncode == 0, f"promtool check rules {RULES}:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = _run("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, (
        f"promtool test rules {RULE_TESTS} failed (exp = expected, got = what the rules "
        f"produced):\n{result.stdout}{result.stderr}"
    )


def test_the_alerts_issue_8_asks_for_exist() -> None:
    missing = REQUIRED_ALERTS - {rule["alert"] for rule in _alerts()}
    assert not missing, f"{RULES} lacks the alerts {sorted(missing)}"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_follows_the_mixin_conventions(rule: Rule) -> None:
    name = rule["alert"]
    assert ALERT_NAME.match(name), f"{name}: alert names are CamelCase with the Driftd prefix"
    assert "for" in rule, f"{name}: every alert needs `for:` so one bad evaluation cannot page"
    assert _seconds(rule["for"]) > 0, f"{name}: `for: {rule['for']}` must be longer than 0"
    severity = rule.get("labels", {}).get("severity")
    assert severity in SEVERITIES, f"{name}: severity {severity!r} is not one of {SEVERITIES}"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: annotation {key} is missing"
    if name not in NOT_PER_DEPLOYMENT:
        assert "$labels.deployment" in annotations["description"], (
            f"{name}: the description should name the deployment ({{{{ $labels.deployment }}}})"
        )


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_every_runbook_url_points_at_a_heading_of_the_runbooks(rule: Rule) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL), f"{rule['alert']}: runbook_url {url} is not {RUNBOOK_URL}…"
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == rule["alert"].lower(), f"{rule['alert']}: the anchor should be its name"
    assert anchor in _runbook_anchors(), f"{RUNBOOKS} has no heading for #{anchor}"


def test_a_real_prometheus_links_each_alert_under_the_base_its_operator_set(
    prometheus: Callable[[Path], Server], tmp_path: Path
) -> None:
    """promtool 2.42 has no external labels in unit tests, so a real Prometheus renders them.

    Each alert is loaded with its own runbook_url and an expression that always fires."""
    base = "https://driftd.invalid/ops/driftd/docs/runbooks.md"
    firing = [
        {
            "alert": rule["alert"],
            "expr": "vector(1)",
            "annotations": {"runbook_url": rule["annotations"]["runbook_url"]},
        }
        for rule in _alerts()
    ]
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": firing}]})
    )
    config = {
        "global": {"evaluation_interval": "1s", "external_labels": {RUNBOOK_LABEL: base}},
        "rule_files": [str(tmp_path / "rules.yml")],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = prometheus(tmp_path / "prometheus.yml")

    def every_alert_linked() -> dict[str, str] | None:
        answer = server.answers("/api/v1/alerts", timeout=5)
        alerts = [] if answer is None else answer.json()["data"]["alerts"]
        links = {a["labels"]["alertname"]: a["annotations"]["runbook_url"] for a in alerts}
        return links if len(links) >= len(firing) else None

    links = server.wait_until(every_alert_linked, 60, "every alert to fire", interval=0.5)
    assert links == {rule["alert"]: f"{base}#{rule['alert'].lower()}" for rule in firing}


def test_every_runbook_section_belongs_to_an_alert() -> None:
    sections = re.findall(r"^## (\S+)\s*$", RUNBOOKS.read_text(), re.MULTILINE)
    assert sorted(sections) == sorted({rule["alert"] for rule in _alerts()})


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_rate_windows_hold_enough_scrapes(rule: Rule) -> None:
    for window in _ranges_of_rate_functions(rule["expr"]):
        assert _seconds(window) >= MIN_SAMPLES_IN_RANGE * SLOWEST_SCRAPE_SECONDS, (
            f"{rule['alert']}: [{window}] holds fewer than {MIN_SAMPLES_IN_RANGE} samples at a "
            f"{SLOWEST_SCRAPE_SECONDS} s scrape interval"
        )


def test_rules_and_their_tests_use_only_documented_metrics() -> None:
    documented = set(re.findall(r"`(driftd_[a-z0-9_]+)`", METRICS_DOC.read_text()))
    for path in (RULES, RULE_TESTS):
        used = {HISTOGRAM_SERIES.sub("", name) for name in METRIC.findall(path.read_text())}
        used.discard(RUNBOOK_LABEL)  # a label of Prometheus itself, not a metric
        assert used, f"{path} uses no driftd metric"
        assert used <= documented, f"{path} uses metrics not in {METRICS_DOC}: {used - documented}"


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS | {r["alert"] for r in _alerts()}))
def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_silent(alert: str) -> None:
    fires, silent = False, False
    for case in _rule_tests():
        for check in case.get("alert_rule_test", []):
            if check["alertname"] != alert:
                continue
            if check.get("exp_alerts"):
                fires = True
            else:
                silent = True
    assert fires, f"{RULE_TESTS} has no case where {alert} fires"
    assert silent, f"{RULE_TESTS} has no case where {alert} stays silent (empty exp_alerts)"


@pytest.mark.parametrize(
    ("expr", "ranges"),
    [
        ("sum(rate(driftd_x_total[5m]))", ["5m"]),
        ('increase(driftd_x_total{a="b"}[15m]) or rate(driftd_y_total[1h])', ["15m", "1h"]),
        ("max_over_time(driftd_x[1d] offset 15m)", []),
    ],
)
def test_range_extraction(expr: str, ranges: list[str]) -> None:
    assert _ranges_of_rate_functions(expr) == ranges


def test_anchor_and_duration_helpers() -> None:
    assert _anchor("DriftdNoLeader") == "driftdnoleader"
    assert _anchor("What it means, and why") == "what-it-means-and-why"
    assert _seconds("1h30m") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        _seconds("5 minutes")
