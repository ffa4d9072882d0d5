"""Checks for ``deploy/`` and docker-compose's ``scaled`` profile.

There is no cluster and no Docker engine in CI: the Kubernetes manifests are parsed and their
wiring cross-checked (probes, shutdown arithmetic, selectors, secrets). The nginx load balancer is
rendered from its template with loopback upstreams and really run, unprivileged, in front of small
local HTTP servers: streams must pass unbuffered, request IDs must be forwarded, a POST must never
be retried. nginx must be installed (``scripts/ensure-apt.sh nginx nginx``); no database is needed.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import yaml

from app.core.config import Settings
from testkit.net import free_port
from testkit.nginx import Prefix, load_render

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NGINX_DIR = DEPLOY / "nginx"
TEMPLATE = NGINX_DIR / "nginx.conf.template"
COMPOSE_CONF = NGINX_DIR / "compose.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

NAMESPACE = "agentchat"
DEPLOYMENT = "agentchat-api"
APP_PORT = 8000
# Postgres' default max_connections (100) minus superuser_reserved_connections (3).
POSTGRES_CONNECTION_BUDGET = 97
# ingress-nginx's default upstream-keepalive-timeout (its ConfigMap), seconds.
INGRESS_UPSTREAM_KEEPALIVE_TIMEOUT = 60

# The public configuration surface: every field of the settings, as an environment variable.
DOCUMENTED_ENV_VARS = frozenset(name.upper() for name in Settings.model_fields)
# Read by uvicorn (its CLI's auto_envvar_prefix "UVICORN", and FORWARDED_ALLOW_IPS), not by the app.
UVICORN_ENV_VARS = frozenset({"UVICORN_TIMEOUT_KEEP_ALIVE", "FORWARDED_ALLOW_IPS"})
SECRET_ENV_VARS = frozenset({"ANTHROPIC_API_KEY", "DATABASE_URL", "REDIS_URL"})
SECRET_NAME = re.compile(r"(^|_)(API_KEY|SECRET|PASSWORD|CREDENTIALS?|PRIVATE_KEY)($|_)|_TOKEN$")
SECRET_VALUE = re.compile(r"sk-ant-|sk-[A-Za-z0-9]{16,}|-----BEGIN")
NAMESPACED_KINDS = frozenset(
    {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
        "Ingress",
        "NetworkPolicy",
    }
)
# Applied by hand (see their comments), never by `kubectl apply -k`.
NOT_IN_KUSTOMIZATION = frozenset({"kustomization.yaml", "secret.example.yaml", "migrate-job.yaml"})


# --------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------

Manifests = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    """Every object in deploy/k8s/*.yaml by (kind, name); names are unique per kind."""
    objects: Manifests = {}
    files = sorted(K8S.glob("*.yaml"))
    assert files, f"no manifests in {K8S}"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            assert isinstance(doc, dict), path.name
            assert doc.get("apiVersion"), f"{path.name}: apiVersion is required"
            assert doc.get("kind"), f"{path.name}: kind is required"
            key = (str(doc["kind"]), str((doc.get("metadata") or {}).get("name", "")))
            assert key not in objects, f"{path.name}: duplicate {key}"
            doc["__file__"] = path.name
            objects[key] = doc
    return objects


def get(manifests: Manifests, kind: str, name: str = DEPLOYMENT) -> dict[str, Any]:
    assert (kind, name) in manifests, f"missing {kind} {name}"
    return manifests[(kind, name)]


def one_of_kind(manifests: Manifests, kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in manifests.items() if k == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


def prestop_sleep_seconds(container: dict[str, Any]) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # the native sleep action (Kubernetes >= 1.30)
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    if command[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        command = shlex.split(command[2])
    assert Path(command[0]).name == "sleep", f"preStop is not a plain sleep: {command}"
    assert len(command) == 2, f"preStop is not a plain sleep: {command}"
    return int(command[1])


def dockerfile_cmd() -> list[str]:
    commands = re.findall(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert commands, "Dockerfile has no exec-form CMD"
    cmd = json.loads(commands[-1])
    assert isinstance(cmd, list)
    return [str(arg) for arg in cmd]


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert users, "Dockerfile has no USER"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit(), f"USER should be numeric for runAsNonRoot to verify it: {uid}"
    return int(uid)


def uvicorn_params(cmd: list[str]) -> dict[str, Any]:
    """The image's uvicorn CLI as uvicorn's own click command parses it (honours UVICORN_* env)."""
    uvicorn_main = pytest.importorskip("uvicorn.main")
    assert cmd[0] == "uvicorn"
    params = uvicorn_main.main.make_context("uvicorn", cmd[1:]).params
    assert isinstance(params, dict)
    return params


def test_manifests_are_namespaced_and_labelled(manifests: Manifests) -> None:
    assert get(manifests, "Namespace", NAMESPACE)
    for (kind, name), doc in manifests.items():
        if kind in NAMESPACED_KINDS:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{kind} {name}"
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "agentchat", f"{kind} {name}"
    assert set(NAMESPACED_KINDS) <= {kind for kind, _ in manifests}


def test_namespace_enforces_restricted_pod_security(manifests: Manifests) -> None:
    labels = get(manifests, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kustomization_applies_long_lived_objects_only(manifests: Manifests) -> None:
    kustomization = one_of_kind(manifests, "Kustomization")
    resources = set(kustomization["resources"])
    expected = {path.name for path in K8S.glob("*.yaml")} - NOT_IN_KUSTOMIZATION
    assert resources == expected
    assert all((K8S / resource).is_file() for resource in resources)


def test_deployment_rollout_never_drops_below_wanted_count(manifests: Manifests) -> None:
    deployment = get(manifests, "Deployment")
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 3
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0%")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels(deployment)), "the Deployment's selector must match its pods"


def test_image_is_a_tagged_placeholder_and_cmd_is_the_images(manifests: Manifests) -> None:
    api = only_container(get(manifests, "Deployment"))
    image = api["image"]
    assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+", image), image
    assert not image.endswith(":latest")
    assert not {"command", "args"} & set(api), "the image's CMD (uvicorn, graceful timeout) must run"
    assert only_container(get(manifests, "Job", "agentchat-migrate"))["image"] == image


def test_probes_hit_the_right_endpoints(manifests: Manifests) -> None:
    api = only_container(get(manifests, "Deployment"))
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe_name, path in expected.items():
        probe = api[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert resolve_port(api, probe["port"]) == APP_PORT, probe_name
    readiness, liveness = api["readinessProbe"], api["livenessProbe"]
    assert (readiness["periodSeconds"], readiness["failureThreshold"]) == (5, 2)
    assert (liveness["periodSeconds"], liveness["failureThreshold"]) == (10, 3)
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "give start-up (migrations done) time"
    for probe_name in expected:
        assert api[probe_name].get("timeoutSeconds", 1) < api[probe_name]["periodSeconds"], probe_name


def test_prestop_outlasts_endpoint_removal(manifests: Manifests) -> None:
    api = only_container(get(manifests, "Deployment"))
    readiness = api["readinessProbe"]
    assert prestop_sleep_seconds(api) > readiness["periodSeconds"] * readiness["failureThreshold"]


def test_termination_grace_covers_the_whole_shutdown(manifests: Manifests) -> None:
    """preStop + the app's drain, bounded by uvicorn's graceful timeout, fit before SIGKILL."""
    deployment = get(manifests, "Deployment")
    api = only_container(deployment)
    env = env_of(api)
    assert "value" in env["SHUTDOWN_GRACE_SECONDS"], "set SHUTDOWN_GRACE_SECONDS explicitly in the Deployment"
    app_grace = float(env["SHUTDOWN_GRACE_SECONDS"]["value"])
    uvicorn_grace = uvicorn_params(dockerfile_cmd())["timeout_graceful_shutdown"]
    pre_stop = prestop_sleep_seconds(api)
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert app_grace < uvicorn_grace, "the app's drain must end before uvicorn gives up"
    assert grace > pre_stop + app_grace
    assert grace > pre_stop + uvicorn_grace


def test_uvicorn_keep_alive_outlasts_the_ingress_idle_connections(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(only_container(get(manifests, "Deployment")))
    monkeypatch.setenv("UVICORN_TIMEOUT_KEEP_ALIVE", env["UVICORN_TIMEOUT_KEEP_ALIVE"]["value"])
    keep_alive = uvicorn_params(dockerfile_cmd())["timeout_keep_alive"]
    assert keep_alive > INGRESS_UPSTREAM_KEEPALIVE_TIMEOUT


def test_environment_comes_from_configmap_and_secret(manifests: Manifests) -> None:
    configmap = get(manifests, "ConfigMap", "agentchat-config")
    secret = get(manifests, "Secret", "agentchat-secrets")
    for workload in (get(manifests, "Deployment"), get(manifests, "Job", "agentchat-migrate")):
        container = only_container(workload)
        refs = [source["configMapRef"]["name"] for source in container.get("envFrom", [])]
        assert refs == [configmap["metadata"]["name"]]
        env = env_of(container)
        for name, item in env.items():
            assert name in DOCUMENTED_ENV_VARS | UVICORN_ENV_VARS, f"undocumented env var {name}"
            if name in SECRET_ENV_VARS or SECRET_NAME.search(name):
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
    api_env = env_of(only_container(get(manifests, "Deployment")))
    assert SECRET_ENV_VARS <= set(api_env)
    assert set(configmap["data"]) <= DOCUMENTED_ENV_VARS
    assert not set(configmap["data"]) & set(api_env), "each variable has one source"


def test_configmap_holds_no_secrets(manifests: Manifests) -> None:
    data = get(manifests, "ConfigMap", "agentchat-config")["data"]
    assert not SECRET_ENV_VARS & set(data)
    for name, value in data.items():
        assert not SECRET_NAME.search(name), name
        assert isinstance(value, str), f"{name}: ConfigMap values must be strings"
        assert not SECRET_VALUE.search(value), name
        if "://" in value:
            assert urlsplit(value).password is None, f"{name} carries a password: move it to the Secret"


def test_secret_example_is_placeholders_only(manifests: Manifests) -> None:
    secret = get(manifests, "Secret", "agentchat-secrets")
    assert secret["__file__"] == "secret.example.yaml"
    assert "data" not in secret, "placeholders are readable stringData, never base64"
    assert set(secret["stringData"]) == SECRET_ENV_VARS
    assert all("REPLACE_ME" in value for value in secret["stringData"].values())
    for path in [*DEPLOY.rglob("*"), COMPOSE_FILE]:
        if path.is_file() and "__pycache__" not in path.parts:
            assert not SECRET_VALUE.search(path.read_text(encoding="utf-8")), path


def test_postgres_connection_budget(manifests: Manifests) -> None:
    data = get(manifests, "ConfigMap", "agentchat-config")["data"]
    per_pod = int(data["DB_POOL_SIZE"]) + int(data["DB_MAX_OVERFLOW"])
    max_replicas = get(manifests, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    assert max_replicas * per_pod <= POSTGRES_CONNECTION_BUDGET


def test_pods_run_as_the_images_non_root_user(manifests: Manifests) -> None:
    uid = dockerfile_uid()
    for workload in (get(manifests, "Deployment"), get(manifests, "Job", "agentchat-migrate")):
        spec = pod_spec(workload)
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security["runAsUser"] == uid != 0
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        container = only_container(workload)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container.get("securityContext", {}).get("runAsUser", uid) == uid
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp on a read-only root"
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]


def test_service_selects_only_the_api_pods(manifests: Manifests) -> None:
    service = get(manifests, "Service")
    deployment = get(manifests, "Deployment")
    selector = service["spec"]["selector"]
    assert selects(selector, pod_labels(deployment))
    assert not selects(selector, pod_labels(get(manifests, "Job", "agentchat-migrate")))
    api = only_container(deployment)
    for port in service["spec"]["ports"]:
        assert resolve_port(api, port["targetPort"]) == APP_PORT


def test_pdb_protects_the_api_pods(manifests: Manifests) -> None:
    pdb = get(manifests, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    deployment = get(manifests, "Deployment")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels(deployment))
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert not selects(selector, pod_labels(get(manifests, "Job", "agentchat-migrate")))
    spec = pdb["spec"]
    assert spec.get("minAvailable") == 2 or spec.get("maxUnavailable") == 1
    min_replicas = get(manifests, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert spec.get("minAvailable", 0) < min_replicas, "a drain must be able to evict at least one pod"


def test_hpa_scales_the_deployment_on_cpu(manifests: Manifests) -> None:
    hpa = get(manifests, "HorizontalPodAutoscaler")
    deployment = get(manifests, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": deployment["apiVersion"], "kind": "Deployment", "name": DEPLOYMENT}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert "cpu" in only_container(deployment)["resources"]["requests"], "CPU utilization needs a CPU request"


def test_migrate_job_runs_alembic_once(manifests: Manifests) -> None:
    job = get(manifests, "Job", "agentchat-migrate")
    assert job["apiVersion"] == "batch/v1"
    container = only_container(job)
    assert container["command"] == ["alembic", "upgrade", "head"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"].get("activeDeadlineSeconds"), "a stuck migration must not hang forever"


def test_ingress_is_configured_for_streams(manifests: Manifests) -> None:
    ingress = get(manifests, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-buffering"] == "off"
    assert annotations[prefix + "proxy-read-timeout"] == "3600"
    assert annotations[prefix + "proxy-send-timeout"] == "3600"
    assert annotations.get(prefix + "retry-non-idempotent", "false") == "false"
    assert all(isinstance(value, str) for value in annotations.values()), "annotation values are strings"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    service = get(manifests, "Service")
    service_ports = {p["name"] for p in service["spec"]["ports"]} | {p["port"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert next(iter(backend["port"].values())) in service_ports


def ingress_routes(ingress: dict[str, Any], path: str) -> bool:
    """Whether the Ingress sends this request path to a backend (Kubernetes' Exact/Prefix rules)."""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            declared, kind = entry["path"], entry["pathType"]
            if kind == "Exact" and path == declared:
                return True
            if kind == "Prefix" and (
                declared == "/" or path == declared.rstrip("/") or path.startswith(declared.rstrip("/") + "/")
            ):
                return True
            assert kind in {"Exact", "Prefix"}, f"{declared}: pathType {kind} is implementation-specific"
    return False


# Never through the Ingress: operators' endpoints and the API's self-description.
NOT_PUBLIC = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/healthz", "/readyz")


def public_paths() -> list[str]:
    """Every request path the app serves to clients (OpenAPI paths, with ids filled in) and the playground's."""
    from app.main import create_app

    schema = create_app(Settings(_env_file=None)).openapi()
    paths = [re.sub(r"\{[^}]+\}", "0190a8f2-0000-7000-8000-000000000000", p) for p in schema["paths"]]
    return [p for p in paths if p not in NOT_PUBLIC] + ["/", "/static/playground/app.js"]


def test_ingress_routes_the_api_but_not_metrics_docs_or_probes(manifests: Manifests) -> None:
    ingress = get(manifests, "Ingress")
    for path in NOT_PUBLIC:
        assert not ingress_routes(ingress, path), f"{path} must not be reachable from the internet"
        assert not ingress_routes(ingress, path + "/x"), path
    for path in public_paths():
        assert ingress_routes(ingress, path), f"the Ingress does not route {path}: add it to ingress.yaml"
    assert not ingress_routes(ingress, "/static/other")
    annotations = ingress["metadata"]["annotations"]
    assert not any("snippet" in name for name in annotations), "no config snippets (disabled by default, risky)"


def test_docs_are_off_in_the_cluster(manifests: Manifests) -> None:
    data = get(manifests, "ConfigMap", "agentchat-config")["data"]
    assert data["DOCS_ENABLED"] == "false"
    assert Settings(_env_file=None, docs_enabled=data["DOCS_ENABLED"]).docs_enabled is False


def test_redis_needs_a_password_from_the_secret(manifests: Manifests) -> None:
    assert "REDIS_URL" not in get(manifests, "ConfigMap", "agentchat-config")["data"]
    redis_url = urlsplit(get(manifests, "Secret", "agentchat-secrets")["stringData"]["REDIS_URL"])
    assert redis_url.scheme in {"redis", "rediss"}
    assert redis_url.password == "REPLACE_ME"
    ref = env_of(only_container(get(manifests, "Deployment")))["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "agentchat-secrets", "key": "REDIS_URL"}


def test_only_the_proxy_may_set_the_client_address(manifests: Manifests, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = dockerfile_cmd()
    assert "--proxy-headers" in cmd
    assert not [arg for arg in cmd if arg.startswith("--forwarded-allow-ips")], "configured by FORWARDED_ALLOW_IPS"
    image_env = re.findall(r"^ENV FORWARDED_ALLOW_IPS=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert image_env == ["127.0.0.1"]
    value = env_of(only_container(get(manifests, "Deployment")))["FORWARDED_ALLOW_IPS"]["value"]
    for allowed in value.split(","):
        network = ipaddress.ip_network(allowed.strip())
        assert network.is_private, f"{allowed}: trust the ingress controller's pods, not the internet"
    # What uvicorn itself makes of the setting.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", value)
    config = pytest.importorskip("uvicorn.config").Config("app.main:app", proxy_headers=True)
    assert config.forwarded_allow_ips == value


EGRESS_PROBES = {
    # (address, port): allowed?
    ("93.184.216.34", 443): True,
    ("2606:4700:4700::1111", 443): True,
    ("169.254.169.254", 80): False,
    ("169.254.169.254", 443): False,
    ("10.0.0.1", 443): False,
    ("10.96.0.1", 443): False,  # the Kubernetes API's usual Service address
    ("172.16.5.4", 443): False,
    ("192.168.1.10", 443): False,
    ("100.64.0.1", 443): False,
    ("127.0.0.1", 443): False,
    ("fd00::1", 443): False,
    ("fe80::1", 443): False,
    ("::ffff:169.254.169.254", 443): False,
    ("64:ff9b::a9fe:a9fe", 443): False,
    ("93.184.216.34", 22): False,
    ("93.184.216.34", 80): False,
    ("93.184.216.34", 5432): False,
}


def egress_allows(policy: dict[str, Any], address: str, port: int) -> bool:
    """Whether an ipBlock rule of the policy lets a connection to address:port out (TCP)."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        ports = rule.get("ports")
        if ports and not any(p.get("protocol", "TCP") == "TCP" and p.get("port") == port for p in ports):
            continue
        for peer in rule.get("to") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]:
            block = peer.get("ipBlock")
            if block is None:
                continue
            cidr = ipaddress.ip_network(block["cidr"])
            if ip.version == cidr.version and ip in cidr:
                if not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                    return True
    return False


def test_egress_policy_allows_dns_databases_and_https_only(manifests: Manifests) -> None:
    policy = get(manifests, "NetworkPolicy", "agentchat-egress")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["policyTypes"] == ["Egress"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload in (get(manifests, "Deployment"), get(manifests, "Job", "agentchat-migrate")):
        assert selects(selector, pod_labels(workload)), workload["kind"]
    rules = policy["spec"]["egress"]
    for rule in rules:
        assert rule.get("to"), "every rule names its destinations"
        assert rule.get("ports"), "every rule names its ports"
    ports = {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379), ("TCP", 443)} <= ports
    dns = next(rule for rule in rules if {"port": 53, "protocol": "UDP"} in rule["ports"])
    assert all("ipBlock" not in peer for peer in dns["to"]), "DNS goes to the cluster's resolver only"
    for (address, port), allowed in EGRESS_PROBES.items():
        assert egress_allows(policy, address, port) is allowed, (address, port)


# --------------------------------------------------------------------------
# docker-compose.yml, profile "scaled"
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    value = data["services"]
    assert isinstance(value, dict)
    return value


def test_compose_default_profile_is_unchanged(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "redis", "migrate", "api"):
        assert "profiles" not in services[name], f"{name} must start without --profile"
    for name in ("api-replica", "lb"):
        assert services[name]["profiles"] == ["scaled"]


def test_compose_replicas_are_the_api_without_a_host_port(services: dict[str, dict[str, Any]]) -> None:
    api, replica = services["api"], services["api-replica"]
    assert "ports" not in replica, "replicas publish nothing, so they can be scaled"
    assert replica["deploy"]["replicas"] >= 1
    for key in ("build", "environment", "depends_on", "healthcheck", "stop_grace_period", "restart"):
        assert replica[key] == api[key], key
    assert "command" not in replica


def test_compose_lb_service(services: dict[str, dict[str, Any]]) -> None:
    lb = services["lb"]
    assert lb["image"] == "nginx:1.27-alpine"
    assert "./deploy/nginx/compose.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert [str(port) for port in lb["ports"]] == ["127.0.0.1:8080:8080"], "published on this machine only"
    assert lb["depends_on"]["api"] == {"condition": "service_healthy"}
    assert lb["depends_on"]["api-replica"] == {"condition": "service_healthy"}
    assert "/nginx-health" in " ".join(lb["healthcheck"]["test"])


def test_compose_api_believes_forwarded_headers_from_the_lb_only(services: dict[str, dict[str, Any]]) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    (subnet,) = [ipaddress.ip_network(c["subnet"]) for c in compose["networks"]["default"]["ipam"]["config"]]
    lb_address = services["lb"]["networks"]["default"]["ipv4_address"]
    assert ipaddress.ip_address(lb_address) in subnet
    for name in ("api", "api-replica"):
        assert services[name]["environment"]["FORWARDED_ALLOW_IPS"] == lb_address, name
    assert [str(port) for port in services["api"]["ports"]] == ["127.0.0.1:8000:8000"]


def test_compose_conf_balances_every_api_service(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE_CONF.read_text(encoding="utf-8")
    assert re.search(r"^\s*listen 8080;", text, re.MULTILINE)
    servers = re.findall(r"^\s*server ([\w.-]+):(\d+)\b", text, re.MULTILINE)
    assert {host for host, _ in servers} == {"api", "api-replica"}
    assert {int(port) for _, port in servers} == {APP_PORT}
    assert all(host in services for host, _ in servers)
    assert re.search(r"^\s*resolver 127\.0\.0\.11\b", text, re.MULTILINE), "Docker's embedded DNS"
    assert not re.search(r"^\s*daemon\b", text, re.MULTILINE), "the image's CMD already passes daemon off"
    assert "${" not in text.replace("${request_id}", "")


# --------------------------------------------------------------------------
# nginx: the template
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def render() -> ModuleType:
    return load_render()


def directive_lines(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_compose_conf_is_rendered_from_the_template(render: ModuleType) -> None:
    assert COMPOSE_CONF.read_text(encoding="utf-8") == render.render(render.COMPOSE_VALUES), (
        "deploy/nginx/compose.conf is stale: run python deploy/nginx/render.py"
    )


def test_template_placeholders(render: ModuleType) -> None:
    text = TEMPLATE.read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("##"))
    assert set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", body)) == set(render.PLACEHOLDERS)
    with pytest.raises(ValueError, match="missing"):
        render.render({"LISTEN": "1"})


def test_template_is_sse_safe_and_never_retries_a_post() -> None:
    lines = directive_lines(TEMPLATE.read_text(encoding="utf-8"))
    for required in [
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
        "least_conn;",
        "proxy_next_upstream error timeout;",
        "proxy_next_upstream_tries 2;",
        "proxy_set_header X-Request-ID $req_id;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
        "client_max_body_size 1m;",
        "gzip off;",
        "location = /nginx-health {",
        "map $http_x_request_id $req_id {",
    ]:
        assert required in lines, required
    text = "\n".join(lines)
    assert "non_idempotent" not in text, "a POST must never be sent to a second replica"
    assert not re.search(r"proxy_ignore_headers[^;]*X-Accel-Buffering", text), "X-Accel-Buffering is honoured"
    assert re.search(r"^keepalive \d+;", text, re.MULTILINE)
    log_format = text[text.index("log_format") : text.index(";", text.index("log_format"))]
    for variable in ("$req_id", "$upstream_addr", "$upstream_response_time"):
        assert variable in log_format, variable
    assert text.index("least_conn;") < text.index("keepalive 32;"), "a balancing method must precede keepalive"


def test_template_rate_limits_each_client_address(render: ModuleType) -> None:
    lines = directive_lines(TEMPLATE.read_text(encoding="utf-8"))
    text = "\n".join(lines)
    assert re.search(r"^limit_req_zone \$agentchat_limit_key zone=agentchat_per_client:\d+m rate=\d+r/s;$", text, re.M)
    assert "default $binary_remote_addr;" in lines, "keyed by the client's address"
    assert "limit_req_status 429;" in lines
    assert "error_page 429 = @rate_limited;" in lines
    location = text[text.index("location / {") :]
    location = location[: location.index("\n}")]
    assert re.search(r"^limit_req zone=agentchat_per_client burst=\d+ nodelay;$", location, re.M)
    assert render.COMPOSE_VALUES["LIMIT_EXEMPT"] == "", "in compose, every client is limited"


def test_upstream_idle_connections_close_before_uvicorns() -> None:
    """uvicorn closes idle connections after --timeout-keep-alive; nginx must let go first."""
    text = "\n".join(directive_lines(TEMPLATE.read_text(encoding="utf-8")))
    upstream = text[text.index("upstream agentchat_api {") :]
    upstream = upstream[: upstream.index("\n}")]  # stripped lines: the block ends at a lone "}"
    match = re.search(r"^keepalive_timeout (\d+)s;", upstream, re.MULTILINE)
    assert match, "set keepalive_timeout in the upstream block (nginx's default is 60 s)"
    assert int(match.group(1)) < uvicorn_params(dockerfile_cmd())["timeout_keep_alive"]


# --------------------------------------------------------------------------
# nginx: really running it
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_bin() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed: run scripts/ensure-apt.sh nginx nginx", pytrace=False)
    return found


def nginx_version(nginx_bin: str) -> tuple[int, ...]:
    result = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True, timeout=10, check=True)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr + result.stdout)
    assert match, result.stderr
    return tuple(int(part) for part in match.groups())


def nginx_test(nginx_bin: str, prefix: Prefix) -> None:
    result = subprocess.run(prefix.command(nginx_bin, "-t"), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr + prefix.conf.read_text(encoding="utf-8")
    assert "test is successful" in result.stderr


def test_nginx_accepts_the_rendered_template(nginx_bin: str, render: ModuleType, tmp_path: Path) -> None:
    prefix = Prefix(tmp_path)
    upstreams = render.upstream_servers([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    prefix.conf.write_text(render.render(prefix.values(f"127.0.0.1:{free_port()}", upstreams)), encoding="utf-8")
    nginx_test(nginx_bin, prefix)


def test_nginx_accepts_the_compose_variant(nginx_bin: str, render: ModuleType, tmp_path: Path) -> None:
    """compose.conf's own directives, with loopback for the Docker names and a temp dir for paths.

    `resolve` needs nginx >= 1.27.3 (the image is 1.27); an older local nginx checks the rest.
    """
    compose = render.COMPOSE_VALUES
    upstreams = re.sub(r"\b(api|api-replica):8000\b", lambda _: f"127.0.0.1:{free_port()}", compose["UPSTREAMS"])
    if nginx_version(nginx_bin) < (1, 27, 3):
        upstreams = upstreams.replace(" resolve;", ";")
    assert upstreams != compose["UPSTREAMS"]
    prefix = Prefix(tmp_path)
    values = prefix.values(f"127.0.0.1:{free_port()}", upstreams, resolver=compose["RESOLVER"])
    prefix.conf.write_text(render.render(values), encoding="utf-8")
    nginx_test(nginx_bin, prefix)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Upstream:
    """A stand-in replica. "app": answers like the API; "drop": reads the request, closes, no answer."""

    mode: Literal["app", "drop"]
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    # The stream waits for the test to have received its first event before it goes on.
    first_event_received: threading.Event = field(default_factory=threading.Event)
    stream_finished: threading.Event = field(default_factory=threading.Event)

    def ids(self) -> list[str]:
        return [s.headers.get("x-request-id", "") for s in self.seen]


class ReplicaHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, like uvicorn
    timeout = 30
    upstream: Upstream

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.upstream.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.upstream.mode == "drop":
            self.close_connection = True
            return
        request_id = self.headers.get("X-Request-ID") or "missing"
        if self.path.startswith("/stream"):
            self._stream(request_id, accel_buffering_no=self.path.endswith("?accel=no"))
            return
        body = json.dumps({"method": self.command, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-ID", request_id)
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, request_id: str, *, accel_buffering_no: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if accel_buffering_no:  # what the app sends; without it, nginx's own settings decide
            self.send_header("X-Accel-Buffering", "no")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Request-ID", request_id)
        self.end_headers()
        self._chunk(b'id: 1\ndata: {"type": "start"}\n\n')
        # A buffering proxy holds that event back, the test never sees it, and this times out.
        self.upstream.first_event_received.wait(timeout=10)
        self._chunk(b": ping\n\n")
        self._chunk(b'id: 2\ndata: {"type": "end"}\n\n')
        self.upstream.stream_finished.set()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def start_upstream() -> Iterator[Callable[[Literal["app", "drop"]], Upstream]]:
    with ExitStack() as stack:

        def start(mode: Literal["app", "drop"]) -> Upstream:
            upstream = Upstream(mode)
            handler = type("Handler", (ReplicaHandler,), {"upstream": upstream})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            upstream.port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()

            def stop() -> None:
                upstream.first_event_received.set()
                server.shutdown()
                server.server_close()
                thread.join(timeout=10)

            stack.callback(stop)
            return upstream

        yield start


@dataclass
class RunningNginx:
    port: int
    prefix: Prefix

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def access_log_entry(self, request_id: str) -> dict[str, Any]:
        """The access log's line for this request (written just after the response is sent)."""
        deadline = time.monotonic() + 5
        while True:
            for line in self.prefix.access_log.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                assert isinstance(entry, dict)
                if entry["request_id"] == request_id:
                    return entry
            assert time.monotonic() < deadline, f"no access log line for {request_id}"
            time.sleep(0.05)


@pytest.fixture
def start_nginx(
    nginx_bin: str, render: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[list[str]], RunningNginx]]:
    """Run the rendered template (foreground, started and stopped by PID) for the given upstreams."""
    with ExitStack() as stack:

        def start(servers: list[str], **values: str) -> RunningNginx:
            prefix = Prefix(tmp_path_factory.mktemp("nginx"))
            port = free_port()
            prefix.conf.write_text(
                render.render(prefix.values(f"127.0.0.1:{port}", render.upstream_servers(servers), **values)),
                encoding="utf-8",
            )
            stderr = stack.enter_context((prefix.root / "stderr.log").open("wb"))
            process = subprocess.Popen(
                prefix.command(nginx_bin, "-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=stderr
            )

            def stop() -> None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

            stack.callback(stop)
            running = RunningNginx(port, prefix)
            deadline = time.monotonic() + 10
            while True:
                if process.poll() is not None:
                    log = prefix.error_log.read_text(encoding="utf-8") if prefix.error_log.exists() else ""
                    pytest.fail(f"nginx exited with {process.returncode}:\n{log}")
                try:
                    if running.request("GET", "/nginx-health")[0] == 200:
                        return running
                except OSError:
                    pass
                assert time.monotonic() < deadline, "nginx did not start listening within 10 s"
                time.sleep(0.05)

        yield start


def read_until(sock: socket.socket, marker: bytes, buffer: bytes = b"") -> bytes:
    while marker not in buffer:
        data = sock.recv(65536)
        assert data, f"connection closed before {marker!r}; got {buffer!r}"
        buffer += data
    return buffer


@pytest.mark.parametrize("path", ["/stream", "/stream?accel=no"])
def test_sse_events_pass_through_unbuffered(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[[list[str]], RunningNginx],
    path: str,
) -> None:
    upstream = start_upstream("app")
    nginx = start_nginx([f"127.0.0.1:{upstream.port}"])
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=8) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\n".encode() + b"Host: agentchat.test\r\nAccept: text/event-stream\r\n"
            b"Accept-Encoding: gzip\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
            b"X-Request-ID: stream-1\r\n\r\n"
            b'{"stream": true}'
        )
        received = read_until(sock, b'data: {"type": "start"}')
        # The first event is here while the replica is still waiting to send the rest.
        assert not upstream.stream_finished.is_set()
        upstream.first_event_received.set()
        received = read_until(sock, b"\r\n0\r\n\r\n", received)
    assert upstream.stream_finished.is_set()
    head = received.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 200")
    assert "content-type: text/event-stream" in head
    assert "content-encoding" not in head, "no gzip on event streams"
    assert "x-accel-buffering" not in head, "nginx consumes X-Accel-Buffering"
    assert "x-request-id: stream-1" in head
    assert b": ping" in received
    assert b'data: {"type": "end"}' in received


def test_request_ids_are_kept_or_generated(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[[list[str]], RunningNginx],
) -> None:
    upstream = start_upstream("app")
    nginx = start_nginx([f"127.0.0.1:{upstream.port}"])

    status, headers, _ = nginx.request("GET", "/conversations", {"X-Request-ID": "client-id_42.x"})
    assert status == 200
    assert upstream.seen[-1].headers["x-request-id"] == headers["x-request-id"] == "client-id_42.x"

    # Absent, or one the app would refuse (spaces, over 128 characters): nginx's $request_id.
    for sent in (None, "has a space", "x" * 129):
        status, headers, _ = nginx.request("GET", "/conversations", {"X-Request-ID": sent} if sent else {})
        assert status == 200
        forwarded = upstream.seen[-1].headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", forwarded), forwarded
        assert headers["x-request-id"] == forwarded

    ids = upstream.ids()
    assert len(set(ids[1:])) == 3, "a new ID per request"


def test_forwarded_headers_and_access_log(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[[list[str]], RunningNginx],
) -> None:
    upstream = start_upstream("app")
    nginx = start_nginx([f"127.0.0.1:{upstream.port}"])
    request_id = f"log-{uuid.uuid4().hex}"
    status, _, _ = nginx.request(
        "GET",
        "/conversations?limit=2",
        {"X-Request-ID": request_id, "Host": "chat.example.test", "X-Forwarded-For": "203.0.113.9"},
    )
    assert status == 200
    seen = upstream.seen[-1].headers
    assert seen["x-forwarded-for"] == "127.0.0.1", "a client-supplied X-Forwarded-For is replaced"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == seen["host"] == "chat.example.test"
    assert seen.get("connection", "").lower() != "close", "keep-alive to the replicas"

    entry = nginx.access_log_entry(request_id)
    assert entry["status"] == 200
    assert entry["uri"] == "/conversations?limit=2"
    assert entry["upstream_addr"] == f"127.0.0.1:{upstream.port}"
    assert float(entry["upstream_response_time"]) >= 0


def test_a_post_is_never_retried_an_idempotent_request_is(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[[list[str]], RunningNginx],
) -> None:
    """One replica takes requests and closes without answering (a crash mid-request)."""
    broken, healthy = start_upstream("drop"), start_upstream("app")
    # max_fails=0: keep the broken replica in rotation, so both methods meet it.
    nginx = start_nginx([f"127.0.0.1:{broken.port} max_fails=0", f"127.0.0.1:{healthy.port} max_fails=0"])

    failed_posts = 0
    for n in range(8):
        request_id = f"post-{n}"
        status, headers, body = nginx.request(
            "POST", "/chat", {"X-Request-ID": request_id, "Content-Type": "application/json"}, b'{"message":"hi"}'
        )
        reached = broken.ids().count(request_id) + healthy.ids().count(request_id)
        assert reached == 1, f"{request_id} reached {reached} replicas"
        if request_id in broken.ids():
            failed_posts += 1
            assert status == 502
            assert headers["content-type"] == "application/json"
            assert headers["x-request-id"] == request_id
            error = json.loads(body)["error"]
            assert error["request_id"] == request_id
            assert error["type"] == "bad_gateway"
        else:
            assert status == 200
    assert failed_posts, "no POST met the broken replica"

    retried = 0
    for n in range(8):
        request_id = f"get-{n}"
        status, _, _ = nginx.request("GET", "/conversations", {"X-Request-ID": request_id})
        assert status == 200, "an idempotent request goes on to the next replica"
        assert healthy.ids().count(request_id) == 1
        retried += request_id in broken.ids()
    assert retried, "no GET met the broken replica"


def test_nginx_own_responses(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[[list[str]], RunningNginx],
) -> None:
    upstream = start_upstream("app")
    nginx = start_nginx([f"127.0.0.1:{upstream.port}"])

    status, _, body = nginx.request("GET", "/nginx-health")
    assert (status, body) == (200, b"ok\n")

    status, headers, body = nginx.request("GET", "/metrics", {"X-Request-ID": "m-1"})
    assert status == 404
    assert json.loads(body)["error"] == {"type": "not_found", "message": "Not found.", "request_id": "m-1"}

    too_large = b"x" * (1024 * 1024 + 1)
    status, headers, body = nginx.request("POST", "/chat", {"X-Request-ID": "big-1"}, too_large)
    assert status == 413
    assert json.loads(body)["error"]["type"] == "payload_too_large"
    assert headers["x-request-id"] == "big-1"
    assert not [s for s in upstream.seen if s.path != "/nginx-health"], "nothing reached the replica"


def test_a_flood_from_one_address_is_refused_at_the_edge(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[..., RunningNginx],
) -> None:
    """20 requests/s with bursts of 40 per client address; the rest is 429 and never reaches a replica."""
    upstream = start_upstream("app")
    nginx = start_nginx([f"127.0.0.1:{upstream.port}"], limit_exempt="")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(
            pool.map(lambda n: nginx.request("GET", "/conversations", {"X-Request-ID": f"flood-{n}"}), range(150))
        )
    elapsed = time.monotonic() - started
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429}
    allowed = statuses.count(200)
    assert allowed >= 41, "the burst (40 beyond the first) is served at once"
    assert allowed <= 41 + 20 * elapsed + 1, f"{allowed} served in {elapsed:.2f}s"
    assert 429 in statuses, f"no refusal in {elapsed:.2f}s"
    status, headers, body = answers[statuses.index(429)]
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/json"
    refused_id = headers["x-request-id"]
    assert json.loads(body)["error"] == {
        "type": "rate_limited",
        "message": "Too many requests from this address; retry shortly.",
        "request_id": refused_id,
    }
    assert refused_id not in upstream.ids(), "a refused request never reaches a replica"
    assert len([s for s in upstream.seen if s.path == "/conversations"]) == allowed


def test_exempt_addresses_are_not_limited(
    start_upstream: Callable[[Literal["app", "drop"]], Upstream],
    start_nginx: Callable[..., RunningNginx],
) -> None:
    upstream = start_upstream("app")
    nginx = start_nginx([f"127.0.0.1:{upstream.port}"], limit_exempt="127.0.0.1 1;")
    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = set(pool.map(lambda _: nginx.request("GET", "/conversations")[0], range(150)))
    assert statuses == {200}


def test_no_replica_answers_502_in_the_apps_envelope(start_nginx: Callable[[list[str]], RunningNginx]) -> None:
    nginx = start_nginx([f"127.0.0.1:{free_port()}"])  # nothing listens there
    status, headers, body = nginx.request("GET", "/conversations", {"X-Request-ID": "down-1"})
    assert status == 502
    assert headers["x-request-id"] == "down-1"
    assert headers["retry-after"] == "1"
    assert json.loads(body)["error"]["request_id"] == "down-1"
    assert nginx.access_log_entry("down-1")["status"] == 502


@pytest.mark.skipif(os.name != "posix", reason="POSIX shell script")
def test_ensure_nginx_script_is_idempotent(nginx_bin: str) -> None:
    """With nginx present the script installs nothing and prints one line."""
    script = ROOT / "scripts" / "ensure-apt.sh"
    assert os.access(script, os.X_OK), "scripts/ensure-apt.sh must be executable"
    result = subprocess.run([str(script), "nginx", "nginx"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nginx: "), result.stdout
    assert result.stdout.count("\n") == 1, result.stdout
