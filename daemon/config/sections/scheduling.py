"""``scheduling``: the leader lease, the check workers, and where jobs run (as local processes or
as Kubernetes Jobs)."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from daemon.config.sections import Section
from daemon.config.types import (
    Duration,
    RelativePath,
    format_duration,
)


class ExecutorKind(StrEnum):
    """Where job processes run."""

    local = "local"
    kubernetes = "kubernetes"


# A Kubernetes resource quantity: 2, 500m, 1.5, 4Gi, 1e3.
_QUANTITY = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
# Kubernetes object names: a namespace is a DNS-1123 label, a claim or service account a
# DNS-1123 subdomain (dots allowed).
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


class KubernetesResources(Section):
    """Compute resources of a job's container, as in a Pod spec (`cpu: "2"`, `memory: 8Gi`)."""

    requests: dict[str, str] = Field(
        default_factory=dict, description="Resources the scheduler reserves for the job."
    )
    limits: dict[str, str] = Field(
        default_factory=dict, description="Most the job may use; memory beyond it is OOM-killed."
    )

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [
            f"{name}: {amount!r}"
            for name, amount in value.items()
            if not _QUANTITY.fullmatch(amount)
        ]
        if bad:
            raise ValueError(
                f"not Kubernetes quantities ({', '.join(bad)}); write e.g. '2', '500m' or '8Gi'"
            )
        return value


