"""deploy/: the container image, the compose stack and the Kubernetes manifests, checked offline.

Docker and a cluster are not needed: the Kubernetes objects are validated against the schemas that
``kubernetes-validate`` ships, KEDA's against a transcription of its CRDs (``crds/``), and every command,
setting, port and grace period the files name is checked against the package itself.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import msgspec
import pytest
import yaml

from worker import keda
from worker.cli import build_parser
from worker.keys import GROUP, Keys
from worker.settings import ENV_PREFIX, Settings, SettingsError, is_service_link, load_settings

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CRDS = Path(__file__).parent / "crds"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"

# Kubernetes versions the manifests must be valid for (schemas shipped by kubernetes-validate, strict
# mode: unknown fields are errors). The oldest is the floor the manifests promise.
K8S_VERSIONS = ("1.30", "1.33")

KEDA_SCHEMAS = {
    "ScaledObject": CRDS / "keda.sh_scaledobjects.schema.yaml",
    "TriggerAuthentication": CRDS / "keda.sh_triggerauthentications.schema.yaml",
}

# Trigger metadata the redis-streams scalers read (KEDA docs, scalers/redis-streams and
# redis-cluster-streams; the scaler's typed config in pkg/scalers/redis_streams_scaler.go and
# redis_scaler.go's connection info). The Cluster scaler takes lists of nodes and has no database.
_STREAMS_METADATA = frozenset(
    {
        "usernameFromEnv",
        "passwordFromEnv",
        "enableTLS",
        "unsafeSsl",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
    }
)
REDIS_STREAMS_METADATA = {
    "redis-streams": _STREAMS_METADATA
    | {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "databaseIndex"},
    "redis-cluster-streams": _STREAMS_METADATA
    | {"addresses", "addressesFromEnv", "hosts", "hostsFromEnv", "ports", "portsFromEnv"},
}
# Parameters a TriggerAuthentication may hand the redis scalers (authParams in the same sources).
REDIS_AUTH_PARAMS = frozenset(
    {
        "address",
        "addresses",
        "host",
        "hosts",
        "port",
        "ports",
        "username",
        "password",
        "tls",
        "ca",
        "cert",
        "key",
        "keyPassword",
    }
)

# Where the workers' Redis may be, for each way KEDA's objects are rendered (worker.keda): the variants
# the one source must produce, each validated and checked like the shipped file.
KEDA_VARIANTS = {
    "single": ("redis://redis.tokenwire.svc.cluster.local:6379/0", False),
    "single-db-3-tls": ("rediss://redis.tokenwire.svc.cluster.local:6380/3", False),
    "cluster": ("redis://redis-cluster.tokenwire.svc.cluster.local:7000", True),
    "cluster-tls": ("rediss://redis-cluster.tokenwire.svc.cluster.local:7000/0", True),
    "ipv6-tls": ("rediss://[fd00::1:7]:6379/0", False),
}
POD_SPEC_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}

GRACE_MARGIN_SECONDS = 10  # hand the unfinished jobs back, flush, exit: after the drain grace


# ------------------------------------------------------------------------------------------ loading


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[tuple[str, Any]]:
    return [(path.name, doc) for path in k8s_files() for doc in load_yaml_docs(path)]


def k8s_object(kind: str, name: str | None = None) -> Any:
    found = [
        doc
        for _, doc in k8s_docs()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def deployment() -> Any:
    return k8s_object("Deployment")


def worker_container() -> Any:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the Deployment runs one container, the worker"
    return containers[0]


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def secret_values() -> dict[str, str]:
    secret = k8s_object("Secret")
    values: dict[str, str] = dict(secret.get("stringData") or {})
    assert not secret.get("data"), "the Secret template uses stringData (plain placeholders)"
    return values


def compose() -> Any:
    return load_yaml_docs(COMPOSE)[0]


# --------------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to; -1 before the first


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comment lines (also inside continuations) dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    result: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, args.strip(), stage))
    return result


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(args: str, what: str) -> list[str]:
    """The JSON (exec) form; a shell form would make /bin/sh PID 1, which does not forward SIGTERM."""
    assert args.startswith("["), f"{what} must use the exec form (JSON array), got {args!r}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), what
    return [str(v) for v in value]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def image_entrypoint() -> list[str]:
    return exec_form(only(final_stage(dockerfile()), "ENTRYPOINT").args, "ENTRYPOINT")


def image_cmd() -> list[str]:
    return exec_form(only(final_stage(dockerfile()), "CMD").args, "CMD")


def image_env() -> dict[str, str]:
    """ENV of the final stage (``KEY=VALUE ...`` form), what every container of the image starts with."""
    env: dict[str, str] = {}
    for instr in final_stage(dockerfile()):
        if instr.keyword == "ENV":
            for token in shlex.split(instr.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV uses the KEY=VALUE form: {instr.args!r}"
                env[key] = value
    return env


def healthcheck_argv() -> list[str]:
    instr = only(final_stage(dockerfile()), "HEALTHCHECK")
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", instr.args, flags=re.S)
    assert match, f"HEALTHCHECK must run a CMD: {instr.args!r}"
    return exec_form(match.group(2), "HEALTHCHECK CMD")


# ----------------------------------------------------------------------------------------- commands


def assert_tokenwire_argv(argv: list[str], where: str) -> None:
    """``tokenwire SUBCOMMAND ...``, and the package's own parser accepts the rest."""
    assert argv and argv[0] == "tokenwire", f"{where}: expected a tokenwire command, got {argv}"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid tokenwire command (exit {exc.code})")


