"""deploy/k8s/gateway/: the gateway's Deployment, Service and PodDisruptionBudget, checked offline.

Validated against the Kubernetes schemas ``kubernetes-validate`` ships; the settings the gateway pod
would start with (the image's ENV, the workers' ConfigMap, its own variables, the Secret, the mounted
TOML file with the tenants) loaded as ``tokenwire gateway`` loads them; ports, probes and the
shutdown budget checked against the package; and its Service named so that the variables Kubernetes
derives from it can never be read as settings.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.deploy.test_manifests import (
    K8S,
    K8S_VERSIONS,
    assert_tokenwire_argv,
    compose_argv,
    compose_settings,
    effective_settings,
    image_env,
    image_user,
    k8s_argv,
    k8s_docs,
    k8s_object,
    load_yaml_docs,
    prestop_seconds,
    secret_values,
    service_link_env,
    tokenwire_services,
)
from worker.cli import build_parser
from worker.gateway.auth import MIN_GATEWAY_SECRET, gateway_secret
from worker.gateway.server import SHUTDOWN_SECONDS
from worker.settings import ENV_PREFIX, Settings, SettingsError, load_settings

pytestmark = pytest.mark.deploy

GATEWAY = K8S / "gateway"
GRACE_MARGIN_SECONDS = 5


def gateway_files() -> list[Path]:
    return sorted(p for p in GATEWAY.glob("*.yaml") if p.name != "kustomization.yaml")


def gateway_docs() -> list[tuple[str, Any]]:
    return [(path.name, doc) for path in gateway_files() for doc in load_yaml_docs(path)]


def gateway_object(kind: str) -> Any:
    found = [doc for _, doc in gateway_docs() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s/gateway, found {len(found)}"
    return found[0]


def pod_spec() -> Any:
    return gateway_object("Deployment")["spec"]["template"]["spec"]


def container() -> Any:
    (only,) = pod_spec()["containers"]
    return only


def ports() -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in container()["ports"]}


def gateway_env(secret: str) -> dict[str, str]:
    """The container's environment: image ENV, then envFrom, then env; GATEWAY_SECRET as given."""
    env = image_env()
    for source in container().get("envFrom", []):
        env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    values = {**secret_values(), "GATEWAY_SECRET": secret}
    for var in container()["env"]:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == k8s_object("Secret")["metadata"]["name"], var
            assert ref["key"] in secret_values(), f"{var['name']}: no key {ref['key']} in the Secret"
            env[var["name"]] = values[ref["key"]]
    return env


