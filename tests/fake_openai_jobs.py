"""The fine-tuning half of the fake OpenAI server (``tests/fake_openai.py``): uploaded files
and fine-tuning jobs with their events, each job ending as the test scripted it.

``FineTuningRoutes`` holds the route handlers; ``FakeOpenAI`` inherits them and provides the
state and the plumbing (authentication, scripted errors, what it received) they use. Import
these names from ``tests.fake_openai`` as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

ORGANIZATION = "org-fake"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# What a fine-tuning job resolves "auto" (or nothing) to, as OpenAI reports it once it runs.
AUTO_HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 3,
    "batch_size": 1,
    "learning_rate_multiplier": 1.8,
}

Json = dict[str, Any]

# Routes as ``Received.route`` and ``script_error`` name them.
FILES_ROUTE = "POST /v1/files"
FILE_ROUTE = "GET /v1/files/{file_id}"
JOBS_ROUTE = "POST /v1/fine_tuning/jobs"
JOB_ROUTE = "GET /v1/fine_tuning/jobs/{job_id}"
CANCEL_ROUTE = "POST /v1/fine_tuning/jobs/{job_id}/cancel"
EVENTS_ROUTE = "GET /v1/fine_tuning/jobs/{job_id}/events"


@dataclass(frozen=True)
class Succeed:
    """The job runs for ``after_polls - 1`` retrievals, then has succeeded.

    ``fine_tuned_model`` defaults to an id of OpenAI's form, ``ft:<base>:<org>:<suffix>:<id>``;
    ``trained_tokens`` to the training file's bytes / 4 times the epochs."""

    after_polls: int = 2
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None


@dataclass(frozen=True)
class Fail:
    """The job runs for ``after_polls - 1`` retrievals, then has failed with this error."""

    after_polls: int = 1
    code: str = "invalid_training_file"
    message: str = "The job failed due to an invalid training file."
    param: str | None = "training_file"


@dataclass(frozen=True)
class RunUntilCancelled:
    """The job stays ``running`` until someone cancels it."""


Outcome = Succeed | Fail | RunUntilCancelled


@dataclass
class UploadedFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    retrievals: int = 0


@dataclass
class FineTuningJob:
    id: str
    request: Json
    outcome: Outcome
    created_at: int
    status: str = "validating_files"
    polls: int = 0
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    finished_at: int | None = None
    error: Json | None = None
    events: list[Json] = field(default_factory=list)