def assert_python_check(argv: list[str], url_part: str, where: str) -> None:
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, f"{where}: expected python -c CODE: {argv}"
    compile(argv[2], where, "exec")  # a syntax error is a health check that always fails
    assert url_part in argv[2], f"{where}: the check should GET {url_part}"


def compose_argv(service: Any) -> list[str]:
    """Docker's rule: ``entrypoint`` replaces ENTRYPOINT and drops CMD; ``command`` replaces CMD."""
    if "entrypoint" in service:
        entry = service["entrypoint"]
        entry = shlex.split(entry) if isinstance(entry, str) else list(entry)
        cmd = service.get("command", [])
    else:
        entry = image_entrypoint()
        cmd = service.get("command", image_cmd())
    cmd = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    return [str(a) for a in entry + cmd]


def k8s_argv(container: Any) -> list[str]:
    """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD unless ``args``); ``args`` CMD."""
    if "command" in container:
        return [str(a) for a in container["command"] + container.get("args", [])]
    return image_entrypoint() + [str(a) for a in container.get("args", image_cmd())]


def tokenwire_services() -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    return {name: svc for name, svc in services.items() if "build" in svc}


# ----------------------------------------------------------------------------------------- settings


def effective_settings(env: Mapping[str, str], config_file: Path | None, where: str) -> Settings:
    """Load settings the way the worker would at start-up; an error names the offending key."""
    environ = dict(env)
    if config_file is not None:
        environ["TOKENWIRE_CONFIG"] = str(config_file)
    try:
        return load_settings(environ)
    except SettingsError as exc:
        problem = str(exc)
    pytest.fail(f"{where}: the worker would refuse to start: {problem}")


