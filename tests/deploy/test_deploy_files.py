"""The deployment files under deploy/: what an operator runs must parse, point at files that exist,
and agree with the daemon (its port, routes, configuration, secrets) and with dashboards/.

What runs here: YAML parsing, driftd's own configuration loader on every driftd.yaml the files
ship, `promtool check config` and `amtool check-config` on the compose stack's Prometheus and
Alertmanager files (Debian packages `prometheus`, `prometheus-alertmanager`), and
`systemd-analyze verify` on the unit. No image is built and no cluster is reached: Docker cannot
pull images here, and `helm` is not installable (not in Debian), so the chart is checked through
its text - every `.Values` path a template reads exists in values.yaml, every template block is
closed, the objects and labels the issue asks for are there - and the files it ships are
byte-for-byte the ones in dashboards/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from daemon.auth import ADMIN_ENV, INGEST_ENV, PROXY_ENV
from daemon.config import ENV_STORAGE_URL, load_config, parse_config
from daemon.config.models import Server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
CHART = DEPLOY / "helm" / "driftd"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
UNIT = DEPLOY / "systemd" / "driftd.service"

ALERT_RULES = ROOT / "dashboards" / "prometheus" / "driftd-alerts.yml"
DASHBOARDS = ROOT / "dashboards" / "grafana" / "dashboards"
SYNC = "sh deploy/helm/sync-chart-files.sh"
TOKEN_ENVS = (INGEST_ENV, PROXY_ENV, ADMIN_ENV)

# A password in DRIFTD_STORAGE_URL, as the compose file and the chart's Secret pass it.
STORE_ENV = {ENV_STORAGE_URL: "postgresql://driftd:secret@postgres:5432/driftd"}
TIMEOUT_S = 60
# Inside a container driftd must listen on every interface to be reachable.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd, check=False
    )


# ---- compose ----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose = _yaml(COMPOSE_DIR / "compose.yaml")
    assert isinstance(compose, dict)
    return compose


def _bind_mounts(service: str) -> Iterator[tuple[Path, PurePosixPath]]:
    """(source on the host, target in the container) of a service's bind mounts."""
    for volume in _compose()["services"][service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            yield (COMPOSE_DIR / source).resolve(), PurePosixPath(target)


def _mirror(service: str, root: Path) -> Path:
    """Lay a service's bind mounts out under ``root`` as the container sees them."""
    for source, target in _bind_mounts(service):
        place = root / target.relative_to("/")
        place.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, place)
        else:
            shutil.copyfile(source, place)
    return root


