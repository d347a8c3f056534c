"""The Grafana dashboards and their provisioning files, checked without a Grafana.

Grafana and its dashboard linter cannot be installed here, so these tests mirror the linter's
rules (templated data source used everywhere, a title, description and valid unit on every panel,
`$__rate_interval` in every range, counters only inside rate/increase, query variables reloaded on
time change) plus what an import needs (stable uid, `id: null`, pinned schemaVersion, a grid
without overlaps). Every query is parsed by the real PromQL parser: each becomes a recording rule
for `promtool check rules`. That the metrics exist in a running daemon is the contract test's job;
here they are held against docs/metrics.md, the reference every helper builds against.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "driftd.yaml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

UIDS = {"driftd-overview.json": "driftd-overview", "driftd-deployment.json": "driftd-deployment"}
SCHEMA_VERSION = 39
GRID_COLUMNS = 24
TEMPLATED_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Grafana's unit ids (packages/grafana-data/src/valueFormats/categories.ts) that fit driftd's
# metrics; a typo such as "second" or "percent_unit" renders as a bare number, so it fails here.
VALID_UNITS = {
    "none", "short", "percent", "percentunit", "bool", "bool_yes_no",
    "ns", "µs", "ms", "s", "m", "h", "d", "dtdurations", "dtdurationms",
    "dateTimeAsIso", "dateTimeFromNow",
    "cps", "ops", "reqps", "rps", "wps", "iops", "cpm", "opm", "rpm", "wpm",
    "bytes", "decbytes",
}  # fmt: skip

# Concrete values for Grafana's variables, so that promtool parses real PromQL.
VARIABLE_VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "deployment": "banking77",
    "signal": ".*",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
RANGE = re.compile(r"\[([^\]]*)\]")
COUNTER = re.compile(r"driftd_\w+_total\b")
METRIC = re.compile(r"driftd_[a-z0-9_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\)$")

Json = dict[str, Any]


def _load(name: str) -> Json:
    data: Json = json.loads((DASHBOARD_DIR / name).read_text())
    return data


@pytest.fixture(params=sorted(UIDS), name="dashboard")
def _dashboard(request: pytest.FixtureRequest) -> Json:
    name: str = request.param
    return _load(name)


def _panels(dashboard: Json) -> list[Json]:
    """Every panel, including those nested in collapsed rows."""
    found: list[Json] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _where(dashboard: Json, panel: Json) -> str:
    return f"{dashboard['uid']}: panel {panel.get('id')} {panel.get('title')!r}"


def _queries(dashboard: Json) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every target, annotation and query variable of a dashboard."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"{_where(dashboard, panel)} target {target.get('refId')}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            yield f"{dashboard['uid']}: annotation {annotation['name']!r}", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"{dashboard['uid']}: variable ${variable['name']}", _variable_query(variable)


def _variable_query(variable: Json) -> str:
    query = variable["query"]
    text: str = query["query"] if isinstance(query, dict) else query
    return text


def _substitute(expr: str, where: str, values: dict[str, str] = VARIABLE_VALUES) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            pytest.fail(f"{where}: ${name} has no test value; add it to VARIABLE_VALUES")
        return values[name]

    return VARIABLE.sub(value, expr)


def _promql(where: str, expr: str) -> str:
    """The PromQL Prometheus receives: variables substituted, label_values() unwrapped."""
    expr = _substitute(expr, where)
    label_values = LABEL_VALUES.match(expr)
    return label_values.group(1) if label_values else expr


def test_the_two_dashboards_ship_and_nothing_else() -> None:
    assert sorted(path.name for path in DASHBOARD_DIR.iterdir()) == sorted(UIDS)


def test_dashboard_metadata_makes_a_stable_import(dashboard: Json) -> None:
    name = next(name for name, uid in UIDS.items() if uid == dashboard.get("uid"))
    assert dashboard["uid"] == UIDS[name], "a changed uid breaks every bookmark and link"
    assert dashboard["id"] is None, "a fixed id collides with dashboards already in Grafana"
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert dashboard["title"].startswith("driftd / ")
    assert "driftd" in dashboard["tags"]
    assert dashboard["time"]["from"].startswith("now-")
    assert dashboard["time"]["to"] == "now"
    assert re.fullmatch(r"\d+[smh]", dashboard["refresh"]), dashboard["refresh"]
    assert dashboard["editable"] is False, "provisioned with allowUiUpdates: false"


def test_titles_are_unique() -> None:
    titles = {_load(name)["title"] for name in UIDS}
    assert len(titles) == len(UIDS)


def test_the_data_source_is_a_template_variable(dashboard: Json) -> None:
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert len(variables) == 1, f"{dashboard['uid']}: one datasource variable"
    (variable,) = variables
    assert variable["name"] == "datasource"
    assert variable["label"] == "Data source"
    assert variable["query"] == "prometheus"


def test_every_panel_query_and_variable_uses_the_data_source_variable(dashboard: Json) -> None:
    for panel in _panels(dashboard):
        where = _where(dashboard, panel)
        assert panel.get("datasource") == TEMPLATED_DATASOURCE, where
        assert panel.get("targets"), f"{where} has no query"
        for target in panel["targets"]:
            assert target.get("datasource") == TEMPLATED_DATASOURCE, f"{where} {target['refId']}"
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == TEMPLATED_DATASOURCE, annotation["name"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == TEMPLATED_DATASOURCE, variable["name"]


def test_every_panel_has_a_title_a_description_and_a_unit(dashboard: Json) -> None:
    for panel in _panels(dashboard):
        where = _where(dashboard, panel)
        assert panel.get("title", "").strip(), f"{where} has no title"
        assert len(panel.get("description", "").strip()) >= 20, f"{where} needs a description"
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit in VALID_UNITS, f"{where}: unit {unit!r} is not a Grafana unit id"
        for override in panel["fieldConfig"].get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in VALID_UNITS, f"{where}: override unit {prop['value']}"


def test_panels_fit_the_grid_without_overlapping(dashboard: Json) -> None:
    boxes = []
    for panel in _panels(dashboard):
        where = _where(dashboard, panel)
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert min(x, y) >= 0, f"{where} starts outside the grid: {grid}"
        assert min(w, h) >= 1, f"{where} is empty: {grid}"
        assert x + w <= GRID_COLUMNS, f"{where} reaches column {x + w} of {GRID_COLUMNS}"
        boxes.append((where, x, y, w, h))
    for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in combinations(boxes, 2):
        apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
        assert apart, f"{a} overlaps {b}"


def test_panel_ids_and_ref_ids_are_unique(dashboard: Json) -> None:
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"{dashboard['uid']}: duplicate panel ids"
    for panel in _panels(dashboard):
        refs = [target["refId"] for target in panel["targets"]]
        assert all(refs), f"{_where(dashboard, panel)}: a target has no refId"
        assert len(refs) == len(set(refs)), f"{_where(dashboard, panel)}: duplicate refIds"


def test_every_range_is_the_rate_interval(dashboard: Json) -> None:
    # Stricter than the linter (which checks rate/irate): a fixed range in increase() or
    # changes() is as wrong at another scrape interval as it is in rate().
    for where, expr in _queries(dashboard):
        ranges = RANGE.findall(expr)
        if re.search(r"\b(rate|irate|increase|changes)\s*\(", expr):
            assert ranges, f"{where}: {expr}"
        for selector_range in ranges:
            assert selector_range == "$__rate_interval", f"{where}: [{selector_range}] in {expr}"


def test_counters_are_only_read_through_rate_or_increase(dashboard: Json) -> None:
    # A raw counter resets with the process and differs per replica: never chart it directly.
    for where, expr in _queries(dashboard):
        for counter in COUNTER.finditer(expr):
            before = expr[: counter.start()].rstrip()
            assert re.search(r"\b(rate|irate|increase)\($", before), f"{where}: {expr}"


def test_template_variables_exist_and_reload_on_time_change(dashboard: Json) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    deployment = variables["deployment"]
    assert deployment["type"] == "query"
    assert _variable_query(deployment) == "label_values(driftd_check_interval_seconds, deployment)"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["refresh"] == 2, f"${variable['name']}: new deployments never appear"
    for where, expr in _queries(dashboard):
        for match in VARIABLE.finditer(expr):
            name = match.group(1) or match.group(2)
            assert name.startswith("__") or name in variables, f"{where}: ${name} is undefined"


def test_the_deployment_dashboard_has_its_variables_and_annotations() -> None:
    dashboard = _load("driftd-deployment.json")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["deployment"]["multi"] is False, "every panel shows one deployment"
    annotations = {a["name"]: a for a in dashboard["annotations"]["list"] if not a.get("builtIn")}
    assert "driftd_promotions_total" in annotations["Promotions"]["expr"]
    assert "driftd_rollbacks_total" in annotations["Rollbacks"]["expr"]
    for annotation in annotations.values():
        assert annotation["enable"] is True
        assert 'deployment="$deployment"' in annotation["expr"], annotation["name"]
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            where = f"{_where(dashboard, panel)} {target['refId']}"
            assert 'deployment="$deployment"' in target["expr"], f"{where} mixes in others"


def test_the_dashboards_link_to_each_other() -> None:
    for name, other in (
        ("driftd-overview.json", "driftd-deployment"),
        ("driftd-deployment.json", "driftd-overview"),
    ):
        links = [link["url"] for link in _load(name)["links"]]
        assert any(url.startswith(f"/d/{other}/") for url in links), f"{name} -> {other}"


def test_dashboards_use_only_documented_metrics() -> None:
    documented = set(re.findall(r"`(driftd_[a-z0-9_]+)`", METRICS_DOC.read_text()))
    for name in UIDS:
        for metric in set(METRIC.findall((DASHBOARD_DIR / name).read_text())):
            base = HISTOGRAM_SERIES.sub("", metric)
            assert base in documented, f"{name} uses {metric}, not in docs/metrics.md"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`): PromQL not checked")
    return promtool


def _check_rules(promtool: str, rules: list[Json], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    return subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    rules: list[Json] = []
    places: list[str] = []
    for name in sorted(UIDS):
        for where, expr in _queries(_load(name)):
            rules.append({"record": f"grafana:query_{len(rules)}", "expr": _promql(where, expr)})
            places.append(where)
    assert len(rules) > 40
    result = _check_rules(promtool, rules, tmp_path / "queries.yml")
    # promtool names the failing rule by its position; say which panel that is.
    failing = [places[int(i) - 1] for i in re.findall(r"rule (\d+)", result.stderr)]
    assert result.returncode == 0, f"{failing}\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_promql_check_catches_a_broken_query(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = [{"record": "grafana:broken", "expr": "sum by (deployment) (rate(driftd_x_total[1m])"}]
    assert _check_rules(promtool, rules, tmp_path / "broken.yml").returncode != 0


def _panel_query(name: str, title: str, ref: str, values: dict[str, str]) -> str:
    dashboard = _load(name)
    (panel,) = [panel for panel in _panels(dashboard) if panel["title"] == title]
    (target,) = [target for target in panel["targets"] if target["refId"] == ref]
    return _substitute(target["expr"], f"{name} {title!r} {ref}", values)


def _annotation_query(name: str, annotation: str, values: dict[str, str]) -> str:
    (expr,) = [a["expr"] for a in _load(name)["annotations"]["list"] if a["name"] == annotation]
    return _substitute(expr, f"{name} annotation {annotation!r}", values)


def test_key_queries_show_what_their_panels_say(tmp_path: Path) -> None:
    """The queries behind the panels an operator acts on, evaluated by promtool on known series:
    deployment "a" drifts from 165 s on and gets a promotion and a rollback then; "b" always
    drifts; replica r1 leads."""
    promtool = _promtool()
    everyone = {"__rate_interval": "1m", "deployment": "a|b"}
    one = {"__rate_interval": "1m", "deployment": "a", "signal": ".*"}
    overview, detail = "driftd-overview.json", "driftd-deployment.json"
    series = {
        'driftd_check_drifted{deployment="a", instance="r1"}': "0x10 1x20",
        'driftd_check_drifted{deployment="b", instance="r1"}': "1x30",
        'driftd_check_last_success_timestamp_seconds{deployment="a", instance="r1"}': "60x30",
        'driftd_check_last_success_timestamp_seconds{deployment="b", instance="r1"}': "240x30",
        'driftd_check_interval_seconds{deployment="a", instance="r1"}': "300x30",
        'driftd_leader{instance="r1"}': "1x30",
        'driftd_leader{instance="r2"}': "0x30",
        'driftd_ingest_queue_depth{instance="r1"}': "5x30",
        'driftd_ingest_queue_capacity{instance="r1"}': "10x30",
        'driftd_promotions_total{deployment="a", trigger="drift"}': "0x10 1x20",
        'driftd_promotions_total{deployment="b", trigger="manual"}': "0x10 1x20",
        'driftd_rollbacks_total{deployment="a", reason="watch"}': "0x10 1x20",
    }
    drifting = _panel_query(overview, "Deployments drifting", "A", everyone)
    verdict = _panel_query(detail, "Verdict", "A", one)
    promotions = _annotation_query(detail, "Promotions", one)
    rollbacks = _annotation_query(detail, "Rollbacks", one)
    changes = _annotation_query(detail, "Verdict changes", one)
    cases: list[tuple[str, str, list[tuple[str, float]]]] = [
        (drifting, "1m", [("{}", 1)]),
        (drifting, "5m", [("{}", 2)]),
        (verdict, "1m", [("{}", 0)]),
        (verdict, "5m", [("{}", 1)]),
        (_panel_query(overview, "Leaders", "A", everyone), "5m", [("{}", 1)]),
        (_panel_query(overview, "Oldest successful check", "A", everyone), "5m", [("{}", 240)]),
        (
            _panel_query(overview, "Ingest queue fill", "A", everyone),
            "5m",
            [('{instance="r1"}', 0.5)],
        ),
        (_panel_query(detail, "Time since last success", "C", one), "5m", [("{}", 600)]),
        # An annotation appears where the event happened, and only for this deployment.
        (f"count by (trigger) ({promotions})", "3m", [('{trigger="drift"}', 1)]),
        (f"count by (trigger) ({promotions})", "6m", []),
        (f"count by (reason) ({rollbacks})", "3m", [('{reason="watch"}', 1)]),
        (f"count({changes})", "3m", [("{}", 1)]),
        (f"count({changes})", "6m", []),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": at,
                        "exp_samples": [
                            {"labels": labels, "value": value} for labels, value in want
                        ],
                    }
                    for expr, at, want in cases
                ],
            }
        ],
    }
    path = tmp_path / "panels.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_datasource_is_provisioned_from_the_environment() -> None:
    config = yaml.safe_load(DATASOURCES.read_text())
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["access"] == "proxy"
    # Grafana expands only $VAR and ${VAR}: `${VAR:-default}` would become an empty URL.
    assert re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*\}", datasource["url"]), datasource["url"]
    assert re.fullmatch(r"\d+s", datasource["jsonData"]["timeInterval"])


def test_the_dashboard_provider_loads_the_dashboards_folder() -> None:
    text = PROVIDERS.read_text()
    config = yaml.safe_load(text)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "driftd"
    assert provider["allowUiUpdates"] is False
    path = provider["options"]["path"]
    assert path.startswith("/"), "a path inside the Grafana container"
    # The mount that makes that path hold this repository's JSON is documented with it.
    assert "dashboards/grafana/dashboards" in text
    assert any(DASHBOARD_DIR.glob("*.json"))