def k8s_worker_env() -> dict[str, str]:
    """The worker container's environment: image ENV, then envFrom, then env (later wins)."""
    env = image_env()
    container = worker_container()
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "envFrom reads ConfigMaps only (secrets are named one by one)"
        env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == k8s_object("Secret")["metadata"]["name"], var
            values = secret_values()
            assert ref["secretKeyRef"]["key"] in values, f"{var['name']}: no such key in the Secret"
            env[var["name"]] = values[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            data = k8s_object("ConfigMap", ref["configMapKeyRef"]["name"])["data"]
            env[var["name"]] = data[ref["configMapKeyRef"]["key"]]
    return env


def mounted_config_text(config_path: str) -> str:
    """The file the pod sees at ``config_path``: a ConfigMap key mounted through a volume."""
    pod = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in worker_container()["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not config_path.startswith(prefix):
            continue
        relative = config_path[len(prefix) :]
        source = volumes[mount["name"]]["configMap"]
        items = {item["path"]: item["key"] for item in source.get("items", [])}
        key = items.get(relative, relative) if items else relative
        text: str = k8s_object("ConfigMap", source["name"])["data"][key]
        return text
    pytest.fail(f"TOKENWIRE_CONFIG={config_path} is not inside any volume mounted into the worker")


def k8s_settings(tmp_path: Path) -> Settings:
    env = k8s_worker_env()
    config_file = None
    if "TOKENWIRE_CONFIG" in env:
        config_file = tmp_path / "tokenwire.toml"
        config_file.write_text(mounted_config_text(env["TOKENWIRE_CONFIG"]), encoding="utf-8")
    return effective_settings(env, config_file, "deploy/k8s worker")


def compose_env(service: Any) -> dict[str, str]:
    env = image_env()
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env.update({str(k): str(v) for k, v in raw.items()})
    return env


def compose_config_file(service: Any, env: Mapping[str, str]) -> Path | None:
    """The host file mounted where TOKENWIRE_CONFIG points (short volume syntax, relative to compose)."""
    target = env.get("TOKENWIRE_CONFIG")
    if target is None:
        return None
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target:
            path = (COMPOSE.parent / source).resolve()
            assert path.is_file(), f"{volume}: no such file {path}"
            return path
    pytest.fail(f"TOKENWIRE_CONFIG={target} is not mounted into the service")


def compose_settings(name: str) -> Settings:
    service = tokenwire_services()[name]
    env = compose_env(service)
    return effective_settings(env, compose_config_file(service, env), f"compose service {name}")


# ------------------------------------------------------------------------------------------- probes


def container_port(port: int | str) -> int:
    """A probe's or the Service's target port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in worker_container()["ports"] if "name" in p}
    assert port in by_name, f"no container port named {port!r}"
    return int(by_name[port])


def prestop_seconds(container: Any) -> float:
    """How long preStop takes: a ``sleep`` (exec) or the native sleep action; none is 0."""
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    argv = pre_stop.get("exec", {}).get("command", [])
    assert len(argv) == 2 and Path(argv[0]).name == "sleep", (
        f"preStop should be a plain sleep whose length the grace arithmetic can count, got {pre_stop}"
    )
    return float(argv[1])


def go_duration_seconds(text: str) -> float:
    """Compose durations: ``40s``, ``1m30s``, ``1500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ===================================================================================== the tests
# ------------------------------------------------------------------------------- schema validation


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("filename", "doc"),
    [pytest.param(f, d, id=f"{f}:{d['kind']}/{d['metadata']['name']}") for f, d in k8s_docs()],
)
def test_manifest_validates(filename: str, doc: Any, version: str) -> None:
    """Each object against the Kubernetes schema of each version, or KEDA's CRD schema for keda.sh."""
    if doc["apiVersion"].startswith("keda.sh/"):
        schema_file = KEDA_SCHEMAS.get(doc["kind"])
        assert schema_file is not None, f"{filename}: no KEDA schema for {doc['kind']}"
        schema = load_yaml_docs(schema_file)[0]
        jsonschema.Draft202012Validator.check_schema(schema)
        errors = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)
        ]
        assert not errors, f"{filename}: not a valid KEDA {doc['kind']}:\n" + "\n".join(errors)
        return
    problem = None
    try:
        used = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        problem = f"invalid for Kubernetes {version}: {path}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        problem = exc.message  # a kind/apiVersion this Kubernetes does not have
    if problem is not None:
        pytest.fail(f"{filename}: {problem}")
    assert used == version, f"validated against {used}, not the pinned {version}"


def test_keda_schema_is_not_vacuous() -> None:
    """The transcribed schema catches the mistakes it is there for."""
    validator = jsonschema.Draft202012Validator(load_yaml_docs(KEDA_SCHEMAS["ScaledObject"])[0])
    good = k8s_object("ScaledObject")
    assert validator.is_valid(good)
    spec = good["spec"]
    trigger = spec["triggers"][0]
    broken: list[Any] = [
        {**good, "spec": {**spec, "minReplicas": 1}},  # an HPA field, not KEDA's
        {**good, "spec": {k: v for k, v in spec.items() if k != "scaleTargetRef"}},
        {**good, "spec": {**spec, "triggers": [{**trigger, "metadata": {"lagCount": 32}}]}},
        {**good, "spec": {**spec, "triggers": [{"type": "redis-streams"}]}},
        {**good, "spec": {**spec, "triggers": [{**trigger, "authRef": {"name": "x"}}]}},
        {**good, "spec": {**spec, "fallback": {"failureThreshold": 3}}},
    ]
    for doc in broken:
        assert not validator.is_valid(doc), doc["spec"]


# ----------------------------------------------------------------------------------------- KEDA


