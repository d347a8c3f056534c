"""A small Kubernetes API server for tests, spoken to over HTTP by the real ``kubernetes`` client.

It serves only what ``daemon.jobs.kubernetes`` uses: ``batch/v1`` Jobs (create, read, delete) and
their pods (list by label selector, read a container's log), with JSON shaped like the real API's
(``kind``, ``apiVersion``, ``metadata``, ``spec``, ``status``; a ``Status`` object with the HTTP
code for errors). There is no scheduler behind it: a Job's story is scripted per driftd job id
(``script``), and time is counted in reads of the Job, which is what a poll does, so a test
advances a Job by polling it and never waits on a clock.

Tests inspect what it received: every request (``requests``), the body of every Job created
(``created``) and every deletion with its options (``deleted``). It runs in a thread of the test
process on 127.0.0.1 and a free port; use it as a context manager, ``with FakeKubernetes() as
fake: ...``; import it as ``from tests import fake_kubernetes``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tests.helpers.http import serving

Json = dict[str, Any]

JOB_ID_LABEL = "driftd.io/job-id"
"""The label a Job's script is chosen by."""

_JOBS = re.compile(r"/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+))?")
_PODS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods")
_POD_LOG = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log")


@dataclass(frozen=True)
class Succeed:
    """The Job is seen running for ``after_polls`` reads, then has completed (exit code 0)."""

    after_polls: int = 1
    log: str = ""
    on_end: Callable[[Json], None] | None = None
    """Called with the Job once it ends: does what the job's pod would have done to the shared
    volume (write ``result.json`` and the ``exit`` file)."""


@dataclass(frozen=True)
class Fail:
    """The Job is seen running for ``after_polls`` reads, then has failed: its container
    exited with ``exit_code`` (or, with ``exit_code=None``, left no container status, as when
    its pod was never started)."""

    after_polls: int = 1
    exit_code: int | None = 1
    log: str = ""
    reason: str = "BackoffLimitExceeded"
    message: str = "Job has reached the specified backoff limit"
    on_end: Callable[[Json], None] | None = None


@dataclass(frozen=True)
class RunUntilDeleted:
    """The Job runs until it is deleted; its log so far is ``log``."""

    log: str = ""


Outcome = Succeed | Fail | RunUntilDeleted


