"""The Kubernetes executor, with the real ``kubernetes`` client against ``tests/fake_kubernetes``.

The fake plays the API server and the cluster behind it: each driftd job's Job is scripted to
succeed, fail or run until deleted, and advances by being read, so nothing here waits on a clock.
What the job's pod would write to the shared jobs volume (``result.json``, the ``exit`` file) a
script's ``on_end`` writes instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration

from daemon.config import parse_config
from daemon.config.models import ExecutorKind, Kubernetes
from daemon.errors import ConfigError, DriftdError, KubernetesError
from daemon.jobs.executor import Exited, Gone, Running
from daemon.jobs.kubernetes import KubernetesExecutor, KubernetesHandle
from daemon.jobs.runner import JobRunner
from daemon.store import Store
from daemon.store.jobs import create_job, get_job
from tests import fake_kubernetes as fk
from tests.helpers.serve import free_port

NAMESPACE = "retune"
SETTINGS: dict[str, Any] = {
    "namespace": NAMESPACE,
    "image": "driftd:test",
    "image_pull_policy": "IfNotPresent",
    "service_account": "driftd-jobs",
    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
    "gpus": 1,
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "jobs_volume_claim": "driftd-jobs",
    "env_from_secrets": ["driftd-openai"],
    "ttl_after_finished": "1h",
    "active_deadline": "6h",
}


@pytest.fixture
def fake() -> Iterator[fk.FakeKubernetes]:
    with fk.FakeKubernetes() as server:
        yield server


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def executor_for(fake: fk.FakeKubernetes, jobs_dir: Path) -> Callable[..., KubernetesExecutor]:
    """Executors talking to the fake, as several daemons would (each with its own client)."""

    def make(**settings: Any) -> KubernetesExecutor:
        return KubernetesExecutor(
            Kubernetes.model_validate({**SETTINGS, **settings}),
            jobs_dir,
            api_client=ApiClient(Configuration(host=fake.url)),
            cancel_wait=5.0,
            poll_interval=0.01,
        )

    return make


def spec_for(jobs_dir: Path, job_id: int) -> Path:
    """A job's spec where the runner writes it: ``jobs_dir/<id>/job.json``."""
    path = jobs_dir / str(job_id) / "job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"output_dir": str(path.parent / "output")}))
    return path


def pod_writes(result: dict[str, Any], code: int) -> Callable[[dict[str, Any]], None]:
    """What a job's pod leaves on the shared volume: its result and its exit code, beside the
    spec that its command names."""

    def write(job: dict[str, Any]) -> None:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        spec_path = Path(command[command.index("--spec") + 1])
        output = Path(json.loads(spec_path.read_text())["output_dir"])
        output.mkdir(parents=True, exist_ok=True)
        (output / "result.json").write_text(json.dumps(result))
        spec_path.with_name("exit").write_text(f"{code}\n")

    return write


