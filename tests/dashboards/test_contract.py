"""The contract between the daemon and what ships beside it: every metric name that a Grafana
dashboard or a Prometheus rule under dashboards/ uses is exported by a running daemon that has
ingested, checked and run a job (the session's ``running_driftd``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
# A metric name, not an external label the rules read (``$externalLabels.driftd_runbook_base``,
# and the comment that names it in backquotes).
METRIC = re.compile(r"(?<![.\w`])driftd_[a-z0-9_]+")
HISTOGRAM_PARTS = ("_bucket", "_count", "_sum")


def used_names() -> dict[str, set[str]]:
    """Each ``driftd_…`` token in a JSON or YAML file under dashboards/, with the files that use
    it; a histogram's ``_bucket``, ``_count`` and ``_sum`` name the histogram."""
    used: dict[str, set[str]] = {}
    for path in sorted(DASHBOARDS.rglob("*")):
        if path.suffix not in (".json", ".yml", ".yaml"):
            continue
        for token in METRIC.findall(path.read_text(encoding="utf-8")):
            for part in HISTOGRAM_PARTS:
                token = token.removesuffix(part)
            used.setdefault(token, set()).add(str(path.relative_to(ROOT)))
    return used


def test_every_metric_a_dashboard_or_rule_uses_is_exported(running_driftd: Any) -> None:
    used = used_names()
    assert used, "no driftd_ metric found under dashboards/"
    exported = running_driftd.names()
    histograms = {name.removesuffix("_bucket") for name in exported if name.endswith("_bucket")}
    missing = {
        name: sorted(files)
        for name, files in sorted(used.items())
        if name not in exported and name not in histograms
    }
    assert not missing, f"used under dashboards/ but not exported by driftd serve: {missing}"
