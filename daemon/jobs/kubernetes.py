"""``KubernetesExecutor``: each attempt of a job runs as a Kubernetes ``batch/v1`` Job.

This is how driftd re-tunes at scale: the leader creates a Job whose one container runs
``python -m retrain <kind> --spec <spec>`` in the configured image, on the nodes (GPU nodes,
say) that the node selector and tolerations allow, and follows it through the API. Any replica
can watch, adopt or cancel a Job another one created, because everything it needs is in the
handle (``k8s:<namespace>/<job name>``) and on the Job itself (its log path, as an annotation).

The Job has ``backoffLimit: 0``: retrying a failed attempt is the job runner's decision, with
its backoff and its attempt count, so Kubernetes must not retry behind its back. Its spec is read
from, and its result written to, ``scheduling.jobs_dir``, which therefore has to be a
ReadWriteMany volume (``jobs_volume_claim``) mounted in the daemon and in every Job at the same
path. That volume is also why a Job already removed by its TTL is not lost: the ``exit`` file the
job wrote beside its spec still says how it ended.

A job's output is fetched from its pod when the Job ends (or is cancelled) and appended to the
attempt's log; while it runs, ``kubectl logs`` shows it, as the first line of the log says.

The ``kubernetes`` package is an optional extra (``driftd[kubernetes]``), imported only when this
executor is built, so that driftd runs without it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from daemon.config.models import Kubernetes
from daemon.errors import DriftdError, KubernetesError
from daemon.jobs.executor import LOG_HEADER, Exited, Gone, Running, Status, exit_path
from daemon.jobs.runner import SPEC_FILE

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1Job, V1Pod, V1Toleration

log = logging.getLogger("driftd.jobs")

HANDLE_PREFIX = "k8s:"
CONTAINER = "job"
"""The name of the one container of a job's pod."""

LABEL_APP = "app.kubernetes.io/name"
LABEL_JOB_ID = "driftd.io/job-id"
LABEL_KIND = "driftd.io/kind"
LABEL_RUN = "driftd.io/run"
"""On a Job and its pods: the Job's name, by which its pods are found."""
ANNOTATION_LOG = "driftd.io/log-path"
"""Where the attempt's log is, so that the daemon that adopts a Job appends its output there."""

JOBS_VOLUME = "driftd-jobs"