def test_scaled_object_targets_the_worker_deployment() -> None:
    so = k8s_object("ScaledObject")["spec"]
    target = so["scaleTargetRef"]
    assert target["name"] == deployment()["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    # the admission webhook's rules
    assert so.get("minReplicaCount", 0) <= so["maxReplicaCount"]
    names = [t["name"] for t in so["triggers"] if "name" in t]
    assert len(names) == len(set(names)), "trigger names must be unique"
    behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120, "scale down slowly: streams are long"
    assert "replicas" not in deployment()["spec"], "KEDA's HPA owns replicas; re-applying must not reset them"


def test_scaled_object_is_generated_from_the_worker_settings(tmp_path: Path) -> None:
    """scaledobject.yaml is worker.keda's rendering of exactly the settings the worker pods load."""
    shipped = (K8S / "scaledobject.yaml").read_text(encoding="utf-8")
    assert shipped == keda.render(k8s_settings(tmp_path)), (
        "deploy/k8s/scaledobject.yaml is out of date: run python -m worker.keda "
        "--configmap deploy/k8s/configmap.yaml --output deploy/k8s/scaledobject.yaml"
    )
    configmap = ["--configmap", str(K8S / "configmap.yaml")]
    assert keda.main([*configmap, "--output", str(K8S / "scaledobject.yaml"), "--check"]) == 0, (
        "the documented command renders the shipped file"
    )
    stale = tmp_path / "scaledobject.yaml"
    stale.write_text(shipped.replace("maxReplicaCount: 20", "maxReplicaCount: 21"), encoding="utf-8")
    assert keda.main([*configmap, "--output", str(stale), "--check"]) == 1, "--check sees a stale file"
    assert "maxReplicaCount: 21" in stale.read_text(encoding="utf-8"), "--check writes nothing"
    assert keda.main([*configmap, "--output", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == shipped


def keda_variant(tmp_path: Path, variant: str) -> tuple[Settings, Any]:
    url, cluster = KEDA_VARIANTS[variant]
    settings = msgspec.structs.replace(
        k8s_settings(tmp_path), redis_url=url, redis_password=None, redis_cluster=cluster
    )
    return settings, yaml.safe_load(keda.render(settings))


def keda_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_yaml_docs(KEDA_SCHEMAS["ScaledObject"])[0])


@pytest.mark.parametrize("variant", sorted(KEDA_VARIANTS))
def test_keda_variant_validates(tmp_path: Path, variant: str) -> None:
    _, doc = keda_variant(tmp_path, variant)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in keda_validator().iter_errors(doc)
    ]
    assert not errors, f"{variant}: not a valid KEDA ScaledObject:\n" + "\n".join(errors)


@pytest.mark.parametrize("variant", ["shipped", *sorted(KEDA_VARIANTS)])
def test_redis_streams_triggers_watch_the_job_stream(tmp_path: Path, variant: str) -> None:
    if variant == "shipped":
        settings, so = k8s_settings(tmp_path), k8s_object("ScaledObject")
    else:
        settings, so = keda_variant(tmp_path, variant)
    triggers = so["spec"]["triggers"]
    parts = urlsplit(settings.redis_url)
    expected = "redis-cluster-streams" if settings.redis_cluster else "redis-streams"
    assert {t["type"] for t in triggers} == {expected}, "a Redis Cluster needs KEDA's cluster scaler"
    refs = k8s_object("TriggerAuthentication")["spec"]["secretTargetRef"]
    host = str(parts.hostname)
    assert "." in host or ":" in host, "KEDA's operator runs elsewhere: the host must be qualified"
    address = f"[{host}]:{parts.port or 6379}" if ":" in host else f"{host}:{parts.port or 6379}"
    for t in triggers:
        meta = t["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), f"KEDA metadata values are strings: {meta}"
        unknown = set(meta) - REDIS_STREAMS_METADATA[expected]
        assert not unknown, f"not {expected} metadata: {sorted(unknown)}"
        assert meta["stream"] == Keys(settings.prefix).jobs
        assert meta["consumerGroup"] == GROUP
        assert "password" not in meta and "username" not in meta, "credentials go through authenticationRef"
        assert t["metricType"] == "AverageValue", "fallback only works with AverageValue triggers"
        if settings.redis_cluster:
            assert meta["addresses"] == address and "databaseIndex" not in meta
        else:
            assert meta["address"] == address, "KEDA must watch the Redis the workers use"
            assert int(meta["databaseIndex"]) == _redis_url_db(settings.redis_url)
        tls = parts.scheme == "rediss"
        assert meta.get("enableTLS") == ("true" if tls else None), "TLS exactly when the URL is rediss://"
        assert all(r["parameter"] != "tls" for r in refs), "KEDA refuses `tls` beside enableTLS"
    lag = [t["metadata"] for t in triggers if "lagCount" in t["metadata"]]
    pending = [t["metadata"] for t in triggers if "pendingEntriesCount" in t["metadata"]]
    assert len(lag) == 1 and len(pending) == 1, "one lag trigger and one pending-entries trigger"
    assert int(lag[0]["lagCount"]) >= 1, (
        "lag mode needs a non-zero lagCount (else KEDA falls back to XPENDING)"
    )
    assert lag[0]["activationLagCount"] == "0", "one waiting job must activate the scaler (metric > 0)"
    assert 1 <= int(pending[0]["pendingEntriesCount"]) <= settings.concurrency, (
        "a pod never holds more than `concurrency` pending entries: a higher target never scales up"
    )
    fallback = so["spec"]["fallback"]
    assert fallback["failureThreshold"] >= 1
    assert so["spec"].get("minReplicaCount", 0) <= fallback["replicas"] <= so["spec"]["maxReplicaCount"]


def test_variants_differ_only_where_the_settings_do(tmp_path: Path) -> None:
    """One source: switching TLS, the database or Cluster changes the connection fields, nothing else."""
    _, single = keda_variant(tmp_path, "single")
    connection = {"address", "addresses", "databaseIndex", "enableTLS"}
    for variant in sorted(set(KEDA_VARIANTS) - {"single"}):
        _, other = keda_variant(tmp_path, variant)
        assert {k: v for k, v in other["spec"].items() if k != "triggers"} == {
            k: v for k, v in single["spec"].items() if k != "triggers"
        }, variant
        for a, b in zip(single["spec"]["triggers"], other["spec"]["triggers"], strict=True):
            assert {k: v for k, v in a["metadata"].items() if k not in connection} == {
                k: v for k, v in b["metadata"].items() if k not in connection
            }, variant
            assert {k: v for k, v in a.items() if k not in ("type", "metadata")} == {
                k: v for k, v in b.items() if k not in ("type", "metadata")
            }, variant


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("unix:///run/redis/redis.sock", "unix socket"),
        ("redis://localhost:6379/0", "KEDA's operator runs in its own pod"),
        ("redis://127.0.0.1:6379/0", "KEDA's operator runs in its own pod"),
        ("redis://tokenwire@redis.tokenwire.svc.cluster.local:6379/0", "names a user"),
    ],
)
def test_keda_refuses_a_redis_it_cannot_reach(tmp_path: Path, url: str, problem: str) -> None:
    settings = msgspec.structs.replace(k8s_settings(tmp_path), redis_url=url, redis_password=None)
    with pytest.raises(keda.KedaError, match=problem):
        keda.scaled_object(settings)


