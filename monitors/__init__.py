"""Drift and quality detection, pure: reference and current frames in, a result out.

Evidently lives here. This package never imports ``daemon``: the daemon reads windows from the
store and hands them over as plain data, so monitors can be tested and reused on their own.

    from monitors import MonitorSpec, Side, run_check, render_html

    result = run_check(Side(reference_frame), Side(current_frame), MonitorSpec(...))
    stored = result.to_dict()                  # plain JSON
    render_html(stored["snapshot"], path)      # Evidently's HTML report of the check

Importing this package loads neither pandas nor Evidently (seconds to import): ``run_check`` and
``render_html`` load their modules on first use, so the command line can name these types and
stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from monitors.result import CheckResult, CheckStatus, SignalResult, SignalStatus
from monitors.spec import SIGNAL_GROUPS, MonitorSpec, Side, Signal, SignalGroup, Task

if TYPE_CHECKING:
    from monitors.check import run_check
    from monitors.report import export_to_workspace, render_html

__all__ = [
    "SIGNAL_GROUPS",
    "CheckResult",
    "CheckStatus",
    "MonitorSpec",
    "Side",
    "Signal",
    "SignalGroup",
    "SignalResult",
    "SignalStatus",
    "Task",
    "export_to_workspace",
    "render_html",
    "run_check",
]

_LAZY = {
    "run_check": "monitors.check",
    "render_html": "monitors.report",
    "export_to_workspace": "monitors.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'monitors' has no attribute {name!r}")
