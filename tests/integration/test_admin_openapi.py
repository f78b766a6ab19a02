"""The admin OpenAPI document is true: it lists exactly the registered admin routes, and
schemathesis, generating requests from it against a real proxy, never gets a 5xx."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings

from proxy.admin.openapi import document
from proxy.app import create_admin_app, create_app
from proxy.config.settings import load_settings
from proxy.store.embedded import EmbeddedValkey
from tests.support.loopback_upstream import LoopbackUpstream
from tests.support.proxies import ProxyFactory

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def admin_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every admin route registered, whatever its method
    (a "*" or HEAD route would be one the document cannot list), the fence aside: its
    catch-alls answer 404 for every path no route claims."""
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/admin") and route.handler.__name__ != "not_found":
            out.add((route.method, path))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in doc["paths"].items()
        for method in operations
        if method.upper() in METHODS
    }


@pytest.mark.parametrize("separate_port", [False, True])
def test_document_lists_exactly_the_registered_routes(separate_port: bool) -> None:
    overrides: dict[str, Any] = {"upstream_url": "http://127.0.0.1:9"}
    if separate_port:
        overrides["admin_port"] = 9091
    app = create_app(load_settings(env={}, overrides=overrides), redis_url="redis://127.0.0.1:1")
    admin_app = create_admin_app(app) if separate_port else app
    doc = document()
    assert doc["openapi"].startswith("3.")
    assert admin_routes(admin_app) == documented(doc)
    if separate_port:  # the proxy's own port only fences /admin off
        assert {route.handler.__name__ for route in app.router.routes()
                if route.resource is not None
                and route.resource.canonical.startswith("/admin")} == {"not_found"}  # fmt: skip
    fences = {route.resource.canonical for route in admin_app.router.routes()
              if route.resource is not None and route.handler.__name__ == "not_found"
              and route.resource.canonical.startswith("/admin")}  # fmt: skip
    assert fences == {"/admin", "/admin/{tail}"}  # nothing else is left out above
    for path, operations in doc["paths"].items():
        placeholders = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            assert operation["responses"], (method, path)
            assert "operationId" in operation
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert declared == placeholders, (method, path)


async def test_the_served_document_is_the_one_checked(
    upstream: tuple[LoopbackUpstream, str], make_proxy: ProxyFactory
) -> None:
    """What /admin/openapi.json serves (with this proxy's route names) lists the same
    operations as the registered routes."""
    _, url = upstream
    client = await make_proxy(url)
    r = await client.get("/admin/openapi.json")  # loopback, no token configured
    assert r.status == 200
    served = await r.json()
    assert documented(served) == admin_routes(client.app) == documented(document())
    (route,) = [p for p in served["paths"]["/admin/audio-cache/entry"]["get"]["parameters"]
                if p["name"] == "route"]  # fmt: skip
    assert "openai" in route["schema"]["enum"]


@pytest.fixture
def live_proxy(valkey: EmbeddedValkey) -> Iterator[str]:
    """A real proxy (and loopback upstream) on its own event loop in a thread, for a
    synchronous client such as schemathesis."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runners: list[web.AppRunner] = []
    base: list[str] = []

    async def start() -> None:
        upstream = web.AppRunner(LoopbackUpstream().app())
        await upstream.setup()
        await web.TCPSite(upstream, "127.0.0.1", 0).start()
        upstream_url = "http://{}:{}".format(*upstream.addresses[0][:2])
        overrides = {
            "upstream_url": upstream_url,
            "audio_cache_key_prefix": f"t{uuid.uuid4().hex[:10]}",
        }
        app = create_app(
            load_settings(env={"ADMIN_TOKEN": TOKEN}, overrides=overrides), redis_url=valkey.url
        )
        proxy = web.AppRunner(app, access_log=None)
        await proxy.setup()
        await web.TCPSite(proxy, "127.0.0.1", 0).start()
        runners.extend([proxy, upstream])
        base.append("http://{}:{}".format(*proxy.addresses[0][:2]))

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "the proxy did not start"
    try:
        yield base[0]
    finally:

        async def stop() -> None:
            for runner in runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_schemathesis_finds_no_server_errors(live_proxy: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_proxy}/admin/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Schemathesis leaves out the operation that serves the document itself.
    generated = {(op.method.upper(), op.path) for op in operations}
    assert documented(document()) - generated == {("GET", "/admin/openapi.json")}
    failures: list[str] = []
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            examples = 25 if mode is schemathesis.GenerationMode.POSITIVE else 10
            run_examples(operation, mode, examples, live_proxy, failures)
    assert failures == []


def run_examples(
    operation: Any, mode: Any, examples: int, base_url: str, failures: list[str]
) -> None:
    """Up to ``examples`` generated requests; a 5xx, or a status the document does not
    list for the operation, is a failure."""
    documented_statuses = operation.definition.raw["responses"]

    @settings(
        max_examples=examples,
        deadline=5000,  # ms per example; each request also has a 10 s timeout
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, headers=AUTH, timeout=10)
        status = response.status_code
        if status >= 500 or str(status) not in documented_statuses:
            failures.append(f"{operation.label}: {status} {response.text[:200]} for {case!r}")

    check()
