"""Who may use the proxy, through a real proxy, a real Valkey and a loopback upstream that
checks its own keys: client_auth keys and upstream, scoped pass-through, tenants from
authenticated sources only, limits shared by replicas, the callers' rights, usage."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from proxy.app import PROCESSOR
from proxy.core.clients import digest_of
from proxy.core.keys import CacheKey
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey
from proxy.store.limits import Budget, Limits
from tests.support.keyed_upstream import KeyedUpstream, bearer, keyed_upstream
from tests.support.metrics import delta, samples, scrape_text
from tests.support.proxies import ProxyClient, ProxyFactory, proxy_on, service_of
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_filled, until_stored

UPSTREAM_KEY = "sk-upstream-account"
INJECTED = {"UPSTREAM_API_KEY": UPSTREAM_KEY}
CLASS_HEADER = "X-Audio-Cache-Content-Type"


@pytest.fixture
async def keyed() -> AsyncIterator[tuple[KeyedUpstream, str]]:
    """An upstream that answers only the proxy's injected key."""
    async with keyed_upstream({UPSTREAM_KEY}) as pair:
        yield pair


@pytest.fixture
async def own_keys() -> AsyncIterator[tuple[KeyedUpstream, str]]:
    """An upstream whose clients bring their own keys (client_auth upstream)."""
    async with keyed_upstream({"client-good-1", "client-good-2"}) as pair:
        yield pair


def keys_file(path: Path, *entries: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump({"keys": list(entries)}), encoding="utf-8")
    return str(path)


def key_entry(key: str, **fields: Any) -> dict[str, Any]:
    return {"sha256": digest_of(key), "name": key, **fields}


KeysProxy = Callable[..., Awaitable[ProxyClient]]


@pytest.fixture
def with_keys(keyed: Any, make_proxy: ProxyFactory, tmp_path: Path) -> KeysProxy:
    """Starts a proxy in client_auth keys, with these key entries and the injected upstream
    key, before the ``keyed`` upstream; ``path=`` names its keys file (a new one otherwise)."""
    _, url = keyed

    async def start(
        *entries: dict[str, Any], path: Path | None = None, **settings: Any
    ) -> ProxyClient:
        file = keys_file(path or tmp_path / f"keys-{uuid.uuid4().hex[:8]}.yaml", *entries)
        env = {**INJECTED, **settings.pop("env", {})}
        return await make_proxy(url, client_auth="keys", client_keys_file=file, env=env, **settings)

    return start


async def speak(
    client: ProxyClient, text: str = "Bienvenido al hotel", headers: dict[str, str] | None = None
) -> Any:
    response = await client.post(SPEECH_PATH, json=speech_body(text), headers=headers or {})
    await response.read()
    await until_stored(client, response)
    await until_filled(client)
    return response


def assert_openai_error(body: Any, code: str) -> None:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]


async def clear_of_window_edge(margin: float = 5.0) -> None:
    """Fixed-window budgets renew on the minute: a test counting within one waits out an
    edge that is near (time itself must pass here)."""
    left = 60.0 - time.time() % 60.0
    if left < margin:
        await asyncio.sleep(left + 0.2)


# -- client_auth keys ---------------------------------------------------------------------


async def test_keys_refuse_anonymous_and_wrong_keys_before_any_upstream_call(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    client = await with_keys(key_entry("sk-front"))
    anonymous = await client.post(SPEECH_PATH, json=speech_body("Hola"))
    assert anonymous.status == 401
    body = await anonymous.json()
    assert_openai_error(body, "invalid_api_key")
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] is None
    for headers in (bearer("sk-wrong"), {"xi-api-key": "sk-wrong"}, {"Authorization": "sk-front"}):
        wrong = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=headers)
        assert wrong.status == 401, headers
        assert_openai_error(await wrong.json(), "invalid_api_key")
    assert fake.total == 0