def mounted_config(tmp_path: Path, env: dict[str, str]) -> Path:
    """The TOML file the pod sees at TOKENWIRE_CONFIG (a ConfigMap key through a volume)."""
    target = env["TOKENWIRE_CONFIG"]
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    for mount in container()["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if target.startswith(prefix):
            source = volumes[mount["name"]]["configMap"]
            items = {i["path"]: i["key"] for i in source.get("items", [])}
            key = items.get(target[len(prefix) :], target[len(prefix) :])
            path = tmp_path / "tokenwire.toml"
            path.write_text(k8s_object("ConfigMap", source["name"])["data"][key], encoding="utf-8")
            return path
    pytest.fail(f"TOKENWIRE_CONFIG={target} is not inside a volume mounted into the gateway")


def gateway_settings(tmp_path: Path, extra: dict[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    env = gateway_env(secrets.token_urlsafe(32))
    config = mounted_config(tmp_path, env)
    return effective_settings({**env, **(extra or {})}, config, "deploy/k8s/gateway"), env


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("filename", "doc"),
    [pytest.param(f, d, id=f"{f}:{d['kind']}/{d['metadata']['name']}") for f, d in gateway_docs()],
)
def test_gateway_manifest_validates(filename: str, doc: Any, version: str) -> None:
    try:
        used = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        pytest.fail(f"gateway/{filename}: invalid for Kubernetes {version}: {path}: {exc.message}")
    assert used == version


def test_the_kustomization_lists_every_file_in_the_workers_namespace() -> None:
    kustomization = load_yaml_docs(GATEWAY / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in gateway_files())
    main = load_yaml_docs(K8S / "kustomization.yaml")[0]
    assert kustomization["namespace"] == main["namespace"], "it uses the workers' ConfigMaps and Secret"
    assert kustomization["images"] == main["images"], "the same image as the workers"
    assert container()["image"].rsplit(":", 1)[0] in {i["name"] for i in kustomization["images"]}


def test_the_container_runs_tokenwire_gateway() -> None:
    argv = k8s_argv(container())
    assert argv[:2] == ["tokenwire", "gateway"]
    assert_tokenwire_argv(argv, "deploy/k8s/gateway")


def test_the_pod_starts_with_settings_the_gateway_accepts(tmp_path: Path) -> None:
    settings, env = gateway_settings(tmp_path)
    assert settings.gateway_host == "0.0.0.0", "the Service and probes connect to the pod's IP"
    assert settings.gateway_port == ports()["http"]
    assert settings.metrics_port == ports()["metrics"] and settings.metrics_host == "0.0.0.0"
    assert settings.gateway_ui is True
    assert settings.tenants, "the mounted file has the tenants"
    for name, tenant in settings.tenants.items():
        assert tenant.key_sha256 == "0" * 64, f"tenants.{name}: the template's digest is no key's"
    assert len(gateway_secret(settings, env)) >= MIN_GATEWAY_SECRET
    workers = urlsplit(k8s_object("ConfigMap", "tokenwire-env")["data"]["TOKENWIRE_REDIS_URL"])
    mine = urlsplit(settings.redis_url)
    assert (mine.hostname, mine.port, mine.path) == (workers.hostname, workers.port, workers.path)
    assert unquote(mine.password or "") == secret_values()["REDIS_PASSWORD"], "the workers' Redis password"


def test_the_template_secret_is_refused_until_replaced(tmp_path: Path) -> None:
    env = gateway_env(secret_values()["GATEWAY_SECRET"])
    settings = effective_settings(env, mounted_config(tmp_path, env), "deploy/k8s/gateway")
    with pytest.raises(SettingsError, match="TOKENWIRE_GATEWAY_SECRET is shorter than"):
        gateway_secret(settings, env)


def test_probes_service_and_metrics_use_the_named_ports() -> None:
    c = container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics", probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = gateway_object("Service")["spec"]["ports"]
    assert port["targetPort"] == "http" and port["targetPort"] in ports()
    annotations = gateway_object("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports()["metrics"]


def test_selectors_match_the_gateway_pods_only() -> None:
    deployment = gateway_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert gateway_object("Service")["spec"]["selector"] == selector
    assert gateway_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    worker_labels = k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= worker_labels.items(), "the gateway's Service must not select workers"


def test_the_pod_is_bounded_unprivileged_and_without_service_links() -> None:
    spec = pod_spec()
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == image_user().split(":")[0]
    sc = container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= container()["resources"]["requests"].keys()
    assert "memory" in container()["resources"]["limits"]
    needed = prestop_seconds(container()) + SHUTDOWN_SECONDS + GRACE_MARGIN_SECONDS
    assert spec["terminationGracePeriodSeconds"] >= needed, "streams must be told to reconnect before SIGKILL"


@pytest.mark.parametrize("cluster_ip", ["10.96.14.7", "fd00:10:96::e"])
def test_its_service_links_cannot_be_read_as_settings(tmp_path: Path, cluster_ip: str) -> None:
    service = gateway_object("Service")
    links = service_link_env(service["metadata"]["name"], service["spec"]["ports"], cluster_ip)
    assert links and not [k for k in links if k.startswith(ENV_PREFIX)], "no TOKENWIRE_* variable at all"
    # were service links on, every Service of the namespace (the workers' and the gateway's) changes
    # nothing in what the gateway or a worker loads
    neighbours: dict[str, str] = {}
    for _, doc in [*k8s_docs(), *gateway_docs()]:
        if doc["kind"] == "Service":
            neighbours.update(service_link_env(doc["metadata"]["name"], doc["spec"]["ports"], cluster_ip))
    plain, _ = gateway_settings(tmp_path)
    assert gateway_settings(tmp_path, neighbours)[0] == plain
    # the name it does not have: a `tokenwire-gateway` Service's TOKENWIRE_GATEWAY_PORT=tcp://... is
    # the gateway_port setting's name, and a pod that has it (links on) refuses to start
    clash = service_link_env("tokenwire-gateway", service["spec"]["ports"], cluster_ip)
    assert "TOKENWIRE_GATEWAY_PORT" in clash
    env = gateway_env(secrets.token_urlsafe(32))
    with pytest.raises(SettingsError, match="TOKENWIRE_GATEWAY_PORT"):
        load_settings({**env, **clash, "TOKENWIRE_CONFIG": str(mounted_config(tmp_path, env))})


def test_the_compose_gateway_serves_the_page_on_its_published_port() -> None:
    service = tokenwire_services()["gateway"]
    assert service["profiles"] == ["gateway"], "opt-in: `docker compose up` alone starts no gateway"
    argv = compose_argv(service)
    assert_tokenwire_argv(argv, "compose service gateway")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "gateway" and args.gateway_host == "0.0.0.0"
    settings = compose_settings("gateway")
    assert settings.gateway_ui is True and settings.tenants, "deploy/tokenwire.toml has the tenants"
    published = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    assert published == {args.gateway_port or settings.gateway_port}
    assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), "loopback only on the host"
    assert service["environment"]["TOKENWIRE_GATEWAY_SECRET"] == "${TOKENWIRE_GATEWAY_SECRET:-}"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