class Kubernetes(Section):
    """Jobs as Kubernetes Jobs (`executor: kubernetes`); `jobs_dir` must be a shared volume.

    Each attempt of a job is a `batch/v1` Job running `python -m retrain` in `image`. The job
    reads its spec from, and writes its result to, `scheduling.jobs_dir`, so that folder must
    be a ReadWriteMany volume (`jobs_volume_claim`) that the daemon mounts at the same path.
    """

    namespace: str = Field(
        "default",
        description="Namespace of the Jobs; driftd's service account needs `create`, `get` and "
        "`delete` on `jobs`, `get` and `list` on `pods` and `get` on `pods/log` there.",
    )
    image: str | None = Field(
        None,
        min_length=1,
        description="Container image of the jobs (driftd's own image holds `retrain`); "
        "required with `executor: kubernetes`.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="The container's `imagePullPolicy`; unset leaves Kubernetes' default."
    )
    service_account: str | None = Field(
        None,
        description="Service account the job's pod runs as; unset means the namespace's default.",
    )
    resources: KubernetesResources = Field(
        default_factory=KubernetesResources, description="The job container's resources."
    )
    gpus: int = Field(
        0, ge=0, le=64, description="GPUs per job, requested as `gpu_resource`; 0 asks for none."
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        min_length=1,
        description="Extended resource name of a GPU (`nvidia.com/gpu`, `amd.com/gpu`).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a job's pod must match, e.g. GPU nodes."
    )
    tolerations: tuple[dict[str, str | int], ...] = Field(
        (),
        description="Tolerations of the job's pod, spelled as in a Pod spec (`key`, `operator`, "
        "`value`, `effect`, `tolerationSeconds`), e.g. for tainted GPU nodes.",
    )
    jobs_volume_claim: str | None = Field(
        None,
        description="PersistentVolumeClaim (ReadWriteMany) holding `scheduling.jobs_dir`, mounted "
        "in each job at that same path; required with `executor: kubernetes`.",
    )
    env_from_secrets: tuple[str, ...] = Field(
        (),
        description="Secrets whose keys become environment variables of every job's container "
        "(`envFrom`), e.g. the one holding OPENAI_API_KEY for OpenAI fine-tuning and prompt "
        "revision: a job does not inherit the daemon's environment.",
    )
    ttl_after_finished: Duration = Field(
        timedelta(days=1),
        description="A finished Job and its pod are deleted this long after it ended; keep it "
        "well above `job_stale_after` so a new leader still finds them.",
    )
    active_deadline: Duration | None = Field(
        None,
        description="Kubernetes stops a job running longer than this (`activeDeadlineSeconds`); "
        "unset means no limit beyond the job's own timeout.",
    )
    kubeconfig: RelativePath | None = Field(
        None,
        description="Kubeconfig file to reach the cluster from outside it (relative to this "
        "file); unset means the in-cluster service account.",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError(
                "expected a Kubernetes namespace: at most 63 lowercase letters, digits or '-', "
                f"starting and ending with a letter or digit, got {value!r}"
            )
        return value

    @field_validator("service_account", "jobs_volume_claim")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_SUBDOMAIN.fullmatch(value):
            raise ValueError(
                "expected a Kubernetes object name: lowercase letters, digits, '-' or '.', "
                f"starting and ending with a letter or digit, got {value!r}"
            )
        return value

    @field_validator("env_from_secrets")
    @classmethod
    def _secret_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            cls._object_name(name)
        return value

    @field_validator("tolerations")
    @classmethod
    def _tolerations(
        cls, value: tuple[dict[str, str | int], ...]
    ) -> tuple[dict[str, str | int], ...]:
        for i, toleration in enumerate(value):
            unknown = sorted(set(toleration) - _TOLERATION_KEYS)
            if unknown:
                raise ValueError(
                    f"entry {i} has unknown key(s) {', '.join(unknown)}; a toleration has "
                    f"{', '.join(sorted(_TOLERATION_KEYS))}"
                )
            for key, item in toleration.items():
                if (key == "tolerationSeconds") != isinstance(item, int):
                    wanted = "a whole number" if key == "tolerationSeconds" else "a string"
                    raise ValueError(f"entry {i}: {key} should be {wanted}, got {item!r}")
        return value


class Scheduling(Section):
    lease_ttl: Duration = Field(
        timedelta(seconds=15),
        description="Leader lease: a replica that stops renewing loses it after this long, and "
        "another takes over; renewed every third of it.",
    )
    check_workers: int = Field(
        1,
        ge=1,
        le=16,
        description="Worker processes that run checks (off the API's event loop). Every replica "
        "runs checks: it claims a due check only while one of its workers is free.",
    )
    warm_queue: int = Field(
        20_000,
        ge=100,
        le=1_000_000,
        description="Samples the background embedder of warm checks (`monitor.warm`) may hold "
        "waiting; beyond it ingest hands it nothing more and counts them in "
        '`driftd_embeddings_skipped_total{reason="queue_full"}`, never waiting for it.',
    )
    jobs_dir: Path = Field(
        Path("driftd-jobs"),
        description="Folder of the jobs' specs, logs and results (relative to the working "
        "directory). With `executor: kubernetes` the jobs read and write it too, so it must be "
        "a ReadWriteMany volume (`kubernetes.jobs_volume_claim`) mounted at this same path in "
        "the daemon.",
    )
    job_poll: Duration = Field(
        timedelta(seconds=2), description="How often the leader starts and watches jobs."
    )
    job_heartbeat: Duration = Field(
        timedelta(seconds=5),
        description="How often the leader renews a running job's heartbeat, and each replica "
        "the claims of the checks it is running.",
    )
    job_stale_after: Duration = Field(
        timedelta(seconds=30),
        description="A running job whose heartbeat is older than this lost its daemon: the "
        "leader adopts it (still running) or retries or fails it (its process is gone). A check "
        "claim whose heartbeat is older lost its replica: a replica with a free check worker "
        "runs that tick again.",
    )
    job_backoff: Duration = Field(
        timedelta(seconds=30),
        description="Wait before retrying a failed job attempt; it doubles with each attempt, "
        "up to `job_backoff_max`. A job that says a retry would fail the same way (a bad spec, "
        "a token or cost cap reached) is not retried.",
    )
    job_backoff_max: Duration = Field(
        timedelta(minutes=30), description="The longest wait before retrying a job attempt."
    )
    catch_up: bool = Field(
        True,
        description="After downtime or a change of leader, run a missed check or re-tuning "
        "once (the latest missed tick), not once per missed tick.",
    )
    executor: ExecutorKind = Field(
        ExecutorKind.local,
        description="Where jobs run: `local` (subprocesses of the leader) or `kubernetes` "
        "(a Job per attempt, see `scheduling.kubernetes`; needs the `driftd[kubernetes]` extra).",
    )
    kubernetes: Kubernetes = Field(
        default_factory=Kubernetes, description="The Kubernetes Jobs of `executor: kubernetes`."
    )

    @model_validator(mode="after")
    def _heartbeat(self) -> Self:
        if self.job_stale_after <= self.job_heartbeat:
            raise ValueError(
                f"job_stale_after ({format_duration(self.job_stale_after)}) must be longer than "
                f"job_heartbeat ({format_duration(self.job_heartbeat)}), or the jobs of a live "
                "daemon would be taken for orphans"
            )
        if self.job_backoff_max < self.job_backoff:
            raise ValueError(
                f"job_backoff_max ({format_duration(self.job_backoff_max)}) must not be shorter "
                f"than job_backoff ({format_duration(self.job_backoff)})"
            )
        return self

    @model_validator(mode="after")
    def _executor(self) -> Self:
        if self.executor is ExecutorKind.kubernetes:
            needed = {
                "image": "the container image the jobs run in",
                "jobs_volume_claim": "the ReadWriteMany claim holding jobs_dir, which the "
                "daemon and its jobs share",
            }
            missing = [
                f"scheduling.kubernetes.{name} ({why})"
                for name, why in needed.items()
                if getattr(self.kubernetes, name) is None
            ]
            if missing:
                raise ValueError(f"executor 'kubernetes' needs {' and '.join(missing)}")
        return self
