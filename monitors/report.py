"""Evidently at the boundary: datasets, reports, their drift tests, and the check's snapshot.

Evidently takes seconds to import, so it is imported inside the functions here and nowhere at
module level: ``import monitors`` stays fast for the command line. Its objects are typed ``Any``
at this boundary (Evidently ships no type information mypy can follow).

A check runs one Evidently report per signal and merges them into a single Evidently snapshot:
a summary table of driftd's verdicts first, then each signal's widgets under a heading, then
Evidently's own test table. ``render_html`` turns that stored snapshot into Evidently's HTML.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from monitors.result import SignalResult, jsonable

if TYPE_CHECKING:
    import pandas as pd

ColumnKind = Literal["num", "cat", "text"]


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings Evidently and scikit-learn raise on every run.

    Convergence, numerical and deprecation warnings from the domain classifiers and the dataset
    statistics say nothing an operator can act on; what matters is in the signal's result.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def dataset(frame: pd.DataFrame, columns: dict[str, ColumnKind], **definition: Any) -> Any:
    """An Evidently ``Dataset`` of ``frame``'s ``columns``, each typed as given."""
    from evidently import DataDefinition, Dataset

    def of(kind: ColumnKind) -> list[str]:
        return [name for name, value in columns.items() if value == kind]

    return Dataset.from_pandas(
        frame,
        data_definition=DataDefinition(
            numerical_columns=of("num"),
            categorical_columns=of("cat"),
            text_columns=of("text"),
            **definition,
        ),
    )


def run(
    metrics: Sequence[Any],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: dict[str, ColumnKind],
    *,
    tests: bool = True,
    **definition: Any,
) -> Any:
    """Run a report of ``metrics`` on current against reference; the Evidently snapshot."""
    from evidently import Report

    report = Report(list(metrics), include_tests=tests)
    return report.run(
        dataset(current, columns, **definition), dataset(reference, columns, **definition)
    )


@dataclass(frozen=True)
class ColumnTest:
    """One ``ValueDrift`` of a report: Evidently's score, method, threshold and verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


def value_drifts(snapshot: Any) -> dict[str, ColumnTest]:
    """The ``ValueDrift`` results of a report run with tests, by column.

    The verdict is Evidently's own test status (a p-value below, or a distance at or above, the
    threshold), so driftd never re-derives which way a method's score points.
    """
    content = snapshot.dict()
    failed: dict[str, bool] = {}
    for test in content["tests"]:
        params = test["metric_config"]["params"]
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            failed[params["column"]] = _status(test["status"]) == "FAIL"
    found: dict[str, ColumnTest] = {}
    for metric in content["metrics"]:
        config = metric["config"]
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        column = config["column"]
        found[column] = ColumnTest(
            column=column,
            method=str(config["method"]),
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=failed[column],
        )
    return found


def metric_value(snapshot: Any, metric_type: str) -> Any:
    """The value of the first metric of type ``metric_type`` (e.g. ``DriftedColumnsCount``)."""
    for metric in snapshot.dict()["metrics"]:
        if metric["config"].get("type") == f"evidently:metric_v2:{metric_type}":
            return metric["value"]
    raise KeyError(f"the report has no {metric_type} metric")


def _status(status: Any) -> str:
    # TestStatus is an enum in a live snapshot and its value once serialised.
    return str(getattr(status, "value", status)).upper()


def merge(parts: Sequence[tuple[str, Any]], signals: Sequence[SignalResult]) -> dict[str, Any]:
    """One Evidently snapshot of a whole check, as plain JSON.

    ``parts`` are the snapshots of the signals that ran a report, by result name; ``signals``
    all results, shown first as a table so the HTML opens on driftd's verdicts.
    """
    from evidently.core.metric_types import metric_tests_widget
    from evidently.core.report import metric_tests_stats
    from evidently.core.serialization import ReportModel, SnapshotModel
    from evidently.legacy.renderers.html_widgets import header_text, table_data
    from evidently.legacy.utils import NumpyEncoder

    models = [(name, snapshot.to_snapshot_model()) for name, snapshot in parts]
    tests = [test for _, snapshot in parts for test in snapshot.tests_results]
    summary = table_data(
        title="driftd: signals of this check",
        column_names=["signal", "group", "status", "method", "score", "threshold", "rows"],
        data=[
            [
                signal.name,
                signal.group,
                signal.status,
                signal.method,
                "-" if signal.score is None else f"{signal.score:.4g}",
                "-" if signal.threshold is None else f"{signal.threshold:.4g}",
                f"{signal.reference_rows}/{signal.current_rows}",
            ]
            for signal in signals
        ],
    )
    widgets = [summary]
    for name, model in models:
        widgets.append(header_text(label=f"Signal: {name}"))
        widgets.extend(model.widgets)
    merged = SnapshotModel(
        report=ReportModel(items=[]),
        name="driftd check",
        timestamp=datetime.now(),
        metadata={"signals": [name for name, _ in models]},
        tags=["driftd"],
        metric_results={
            key: value for _, model in models for key, value in model.metric_results.items()
        },
        top_level_metrics=[key for _, model in models for key in model.top_level_metrics],
        widgets=widgets,
        tests_widgets=[metric_tests_stats(tests), metric_tests_widget(tests)] if tests else [],
    )
    # Through JSON once for plain types; NaN (never valid JSON) becomes null, as in results.
    content: dict[str, Any] = jsonable(json.loads(json.dumps(merged.dict(), cls=NumpyEncoder)))
    return content


def render_html(snapshot: dict[str, Any], path: Path) -> None:
    """Write Evidently's HTML report of a stored check snapshot to ``path``."""
    from evidently.core.report import Snapshot

    loaded = Snapshot.load_dict(snapshot)
    path.write_text(loaded.get_html_str(as_iframe=False), encoding="utf-8")


def export_to_workspace(
    snapshot: dict[str, Any], workspace: Path, project: str, *, run_name: str
) -> str:
    """Add a stored check snapshot to the local Evidently workspace at ``workspace`` (created
    if missing), in the project named ``project`` (created on first use), so that
    ``evidently ui --workspace WORKSPACE`` shows every check's report over time. Returns the
    run's id in the workspace."""
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    space = Workspace.create(str(workspace))
    found = space.search_project(project)
    target = (
        found[0]
        if found
        else space.create_project(project, description=f"driftd checks of {project}")
    )
    ref = space.add_run(target.id, Snapshot.load_dict(snapshot), name=run_name)
    return str(ref.id)
