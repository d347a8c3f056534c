"""The Helm chart rendered by the real `helm template`, and what comes out checked.

`.ci/run` puts a `helm` on the PATH when the machine has none (Debian packages none); locally the
tests skip with the reason when it is missing. The structural checks of the templates as text are
in test_deploy_files.py; these are about the manifests Kubernetes would receive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.auth import ADMIN_ENV, INGEST_ENV, PROXY_ENV
from daemon.config import parse_config
from daemon.config.models import UpstreamAuth

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "driftd"
ALERT_RULES = ROOT / "dashboards" / "prometheus" / "driftd-alerts.yml"
DASHBOARDS = ROOT / "dashboards" / "grafana" / "dashboards"
KUBE_VERSION = "1.29.0"
TOKEN_ENVS = (INGEST_ENV, PROXY_ENV, ADMIN_ENV)
EVERYTHING_ON = (
    "existingSecret=driftd-secrets",
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboards.enabled=true",
    "kubernetesExecutor.enabled=true",
    "jobsVolume.enabled=true",
    "kubernetesExecutor.job.env_from_secrets={driftd-openai}",
)

HELM = shutil.which("helm")
pytestmark = pytest.mark.skipif(
    HELM is None, reason="`helm` is not on the PATH (.ci/run installs one; Debian packages none)"
)


def _render(*settings: str, values: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    command = [HELM, "template", "demo", str(CHART), "--kube-version", KUBE_VERSION]
    command += ["--api-versions", "monitoring.coreos.com/v1"]
    if values is not None:
        command += ["--values", str(values)]
    for setting in settings:
        command += ["--set", setting]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _manifests(*settings: str, values: Path | None = None) -> list[dict[str, Any]]:
    rendered = _render(*settings, values=values)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def _environment(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment the kubelet gives ``container``, with ``secrets`` (name -> data) in the
    namespace: every key of an envFrom Secret, then the container's own env over it. A missing
    Secret, or a missing key of a secretKeyRef not marked optional, fails as the pod would."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["secretRef"]
        assert ref["name"] in secrets or ref.get("optional"), f"no Secret {ref['name']}"
        environment |= secrets.get(ref["name"], {})
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"], {})
        if ref["key"] in data:
            environment[variable["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{variable['name']}: no key {ref['key']} in {ref['name']}"
    return environment


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
    return found[0]


def test_the_defaults_render_a_two_replica_deployment_with_its_service_and_configuration() -> None:
    manifests = _manifests("existingSecret=driftd-secrets")
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    deployment = _one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2  # several replicas, one leader by the lease
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"] == [{"secretRef": {"name": "driftd-secrets"}}]
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    service = _one(manifests, "Service")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in (
        container["ports"][0]["name"],
        container["ports"][0]["containerPort"],
    )

    # The configuration the pods read is one driftd accepts.
    (text,) = _one(manifests, "ConfigMap")["data"].values()
    config = parse_config(text, environ={})
    assert config.server.port == container["ports"][0]["containerPort"]


def test_two_replicas_without_a_shared_store_are_refused_with_the_reason() -> None:
    rendered = _render()
    assert rendered.returncode != 0
    assert "needs a shared PostgreSQL store" in rendered.stderr


def test_monitoring_objects_carry_the_repositorys_rules_and_dashboards() -> None:
    manifests = _manifests(*EVERYTHING_ON)
    rule = _one(manifests, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERT_RULES.read_text())
    monitor = _one(manifests, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"

    boards = [
        m
        for m in manifests
        if m["kind"] == "ConfigMap" and "grafana_dashboard" in m["metadata"]["labels"]
    ]
    assert {m["metadata"]["labels"]["grafana_dashboard"] for m in boards} == {"1"}
    shipped = {name: json.loads(text) for board in boards for name, text in board["data"].items()}
    sources = {path.name: json.loads(path.read_text()) for path in DASHBOARDS.glob("*.json")}
    assert shipped == sources


def test_the_kubernetes_executor_gets_its_rights_its_volume_and_its_configuration() -> None:
    manifests = _manifests(*EVERYTHING_ON)
    role = _one(manifests, "Role")
    rights = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert {"create", "get", "delete"} <= rights[("batch", "jobs")]
    assert {"get", "list"} <= rights[("", "pods")]
    assert "get" in rights[("", "pods/log")]
    binding = _one(manifests, "RoleBinding")
    account = _one(manifests, "ServiceAccount")
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]

    deployment = _one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    claim = _one(manifests, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims == [claim["metadata"]["name"]]

    (text,) = _one(manifests, "ConfigMap", deployment["metadata"]["name"])["data"].values()
    config = parse_config(text, environ={})
    assert config.scheduling.executor == "kubernetes"
    assert config.scheduling.kubernetes.env_from_secrets == ("driftd-openai",)
    # The Jobs the executor creates mount the same claim, where driftd's pods mount it.
    assert config.scheduling.kubernetes.jobs_volume_claim == claim["metadata"]["name"]
    (mount,) = [
        m
        for m in pod["containers"][0]["volumeMounts"]
        if m["mountPath"] == str(config.scheduling.jobs_dir)
    ]
    assert mount


def test_every_token_list_of_the_secret_reaches_driftd() -> None:
    container = _container(_manifests("existingSecret=driftd-secrets"))
    secret = {name: f"{name.lower()}-value" for name in (*TOKEN_ENVS, "OPENAI_API_KEY")}
    environment = _environment(container, {"driftd-secrets": secret})
    for name in TOKEN_ENVS:
        assert environment[name] == secret[name], name
    # A Secret made before DRIFTD_PROXY_TOKENS existed still starts the pods (no proxy token:
    # the proxy takes admin tokens only).
    older = {INGEST_ENV: "ingest", ADMIN_ENV: "admin"}
    environment = _environment(container, {"driftd-secrets": older})
    assert PROXY_ENV not in environment
    assert environment[INGEST_ENV] == "ingest"


def test_proxy_tokens_can_come_from_a_secret_of_their_own() -> None:
    container = _container(
        _manifests(
            "existingSecret=driftd-secrets",
            f"secretEnv[0].name={PROXY_ENV}",
            "secretEnv[0].secretName=driftd-proxy",
            "secretEnv[0].key=tokens",
        )
    )
    (variable,) = [v for v in container["env"] if v["name"] == PROXY_ENV]
    assert variable["valueFrom"]["secretKeyRef"] == {"name": "driftd-proxy", "key": "tokens"}
    secrets = {"driftd-secrets": {INGEST_ENV: "ingest"}, "driftd-proxy": {"tokens": "a,b"}}
    assert _environment(container, secrets)[PROXY_ENV] == "a,b"


def test_no_plain_value_in_the_chart_sets_a_token() -> None:
    # A token given as a plain env value would sit in the manifest, and override the Secret's.
    container = _container(_manifests(*EVERYTHING_ON))
    plain = {v["name"] for v in container.get("env", []) if "value" in v}
    assert plain.isdisjoint(TOKEN_ENVS), plain


@pytest.mark.parametrize("auth", list(UpstreamAuth))
def test_a_deployments_upstream_auth_reaches_driftds_configuration(
    tmp_path: Path, auth: UpstreamAuth
) -> None:
    values = tmp_path / "values.yaml"
    deployment = {
        "name": "support-bot",
        "kind": "prompted",
        "task": "generation",
        "upstream": {"api_key_env": "OPENAI_API_KEY", "auth": auth.value},
        "prompt": {"model": "gpt-4o-mini", "system": "You are the support assistant of a bank."},
    }
    values.write_text(yaml.safe_dump({"config": {"deployments": [deployment]}}))
    manifests = _manifests("existingSecret=driftd-secrets", values=values)
    (text,) = _one(manifests, "ConfigMap")["data"].values()
    config = parse_config(text, environ={})
    proxied = config.deployment("support-bot")
    assert proxied.proxied
    assert proxied.upstream.auth is auth
