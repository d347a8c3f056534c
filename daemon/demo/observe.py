"""What the demo learns from the daemon, through its admin API, as an operator's tool would.

``Observer.poll`` reads the latest checks, policy decisions, jobs and versions of the demo's
deployment and keeps the last answer of each; the demo's steps wait on those. Reading over HTTP
rather than from the store keeps the demo honest: it sees what any client of driftd sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from daemon.demo.view import DemoState
from daemon.errors import DemoError

Record = dict[str, Any]


class AdminAPI:
    """The few admin routes the demo reads, with its admin token."""

    def __init__(self, url: str, token: str, deployment: str) -> None:
        self.deployment = deployment
        self._http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )

    def close(self) -> None:
        self._http.close()

    def checks(self, limit: int = 8) -> list[Record]:
        return self._list("/v1/checks", {"deployment": self.deployment, "limit": limit})

    def check(self, check_id: int) -> Record:
        record: Record = self._get(f"/v1/checks/{check_id}", {})
        return record

    def decisions(self, limit: int = 5) -> list[Record]:
        query = {"deployment": self.deployment, "kind": "policy.decision", "limit": limit}
        return self._list("/v1/events", query)

    def events(self, kind: str, limit: int = 20) -> list[Record]:
        return self._list(
            "/v1/events", {"deployment": self.deployment, "kind": kind, "limit": limit}
        )

    def jobs(self, limit: int = 5) -> list[Record]:
        return self._list("/v1/jobs", {"deployment": self.deployment, "limit": limit})

    def cancel_job(self, job_id: int) -> None:
        self._http.post(f"/v1/jobs/{job_id}/cancel", timeout=30.0)

    def versions(self) -> list[Record]:
        return self._list(f"/v1/deployments/{self.deployment}/versions", {})

    def _list(self, path: str, query: dict[str, Any]) -> list[Record]:
        found = self._get(path, query)
        if not isinstance(found, list):
            raise DemoError(f"driftd answered GET {path} with {type(found).__name__}, not a list")
        return found

    def _get(self, path: str, query: dict[str, Any]) -> Any:
        try:
            response = self._http.get(path, params=query)
        except httpx.HTTPError as error:
            raise DemoError(f"driftd's admin API did not answer GET {path}: {error}") from error
        if response.status_code != 200:
            raise DemoError(
                f"driftd's admin API answered GET {path} with HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response.json()


class Observer:
    """The daemon's latest checks, decisions, jobs and versions, refreshed by ``poll``."""

    def __init__(self, api: AdminAPI, state: DemoState, note: Callable[[str], None]) -> None:
        self.api = api
        self.state = state
        self.note = note
        self.checks: list[Record] = []
        self.decisions: list[Record] = []
        self.jobs: list[Record] = []
        self._seen_checks = 0
        self._seen_decisions = 0
        self._measured_check = 0
        self._last_check = ""
        self._last_decision: tuple[object, object] = (None, None)

    def poll(self) -> None:
        self.checks = self.api.checks()
        self.state.checks = self.checks
        for check in sorted(self.checks, key=lambda c: int(c["id"])):
            if int(check["id"]) > self._seen_checks:
                self._seen_checks = int(check["id"])
                drifted = ", ".join(check.get("drifted") or [])
                said = str(check["status"]) + (f" ({drifted})" if drifted else "")
                if said != self._last_check:  # a note when the verdict changes, not every 5 s
                    self._last_check = said
                    self.note(f"check {check['id']}: {said}")
        self._measure()
        self.decisions = self.api.decisions()
        for event in sorted(self.decisions, key=lambda e: int(e["id"])):
            if int(event["id"]) > self._seen_decisions:
                self._seen_decisions = int(event["id"])
                message = str(event.get("message", ""))
                self.state.decision = message
                evidence = event.get("evidence") or {}
                kind = (evidence.get("action"), evidence.get("reason"))
                if kind != self._last_decision:  # likewise, a note per new kind of decision
                    self._last_decision = kind
                    self.note(f"policy: {message}")
        self.jobs = self.api.jobs()

    def acted(self) -> Record | None:
        """The newest decision that started a job, if one did."""
        for event in self.decisions:
            if (event.get("evidence") or {}).get("action") == "retune":
                return event
        return None

    def latest_check_id(self) -> int:
        return max((int(c["id"]) for c in self.checks), default=0)

    def first_check_after(self, after: int, statuses: tuple[str, ...]) -> Record | None:
        """The first check after check ``after`` that ended in one of ``statuses``, if any."""
        found = [c for c in self.checks if int(c["id"]) > after and c.get("status") in statuses]
        return min(found, key=lambda c: int(c["id"])) if found else None

    def _measure(self) -> None:
        """Accuracy as the newest check measured it, from its performance signal."""
        done = [c for c in self.checks if c.get("status") in ("ok", "drift")]
        if not done:
            return
        newest = max(done, key=lambda c: int(c["id"]))
        if int(newest["id"]) == self._measured_check:
            return
        self._measured_check = int(newest["id"])
        accuracy = measured_accuracy(self.api.check(int(newest["id"])))
        if accuracy is not None:
            self.state.measured = (int(newest["id"]), *accuracy)


def measured_accuracy(check: Record) -> tuple[float, float] | None:
    """The reference's and the current window's accuracy in a check's performance signal,
    when it measured them from labels (not estimated from confidences)."""
    stored = check.get("signals") or {}
    for signal in stored.get("signals") or []:
        if signal.get("name") != "performance":
            continue
        details = signal.get("details") or {}
        accuracy = (details.get("metrics") or {}).get("accuracy") or {}
        if details.get("estimated") is False and "current" in accuracy:
            return float(accuracy["reference"]), float(accuracy["current"])
    return None