class FineTuningRoutes:
    """The files and fine-tuning job routes of ``FakeOpenAI``, which provides what they use."""

    file_processing_polls: int
    files: dict[str, UploadedFile]
    jobs: dict[str, FineTuningJob]
    _outcomes: list[Outcome]
    _lock: threading.Lock

    if TYPE_CHECKING:

        def _new_id(self, prefix: str) -> str: ...

        def _gate(self, request: Request, route: str, body: Any) -> Response | None: ...

        def _refuse(
            self,
            request: Request,
            route: str,
            body: Any,
            status: int,
            message: str,
            *,
            type: str = "invalid_request_error",
            code: str | None = None,
            param: str | None = None,
            headers: dict[str, str] | None = None,
        ) -> Response: ...

        def _answer(self, request: Request, route: str, body: Any, payload: Json) -> Response: ...

    # -- files --------------------------------------------------------------------------------

    async def _create_file(self, request: Request) -> Response:
        route = FILES_ROUTE
        fields, uploads = parse_multipart(
            request.headers.get("content-type", ""), await request.body()
        )
        with self._lock:
            refused = self._gate(request, route, fields)
            if refused is not None:
                return refused
            if "file" not in uploads:
                return self._refuse(request, route, fields, 400, "'file' is a required property")
            if fields.get("purpose") not in ("fine-tune", "batch", "assistants", "user_data"):
                return self._refuse(
                    request, route, fields, 400, f"Invalid purpose: {fields.get('purpose')!r}"
                )
            filename, content = uploads["file"]
            uploaded = UploadedFile(
                self._new_id("file"), filename, fields["purpose"], content, int(time.time())
            )
            self.files[uploaded.id] = uploaded
            status = "processed" if self.file_processing_polls == 0 else "uploaded"
            return self._answer(request, route, fields, _file_object(uploaded, status))

    async def _retrieve_file(self, request: Request) -> Response:
        route = FILE_ROUTE
        with self._lock:
            refused = self._gate(request, route, None)
            if refused is not None:
                return refused
            uploaded = self.files.get(request.path_params["file_id"])
            if uploaded is None:
                return self._not_found(request, route, "file", request.path_params["file_id"])
            uploaded.retrievals += 1
            processed = uploaded.retrievals >= self.file_processing_polls
            status = "processed" if processed else "uploaded"
            return self._answer(request, route, None, _file_object(uploaded, status))

    # -- fine-tuning jobs ---------------------------------------------------------------------

    async def _create_job(self, request: Request) -> Response:
        route = JOBS_ROUTE
        body = await request.json()
        with self._lock:
            refused = self._gate(request, route, body)
            if refused is not None:
                return refused
            for key in ("model", "training_file"):
                if not isinstance(body.get(key), str):
                    return self._refuse(
                        request,
                        route,
                        body,
                        400,
                        f"Missing required parameter: '{key}'.",
                        param=key,
                    )
            for key in ("training_file", "validation_file"):
                file_id = body.get(key)
                if file_id is not None and file_id not in self.files:
                    return self._refuse(
                        request,
                        route,
                        body,
                        400,
                        f"invalid file id {file_id!r}: no such file",
                        param=key,
                    )
            outcome = self._outcomes.pop(0) if self._outcomes else Succeed()
            job = FineTuningJob(self._new_id("ftjob"), body, outcome, int(time.time()))
            self._event(job, f"Validating training file: {body['training_file']}")
            self.jobs[job.id] = job
            return self._answer(request, route, body, self._job_object(job))

    async def _retrieve_job(self, request: Request) -> Response:
        route = JOB_ROUTE
        with self._lock:
            job = self._gated_job(request, route)
            if isinstance(job, Response):
                return job
            self._advance(job)
            return self._answer(request, route, None, self._job_object(job))

    async def _cancel_job(self, request: Request) -> Response:
        route = CANCEL_ROUTE
        with self._lock:
            job = self._gated_job(request, route)
            if isinstance(job, Response):
                return job
            if job.status in TERMINAL:
                return self._refuse(
                    request, route, None, 400, f"Job {job.id} has already {job.status}."
                )
            job.status = "cancelled"
            job.finished_at = int(time.time())
            self._event(job, "Fine-tuning job cancelled")
            return self._answer(request, route, None, self._job_object(job))

    async def _list_events(self, request: Request) -> Response:
        route = EVENTS_ROUTE
        with self._lock:
            job = self._gated_job(request, route)
            if isinstance(job, Response):
                return job
            newest_first = job.events[::-1]
            after = request.query_params.get("after")
            if after is not None:
                ids = [event["id"] for event in newest_first]
                newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
            limit = int(request.query_params.get("limit", "20"))
            page = newest_first[:limit]
            payload = {"object": "list", "data": page, "has_more": len(newest_first) > limit}
            return self._answer(request, route, None, payload)

    def _gated_job(self, request: Request, route: str) -> FineTuningJob | Response:
        """The fine-tuning job the path names, or the answer refusing the request: gated (as
        scripted, or without the key), or no such job. Called holding the lock."""
        refused = self._gate(request, route, None)
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return self._not_found(request, route, "fine-tuning job", request.path_params["job_id"])
        return job

    def _advance(self, job: FineTuningJob) -> None:
        """One retrieval's worth of progress, as the job's scripted outcome says."""
        if job.status in TERMINAL:
            return
        job.polls += 1
        outcome = job.outcome
        if isinstance(outcome, RunUntilCancelled) or job.polls < outcome.after_polls:
            if job.status != "running":
                job.status = "running"
                self._event(job, "Fine-tuning job started")
            self._event(job, f"Step {job.polls}: training loss=0.{900 - job.polls}")
            return
        job.finished_at = int(time.time())
        if isinstance(outcome, Fail):
            job.status = "failed"
            job.error = {"code": outcome.code, "message": outcome.message, "param": outcome.param}
            self._event(job, outcome.message, level="error")
            return
        epochs = self._hyperparameters(job)["n_epochs"]
        training = self.files[job.request["training_file"]].content
        job.status = "succeeded"
        job.trained_tokens = outcome.trained_tokens or len(training) // 4 * epochs
        suffix = job.request.get("suffix") or ""
        job.fine_tuned_model = (
            outcome.fine_tuned_model
            or f"ft:{job.request['model']}:{ORGANIZATION}:{suffix}:{job.id.removeprefix('ftjob-')}"
        )
        self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        self._event(job, "The job has successfully completed")

    def _event(self, job: FineTuningJob, message: str, *, level: str = "info") -> None:
        job.events.append(
            {
                "id": self._new_id("ftevent"),
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": {},
                "type": "message",
            }
        )

    def _hyperparameters(self, job: FineTuningJob) -> Json:
        """The hyperparameters asked for, under ``method`` or (deprecated) at the top level,
        with ``auto`` resolved."""
        method = job.request.get("method") or {}
        asked = (
            (method.get("supervised") or {}).get("hyperparameters")
            or job.request.get("hyperparameters")
            or {}
        )
        return {
            key: default if asked.get(key, "auto") == "auto" else asked[key]
            for key, default in AUTO_HYPERPARAMETERS.items()
        }

    def _job_object(self, job: FineTuningJob) -> Json:
        hyperparameters = self._hyperparameters(job)
        return {
            "id": job.id,
            "object": "fine_tuning.job",
            "created_at": job.created_at,
            "model": job.request["model"],
            "organization_id": ORGANIZATION,
            "status": job.status,
            "fine_tuned_model": job.fine_tuned_model,
            "finished_at": job.finished_at,
            "trained_tokens": job.trained_tokens,
            "training_file": job.request["training_file"],
            "validation_file": job.request.get("validation_file"),
            "hyperparameters": hyperparameters,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            "result_files": [],
            "seed": job.request.get("seed") or 42,
            "error": job.error,
            "estimated_finish": None,
            "integrations": [],
            "metadata": job.request.get("metadata"),
        }

    def _not_found(self, request: Request, route: str, what: str, name: str) -> Response:
        return self._refuse(request, route, None, 404, f"No {what} found with id '{name}'.")


def _file_object(uploaded: UploadedFile, status: str) -> Json:
    return {
        "id": uploaded.id,
        "object": "file",
        "bytes": len(uploaded.content),
        "created_at": uploaded.created_at,
        "filename": uploaded.filename,
        "purpose": uploaded.purpose,
        "status": status,
        "status_details": None,
        "expires_at": None,
    }


def parse_multipart(
    content_type: str, body: bytes
) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """The text fields and the files (name and bytes) of a ``multipart/form-data`` body.

    The standard library's MIME parser does it, so the fake needs no python-multipart."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields[name] = content.decode()
        else:
            files[name] = (filename, content)
    return fields, files