def test_keda_command_prints_or_refuses_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENWIRE_REDIS_URL", "rediss://redis.prod.svc.cluster.local:6380/0")
    monkeypatch.setenv("TOKENWIRE_REDIS_CLUSTER", "true")
    assert keda.main([]) == 0, "from the variables, to standard output"
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {t["type"] for t in printed["spec"]["triggers"]} == {"redis-cluster-streams"}
    assert printed["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"
    for argv in (
        ["--configmap", str(K8S / "configmap.yaml"), "--configmap-name", "no-such-map"],
        ["--configmap", str(tmp_path / "missing.yaml")],
    ):
        assert keda.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("worker.keda: ") and len(err.splitlines()) == 1, err
    monkeypatch.setenv("TOKENWIRE_REDIS_URL", "redis://localhost:6379/0")
    assert keda.main([]) == 2 and "its own pod" in capsys.readouterr().err


def _redis_url_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path else 0


def test_redis_address_and_password_are_each_in_one_place(tmp_path: Path) -> None:
    """The address: the ConfigMap's URL (the ScaledObject is rendered from it). The password: one Secret
    key, read by the workers (TOKENWIRE_REDIS_PASSWORD) and by KEDA (the TriggerAuthentication)."""
    auth = k8s_object("TriggerAuthentication")
    secret = k8s_object("Secret")
    values = secret_values()
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in REDIS_AUTH_PARAMS, ref
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in values, f"the Secret has no key {ref['key']}"
    for t in k8s_object("ScaledObject")["spec"]["triggers"]:
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
    keda_key = {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}["password"]
    worker_keys = {
        var["name"]: var["valueFrom"]["secretKeyRef"]["key"]
        for var in worker_container()["env"]
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert worker_keys["TOKENWIRE_REDIS_PASSWORD"] == keda_key, "the workers and KEDA read one Secret key"
    others = [v for k, v in values.items() if k != keda_key]
    assert all(values[keda_key] not in v for v in others), "and the password has no second copy"
    settings = k8s_settings(tmp_path)
    assert unquote(urlsplit(settings.redis_url).password or "") == values[keda_key], "the worker uses it"
    config = k8s_object("ConfigMap", "tokenwire-env")["data"]
    assert urlsplit(config["TOKENWIRE_REDIS_URL"]).password is None, "no password in the ConfigMap"


def test_secret_is_a_template_with_marked_placeholders() -> None:
    for key, value in secret_values().items():
        assert "CHANGE-ME" in value, f"{key}: the template carries placeholders only, clearly marked"


# ------------------------------------------------------------------------------ grace and settings


def test_grace_periods_cover_the_drain(tmp_path: Path) -> None:
    settings = k8s_settings(tmp_path)
    pod = deployment()["spec"]["template"]["spec"]
    budget = pod["terminationGracePeriodSeconds"]
    needed = prestop_seconds(worker_container()) + settings.drain_grace_seconds + GRACE_MARGIN_SECONDS
    assert budget >= needed, (
        f"terminationGracePeriodSeconds {budget} < preStop + drain grace "
        f"{settings.drain_grace_seconds} + {GRACE_MARGIN_SECONDS} s margin: jobs would be SIGKILLed"
    )
    worker = tokenwire_services()["worker"]
    compose_grace = go_duration_seconds(worker["stop_grace_period"])
    drain = compose_settings("worker").drain_grace_seconds
    assert compose_grace >= drain + GRACE_MARGIN_SECONDS
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert only(final_stage(dockerfile()), "STOPSIGNAL").args == "SIGTERM"


def test_k8s_settings_are_ones_the_worker_accepts(tmp_path: Path) -> None:
    """ConfigMap, Secret and the mounted TOML, loaded exactly as the worker loads them at start-up."""
    settings = k8s_settings(tmp_path)
    assert settings.metrics_port != 0, "the probes need the health endpoints on"
    data = k8s_object("ConfigMap", "tokenwire-env")["data"]
    assert all(k.startswith(ENV_PREFIX) for k in data), "the env ConfigMap holds tokenwire settings only"
    # every TOKENWIRE_* key of the Secret too, even one the Deployment does not read yet
    secret_env = {k: v for k, v in secret_values().items() if k.startswith(ENV_PREFIX)}
    effective_settings(secret_env, None, "deploy/k8s/secret.yaml")


@pytest.mark.parametrize("service", ["sim", "worker", "producer"])
def test_compose_settings_are_ones_the_worker_accepts(service: str) -> None:
    settings = compose_settings(service)
    assert urlsplit(settings.redis_url).hostname == "redis"


def test_image_env_settings_are_real() -> None:
    effective_settings(image_env(), None, "deploy/Dockerfile ENV")


# ---------------------------------------------------------------------------------------- commands


def test_image_commands_exist() -> None:
    assert_tokenwire_argv(image_entrypoint() + image_cmd(), "Dockerfile ENTRYPOINT + CMD")
    assert image_cmd() == ["worker"]
    assert_python_check(healthcheck_argv(), "/healthz", "Dockerfile HEALTHCHECK")


@pytest.mark.parametrize("service", sorted(tokenwire_services()))
def test_compose_commands_exist(service: str) -> None:
    svc = tokenwire_services()[service]
    assert_tokenwire_argv(compose_argv(svc), f"compose service {service}")
    check = svc.get("healthcheck", {})
    if "test" in check:
        test = check["test"]
        assert test[0] == "CMD", f"{service}: healthcheck in exec form"
        assert_python_check(test[1:], "/health", f"compose {service} healthcheck")


def test_k8s_commands_exist() -> None:
    for container in deployment()["spec"]["template"]["spec"]["containers"]:
        argv = k8s_argv(container)
        assert_tokenwire_argv(argv, f"deployment container {container['name']}")
        assert argv[1] == "worker"


# ------------------------------------------------------------------------------- probes and wiring


def test_probes_and_metrics_service_use_the_metrics_port(tmp_path: Path) -> None:
    port = k8s_settings(tmp_path).metrics_port
    container = worker_container()
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and container_port(live["port"]) == port
    assert ready["path"] == "/readyz" and container_port(ready["port"]) == port
    if "startupProbe" in container:
        start = container["startupProbe"]["httpGet"]
        assert start["path"] == "/healthz" and container_port(start["port"]) == port
    service = k8s_object("Service")["spec"]
    assert [container_port(p["targetPort"]) for p in service["ports"]] == [port]
    assert service["selector"].items() <= pod_labels().items(), "the metrics Service selects the workers"
    annotations = deployment()["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == port
    exposed = {i.args.split("/")[0] for i in final_stage(dockerfile()) if i.keyword == "EXPOSE"}
    assert str(port) in exposed, "the image EXPOSEs the metrics port"
    assert image_env().get("TOKENWIRE_METRICS_PORT") == str(port), "the HEALTHCHECK's default port"


def test_metrics_endpoints_listen_where_their_clients_connect(tmp_path: Path) -> None:
    """Kubernetes' probes and Prometheus connect to the pod's IP, the compose stack's scrapers to the
    container's, the image's HEALTHCHECK to loopback: each bind must cover its clients."""
    k8s = k8s_settings(tmp_path).metrics_host
    assert ipaddress.ip_address(k8s).is_unspecified, f"k8s metrics_host {k8s}: probes could not connect"
    compose_host = compose_settings("worker").metrics_host
    assert ipaddress.ip_address(compose_host).is_unspecified, "compose `expose`s the metrics port"
    check = healthcheck_argv()[2]
    match = re.search(r"http://([^:/'\"]+)", check)
    assert match, f"the HEALTHCHECK's URL names a host: {check}"
    target = "127.0.0.1" if match.group(1) == "localhost" else match.group(1)
    bound = ipaddress.ip_address(effective_settings(image_env(), None, "deploy/Dockerfile ENV").metrics_host)
    assert bound.is_unspecified or bound == ipaddress.ip_address(target), (
        f"the image binds {bound} but its HEALTHCHECK connects to {target}"
    )


def pod_specs() -> list[tuple[str, Any]]:
    found = []
    for filename, doc in k8s_docs():
        if doc["kind"] not in POD_SPEC_KINDS:
            continue
        spec = doc["spec"]
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        found.append(
            (
                f"{filename}:{doc['kind']}/{doc['metadata']['name']}",
                spec.get("template", {}).get("spec", spec),
            )
        )
    return found


def test_every_pod_spec_turns_service_links_off() -> None:
    specs = pod_specs()
    assert specs, "deploy/k8s runs pods"
    for where, spec in specs:
        assert spec.get("enableServiceLinks") is False, f"{where}: set enableServiceLinks: false"


def service_link_env(name: str, ports: list[Any], cluster_ip: str) -> dict[str, str]:
    """The variables the kubelet adds to every pod of the namespace for a Service (pkg/kubelet/envvars)."""
    prefix = name.upper().replace("-", "_")
    env = {f"{prefix}_SERVICE_HOST": cluster_ip, f"{prefix}_SERVICE_PORT": str(ports[0]["port"])}
    for i, port in enumerate(ports):
        proto = str(port.get("protocol", "TCP"))
        number = str(port["port"])
        if port.get("name"):
            env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = number
        host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
        url = f"{proto.lower()}://{host}:{number}"
        if i == 0:
            env[f"{prefix}_PORT"] = url
        base = f"{prefix}_PORT_{number}_{proto.upper()}"
        env.update(
            {base: url, f"{base}_PROTO": proto.lower(), f"{base}_PORT": number, f"{base}_ADDR": cluster_ip}
        )
    return env


@pytest.mark.parametrize("cluster_ip", ["10.96.14.7", "fd00:10:96::e"])
def test_worker_starts_with_the_service_links_of_its_namespace(tmp_path: Path, cluster_ip: str) -> None:
    """Were service links on (a copied pod spec, a Helm chart), the variables of this repository's own
    Services and of any `tokenwire`/`tokenwire-*` Service neighbour would not stop the worker."""
    services = [(s["metadata"]["name"], s["spec"]["ports"]) for _, s in k8s_docs() if s["kind"] == "Service"]
    services += [
        ("tokenwire", [{"name": "http", "port": 8080}]),
        # (not `tokenwire-gateway`: its TOKENWIRE_GATEWAY_PORT would be the gateway_port setting, refused
        # with a clear error; test_gateway_manifests.py checks that, and why the gateway's is `gateway`)
        ("tokenwire-api", [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
    ]
    links: dict[str, str] = {}
    for name, ports in services:
        links.update(service_link_env(name, ports, cluster_ip))
    tokenwire_links = {k: v for k, v in links.items() if k.startswith(ENV_PREFIX)}
    assert "TOKENWIRE_WORKER_METRICS_SERVICE_HOST" in tokenwire_links and "TOKENWIRE_PORT" in tokenwire_links
    assert all(is_service_link(k, v) for k, v in tokenwire_links.items())
    expected = k8s_settings(tmp_path)
    config = tmp_path / "tokenwire.toml"
    assert effective_settings({**k8s_worker_env(), **links}, config, "pod with service links") == expected


def test_selectors_match_the_pods() -> None:
    spec = deployment()["spec"]
    labels = pod_labels()
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pdb = k8s_object("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert "maxUnavailable" in pdb, "maxUnavailable: a single replica must not block node drains"


def test_worker_pod_is_bounded_and_unprivileged() -> None:
    container = worker_container()
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    pod_sc = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert str(pod_sc["runAsUser"]) == image_user().split(":")[0], "the pod runs as the image's user"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml_docs(K8S / "kustomization.yaml")[0]
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == {p.name for p in k8s_files()}
    images = {i["name"] for i in kustomization.get("images", [])}
    for container in deployment()["spec"]["template"]["spec"]["containers"]:
        name = container["image"].rsplit(":", 1)[0]
        assert not images or name in images, f"kustomization `images` does not cover {name}"


# -------------------------------------------------------------------------------------- Dockerfile


def image_user() -> str:
    return only(final_stage(dockerfile()), "USER").args


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    instructions = dockerfile()
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    args = {}
    for i in instructions:
        if i.keyword == "ARG" and i.stage == -1:
            name, _, default = i.args.partition("=")
            args[name] = default
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.args.split()[0]) for f in froms]
    assert all("slim" in b for b in bases), bases
    assert len(set(bases)) == 1, "one base image: the venv copied from the builder points at its python"
    assert re.search(r"\bAS\s+builder\b", froms[0].args, flags=re.I)
    user = image_user().split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER must be a numeric non-root uid, got {user!r}"
    final = final_stage(instructions)
    assert any(i.keyword == "COPY" and "--from=builder" in i.args for i in final)
    assert not any(i.keyword == "RUN" and "pip" in i.args for i in final), "nothing built in the runtime"


def test_dockerfile_installs_the_built_wheel() -> None:
    runs = " && ".join(i.args for i in dockerfile() if i.keyword == "RUN")
    assert re.search(r"pip wheel\b.*--no-deps", runs), "the builder builds the project's wheel"
    assert re.search(r"pip install\s+\S*\.whl", runs), "and installs that wheel"
    assert not re.search(r"pip install[^&]*(\s-e\s|--editable)", runs), "never an editable install"


def test_dockerignore_lets_the_build_inputs_through() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "an allow-list: everything else stays out of the context"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for instr in dockerfile():
        if instr.keyword != "COPY" or "--from=" in instr.args:
            continue
        *sources, _dest = shlex.split(instr.args)
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# ----------------------------------------------------------------------------------------- compose


def test_compose_redis_is_durable_and_never_evicts() -> None:
    redis = compose()["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = redis["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_compose_stack_shape() -> None:
    services = tokenwire_services()
    worker = services["worker"]
    assert worker.get("deploy", {}).get("replicas", 1) >= 2, "two workers"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    producer = services["producer"]
    assert producer.get("restart", "no") == "no", "the producer runs once"
    producer_args = build_parser().parse_args(compose_argv(producer)[1:])
    assert producer_args.command == "enqueue" and producer_args.follow
    assert producer["depends_on"]["redis"]["condition"] == "service_healthy"
    sim_args = build_parser().parse_args(compose_argv(services["sim"])[1:])
    assert sim_args.command == "sim" and sim_args.host == "0.0.0.0"
    # the workers' default provider is the sim service, on the port it listens on
    settings = compose_settings("worker")
    provider = settings.all_providers()[settings.default_provider]
    assert provider.native_url is not None
    assert urlsplit(provider.native_url).netloc == f"sim:{sim_args.port}"