async def test_keys_accept_a_right_key_in_authorization_or_the_sdk_header(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    client = await with_keys(key_entry("sk-front"))
    first = await speak(client, "Hola", bearer("sk-front"))
    second = await speak(client, "Hola", {"xi-api-key": "sk-front"})
    assert (first.status, second.status) == (200, 200)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert fake.calls["openai"] == 1 and fake.refused == 0


async def test_the_proxy_key_never_reaches_the_upstream_its_own_key_does(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    client = await with_keys(key_entry("sk-front"), passthrough_paths=["/other/*"])
    await speak(client, "Uno", bearer("sk-front"))
    await speak(client, "Dos", {"xi-api-key": "sk-front", "x-api-key": "sk-front"})
    other = await client.get("/other/models", headers=bearer("sk-front"))
    assert other.status == 200
    assert len(fake.seen) == 3
    for headers in fake.seen:
        assert headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert not any("sk-front" in value for value in headers.values()), headers


async def test_the_openai_sdk_works_through_the_proxy_with_its_key(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    client = await with_keys(key_entry("sk-front"))
    base = str(client.make_url("/v1"))
    sdk = openai.AsyncOpenAI(base_url=base, api_key="sk-front", max_retries=0)
    async with sdk:
        speech = await sdk.audio.speech.create(
            model="tts-1", voice="alloy", input="Buenas noches", response_format="wav"
        )
        audio = speech.content
        assert audio.startswith(b"RIFF")
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-nope", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as raised:
            await wrong.audio.speech.create(model="tts-1", voice="alloy", input="Buenas noches")
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    assert fake.calls["openai"] == 1 and fake.refused == 0


async def test_a_changed_keys_file_takes_effect_within_seconds(
    with_keys: KeysProxy, tmp_path: Path
) -> None:
    path = tmp_path / "k.yaml"
    client = await with_keys(key_entry("sk-old"), path=path)
    assert (await speak(client, "Hola", bearer("sk-old"))).status == 200
    assert (
        await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-new"))
    ).status == 401
    keys_file(path, key_entry("sk-new"), key_entry("sk-other-new"))

    async def swapped() -> bool:
        new = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-new"))
        await new.read()
        return new.status == 200

    await eventually(swapped, 5.0, interval=0.1, what="the new key was never accepted")
    old = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-old"))
    assert old.status == 401


async def test_a_broken_keys_file_keeps_the_old_keys_and_logs_an_error(
    with_keys: KeysProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k.yaml"
    client = await with_keys(key_entry("sk-old"), path=path)
    caplog.set_level(logging.ERROR, logger="proxy.request.access")
    path.write_text("keys: [{sha256: not-hex}]\n", encoding="utf-8")

    def logged() -> bool:
        return any("client keys not reloaded" in r.getMessage() for r in caplog.records)

    await eventually(logged, 5.0, interval=0.05, what="no error was logged for the broken file")
    message = next(r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage())
    assert "sha256" in message
    assert (await speak(client, "Hola", bearer("sk-old"))).status == 200
    errors = len(caplog.records)
    access = client.app[PROCESSOR].access
    assert not access.reload_if_changed() and not access.reload_if_changed()
    assert len(caplog.records) == errors  # logged once, not on every look at the file
    path.write_text("keys: [", encoding="utf-8")  # not YAML at all
    caplog.clear()
    await eventually(logged, 5.0, interval=0.05, what="no error was logged for bad YAML")
    assert (await speak(client, "Hola", bearer("sk-old"))).status == 200
    path.unlink()

    def gone() -> bool:
        return any("unreadable" in r.getMessage() for r in caplog.records)

    await eventually(gone, 5.0, interval=0.05, what="no error was logged for a missing file")
    assert (await speak(client, "Hola", bearer("sk-old"))).status == 200
    keys_file(path, key_entry("sk-back"))

    async def back() -> bool:
        r = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-back"))
        await r.read()
        return r.status == 200

    await eventually(back, 5.0, interval=0.1, what="the file was not read once it came back")


# -- client_auth upstream -------------------------------------------------------------------


async def test_a_refused_credential_never_gets_stored_audio(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    client = await make_proxy(url, client_auth="upstream")
    first = await speak(client, "Hola", bearer("client-good-1"))
    second = await speak(client, "Hola", bearer("client-good-1"))
    assert (first.status, second.status) == (200, 200)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    for attempt in range(3):
        refused = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("bad"))
        assert refused.status == 401, attempt
        body = await refused.json()
        assert body["error"]["message"] == "Incorrect API key provided."  # the upstream's
        assert refused.headers.get("X-Cache") != "HIT"
    anonymous = await client.post(SPEECH_PATH, json=speech_body("Hola"))
    assert anonymous.status == 401
    assert fake.refused == 4 and fake.calls["openai"] == 1


async def test_a_credential_the_upstream_stops_accepting_gets_no_more_hits(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    client = await make_proxy(url, client_auth="upstream")
    await speak(client, "Hola", bearer("client-good-1"))
    assert (await speak(client, "Hola", bearer("client-good-1"))).headers["X-Cache"] == "HIT"
    fake.valid.discard("client-good-1")  # revoked at the upstream
    # The next miss of that credential learns it (another sentence goes upstream: 401) ...
    other = await client.post(
        SPEECH_PATH, json=speech_body("Adiós"), headers=bearer("client-good-1")
    )
    assert other.status == 401
    # ... and from then on the stored sentence is not served to it either.
    again = await client.post(
        SPEECH_PATH, json=speech_body("Hola"), headers=bearer("client-good-1")
    )
    assert again.status == 401 and again.headers.get("X-Cache") != "HIT"
    assert fake.refused == 2
    # A credential still accepted keeps its hits (after its own first request).
    await speak(client, "Hola", bearer("client-good-2"))
    assert (await speak(client, "Hola", bearer("client-good-2"))).headers["X-Cache"] == "HIT"


async def test_a_credential_is_forgotten_once_its_verification_expires(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    client = await make_proxy(url, client_auth="upstream", credential_verify_seconds=1)
    await speak(client, "Hola", bearer("client-good-1"))
    assert (await speak(client, "Hola", bearer("client-good-1"))).headers["X-Cache"] == "HIT"
    fake.valid.discard("client-good-1")

    async def refused() -> bool:
        r = await client.post(
            SPEECH_PATH, json=speech_body("Hola"), headers=bearer("client-good-1")
        )
        await r.read()
        assert r.status in (200, 401)
        return r.status == 401

    # The verification lasts credential_verify_seconds: time itself must pass.
    await eventually(refused, 5.0, interval=0.2, what="a revoked credential kept its hits")
    assert fake.refused == 1


async def test_valid_credentials_share_one_entry_each_after_its_first_request(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    client = await make_proxy(url, client_auth="upstream")
    results = []
    for key in ("client-good-1", "client-good-1", "client-good-2", "client-good-2"):
        results.append((await speak(client, "Hola", bearer(key))).headers["X-Cache"])
    assert results == ["MISS", "HIT", "MISS", "HIT"]
    assert fake.calls["openai"] == 2
    await until_filled(client)
    assert (await service_of(client).totals())["entries"] == 1


async def test_a_credential_verified_on_one_replica_is_verified_on_the_other(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    prefix = f"t{uuid.uuid4().hex[:10]}"
    a = await make_proxy(url, prefix=prefix, client_auth="upstream")
    b = await make_proxy(url, prefix=prefix, client_auth="upstream")
    assert (await speak(a, "Hola", bearer("client-good-1"))).headers["X-Cache"] == "MISS"
    assert (await speak(b, "Hola", bearer("client-good-1"))).headers["X-Cache"] == "HIT"
    assert fake.calls["openai"] == 1


async def test_a_cold_burst_of_one_credential_across_replicas_makes_one_call(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    fake.mode = "chunked"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    a = await make_proxy(url, prefix=prefix, client_auth="upstream")
    b = await make_proxy(url, prefix=prefix, client_auth="upstream")
    body = speech_body("Una ráfaga en frío")

    async def one(client: ProxyClient) -> tuple[int, bytes]:
        r = await client.post(SPEECH_PATH, json=body, headers=bearer("client-good-1"))
        return r.status, await r.read()

    answers = await asyncio.gather(*(one(a if i % 2 else b) for i in range(10)))
    assert {status for status, _ in answers} == {200}
    assert len({audio for _, audio in answers}) == 1
    assert fake.calls["openai"] == 1


# -- pass-through scoping ---------------------------------------------------------------------


async def test_with_an_injected_key_only_listed_paths_are_passed_through(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    client = await with_keys(key_entry("sk-front"), passthrough_paths=["/other/*"])
    refused = await client.delete("/v1/files/x", headers=bearer("sk-front"))
    assert refused.status == 404
    assert_openai_error(await refused.json(), "not_found")
    assert fake.total == 0
    listed = await client.delete("/other/x", headers=bearer("sk-front"))
    assert listed.status == 200 and (await listed.json())["method"] == "DELETE"
    assert fake.calls["other"] == 1
    anonymous = await client.delete("/other/x")
    assert anonymous.status == 401 and fake.calls["other"] == 1


async def test_without_an_injected_key_anything_is_passed_through(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    client = await make_proxy(url, client_auth="upstream")
    files = await client.delete("/v1/files/x", headers=bearer("client-good-1"))
    assert files.status == 404  # the upstream's own 404: it was asked
    other = await client.delete("/other/x", headers=bearer("client-good-1"))
    assert other.status == 200
    assert fake.total == 2
    assert fake.seen[1]["Authorization"] == "Bearer client-good-1"  # forwarded as it is


# -- tenants ----------------------------------------------------------------------------------


async def test_a_key_cannot_claim_another_tenant(keyed: Any, with_keys: KeysProxy) -> None:
    fake, _ = keyed
    client = await with_keys(
        key_entry("sk-a", tenant="tenant-a"),
        tenant_header="X-Tenant-Id",
    )
    headers = {**bearer("sk-a"), "X-Tenant-Id": "tenant-b"}
    refused = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=headers)
    assert refused.status == 403
    assert (await refused.json())["error"]["field"] == "header:X-Tenant-Id"
    assert fake.total == 0
    same = await speak(client, "Hola", {**bearer("sk-a"), "X-Tenant-Id": "tenant-a"})
    assert same.status == 200
    totals = await service_of(client).totals()
    assert totals["tenant:tenant-a:entries"] == 1


async def test_a_tenant_header_names_the_tenant_only_when_trusted(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    untrusted = await make_proxy(url, client_auth="none", tenant_header="X-Tenant-Id")
    refused = await untrusted.post(
        SPEECH_PATH, json=speech_body("Hola"), headers={"X-Tenant-Id": "acme"}
    )
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert error["field"] == "header:X-Tenant-Id" and "tenant_header_trusted" in error["message"]
    assert fake.calls["openai"] == 0
    trusted = await make_proxy(
        url, client_auth="none", tenant_header="X-Tenant-Id", tenant_header_trusted=True
    )
    assert (await speak(trusted, "Hola", {"X-Tenant-Id": "acme"})).status == 200
    assert (await service_of(trusted).totals())["tenant:acme:entries"] == 1


async def test_another_tenants_isolated_entry_is_absent_by_key(with_keys: KeysProxy) -> None:
    client = await with_keys(
        key_entry("sk-a", tenant="tenant-a"),
        key_entry("sk-b", tenant="tenant-b"),
    )
    stored = await speak(client, "Su habitación es la 204", bearer("sk-a"))
    key = stored.headers["X-Audio-Cache-Key"]
    other = await client.get(f"/audio/{key}", headers=bearer("sk-b"))
    assert other.status == 404
    missing = await client.get(f"/audio/{'0' * 64}", headers=bearer("sk-b"))
    assert (await other.json()) == (await missing.json())  # said the same way as absent
    own = await client.get(f"/audio/{key}", headers=bearer("sk-a"))
    assert own.status == 200 and (await own.read()).startswith(b"RIFF")
    assert (await client.get(f"/audio/{key}")).status == 401


async def test_isolated_keys_depend_on_the_key_secret(with_keys: KeysProxy) -> None:
    entry = key_entry("sk-a", tenant="tenant-a")

    async def key_with(secret: str | None, prefix: str) -> str:
        env = {"AUDIO_CACHE_KEY_SECRET": secret} if secret else {}
        client = await with_keys(entry, prefix=prefix, env=env)
        response = await speak(client, "Su habitación es la 204", bearer("sk-a"))
        return str(response.headers["X-Audio-Cache-Key"])

    one = await key_with("secret-one", f"t{uuid.uuid4().hex[:10]}")
    assert one == await key_with("secret-one", f"t{uuid.uuid4().hex[:10]}")
    assert one != await key_with("secret-two", f"t{uuid.uuid4().hex[:10]}")
    shared = f"t{uuid.uuid4().hex[:10]}"
    made = await key_with(None, shared)
    assert made == await key_with(None, shared)  # the secret the store made, on both
    other_store = await key_with(None, f"t{uuid.uuid4().hex[:10]}")
    assert made != other_store and one not in (made, other_store)


# -- limits -----------------------------------------------------------------------------------


async def test_requests_per_minute_hold_across_replicas(with_keys: KeysProxy) -> None:
    entry = key_entry("sk-rpm", requests_per_minute=3)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    replicas = [await with_keys(entry, prefix=prefix) for _ in range(2)]
    await clear_of_window_edge()
    statuses = []
    refusals = []
    for client in (replicas[0], replicas[0], replicas[1], replicas[1]):
        r = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-rpm"))
        statuses.append(r.status)
        if r.status == 429:
            refusals.append((r.headers, await r.json()))
        else:
            await r.read()
    assert statuses == [200, 200, 200, 429]
    headers, body = refusals[0]
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert_openai_error(body, "rate_limit_exceeded")
    assert "3 requests per minute" in body["error"]["message"]


@pytest.mark.parametrize(
    ("entry", "settings"),
    [
        (key_entry("sk-rpm", requests_per_minute=3), {}),
        (key_entry("sk-rpm", tenant="acme"), {"tenants": {"acme": {"requests_per_minute": 3}}}),
    ],
    ids=["key", "tenant"],
)
async def test_audio_by_key_counts_against_requests_per_minute(
    with_keys: KeysProxy, entry: dict[str, Any], settings: dict[str, Any]
) -> None:
    client = await with_keys(entry, **settings)
    await clear_of_window_edge()
    stored = await speak(client, "Hola", bearer("sk-rpm"))
    assert stored.status == 200
    audio = f"/audio/{stored.headers['X-Audio-Cache-Key']}"
    fetched = await client.get(audio, headers=bearer("sk-rpm"))
    assert fetched.status == 200 and (await fetched.read()).startswith(b"RIFF")
    assert (await client.head(audio, headers=bearer("sk-rpm"))).status == 200
    over = await client.get(audio, headers=bearer("sk-rpm"))
    assert over.status == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert_openai_error(await over.json(), "rate_limit_exceeded")
    # One budget for both routes: the fetches used up what speech requests get too.
    again = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-rpm"))
    assert again.status == 429


async def test_upstream_characters_per_day_count_only_what_goes_upstream(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    text = "Diez letra"  # 10 characters
    client = await with_keys(
        key_entry("sk-cpd", upstream_characters_per_day=25),
    )
    for _ in range(4):  # one miss, then hits that cost nothing
        assert (await speak(client, text, bearer("sk-cpd"))).status == 200
    assert (await speak(client, "Otra frase", bearer("sk-cpd"))).status == 200  # 20 used
    over = await client.post(SPEECH_PATH, json=speech_body("Tercera f."), headers=bearer("sk-cpd"))
    assert over.status == 429
    assert_openai_error(await over.json(), "rate_limit_exceeded")
    assert int(over.headers["Retry-After"]) >= 1
    assert fake.calls["openai"] == 2
    assert (await speak(client, text, bearer("sk-cpd"))).headers["X-Cache"] == "HIT"  # still
    usage = await client.app[PROCESSOR].access.usage()
    (mine,) = usage["keys"]
    assert mine["upstream_characters_today"] == 20
    assert mine["upstream_characters_per_day"] == 25


@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_limits_without_their_store(
    upstream: Any, aiohttp_client: Any, private_valkey: EmbeddedValkey, fail_open: bool, how: str
) -> None:
    fake, url = upstream
    client = await proxy_on(
        aiohttp_client,
        url,
        private_valkey.url,
        client_auth="none",
        tenant_header="X-Tenant-Id",
        tenant_header_trusted=True,
        tenants={"acme": {"requests_per_minute": 1000}},
        limits_fail_open=fail_open,
    )
    tenant = {"X-Tenant-Id": "acme"}
    assert (await speak(client, "Antes", tenant)).status == 200
    assert private_valkey.process is not None
    if how == "stopped":
        os.kill(private_valkey.process.pid, signal.SIGSTOP)
    else:
        private_valkey.stop()
    calls = fake.calls["openai"]
    r = await client.post(SPEECH_PATH, json=speech_body("Durante"), headers=tenant)
    if fail_open:
        assert r.status == 200 and (await r.read()).startswith(b"RIFF")
        assert fake.calls["openai"] == calls + 1
    else:
        assert r.status == 503
        assert_openai_error(await r.json(), "limits_unavailable")
        assert fake.calls["openai"] == calls


# -- rights -----------------------------------------------------------------------------------


async def test_only_keys_allowed_to_refresh_make_the_cache_pay_again(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    client = await with_keys(
        key_entry("sk-plain"),
        key_entry("sk-refresh", may_refresh=True),
    )
    await speak(client, "Hola", bearer("sk-plain"))
    no_cache = {"Cache-Control": "no-cache"}
    plain = await speak(client, "Hola", {**bearer("sk-plain"), **no_cache})
    assert plain.headers["X-Cache"] == "HIT" and fake.calls["openai"] == 1
    refreshed = await speak(client, "Hola", {**bearer("sk-refresh"), **no_cache})
    assert refreshed.headers["Cache-Status"] == "tts-cache; fwd=request; stored"
    assert fake.calls["openai"] == 2


async def test_only_keys_allowed_to_classify_name_a_content_type(with_keys: KeysProxy) -> None:
    client = await with_keys(
        key_entry("sk-plain"),
        key_entry("sk-classify", may_classify=True),
    )
    service = service_of(client)
    welcome = {CLASS_HEADER: "welcome_message"}
    ignored = await speak(client, "Uno", {**bearer("sk-plain"), **welcome})
    info = await service.info(CacheKey(ignored.headers["X-Audio-Cache-Key"]))
    assert info is not None and info.content_class == "default"
    named = await speak(client, "Dos", {**bearer("sk-classify"), **welcome})
    info = await service.info(CacheKey(named.headers["X-Audio-Cache-Key"]))
    assert info is not None and info.content_class == "welcome_message"
    unknown = await client.post(
        SPEECH_PATH,
        json=speech_body("Tres"),
        headers={**bearer("sk-classify"), CLASS_HEADER: "made_up_class"},
    )
    assert unknown.status == 400
    assert (await unknown.json())["error"]["field"] == f"header:{CLASS_HEADER}"
    # The class a key may not name is not checked either: it is ignored.
    plain = await client.post(
        SPEECH_PATH,
        json=speech_body("Tres"),
        headers={**bearer("sk-plain"), CLASS_HEADER: "made_up_class"},
    )
    assert plain.status == 200


# -- usage and metrics ------------------------------------------------------------------------


async def test_usage_route_shows_each_key_and_tenant_against_its_limits(
    with_keys: KeysProxy,
) -> None:
    client = await with_keys(
        key_entry("sk-a", tenant="acme", requests_per_minute=100),
        key_entry("sk-b"),
        tenants={"acme": {"upstream_characters_per_day": 1000}},
        env={"ADMIN_TOKEN": "admin-secret"},
    )
    await clear_of_window_edge()
    await speak(client, "Hola", bearer("sk-a"))  # 4 characters upstream
    await speak(client, "Hola", bearer("sk-a"))  # a hit
    assert (await client.get("/admin/audio-cache/usage")).status == 401
    assert (await client.get("/admin/audio-cache/usage", headers=bearer("sk-a"))).status == 403
    r = await client.get("/admin/audio-cache/usage", headers=bearer("admin-secret"))
    assert r.status == 200
    usage = await r.json()
    assert usage["client_auth"] == "keys"
    by_key = {k["key"]: k for k in usage["keys"]}
    assert by_key["sk-a"] == {
        "key": "sk-a",
        "requests_this_minute": 2,
        "requests_per_minute": 100,
        "upstream_characters_today": None,  # no character limit on the key: not counted
        "upstream_characters_per_day": None,
    }
    assert by_key["sk-b"]["requests_this_minute"] is None
    (acme,) = usage["tenants"]
    assert acme["tenant"] == "acme" and acme["upstream_characters_today"] == 4
    assert acme["upstream_characters_per_day"] == 1000
    bad = await client.get("/admin/audio-cache/usage?key=x", headers=bearer("admin-secret"))
    assert bad.status == 400


async def test_client_metrics_move_with_requests_refusals_and_characters(
    with_keys: KeysProxy,
) -> None:
    name = f"sk-m{uuid.uuid4().hex[:8]}"
    client = await with_keys(
        key_entry(name, upstream_characters_per_day=10),
        key_entry(f"{name}-rpm", requests_per_minute=1),
    )
    await clear_of_window_edge()
    before = samples(await scrape_text(client))
    for _ in range(2):  # the second is over the minute's one request
        await client.post(SPEECH_PATH, json=speech_body("Uno"), headers=bearer(f"{name}-rpm"))
    assert (await client.delete("/v1/files/x", headers=bearer(name))).status == 404
    await speak(client, "Hola", bearer(name))  # 4 characters upstream
    await speak(client, "Hola", bearer(name))  # a hit: none
    await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("sk-nobody"))
    over = await client.post(SPEECH_PATH, json=speech_body("Demasiado"), headers=bearer(name))
    assert over.status == 429
    after = samples(await scrape_text(client))
    assert delta(before, after, "tts_proxy_client_requests_total", client=name) == 3
    # Counted whether or not a limit refuses it (refusals are counted apart).
    assert delta(before, after, "tts_proxy_client_requests_total", client=f"{name}-rpm") == 2
    assert delta(before, after, "tts_proxy_client_refusals_total", reason="rate_limit") == 1
    assert delta(before, after, "tts_proxy_client_refusals_total", reason="path_not_forwarded") == 1
    assert delta(before, after, "tts_proxy_client_upstream_characters_total", client=name) == 4
    assert delta(before, after, "tts_proxy_client_refusals_total", reason="invalid_key") == 1
    assert delta(before, after, "tts_proxy_client_refusals_total", reason="character_limit") == 1


async def test_coalesced_misses_charge_and_count_the_characters_once(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    fake.mode = "chunked"
    name = f"sk-c{uuid.uuid4().hex[:8]}"
    client = await with_keys(key_entry(name, upstream_characters_per_day=100))
    before = samples(await scrape_text(client))

    async def one() -> int:
        r = await client.post(SPEECH_PATH, json=speech_body("Juntas"), headers=bearer(name))
        await r.read()
        return r.status

    assert await asyncio.gather(*(one() for _ in range(5))) == [200] * 5
    await until_filled(client)
    assert fake.calls["openai"] == 1
    (mine,) = (await client.app[PROCESSOR].access.usage())["keys"]
    assert mine["upstream_characters_today"] == 6  # charged once: the followers got it back
    after = samples(await scrape_text(client))
    assert delta(before, after, "tts_proxy_client_upstream_characters_total", client=name) == 6


async def test_a_budget_given_back_after_its_window_turned_still_expires(redis_url: str) -> None:
    redis = open_redis(redis_url)
    now = [(time.time() // 60 + 1) * 60]  # the next minute's start (windows end in the future)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    limits = Limits(redis, prefix, clock=lambda: now[0])
    try:
        taken = await limits.take("key:a", Budget.REQUESTS_PER_MINUTE, 1, 2)
        assert taken.allowed and taken.used == 1 and taken.retry_after_seconds == 60
        assert not (await limits.take("key:a", Budget.REQUESTS_PER_MINUTE, 2, 2)).allowed
        now[0] += 61  # the next window: what is given back lands there
        await limits.give_back("key:a", Budget.REQUESTS_PER_MINUTE, 1)
        window = int(now[0] * 1000) // 60_000
        # The name deployments already hold (tests/unit/test_keyspace pins the keyspace's).
        assert await redis.pttl(f"{prefix}:limit:{{key:a}}:rpm:{window}") > 0
    finally:
        await redis.aclose()


async def test_a_burst_across_replicas_charges_the_characters_once(
    keyed: Any, with_keys: KeysProxy
) -> None:
    fake, _ = keyed
    fake.mode = "chunked"
    name = f"sk-r{uuid.uuid4().hex[:8]}"
    entry = key_entry(name, upstream_characters_per_day=100)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    replicas = [await with_keys(entry, prefix=prefix) for _ in range(2)]
    before = samples(await scrape_text(replicas[0]))

    async def one(client: ProxyClient) -> int:
        r = await client.post(SPEECH_PATH, json=speech_body("Juntas"), headers=bearer(name))
        await r.read()
        return r.status

    assert await asyncio.gather(*(one(replicas[i % 2]) for i in range(10))) == [200] * 10
    await until_filled(*replicas)
    assert fake.calls["openai"] == 1
    (mine,) = (await replicas[1].app[PROCESSOR].access.usage())["keys"]
    assert mine["upstream_characters_today"] == 6
    after = samples(await scrape_text(replicas[0]))  # one process: both replicas' counts
    assert delta(before, after, "tts_proxy_client_upstream_characters_total", client=name) == 6


async def test_a_refusal_learnt_on_one_replica_reaches_the_other_within_a_second(
    own_keys: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = own_keys
    prefix = f"t{uuid.uuid4().hex[:10]}"
    a = await make_proxy(url, prefix=prefix, client_auth="upstream")
    b = await make_proxy(url, prefix=prefix, client_auth="upstream")
    await speak(a, "Hola", bearer("client-good-1"))
    assert (await speak(b, "Hola", bearer("client-good-1"))).headers["X-Cache"] == "HIT"
    fake.valid.discard("client-good-1")
    learnt = await a.post(SPEECH_PATH, json=speech_body("Adiós"), headers=bearer("client-good-1"))
    assert learnt.status == 401
    refused_at = time.monotonic()

    async def refused_on_b() -> bool:
        r = await b.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer("client-good-1"))
        await r.read()
        return r.status == 401

    # Each replica trusts its own verdict for at most a second (credentials.py).
    await eventually(refused_on_b, 3.0, interval=0.05, what="replica b kept serving the hit")
    assert time.monotonic() - refused_at < 2.0


async def test_a_tenant_limit_refusal_gives_the_key_its_request_back(with_keys: KeysProxy) -> None:
    client = await with_keys(
        key_entry("sk-a", tenant="acme", requests_per_minute=10),
        key_entry("sk-b", tenant="acme", requests_per_minute=10),
        tenants={"acme": {"requests_per_minute": 3}},
    )
    await clear_of_window_edge()
    statuses = []
    for key in ("sk-a", "sk-b", "sk-a", "sk-b", "sk-a"):
        r = await client.post(SPEECH_PATH, json=speech_body("Hola"), headers=bearer(key))
        statuses.append(r.status)
        if r.status == 429:
            assert "tenant:acme" in (await r.json())["error"]["message"]
        else:
            await r.read()
    assert statuses == [200, 200, 200, 429, 429]
    usage = await client.app[PROCESSOR].access.usage()
    by_key = {k["key"]: k["requests_this_minute"] for k in usage["keys"]}
    assert by_key == {"sk-a": 2, "sk-b": 1}  # the refused ones were given back
    assert usage["tenants"][0]["requests_this_minute"] == 3