@dataclass(frozen=True)
class Received:
    """One request: its method, path, query parameters and JSON body (None if it had none)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class _Job:
    namespace: str
    body: Json
    outcome: Outcome
    pod: Json
    reads: int = 0
    ended: bool = False
    deleting_reads: int | None = None
    """Reads left before a Job in foreground deletion is gone; None while not deleted."""


@dataclass
class _State:
    jobs: dict[tuple[str, str], _Job] = field(default_factory=dict)
    scripts: dict[str, Outcome] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)
    requests: list[Received] = field(default_factory=list)
    created: list[Json] = field(default_factory=list)
    deleted: list[tuple[str, str, Json]] = field(default_factory=list)


class FakeKubernetes:
    """The fake API server; see the module docstring."""

    def __init__(self, *, default: Outcome = Succeed(), foreground_reads: int = 1) -> None:
        """Jobs without a script get ``default``; a Job deleted in the foreground is still
        there for ``foreground_reads`` reads (as while its pods terminate)."""
        self.default = default
        self.foreground_reads = foreground_reads
        self._state = _State()
        self._lock = threading.Lock()
        self._uids = itertools.count(1)
        self._serving = contextlib.ExitStack()
        self.url = ""

    def __enter__(self) -> Self:
        server = self._serving.enter_context(serving(_handler(self), "fake-kubernetes"))
        self.url = f"http://127.0.0.1:{server.server_port}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._serving.close()

    def script(self, job_id: int, outcome: Outcome) -> None:
        """What every Job created for driftd job ``job_id`` (by its label) does."""
        with self._lock:
            self._state.scripts[str(job_id)] = outcome

    def forbid(self, namespace: str) -> None:
        """Refuse every request in ``namespace`` with 403, as RBAC does for a service account
        without a role there."""
        with self._lock:
            self._state.forbidden.add(namespace)

    def add_job(self, namespace: str, body: Json, outcome: Outcome) -> None:
        """A Job that someone else created: another daemon, before this test's started."""
        with self._lock:
            self._create(namespace, copy.deepcopy(body), outcome)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._state.requests)

    @property
    def created(self) -> list[Json]:
        """The bodies of the Jobs created through the API, as sent."""
        with self._lock:
            return copy.deepcopy(self._state.created)

    @property
    def deleted(self) -> list[tuple[str, str, Json]]:
        """(namespace, name, delete options) of every deletion asked for."""
        with self._lock:
            return copy.deepcopy(self._state.deleted)

    def exists(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self._state.jobs

    # The API, called by the handler with the lock not held.

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        with self._lock:
            self._state.requests.append(Received(method, parts.path, query, body))
            namespace = parts.path.split("/namespaces/", 1)[-1].split("/", 1)[0]
            if namespace in self._state.forbidden:
                return _status(
                    HTTPStatus.FORBIDDEN,
                    f'jobs.batch is forbidden: User "system:serviceaccount:driftd:driftd" '
                    f'cannot {method.lower()} resource "jobs" in API group "batch" in the '
                    f'namespace "{namespace}"',
                )
            if match := _JOBS.fullmatch(parts.path):
                namespace, name = match["ns"], match["name"]
                if name is None and method == "POST":
                    return self._post_job(namespace, body)
                if name is not None and method == "GET":
                    return self._get_job(namespace, name)
                if name is not None and method == "DELETE":
                    # DeleteOptions come in the body or, as the client sends them, the query.
                    options = {key: values[-1] for key, values in query.items()}
                    return self._delete_job(namespace, name, {**options, **(body or {})})
            elif match := _POD_LOG.fullmatch(parts.path):
                if method == "GET":
                    return self._pod_log(match["ns"], match["name"], query)
            elif (match := _PODS.fullmatch(parts.path)) and method == "GET":
                return self._list_pods(match["ns"], query)
        return _status(HTTPStatus.NOT_FOUND, f"the fake serves no {method} {parts.path}")

    def _post_job(self, namespace: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("kind") != "Job":
            return _status(HTTPStatus.BAD_REQUEST, "the body is not a Job")
        name = body.get("metadata", {}).get("name")
        containers = body.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
        if not name or not containers:
            return _status(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "Job.batch is invalid: metadata.name or spec.template.spec.containers: Required",
            )
        if (namespace, name) in self._state.jobs:
            return _status(HTTPStatus.CONFLICT, f'jobs.batch "{name}" already exists', name=name)
        self._state.created.append(copy.deepcopy(body))
        job_id = str(body.get("metadata", {}).get("labels", {}).get(JOB_ID_LABEL, ""))
        outcome = self._state.scripts.get(job_id, self.default)
        job = self._create(namespace, copy.deepcopy(body), outcome)
        return HTTPStatus.CREATED, self._job_json(job)

    def _create(self, namespace: str, body: Json, outcome: Outcome) -> _Job:
        name = body["metadata"]["name"]
        uid = f"00000000-0000-4000-8000-{next(self._uids):012d}"
        now = _now()
        metadata = body.setdefault("metadata", {})
        metadata.update(
            namespace=namespace, uid=uid, creationTimestamp=now, resourceVersion="1", generation=1
        )
        spec = body.setdefault("spec", {})
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        template = spec["template"]
        labels = {
            **template.get("metadata", {}).get("labels", {}),
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        pod = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{name[:57]}-{secrets.token_hex(3)[:5]}",
                "namespace": namespace,
                "uid": f"00000000-0000-4000-9000-{next(self._uids):012d}",
                "creationTimestamp": now,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }
        job = _Job(namespace, body, outcome, pod)
        self._state.jobs[(namespace, name)] = job
        return job

    def _get_job(self, namespace: str, name: str) -> tuple[int, Any]:
        job = self._state.jobs.get((namespace, name))
        if job is None:
            return _not_found("jobs", name)
        if job.deleting_reads is not None:
            if job.deleting_reads <= 0:
                del self._state.jobs[(namespace, name)]
                return _not_found("jobs", name)
            job.deleting_reads -= 1
        else:
            job.reads += 1
            self._advance(job)
        return HTTPStatus.OK, self._job_json(job)

    def _advance(self, job: _Job) -> None:
        outcome = job.outcome
        if job.ended or isinstance(outcome, RunUntilDeleted) or job.reads <= outcome.after_polls:
            return
        job.ended = True
        if outcome.on_end is not None:
            outcome.on_end(copy.deepcopy(job.body))

    def _delete_job(self, namespace: str, name: str, options: Json) -> tuple[int, Any]:
        self._state.deleted.append((namespace, name, copy.deepcopy(options)))
        job = self._state.jobs.get((namespace, name))
        if job is None:
            return _not_found("jobs", name)
        if options.get("propagationPolicy") == "Foreground" and self.foreground_reads > 0:
            if job.deleting_reads is None:
                job.deleting_reads = self.foreground_reads
            body = self._job_json(job)
            body["metadata"]["deletionTimestamp"] = _now()
            body["metadata"]["finalizers"] = ["foregroundDeletion"]
            return HTTPStatus.OK, body
        del self._state.jobs[(namespace, name)]
        return HTTPStatus.OK, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": "batch",
                "kind": "jobs",
                "uid": job.body["metadata"]["uid"],
            },
        }

    def _list_pods(self, namespace: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        wanted: dict[str, str] = {}
        for term in ",".join(query.get("labelSelector", [])).split(","):
            if term:
                key, _, value = term.partition("=")
                wanted[key] = value
        items = [
            self._pod_json(job)
            for (ns, _), job in self._state.jobs.items()
            if ns == namespace
            and all(job.pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return HTTPStatus.OK, {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _pod_log(self, namespace: str, name: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        job = next(
            (
                job
                for (ns, _), job in self._state.jobs.items()
                if ns == namespace and job.pod["metadata"]["name"] == name
            ),
            None,
        )
        if job is None:
            return _not_found("pods", name, group="")
        containers = [c["name"] for c in job.pod["spec"]["containers"]]
        container = query.get("container", [containers[0]])[0]
        if container not in containers:
            return _status(
                HTTPStatus.BAD_REQUEST,
                f"container {container} is not valid for pod {name}",
            )
        lines = job.outcome.log.splitlines(keepends=True)
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"][0]) :] if int(query["tailLines"][0]) else []
        text = "".join(lines).encode()
        if "limitBytes" in query:
            text = text[: int(query["limitBytes"][0])]
        return HTTPStatus.OK, text

    def _job_json(self, job: _Job) -> Json:
        body = copy.deepcopy(job.body)
        started = body["metadata"]["creationTimestamp"]
        outcome = job.outcome
        if not job.ended:
            body["status"] = {"active": 1, "ready": 1, "startTime": started}
        elif isinstance(outcome, Succeed):
            body["status"] = {
                "succeeded": 1,
                "startTime": started,
                "completionTime": _now(),
                "conditions": [_condition("SuccessCriteriaMet"), _condition("Complete")],
            }
        else:
            assert isinstance(outcome, Fail)
            failed = _condition("Failed", outcome.reason, outcome.message)
            target = _condition("FailureTarget", outcome.reason, outcome.message)
            body["status"] = {"failed": 1, "startTime": started, "conditions": [target, failed]}
        return body

    def _pod_json(self, job: _Job) -> Json:
        pod = copy.deepcopy(job.pod)
        container = pod["spec"]["containers"][0]
        status: Json = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": not job.ended,
            "restartCount": 0,
        }
        outcome = job.outcome
        if not job.ended:
            pod["status"] = {"phase": "Running"}
            status["state"] = {"running": {"startedAt": pod["metadata"]["creationTimestamp"]}}
        elif isinstance(outcome, Fail) and outcome.exit_code is None:
            pod["status"] = {"phase": "Failed", "reason": outcome.reason}
            return pod
        else:
            code = outcome.exit_code if isinstance(outcome, Fail) else 0
            pod["status"] = {"phase": "Succeeded" if code == 0 else "Failed"}
            status["state"] = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": pod["metadata"]["creationTimestamp"],
                    "finishedAt": _now(),
                }
            }
        pod["status"]["containerStatuses"] = [status]
        return pod


def _handler(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                code, payload = _status(HTTPStatus.BAD_REQUEST, "the body is not JSON")
            else:
                code, payload = fake.handle(method, self.path, body)
            if isinstance(payload, bytes):
                data, kind = payload, "text/plain"
            else:
                data, kind = json.dumps(payload).encode(), "application/json"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the requests are recorded in ``fake.requests`` instead."""

    return Handler


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, reason: str = "", message: str = "") -> Json:
    condition = {
        "type": kind,
        "status": "True",
        "lastProbeTime": _now(),
        "lastTransitionTime": _now(),
    }
    if reason:
        condition.update(reason=reason, message=message)
    return condition


def _status(code: HTTPStatus, message: str, **details: str) -> tuple[int, Json]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": code.phrase.replace(" ", ""),
        "details": details,
        "code": int(code),
    }


def _not_found(kind: str, name: str, group: str = "batch") -> tuple[int, Json]:
    code, body = _status(
        HTTPStatus.NOT_FOUND, f'{kind}{"." + group if group else ""} "{name}" not found'
    )
    body["reason"] = "NotFound"
    body["details"] = {"name": name, "kind": kind, **({"group": group} if group else {})}
    return code, body
