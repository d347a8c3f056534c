"""Signals, groups and task defaults are defined once, in ``monitors.spec``: what computes them,
what configures them and what reports them take their names from there."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from daemon.config.models import Monitor
from daemon.domain import Task
from monitors import spec
from monitors.check import COMPUTE
from monitors.spec import (
    CLASSIFICATION_ONLY,
    DEFAULT_SIGNALS,
    EMBEDDING_METHODS,
    GENERATION_ONLY,
    OUTPUT_DESCRIPTORS,
    RESULT_GROUPS,
    SIGNAL_GROUPS,
    Signal,
)


def test_every_signal_has_a_group_and_a_computation() -> None:
    assert set(SIGNAL_GROUPS) == set(Signal)
    assert set(COMPUTE) == set(Signal) | {OUTPUT_DESCRIPTORS}
    assert set(RESULT_GROUPS) == set(COMPUTE)


def test_task_defaults_cover_every_task_and_only_signals_of_that_task() -> None:
    assert set(DEFAULT_SIGNALS) == set(get_args(spec.Task)) == {task.value for task in Task}
    assert not CLASSIFICATION_ONLY & GENERATION_ONLY
    assert not set(DEFAULT_SIGNALS["classification"]) & GENERATION_ONLY
    assert not set(DEFAULT_SIGNALS["generation"]) & CLASSIFICATION_ONLY


def test_the_configuration_takes_its_signals_and_methods_from_monitors() -> None:
    monitor = Monitor.model_validate({"signals": [s.value for s in Signal]})
    assert monitor.signals == tuple(Signal)
    for method in EMBEDDING_METHODS:
        assert Monitor.model_validate({"embedding_method": method}).embedding_method == method
    with pytest.raises(ValidationError, match="signals"):
        Monitor.model_validate({"signals": ["sentiment"]})
    with pytest.raises(ValidationError, match="embedding_method"):
        Monitor.model_validate({"embedding_method": "mmd"})