def test_a_job_that_succeeds_runs_as_the_configured_job_and_its_log_is_kept(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    executor = executor_for()
    spec = spec_for(jobs_dir, 7)
    log_path = jobs_dir / "7" / "attempt-1.log"
    fake.script(7, fk.Succeed(after_polls=1, log="epoch 1/3\nepoch 3/3\nsaved model\n"))

    handle = executor.start(7, "fine_tune", spec, log_path, {"OMP_NUM_THREADS": "1"})

    ref = KubernetesHandle.parse(handle)
    assert ref.namespace == NAMESPACE
    assert ref.name.startswith("driftd-job-7-")
    assert len(ref.name) <= 63
    assert executor.poll(handle) == Running()
    assert executor.poll(handle) == Exited(0)
    text = log_path.read_text()
    assert f"Kubernetes Job {NAMESPACE}/{ref.name}" in text
    assert "epoch 3/3\nsaved model\n" in text
    assert text.count("saved model") == 1
    assert executor.poll(handle) == Exited(0)  # read again: the output is not added twice
    assert log_path.read_text().count("saved model") == 1

    [body] = fake.created
    assert body["metadata"]["name"] == ref.name
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/name": "driftd",
        "driftd.io/job-id": "7",
        "driftd.io/kind": "fine_tune",
        "driftd.io/run": ref.name,
    }
    job_spec = body["spec"]
    assert job_spec["backoffLimit"] == 0
    assert job_spec["ttlSecondsAfterFinished"] == 3600
    assert job_spec["activeDeadlineSeconds"] == 6 * 3600
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "driftd-jobs"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["volumes"] == [
        {"name": "driftd-jobs", "persistentVolumeClaim": {"claimName": "driftd-jobs"}}
    ]
    [container] = pod["containers"]
    assert container["image"] == "driftd:test"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == [
        "python",
        "-m",
        "retrain",
        "fine_tune",
        "--spec",
        str(spec.resolve()),
    ]
    assert container["env"] == [{"name": "OMP_NUM_THREADS", "value": "1"}]
    # Keys such as OPENAI_API_KEY reach the job from a Secret, never written into the Job.
    assert container["envFrom"] == [{"secretRef": {"name": "driftd-openai"}}]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    # The jobs volume is mounted where the daemon has it, so the spec's path works in the pod.
    assert container["volumeMounts"] == [
        {"name": "driftd-jobs", "mountPath": str(jobs_dir.resolve())}
    ]