# Connect and read timeouts of every API request: the runner's tick waits on them.
_REQUEST_TIMEOUT = (5.0, 30.0)
# A job's output beyond this is cut: the log is for reading, the job's result is in result.json.
_LOG_TAIL_LINES = 20_000
_LOG_LIMIT_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"driftd-job-(?P<id>\d+)-[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class KubernetesHandle:
    """A Kubernetes job's handle: ``k8s:<namespace>/<job name>``."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, handle: str) -> Self:
        prefix, _, rest = handle.partition(":")
        namespace, _, name = rest.partition("/")
        if f"{prefix}:" != HANDLE_PREFIX or not namespace or not name or "/" in name:
            raise ValueError(f"not a Kubernetes job handle (k8s:<namespace>/<name>): {handle!r}")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{HANDLE_PREFIX}{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class _Ended:
    """How a finished Job ended, from its conditions."""

    succeeded: bool
    reason: str


class KubernetesExecutor:
    """Runs each job attempt as a Kubernetes Job; see the module docstring."""

    def __init__(
        self,
        settings: Kubernetes,
        jobs_dir: Path,
        *,
        api_client: ApiClient | None = None,
        cancel_wait: float = 60.0,
        poll_interval: float = 0.5,
    ) -> None:
        """``jobs_dir`` is the runner's (``scheduling.jobs_dir``): it is mounted in every Job at
        this same path. Without ``api_client``, the cluster is reached through
        ``settings.kubeconfig`` or, unset, the pod's service account. ``cancel`` waits up to
        ``cancel_wait`` seconds for a deleted Job's pods to go, looking every
        ``poll_interval`` seconds."""
        if cancel_wait < 0 or poll_interval <= 0:
            raise ValueError(
                f"need cancel_wait >= 0 and poll_interval > 0, got {cancel_wait}, {poll_interval}"
            )
        if not settings.image:
            raise ValueError("the Kubernetes executor needs settings.image")
        _require_kubernetes()
        from kubernetes import client

        self.settings = settings
        self.jobs_dir = Path(jobs_dir).resolve()
        self.cancel_wait = cancel_wait
        self.poll_interval = poll_interval
        self._api = api_client if api_client is not None else _connect(settings)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)

    def start(
        self, job_id: int, kind: str, spec_path: Path, log_path: Path, env: Mapping[str, str]
    ) -> str:
        spec_path = spec_path.resolve()
        if not spec_path.is_relative_to(self.jobs_dir):
            raise ValueError(f"spec {spec_path} is not under jobs_dir {self.jobs_dir}")
        exit_path(spec_path).unlink(missing_ok=True)
        name = f"driftd-job-{job_id}-{secrets.token_hex(3)}"
        handle = KubernetesHandle(self.settings.namespace, name)
        body = self.job_body(name, job_id, kind, spec_path, log_path, env)
        try:
            with _api(f"create Kubernetes Job {handle.namespace}/{name}"):
                self._batch.create_namespaced_job(
                    handle.namespace, body, _request_timeout=_REQUEST_TIMEOUT
                )
        except KubernetesError as error:
            if error.status is None:
                # No answer: the Job may exist all the same, and would run beside the retry.
                self._delete_quietly(handle)
            raise
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(_command(kind, spec_path))
        started = datetime.now(UTC).isoformat(timespec="seconds")
        with log_path.open("a", encoding="utf-8") as log_file:
            # The header keeps attempts apart in a shared log, as LocalExecutor's does.
            log_file.write(
                f"{LOG_HEADER} job {job_id}: Kubernetes Job {handle.namespace}/{name}: "
                f"{command} at {started}; its output is added here when it ends; meanwhile: "
                f"kubectl logs -n {handle.namespace} -f job/{name}\n"
            )
        return str(handle)

    def poll(self, handle: str) -> Status:
        ref = KubernetesHandle.parse(handle)
        job = self._read_job(ref)
        if job is None:
            return self._vanished(ref)
        ended = _ended(job)
        if ended is None:
            return Running()
        pods = self._pods(ref)
        code = 0 if ended.succeeded else (_exit_code(pods) or self._exit_file(ref) or 1)
        self._collect_log(ref, job, pods, f"exit code {code}", None if ended.succeeded else ended)
        return Exited(code)

    def cancel(self, handle: str) -> None:
        ref = KubernetesHandle.parse(handle)
        job = self._read_job(ref)
        if job is None or _ended(job) is not None:
            return
        self._collect_log(ref, job, self._pods(ref), "up to its cancellation", None)
        try:
            with _api(f"delete Kubernetes Job {ref.namespace}/{ref.name}"):
                # Foreground: the Job stays until its pods are gone, so that its absence
                # means the job's process has ended.
                self._batch.delete_namespaced_job(
                    ref.name,
                    ref.namespace,
                    propagation_policy="Foreground",
                    _request_timeout=_REQUEST_TIMEOUT,
                )
        except KubernetesError as error:
            if error.status == 404:
                return
            raise
        deadline = time.monotonic() + self.cancel_wait
        while self._read_job(ref) is not None:
            if time.monotonic() >= deadline:
                log.warning(
                    "Kubernetes Job %s/%s was still being deleted after %.0f s",
                    ref.namespace,
                    ref.name,
                    self.cancel_wait,
                )
                return
            time.sleep(self.poll_interval)

    def adopt(self, handle: str) -> bool:
        job = self._read_job(KubernetesHandle.parse(handle))
        return job is not None and _ended(job) is None

    def job_body(
        self,
        name: str,
        job_id: int,
        kind: str,
        spec_path: Path,
        log_path: Path,
        env: Mapping[str, str],
    ) -> V1Job:
        """The Job that runs attempt ``name`` of job ``job_id``."""
        from kubernetes import client

        settings = self.settings
        labels = {
            LABEL_APP: "driftd",
            LABEL_JOB_ID: str(job_id),
            LABEL_KIND: kind,
            LABEL_RUN: name,
        }
        requests = dict(settings.resources.requests)
        limits = dict(settings.resources.limits)
        if settings.gpus:
            # An extended resource is requested through its limit; a request, if given,
            # must equal it.
            limits[settings.gpu_resource] = str(settings.gpus)
            if settings.gpu_resource in requests:
                requests[settings.gpu_resource] = str(settings.gpus)
        container = client.V1Container(
            name=CONTAINER,
            image=settings.image,
            image_pull_policy=settings.image_pull_policy,
            command=_command(kind, spec_path),
            working_dir=str(spec_path.parent),
            env=[client.V1EnvVar(name=key, value=value) for key, value in sorted(env.items())]
            or None,
            env_from=[
                client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=secret))
                for secret in settings.env_from_secrets
            ]
            or None,
            resources=client.V1ResourceRequirements(
                requests=requests or None, limits=limits or None
            ),
            volume_mounts=[client.V1VolumeMount(name=JOBS_VOLUME, mount_path=str(self.jobs_dir))]
            if settings.jobs_volume_claim
            else None,
        )
        pod = client.V1PodSpec(
            restart_policy="Never",
            containers=[container],
            service_account_name=settings.service_account,
            node_selector=dict(settings.node_selector) or None,
            tolerations=[_toleration(t) for t in settings.tolerations] or None,
            volumes=[
                client.V1Volume(
                    name=JOBS_VOLUME,
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name=settings.jobs_volume_claim
                    ),
                )
            ]
            if settings.jobs_volume_claim
            else None,
        )
        deadline = settings.active_deadline
        return client.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=settings.namespace,
                labels=labels,
                annotations={ANNOTATION_LOG: str(log_path)},
            ),
            spec=client.V1JobSpec(
                backoff_limit=0,
                ttl_seconds_after_finished=int(settings.ttl_after_finished.total_seconds()),
                active_deadline_seconds=None if deadline is None else int(deadline.total_seconds()),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels), spec=pod
                ),
            ),
        )

    def _delete_quietly(self, ref: KubernetesHandle) -> None:
        try:
            with _api(f"delete Kubernetes Job {ref.namespace}/{ref.name}"):
                self._batch.delete_namespaced_job(
                    ref.name,
                    ref.namespace,
                    propagation_policy="Background",
                    _request_timeout=_REQUEST_TIMEOUT,
                )
        except KubernetesError as error:
            if error.status != 404:
                log.warning("%s; delete it by hand if it exists", error)

    def _read_job(self, ref: KubernetesHandle) -> V1Job | None:
        """The Job, or None if it does not exist (any more)."""
        try:
            with _api(f"read Kubernetes Job {ref.namespace}/{ref.name}"):
                job: V1Job = self._batch.read_namespaced_job(
                    ref.name, ref.namespace, _request_timeout=_REQUEST_TIMEOUT
                )
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise
        return job

    def _pods(self, ref: KubernetesHandle) -> list[V1Pod]:
        """The Job's pods, oldest first; none if they cannot be listed (the log says why)."""
        try:
            with _api(f"list the pods of Kubernetes Job {ref.namespace}/{ref.name}"):
                pods = self._core.list_namespaced_pod(
                    ref.namespace,
                    label_selector=f"{LABEL_RUN}={ref.name}",
                    _request_timeout=_REQUEST_TIMEOUT,
                )
        except KubernetesError as error:
            log.warning("%s", error)
            return []
        items: list[V1Pod] = list(pods.items)
        return sorted(items, key=lambda pod: str(pod.metadata and pod.metadata.creation_timestamp))

    def _vanished(self, ref: KubernetesHandle) -> Status:
        """Status of a Job that does not exist: ended, if the job left its exit code."""
        code = self._exit_file(ref)
        if code is not None:
            return Exited(code)
        spec_path = self._spec_path(ref)
        where = f" in {exit_path(spec_path)}" if spec_path else ""
        return Gone(
            f"Kubernetes Job {ref.namespace}/{ref.name} does not exist (deleted, or removed "
            f"after scheduling.kubernetes.ttl_after_finished) and the job left no exit code{where}"
        )

    def _spec_path(self, ref: KubernetesHandle) -> Path | None:
        """Where the runner wrote the spec of the job a Job of ours runs (its id is in the
        Job's name), and so where that job writes its exit code."""
        match = _NAME.fullmatch(ref.name)
        return None if match is None else self.jobs_dir / match["id"] / SPEC_FILE

    def _exit_file(self, ref: KubernetesHandle) -> int | None:
        spec_path = self._spec_path(ref)
        if spec_path is None:
            return None
        try:
            return int(exit_path(spec_path).read_text().strip())
        except (OSError, ValueError):
            return None

    def _collect_log(
        self,
        ref: KubernetesHandle,
        job: V1Job,
        pods: list[V1Pod],
        what: str,
        failure: _Ended | None,
    ) -> None:
        """Append the output of the Job's pods to the attempt's log, once per pod."""
        annotations = (job.metadata and job.metadata.annotations) or {}
        log_path_text = annotations.get(ANNOTATION_LOG)
        if not log_path_text:
            return
        log_path = Path(log_path_text)
        try:
            written = log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            written = ""
        except OSError as error:
            log.warning("cannot read the log %s of Job %s: %s", log_path, ref.name, error)
            return
        parts: list[str] = []
        for pod in pods:
            pod_name = pod.metadata.name if pod.metadata else None
            if not pod_name:
                continue
            header = f"{LOG_HEADER} output of pod {ref.namespace}/{pod_name}"
            if header in written:
                continue
            parts.append(f"{header} ({what}):\n{self._read_log(ref.namespace, pod_name)}")
        if pods and not parts:
            return  # another daemon, or an earlier poll, wrote it already
        if not pods:
            parts.append(
                f"{LOG_HEADER} Kubernetes Job {ref.namespace}/{ref.name} has no pods to read "
                "the output of\n"
            )
        if failure is not None:
            parts.append(f"Kubernetes: Job {ref.name} failed: {failure.reason}\n")
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("a", encoding="utf-8") as log_file:
                log_file.write("".join(parts))
        except OSError as error:
            log.warning("cannot append to the log %s of Job %s: %s", log_path, ref.name, error)

    def _read_log(self, namespace: str, pod: str) -> str:
        try:
            with _api(f"read the log of pod {namespace}/{pod}"):
                # Raw bytes: the client would otherwise try to deserialise a log that looks
                # like JSON.
                response = self._core.read_namespaced_pod_log(
                    pod,
                    namespace,
                    container=CONTAINER,
                    tail_lines=_LOG_TAIL_LINES,
                    limit_bytes=_LOG_LIMIT_BYTES,
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
                data: Any = response.data  # type: ignore[attr-defined]
        except KubernetesError as error:
            return f"(no output: {error})\n"
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        return text if not text or text.endswith("\n") else text + "\n"


def _command(kind: str, spec_path: Path) -> list[str]:
    return ["python", "-m", "retrain", kind, "--spec", str(spec_path)]


def _require_kubernetes() -> None:
    """Fails with an error that says how to install the ``kubernetes`` package if it is
    missing; after it, the package's modules may be imported."""
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise DriftdError(
            "scheduling.executor is 'kubernetes' but the kubernetes package is not installed: "
            "install driftd with its extra, pip install 'driftd[kubernetes]'"
        ) from None


def _connect(settings: Kubernetes) -> ApiClient:
    """A client for the cluster: from ``settings.kubeconfig``, else the pod's service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if settings.kubeconfig is not None:
        try:
            api: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(settings.kubeconfig)
            )
        except (ConfigException, OSError, ValueError) as error:
            raise DriftdError(
                f"scheduling.kubernetes.kubeconfig: cannot use {settings.kubeconfig}: {error}"
            ) from None
        return api
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException as error:
        raise DriftdError(
            "scheduling.executor is 'kubernetes' but driftd is not running in a Kubernetes pod "
            f"({str(error).rstrip('.')}): set scheduling.kubernetes.kubeconfig to reach the "
            "cluster from outside"
        ) from None
    return client.ApiClient(configuration)


@contextmanager
def _api(what: str) -> Iterator[None]:
    """Turns the client's errors into ``KubernetesError``, saying what was being done."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as error:
        raise KubernetesError(
            f"could not {what}: HTTP {error.status} {error.reason}: {_message(error)}",
            error.status,
        ) from None
    except urllib3.exceptions.HTTPError as error:
        raise KubernetesError(
            f"could not {what}: the Kubernetes API is unreachable: {error}"
        ) from None


def _message(error: Any) -> str:
    """The ``message`` of the API's ``Status`` body, else the body itself."""
    import json

    body = error.body
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return str(message or body or "no details").strip()


def _ended(job: V1Job) -> _Ended | None:
    """How the Job ended, or None while it has not.

    Only the terminal conditions count: since Kubernetes 1.31 ``SuccessCriteriaMet`` and
    ``FailureTarget`` come first, while the pods may still be terminating.
    """
    status = job.status
    if status is None:
        return None
    for condition in status.conditions or []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return _Ended(True, condition.reason or "Complete")
        if condition.type == "Failed":
            reason = condition.reason or "Failed"
            return _Ended(False, f"{reason}: {condition.message}" if condition.message else reason)
    if not status.conditions and not status.active:
        # Servers that report counts only.
        if status.succeeded:
            return _Ended(True, "succeeded")
        if status.failed:
            return _Ended(False, "its pod failed")
    return None


def _exit_code(pods: list[V1Pod]) -> int | None:
    """The exit code of the job's container in the latest pod that has one; 0 is no failure
    code, so it counts as none (a failed Job whose container exited 0 was stopped from
    outside)."""
    for pod in reversed(pods):
        statuses = (pod.status and pod.status.container_statuses) or []
        for status in statuses:
            terminated = status.state and status.state.terminated
            if status.name == CONTAINER and terminated and terminated.exit_code:
                return int(terminated.exit_code)
    return None


def _toleration(toleration: Mapping[str, str | int]) -> V1Toleration:
    from kubernetes import client

    seconds = toleration.get("tolerationSeconds")
    return client.V1Toleration(
        key=toleration.get("key"),
        operator=toleration.get("operator"),
        value=toleration.get("value"),
        effect=toleration.get("effect"),
        toleration_seconds=None if seconds is None else int(seconds),
    )
