"""The demo's app: it answers Banking77 questions with its model and tells driftd, as a real app
embedding ``daemon.client.Client`` would; its agents' corrected intents follow later.

Each answer is logged as a sample (input, predicted intent, confidence, the model version that
answered). The true intent arrives ``label_delay`` seconds later through the feedback API, as
labels do in production: driftd measures accuracy only on what has been labelled, and estimates
it from the confidences in between.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime

from daemon.client import Client
from daemon.demo.data import Example
from daemon.demo.view import DemoState

Answer = tuple[str, float]
"""The predicted intent and its probability."""


class App:
    """Logs answers through a ``Client`` and sends each label once it is due."""

    def __init__(self, client: Client, state: DemoState, *, label_delay: float = 3.0) -> None:
        self.client = client
        self.state = state
        self.label_delay = label_delay
        self._due: deque[tuple[float, str, str, bool]] = deque()

    def serve(
        self,
        examples: Sequence[Example],
        answers: Sequence[Answer],
        *,
        prefix: str,
        first: int,
        version: str,
        ts: Callable[[int], datetime] | None = None,
        labels_now: bool = False,
    ) -> None:
        """Log ``answers`` to ``examples`` as samples ``{prefix}-{first + i}``, stamped now or
        by ``ts(i)``; their labels are due after the delay, or at once with ``labels_now``
        (traffic of the past, whose labels came in long ago)."""
        due = time.monotonic() + (0.0 if labels_now else self.label_delay)
        for offset, ((text, label), (guess, confidence)) in enumerate(
            zip(examples, answers, strict=True)
        ):
            request_id = f"{prefix}-{first + offset}"
            self.client.log(
                request_id,
                text,
                prediction=guess,
                confidence=confidence,
                model_version=version,
                ts=None if ts is None else ts(first + offset),
            )
            self._due.append((due, request_id, label, guess == label))
        self.state.sent += len(examples)

    def deliver(self) -> None:
        """Send the labels that are due."""
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, request_id, label, right = self._due.popleft()
            self.client.feedback(request_id, label=label)
            self.state.labels_sent += 1
            self.state.hits.append(right)

    @property
    def waiting(self) -> int:
        """Labels not sent yet."""
        return len(self._due)


class NoteHandler(logging.Handler):
    """Shows the client's warnings (a refused batch, a retry) as notes, instead of letting
    Python print them over the live screen."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._note = note

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._note(f"client: {record.getMessage()}")
        except Exception:  # a note must never break the app's logging
            self.handleError(record)