def test_a_job_that_fails_exits_with_its_container_code_and_says_why_in_its_log(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    executor = executor_for(gpus=0)
    fake.script(3, fk.Fail(after_polls=2, exit_code=3, log="loading\nValueError: no labels\n"))
    log_path = jobs_dir / "3" / "attempt-1.log"

    handle = executor.start(3, "fine_tune", spec_for(jobs_dir, 3), log_path, {})

    assert [executor.poll(handle) for _ in range(3)] == [Running(), Running(), Exited(3)]
    text = log_path.read_text()
    assert "ValueError: no labels" in text
    assert "failed: BackoffLimitExceeded: Job has reached the specified backoff limit" in text
    [body] = fake.created
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_a_job_stopped_by_its_deadline_fails_with_code_1_and_the_reason(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    executor = executor_for()
    fake.script(
        4,
        fk.Fail(
            exit_code=None,
            reason="DeadlineExceeded",
            message="Job was active longer than specified deadline",
        ),
    )
    log_path = jobs_dir / "4" / "attempt-1.log"
    handle = executor.start(4, "fine_tune", spec_for(jobs_dir, 4), log_path, {})

    assert [executor.poll(handle) for _ in range(2)] == [Running(), Exited(1)]
    assert "DeadlineExceeded: Job was active longer than specified deadline" in (
        log_path.read_text()
    )


def test_a_cancelled_job_is_deleted_in_the_foreground_and_then_gone(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    executor = executor_for()
    fake.script(5, fk.RunUntilDeleted(log="step 1\nstep 2\n"))
    log_path = jobs_dir / "5" / "attempt-1.log"
    handle = executor.start(5, "fine_tune", spec_for(jobs_dir, 5), log_path, {})
    ref = KubernetesHandle.parse(handle)
    assert executor.poll(handle) == Running()

    executor.cancel(handle)

    assert [(ns, name, o.get("propagationPolicy")) for ns, name, o in fake.deleted] == [
        (NAMESPACE, ref.name, "Foreground")
    ]
    assert not fake.exists(NAMESPACE, ref.name)
    status = executor.poll(handle)
    assert isinstance(status, Gone)
    assert ref.name in status.reason
    assert "step 2" in log_path.read_text()  # its output up to the cancellation
    executor.cancel(handle)  # cancelling what has ended does nothing
    assert len(fake.deleted) == 1


def test_another_daemon_adopts_a_running_job_and_sees_it_end(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    first = executor_for()
    log_path = jobs_dir / "8" / "attempt-2.log"
    spec = spec_for(jobs_dir, 8).resolve()
    name = "driftd-job-8-0a1b2c"
    body = first.job_body(name, 8, "prompt_revision", spec, log_path, {})
    as_sent = ApiClient().sanitize_for_serialization(body)  # type: ignore[no-untyped-call]
    fake.add_job(NAMESPACE, as_sent, fk.Succeed(after_polls=1, log="done\n"))
    handle = str(KubernetesHandle(NAMESPACE, name))

    second = executor_for()  # a new daemon: it knows the handle only
    assert second.adopt(handle) is True
    assert second.poll(handle) == Exited(0)
    assert "done" in log_path.read_text()  # the log path came with the Job
    assert second.adopt(handle) is False  # ended: nothing left to watch


def test_a_job_removed_after_its_ttl_is_judged_by_the_exit_file_it_left(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    executor = executor_for()
    spec = spec_for(jobs_dir, 9)
    handle = str(KubernetesHandle(NAMESPACE, "driftd-job-9-abcdef"))  # no such Job
    gone = executor.poll(handle)
    assert isinstance(gone, Gone)
    assert "does not exist" in gone.reason
    assert str(spec.with_name("exit")) in gone.reason
    assert executor.adopt(handle) is False
    executor.cancel(handle)  # nothing to stop

    spec.with_name("exit").write_text("0\n")  # what the job wrote before its Job was removed
    assert executor.poll(handle) == Exited(0)


def test_handles_of_another_executor_and_api_errors_are_refused_clearly(
    fake: fk.FakeKubernetes, executor_for: Callable[..., KubernetesExecutor], jobs_dir: Path
) -> None:
    executor = executor_for()
    with pytest.raises(ValueError, match="not a Kubernetes job handle"):
        executor.poll("pid:123:jobs/1/job.json")

    port = free_port()  # a port nobody listens on
    unreachable = KubernetesExecutor(
        Kubernetes.model_validate(SETTINGS),
        jobs_dir,
        api_client=ApiClient(Configuration(host=f"http://127.0.0.1:{port}")),
    )
    with pytest.raises(
        KubernetesError, match="could not create Kubernetes Job retune/driftd-job-1-"
    ):
        unreachable.start(1, "fine_tune", spec_for(jobs_dir, 1), jobs_dir / "1" / "a.log", {})

    fake.script(2, fk.RunUntilDeleted())
    handle = executor.start(2, "fine_tune", spec_for(jobs_dir, 2), jobs_dir / "2" / "a.log", {})
    fake.forbid(NAMESPACE)  # the daemon's role was taken away
    # The API's own message reaches the user; an error is no verdict on the job (not Gone).
    with pytest.raises(
        KubernetesError, match=r"could not read Kubernetes Job .*HTTP 403 .*forbidden"
    ):
        executor.poll(handle)
    with pytest.raises(KubernetesError, match=r"HTTP 403 Forbidden: jobs.batch is forbidden: User"):
        executor.start(3, "fine_tune", spec_for(jobs_dir, 3), jobs_dir / "3" / "a.log", {})


def test_config_names_what_the_kubernetes_executor_is_missing() -> None:
    config = parse_config(
        "scheduling:\n  executor: kubernetes\n  kubernetes:\n"
        "    image: driftd:test\n    jobs_volume_claim: driftd-jobs\n",
        environ={},
    )
    assert config.scheduling.executor is ExecutorKind.kubernetes
    assert config.scheduling.kubernetes.ttl_after_finished.total_seconds() == 86400

    with pytest.raises(ConfigError) as caught:
        parse_config("scheduling:\n  executor: kubernetes\n", source="driftd.yaml", environ={})
    [problem] = caught.value.problems
    assert problem.startswith("driftd.yaml:1: scheduling: executor 'kubernetes' needs ")
    assert "scheduling.kubernetes.image" in problem
    assert "scheduling.kubernetes.jobs_volume_claim" in problem

    with pytest.raises(ConfigError) as caught:
        parse_config(
            "scheduling:\n  kubernetes:\n    namespace: Re_Tune\n"
            "    resources: {limits: {memory: lots}}\n"
            "    tolerations: [{key: gpu, opertor: Exists}]\n"
            "    env_from_secrets: [OpenAI_Keys]\n",
            environ={},
        )
    assert [p.split(": ", 2)[1] for p in caught.value.problems] == [
        "scheduling.kubernetes.namespace",
        "scheduling.kubernetes.resources.limits",
        "scheduling.kubernetes.tolerations",
        "scheduling.kubernetes.env_from_secrets",
    ]
    assert "memory: 'lots'" in caught.value.problems[1]
    assert "unknown key(s) opertor" in caught.value.problems[2]


def test_the_cluster_is_reached_through_the_configured_kubeconfig(
    fake: fk.FakeKubernetes, jobs_dir: Path, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake.url}'}}}}]\n"
        "users: [{name: driftd, user: {token: not-a-secret}}]\n"
        "contexts: [{name: test, context: {cluster: fake, user: driftd, namespace: retune}}]\n"
    )
    executor = KubernetesExecutor(
        Kubernetes.model_validate({**SETTINGS, "kubeconfig": str(kubeconfig)}), jobs_dir
    )
    fake.script(6, fk.RunUntilDeleted())
    handle = executor.start(6, "fine_tune", spec_for(jobs_dir, 6), jobs_dir / "6" / "a.log", {})
    assert executor.poll(handle) == Running()

    with pytest.raises(DriftdError, match=r"scheduling.kubernetes.kubeconfig: cannot use .*nope"):
        KubernetesExecutor(
            Kubernetes.model_validate({**SETTINGS, "kubeconfig": str(tmp_path / "nope")}),
            jobs_dir,
        )


def test_without_the_kubernetes_package_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, jobs_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes → ImportError
    with pytest.raises(DriftdError, match=r"pip install 'driftd\[kubernetes\]'"):
        KubernetesExecutor(Kubernetes.model_validate(SETTINGS), jobs_dir)


def test_the_runner_drives_kubernetes_jobs_to_succeeded_and_failed(
    store: Store,
    deployment: str,
    fake: fk.FakeKubernetes,
    executor_for: Callable[..., KubernetesExecutor],
    jobs_dir: Path,
) -> None:
    from datetime import timedelta

    runner = JobRunner(
        store,
        executor_for(),
        jobs_dir,
        "daemon-k8s",
        heartbeat=timedelta(seconds=1),
        backoff_base=timedelta(milliseconds=10),
        backoff_max=timedelta(milliseconds=10),
        concurrency=2,
    )
    good = create_job(store, deployment, "evaluate", "manual", {"golden_set": "g.jsonl"})
    bad = create_job(store, deployment, "evaluate", "drift", {"golden_set": "x"}, max_attempts=2)
    fake.script(good, fk.Succeed(after_polls=2, on_end=pod_writes({"accuracy": 0.9}, 0)))
    fake.script(
        bad,
        fk.Fail(
            after_polls=1,
            exit_code=1,
            log="error: x is not a file\n",
            on_end=pod_writes({"error": "golden set x is not a file"}, 1),
        ),
    )

    runner.run_until_idle(timeout=30, interval=0.02)

    job = get_job(store, good)[1]
    assert (job.state, job.attempt, job.result) == ("succeeded", 1, {"accuracy": 0.9})
    assert job.handle is not None
    assert job.handle.startswith(f"k8s:{NAMESPACE}/driftd-job-{good}-")
    job = get_job(store, bad)[1]
    assert (job.state, job.attempt) == ("failed", 2)
    assert job.error is not None
    assert "exited with code 1: golden set x is not a file" in job.error
    assert "error: x is not a file" in Path(str(job.log_path)).read_text()
    created = [body["metadata"]["labels"]["driftd.io/job-id"] for body in fake.created]
    assert sorted(created) == sorted([str(good), str(bad), str(bad)])  # one Job per attempt
