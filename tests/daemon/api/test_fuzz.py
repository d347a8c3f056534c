"""schemathesis against the live application, in process: every operation of the daemon's own
OpenAPI document, fed generated valid and invalid requests with a token that may call it, must
answer without a 5xx, with a status the document declares, and with a body its schema allows.

Stateless, over the whole document, at least ``DEFAULT_CASES`` generated requests in total
(``DRIFTD_FUZZ_CASES`` asks for more, e.g. 20000), deterministic (each run draws from fixed
seeds). Each distinct failure (operation, check, status) is kept with the shortest request that
showed it, and all of them are reported together at the end rather than the first alone. On
SQLite only: the store is not what is fuzzed, and a run on both would double its time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from daemon.config.models import UpstreamAuth

if TYPE_CHECKING:
    from schemathesis.schemas import APIOperation

    from tests.daemon.api.conftest import Driftd

FUZZ_CASES_ENV = "DRIFTD_FUZZ_CASES"
DEFAULT_CASES = 1000
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
MAX_ROUNDS = 50
BODY_SHOWN = 600


@dataclass
class Found:
    """One distinct failure: where, which check, and the shortest request that showed it."""

    operation: str
    check: str
    status: int
    request: str
    response: str

    def report(self) -> str:
        return (
            f"{self.operation} — {self.check} — answered {self.status}\n"
            f"  request:  {self.request}\n"
            f"  response: {self.response}"
        )


@dataclass
class Fuzzing:
    """The run's tally: cases per operation and the statuses they got, and the distinct
    failures found."""

    cases: Counter[str]
    statuses: Counter[tuple[str, str, int]]
    found: dict[tuple[str, str, int], Found]

    def keep(self, operation: str, check: str, status: int, request: str, response: str) -> None:
        key = (operation, check, status)
        known = self.found.get(key)
        if known is None or len(request) < len(known.request):
            self.found[key] = Found(operation, check, status, request, response)


def headers_for(driftd: Driftd, case: Case[Any]) -> dict[str, str]:
    """Tokens that may call the case's operation, over any that schemathesis generated from
    the security schemes: an admin token; on the proxy, a proxy token in X-Driftd-Token too
    (which the proxy reads first), and a passthrough deployment's caller's own upstream key as
    the API key (a driftd token there is refused)."""
    secrets = driftd.secrets
    admin = {"Authorization": f"Bearer {secrets.admin}"}
    if not case.path.startswith("/proxy/"):
        return admin
    passthrough = {
        d.name
        for d in driftd.config.deployments
        if d.proxied and d.upstream.auth is not UpstreamAuth.key
    }
    if (case.path_parameters or {}).get("deployment") in passthrough:
        admin = {"Authorization": f"Bearer {secrets.callers_key}"}
    return {**admin, "X-Driftd-Token": secrets.proxy}


def fuzz(
    driftd: Driftd,
    operation: APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    examples: int,
    at: int,
    tally: Fuzzing,
) -> int:
    """Run ``examples`` generated cases of ``operation`` from seed ``at``; the number run."""
    ran = 0

    @seed(at)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case[Any]) -> None:
        nonlocal ran
        ran += 1
        tally.cases[operation.label] += 1
        headers = headers_for(driftd, case)
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the app itself raised: as bad as a 500
            request = case.as_curl_command(headers=headers)
            tally.keep(operation.label, "exception", 0, request, f"{type(exc).__name__}: {exc}")
            return
        tally.statuses[operation.label, mode.value, response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            request = case.as_curl_command(headers=headers)
            body = response.text[:BODY_SHOWN]
            for failure in group.exceptions:
                tally.keep(operation.label, failure.title, response.status_code, request, body)

    with contextlib.suppress(Unsatisfiable):  # no invalid request exists: no inputs at all
        run()
    return ran


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_generated_requests_get_declared_answers_and_never_a_5xx(driftd: Driftd) -> None:
    wanted = int(os.environ.get(FUZZ_CASES_ENV, DEFAULT_CASES))
    schema = schemathesis.openapi.from_asgi("/openapi.json", driftd.app)
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"the document has an operation schemathesis cannot read: {result.err()}")
        operations.append(result.ok())
    assert len(operations) >= 19, [op.label for op in operations]
    runs = [(op, mode) for op in operations for mode in MODES]
    tally = Fuzzing(Counter(), Counter(), {})
    exhausted: set[int] = set()
    started = time.monotonic()
    for round_ in range(MAX_ROUNDS):
        remaining = wanted - sum(tally.cases.values())
        live = [i for i in range(len(runs)) if i not in exhausted]
        if remaining <= 0 or not live:
            break
        examples = max(1, -(-remaining // len(live)))
        for i in live:
            operation, mode = runs[i]
            ran = fuzz(driftd, operation, mode, examples, round_ * 1000 + i, tally)
            if ran < examples:  # hypothesis ran out of distinct inputs for this operation
                exhausted.add(i)
    total = sum(tally.cases.values())
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {total} cases over {len(operations)} operations in {elapsed:.1f} s")
    for label, count in sorted(tally.cases.items()):
        print(f"  {count:6d}  {label}")
        for mode in MODES:
            answered = sorted(
                (status, n)
                for (op, m, status), n in tally.statuses.items()
                if (op, m) == (label, mode)
            )
            if answered:
                print(f"          {mode.value}: " + " ".join(f"{s}x{n}" for s, n in answered))

    assert total >= wanted
    failures = [found.report() for _, found in sorted(tally.found.items())]
    assert not failures, f"{len(failures)} distinct failures:\n\n" + "\n\n".join(failures)