def test_the_compose_stack_has_its_five_services() -> None:
    services = _compose()["services"]
    assert set(services) == {"driftd", "postgres", "prometheus", "alertmanager", "grafana"}
    driftd = services["driftd"]
    assert (COMPOSE_DIR / driftd["build"]["context"] / driftd["build"]["dockerfile"]).resolve() == (
        DOCKERFILE
    )
    # driftd waits for a PostgreSQL that answers, and reaches it by its service name.
    assert driftd["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "@postgres:5432/" in driftd["environment"][ENV_STORAGE_URL]
    # Secrets come from the operator's environment, not from the file.
    for name in (*TOKEN_ENVS, "OPENAI_API_KEY"):
        assert driftd["environment"][name] == f"${{{name}:-}}"
    # Published on the loopback interface only.
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


@pytest.mark.parametrize("service", ["driftd", "prometheus", "alertmanager", "grafana"])
def test_every_file_the_stack_mounts_exists(service: str) -> None:
    mounts = list(_bind_mounts(service))
    assert mounts, f"{service} mounts nothing"
    for source, target in mounts:
        assert source.exists(), f"{service} mounts {source} at {target}, which does not exist"


def test_the_stacks_driftd_configuration_is_valid_where_it_is_mounted(tmp_path: Path) -> None:
    root = _mirror("driftd", tmp_path)
    command = _compose()["services"]["driftd"]["command"]
    config_path = PurePosixPath(command[command.index("--config") + 1])
    config = load_config(root / config_path.relative_to("/"), environ=STORE_ENV)
    assert config.storage.url == STORE_ENV[ENV_STORAGE_URL]
    assert [d.name for d in config.deployments] == ["banking77-intents"]
    # Prometheus scrapes driftd on the port this configuration listens on.
    targets = [
        target
        for job in _yaml(COMPOSE_DIR / "prometheus.yml")["scrape_configs"]
        if job["job_name"] == "driftd"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"driftd:{config.server.port}"]


def test_prometheus_loads_the_repositorys_alert_rules(tmp_path: Path) -> None:
    root = _mirror("prometheus", tmp_path)
    config_file = root / "etc" / "prometheus" / "prometheus.yml"
    rule_files = _yaml(config_file)["rule_files"]
    assert rule_files, "prometheus.yml loads no rule file"
    for rule_file in rule_files:
        loaded = (config_file.parent / rule_file).resolve()
        assert loaded.is_file(), f"rule file {rule_file} does not resolve in the container"
        assert loaded.read_bytes() == ALERT_RULES.read_bytes()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    result = _run(promtool, "check", "config", str(config_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_alertmanager_configuration_is_valid_and_names_real_alerts() -> None:
    config_file = COMPOSE_DIR / "alertmanager.yml"
    config = _yaml(config_file)
    alerts = {
        rule["alert"]
        for group in _yaml(ALERT_RULES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    for inhibit in config.get("inhibit_rules", []):
        for matcher in (*inhibit["source_matchers"], *inhibit["target_matchers"]):
            name, _, value = matcher.partition("=")
            if name.strip() == "alertname":
                assert value.strip().strip('"') in alerts, f"{matcher}: no such alert rule"
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package `prometheus-alertmanager`)")
    result = _run(amtool, "check-config", str(config_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_gets_the_dashboards_where_its_provider_reads_them() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {str(target): source for source, target in _bind_mounts("grafana")}
    provider = _yaml(ROOT / "dashboards/grafana/provisioning/dashboards/driftd.yaml")
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    assert mounts[path] == DASHBOARDS
    assert sorted(DASHBOARDS.glob("*.json")), "no dashboard to provision"
    datasources = (ROOT / "dashboards/grafana/provisioning/datasources/prometheus.yaml").read_text()
    assert "${PROMETHEUS_URL}" in datasources
    assert grafana["environment"]["PROMETHEUS_URL"].endswith("http://prometheus:9090}")


def test_docker_compose_config_accepts_the_stack() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    if _run(docker, "compose", "version").returncode != 0:
        pytest.skip("`docker compose` (the compose plugin) is not installed here")
    result = _run(docker, "compose", "-f", "compose.yaml", "config", "--quiet", cwd=COMPOSE_DIR)
    assert result.returncode == 0, result.stderr


# ---- Dockerfile -------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_image_is_multi_stage_and_runs_driftd_as_a_non_root_user() -> None:
    instructions = _instructions()
    stages = [re.fullmatch(r"(\S+) AS (\S+)", a, re.I) for i, a in instructions if i == "FROM"]
    assert len(stages) >= 2, "expected a multi-stage build"
    assert all(stages), "expected named stages: FROM image AS name"
    assert any(i == "COPY" and a.startswith("--from=builder") for i, a in instructions)
    (user,) = [a for i, a in instructions if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    # USER comes after the last FROM: the runtime stage is the one that is not root.
    last_from = max(n for n, (i, _) in enumerate(instructions) if i == "FROM")
    assert next(n for n, (i, _) in enumerate(instructions) if i == "USER") > last_from
    cmd = [a for i, a in instructions if i == "CMD"][-1]
    assert '"driftd", "serve"' in cmd
    (healthcheck,) = [a for i, a in instructions if i == "HEALTHCHECK"]
    assert "python" in healthcheck
    assert "curl" not in healthcheck
    assert "HEALTHCHECK_URL=http://127.0.0.1:8477/healthz" in DOCKERFILE.read_text()
    assert ("EXPOSE", str(Server().port)) in instructions


def test_torch_comes_from_a_required_index_with_cpu_and_cuda_examples() -> None:
    args = dict(a.partition("=")[::2] for i, a in _instructions() if i == "ARG")
    # No default: an unset index would let pip take the multi-GB CUDA build from the default one.
    assert args["TORCH_INDEX_URL"] == ""
    assert re.search(r"--build-arg TORCH_INDEX_URL=\S+/whl/cpu", DOCKERFILE.read_text())
    # The same pin as the Makefile's setup, which CI tests.
    assert args["TORCH_SPEC"] in (ROOT / "Makefile").read_text()
    text = DOCKERFILE.read_text()
    assert re.search(r"--build-arg TORCH_INDEX_URL=\S+/whl/cu\d+", text), "no CUDA example"


def test_the_image_gets_what_it_copies_and_its_default_configuration_is_valid() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for instruction, arguments in _instructions():
        if instruction != "COPY" or arguments.startswith("--from="):
            continue
        for source in arguments.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert any(source.rstrip("/") == a or source.startswith(f"{a}/") for a in allowed), (
                f"COPY {source}: excluded from the build context by .dockerignore"
            )
    config = load_config(DEPLOY / "docker" / "driftd.yaml", environ={})
    assert config.server.host == ALL_INTERFACES
    assert config.deployments == ()


# ---- Helm chart -------------------------------------------------------------------------------


def _templates() -> dict[str, str]:
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted((CHART / "templates").iterdir())
        if path.is_file()
    }


def _values() -> dict[str, Any]:
    values = _yaml(CHART / "values.yaml")
    assert isinstance(values, dict)
    return values


def test_the_chart_and_its_values_parse() -> None:
    chart = _yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "driftd"
    assert chart["appVersion"] == _project_version()
    values = _values()
    assert values["replicaCount"] == 2
    assert values["config"]["server"]["host"] == ALL_INTERFACES


def _project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def test_every_value_a_template_reads_is_in_values_yaml() -> None:
    values = _values()
    read = {
        match.group(1)
        for text in _templates().values()
        for match in re.finditer(r"\.Values\.([A-Za-z0-9_.]+)", text)
    }
    assert read
    for dotted in sorted(read):
        node: Any = values
        for key in dotted.split("."):
            assert isinstance(node, dict), f".Values.{dotted}: {key!r} is below a non-map"
            assert key in node, f".Values.{dotted} is not in values.yaml"
            node = node[key]


def test_every_template_block_is_closed_and_every_include_is_defined() -> None:
    defined: set[str] = set()
    for name, text in _templates().items():
        actions = re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", text, re.S)
        depth = 0
        for action in actions:
            word = action.split(" ", 1)[0]
            if word in ("if", "with", "range", "define"):
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{name}: an `end` closes nothing"
        assert depth == 0, f"{name}: {depth} block(s) left open"
        assert text.count("{{") == text.count("}}"), f"{name}: unbalanced braces"
        defined.update(re.findall(r'define "([^"]+)"', text))
    for name, text in _templates().items():
        for included in re.findall(r'include "([^"]+)"', text):
            assert included in defined, f"{name} includes {included!r}, defined nowhere"


def test_the_chart_renders_the_objects_the_issue_asks_for() -> None:
    templates = _templates()
    kinds = {
        kind for text in templates.values() for kind in re.findall(r"^kind: (\w+)", text, re.M)
    }
    assert kinds >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "ServiceMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
    }
    assert "NOTES.txt" in templates
    deployment = templates["deployment.yaml"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert f"{probe}:" in deployment
    # The probes' paths are routes the daemon serves.
    app = (ROOT / "daemon" / "api" / "app.py").read_text()
    for probe in _values()["probes"].values():
        assert f'@app.get("{probe["path"]}"' in app
    assert "secretRef:" in deployment
    assert "secretKeyRef:" in deployment
    assert '"driftd", "serve", "--config", "/etc/driftd/driftd.yaml"' in deployment
    assert 'include "driftd.config"' in templates["configmap.yaml"]
    # The monitoring objects are optional, each behind its flag.
    for file, flag in (
        ("servicemonitor.yaml", "serviceMonitor.enabled"),
        ("prometheusrule.yaml", "prometheusRule.enabled"),
        ("grafana-dashboards.yaml", "grafanaDashboards.enabled"),
        ("rbac.yaml", "kubernetesExecutor.enabled"),
    ):
        assert templates[file].startswith(f"{{{{- if .Values.{flag} }}}}"), file
    assert _values()["grafanaDashboards"]["labels"] == {"grafana_dashboard": "1"}


def _skeleton(text: str) -> list[Any]:
    """The YAML documents of a template with its actions taken out: lines that are only an
    action go, an action inside a line becomes TEMPLATE. Only for reading fixed structure (RBAC
    rules, volume names); what an action renders is not checked this way."""
    kept = [line for line in text.splitlines() if not re.fullmatch(r"\s*(\{\{.*?\}\}\s*)+", line)]
    plain = re.sub(r"\{\{.*?\}\}", "TEMPLATE", "\n".join(kept))
    return [doc for doc in yaml.safe_load_all(plain) if doc]


def test_the_kubernetes_executor_may_run_jobs_and_read_their_logs() -> None:
    (role,) = [doc for doc in _skeleton(_templates()["rbac.yaml"]) if doc["kind"] == "Role"]
    rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in role["rules"]}
    assert rules[("batch", "jobs")] >= {"create", "get", "list", "watch", "delete"}
    assert rules[("", "pods")] >= {"get", "list"}
    assert rules[("", "pods/log")] >= {"get"}


def test_the_deployments_mounts_and_ports_fit_together() -> None:
    (deployment,) = _skeleton(_templates()["deployment.yaml"])
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {volume["name"] for volume in pod["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert set(mounts) <= volumes | {"jobs"}
    assert mounts["config"] == "/etc/driftd/driftd.yaml"
    # The image's working directory and /tmp are writable under readOnlyRootFilesystem.
    assert {mounts["work"], mounts["tmp"]} == {"/var/lib/driftd", "/tmp"}
    assert "WORKDIR /var/lib/driftd" in DOCKERFILE.read_text()
    assert _values()["securityContext"]["readOnlyRootFilesystem"] is True
    (port,) = container["ports"]
    assert port["name"] == "http"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    (service,) = _skeleton(_templates()["service.yaml"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The image's user is the one the pod runs as, so the volumes are its to write.
    uid = re.search(r"ARG DRIFTD_UID=(\d+)", DOCKERFILE.read_text())
    assert uid
    assert _values()["podSecurityContext"]["runAsUser"] == int(uid.group(1))


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        ("files/driftd-alerts.yml", ALERT_RULES),
        *[(f"files/dashboards/{path.name}", path) for path in sorted(DASHBOARDS.glob("*.json"))],
    ],
)
def test_the_charts_copies_equal_their_sources(copy: str, source: Path) -> None:
    assert source.is_file(), f"{source} does not exist"
    copied = CHART / copy
    assert copied.is_file(), f"{copied} is missing: run {SYNC}"
    assert copied.read_bytes() == source.read_bytes(), f"{copied} differs from {source}: run {SYNC}"


def test_the_chart_ships_no_stale_dashboard() -> None:
    shipped = {path.name for path in (CHART / "files" / "dashboards").glob("*.json")}
    assert shipped == {path.name for path in DASHBOARDS.glob("*.json")}, f"run {SYNC}"


def test_the_charts_files_are_the_ones_its_templates_read() -> None:
    for text in _templates().values():
        for name in re.findall(r'\.Files\.Get "([^"]+)"', text):
            assert (CHART / name).is_file(), f".Files.Get {name}: not in the chart"
        for pattern in re.findall(r'\.Files\.Glob "([^"]+)"', text):
            assert list(CHART.glob(pattern)), f".Files.Glob {pattern}: matches nothing"


def _chart_config(values: dict[str, Any], *, image: str) -> dict[str, Any]:
    """driftd.yaml as the chart's "driftd.config" helper builds it (templates/_helpers.tpl)."""
    config: dict[str, Any] = yaml.safe_load(yaml.safe_dump(values["config"]))
    executor = values["kubernetesExecutor"]
    if executor["enabled"]:
        job = dict(executor["job"])
        job["image"] = job.get("image") or image
        if not job.get("service_account"):
            job.pop("service_account", None)
        job["namespace"] = executor["namespace"] or "driftd"
        job["jobs_volume_claim"] = values["jobsVolume"]["existingClaim"] or "driftd-jobs"
        config.setdefault("scheduling", {}).update(executor="kubernetes", kubernetes=job)
    return config


@pytest.mark.parametrize("kubernetes", [False, True], ids=["local-executor", "kubernetes-executor"])
def test_the_charts_driftd_configuration_is_valid(kubernetes: bool) -> None:
    values = _values()
    values["kubernetesExecutor"]["enabled"] = kubernetes
    config = parse_config(
        yaml.safe_dump(_chart_config(values, image="driftd:0.1.0")), environ=STORE_ENV
    )
    assert config.server.port == values["service"]["port"]
    assert config.scheduling.jobs_dir.is_absolute()
    assert config.scheduling.executor == ("kubernetes" if kubernetes else "local")


# ---- systemd ----------------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_restarts_on_failure_and_stops_within_the_shutdown_grace() -> None:
    unit = _unit_settings()
    assert unit["Type"] == ["simple"]
    assert unit["User"] == ["driftd"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["WorkingDirectory"] == ["/var/lib/driftd"]
    assert unit["ExecStart"] == ["/opt/driftd/bin/driftd serve --config /etc/driftd/driftd.yaml"]
    # An invalid configuration (exit 2) is not restarted in a loop.
    assert unit["RestartPreventExitStatus"] == ["2"]
    stop = int(unit["TimeoutStopSec"][0].removesuffix("s"))
    assert stop >= 3 * Server().shutdown_grace.total_seconds()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "no",
    }.items():
        assert unit[key] == [value], key


def test_the_environment_file_example_names_what_driftd_reads() -> None:
    example = (DEPLOY / "systemd" / "driftd.env.example").read_text()
    names = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", example, re.M))
    assert {ENV_STORAGE_URL, *TOKEN_ENVS, "OPENAI_API_KEY"} <= names
    (env_file,) = _unit_settings()["EnvironmentFile"]
    assert env_file == "/etc/driftd/driftd.env"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`)")
    # verify also checks that ExecStart's program exists; driftd is not installed at
    # /opt/driftd here, so a copy runs /bin/true instead and the original's only complaint
    # must be that program.
    text = UNIT.read_text(encoding="utf-8")
    copy = tmp_path / "driftd.service"
    copy.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", text, flags=re.M))
    result = _run(analyze, "verify", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    # verify reports a misspelt or misplaced setting as a warning, with exit status 0.
    assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    original = tmp_path / "original" / "driftd.service"
    original.parent.mkdir()
    original.write_text(text)
    result = _run(analyze, "verify", str(original))
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert all("/opt/driftd/bin/driftd" in line for line in complaints), complaints


# ---- tokens, across the files -----------------------------------------------------------------

# Where an operator reads or sets driftd's token lists: each names all three.
TOKEN_FILES = (
    "README.md",
    "compose/compose.yaml",
    "systemd/driftd.env.example",
    "helm/driftd/values.yaml",
    "helm/driftd/templates/deployment.yaml",
    "helm/driftd/templates/NOTES.txt",
)


@pytest.mark.parametrize("file", TOKEN_FILES)
def test_every_file_that_names_the_ingest_tokens_names_the_proxy_tokens(file: str) -> None:
    text = (DEPLOY / file).read_text(encoding="utf-8")
    assert INGEST_ENV in text
    assert PROXY_ENV in text, f"deploy/{file} names {INGEST_ENV} but not {PROXY_ENV}"


def test_the_deploy_readme_says_which_token_opens_what() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    rows = {
        name: line
        for line in readme.splitlines()
        for name in TOKEN_ENVS
        if line.startswith(f"| `{name}` |")
    }
    assert set(rows) == set(TOKEN_ENVS)
    assert "do not open the proxy" in rows[INGEST_ENV]
    assert "proxy" in rows[PROXY_ENV]
    # The three modes of upstream.auth, and the header the passthrough modes use.
    for mode in ("`key`", "`passthrough`", "`passthrough_anonymous`", "`X-Driftd-Token`"):
        assert mode in readme, mode
    # Every example that sets the ingest tokens sets the proxy tokens too.
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        if f"{INGEST_ENV}=" in block:
            assert f"{PROXY_ENV}=" in block, block
