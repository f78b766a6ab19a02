"""WebSocket sessions on paths no route claims are relayed to a real loopback WebSocket
upstream through the real proxy app: frames both ways, close codes, subprotocols, limits."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from proxy.observability.metrics import METRICS
from tests.support.proxies import ProxyClient
from tests.support.servers import served
from tests.support.waits import eventually


class WebSocketUpstream:
    """Echoes frames; ``/close/{code}`` closes with that code after the first message;
    ``/big`` answers any message with 3 KB; ``/refuse`` is a 403 before any upgrade."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.closed_with: list[int | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/ws/echo", self.echo)
        app.router.add_get("/v1/ws/close/{code}", self.echo)
        app.router.add_get("/v1/ws/big", self.echo)
        app.router.add_get("/v1/ws/refuse", self.refuse)
        return app

    async def refuse(self, request: web.Request) -> web.Response:
        return web.json_response({"detail": "invalid api key"}, status=403)

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        self.handshakes.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=("tts.v2", "tts.v1"))
        await ws.prepare(request)
        await ws.send_str(f"hello {ws.ws_protocol or '-'} {request.rel_url.raw_query_string}")
        code = request.match_info.get("code")
        async for msg in ws:
            if code is not None:
                await ws.close(code=int(code), message=b"bye from upstream")
                break
            if request.path.endswith("/big"):
                await ws.send_bytes(b"x" * 3000)
            elif msg.type is WSMsgType.TEXT:
                if msg.data == "ping me":
                    await ws.ping(b"from-upstream")
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        self.closed_with.append(ws.close_code)
        return ws


@pytest.fixture
async def ws_upstream() -> Any:
    fake = WebSocketUpstream()
    async with served(fake.app()) as url:
        yield fake, url


async def receive(ws: Any) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), 5)


async def test_text_and_binary_frames_go_both_ways_with_the_chosen_subprotocol(
    ws_upstream: Any, make_proxy: Any
) -> None:
    fake, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none")
    before = METRICS.websocket_bytes.labels("to_upstream")._value.get()
    async with client.ws_connect(
        "/v1/ws/echo?voice=a%20b", protocols=("tts.v1", "tts.v9"), headers={"X-Trace": "t1"}
    ) as ws:
        assert ws.protocol == "tts.v1"  # the only one both offered, chosen by the upstream
        assert (await receive(ws)).data == "hello tts.v1 voice=a%20b"
        await ws.send_str("Bienvenido")
        assert (await receive(ws)).data == "echo:Bienvenido"
        await ws.send_bytes(b"\x00\x01\x02")
        reply = await receive(ws)
        assert reply.type is WSMsgType.BINARY and reply.data == b"\x02\x01\x00"
        assert METRICS.websocket_active._value.get() >= 1
    handshake = fake.handshakes[0]
    assert handshake["X-Trace"] == "t1"
    offered = [p.strip() for p in handshake["Sec-WebSocket-Protocol"].split(",")]
    assert offered == ["tts.v1", "tts.v9"]
    after = METRICS.websocket_bytes.labels("to_upstream")._value.get()
    assert after - before == len("Bienvenido") + 3
    await eventually(lambda: fake.closed_with == [1000], what="the upstream never saw the close")


async def test_pings_and_pongs_are_relayed_not_answered_by_the_proxy(
    ws_upstream: Any, make_proxy: Any
) -> None:
    _, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none")
    async with client.ws_connect("/v1/ws/echo", autoping=False) as ws:
        await receive(ws)
        await ws.ping(b"from-client")
        pong = await receive(ws)
        assert pong.type is WSMsgType.PONG and pong.data == b"from-client"
        await ws.send_str("ping me")
        ping = await receive(ws)
        assert ping.type is WSMsgType.PING and ping.data == b"from-upstream"
        assert (await receive(ws)).data == "echo:ping me"


@pytest.mark.parametrize("code", [1000, 4001, 1011])
async def test_the_upstreams_close_code_reaches_the_client(
    ws_upstream: Any, make_proxy: Any, code: int
) -> None:
    _, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none")
    async with client.ws_connect(f"/v1/ws/close/{code}") as ws:
        await receive(ws)
        await ws.send_str("go")
        closing = await receive(ws)
        assert closing.type is WSMsgType.CLOSE
        assert closing.data == code and closing.extra == "bye from upstream"


async def test_the_clients_close_code_reaches_the_upstream(
    ws_upstream: Any, make_proxy: Any
) -> None:
    fake, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none")
    ws = await client.ws_connect("/v1/ws/echo")
    await receive(ws)
    await ws.close(code=4002, message=b"done")
    await eventually(lambda: fake.closed_with == [4002], what="the close code was not passed on")


async def test_a_refused_handshake_is_the_upstreams_status_before_any_upgrade(
    ws_upstream: Any, make_proxy: Any
) -> None:
    _, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/v1/ws/refuse")
    assert refused.value.status == 403


async def test_messages_over_the_limit_close_with_1009(ws_upstream: Any, make_proxy: Any) -> None:
    fake, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none", websocket_max_message_kb=2)
    async with client.ws_connect("/v1/ws/echo") as ws:  # the client's message is too big
        await receive(ws)
        await ws.send_bytes(b"y" * 2049)
        closing = await receive(ws)
        assert closing.type is WSMsgType.CLOSE and closing.data == 1009
    await eventually(lambda: fake.closed_with == [1009], what="the upstream was not told")
    async with client.ws_connect("/v1/ws/big") as ws:  # the upstream's message is too big
        await receive(ws)
        await ws.send_str("small")
        closing = await receive(ws)
        assert closing.type is WSMsgType.CLOSE and closing.data == 1009


async def test_a_silent_session_is_closed_after_the_idle_timeout(
    ws_upstream: Any, make_proxy: Any
) -> None:
    fake, url = ws_upstream
    client: ProxyClient = await make_proxy(
        url, client_auth="none", websocket_idle_timeout_seconds=0.3
    )
    async with client.ws_connect("/v1/ws/echo") as ws:
        await receive(ws)
        closing = await receive(ws)  # the proxy waits 0.3 s of silence, then closes
        assert closing.type is WSMsgType.CLOSE and closing.data == 1001
        assert closing.extra == "idle timeout"
    await eventually(lambda: fake.closed_with == [1001], what="the upstream was not closed")


async def test_required_keys_are_checked_before_upgrading_and_never_forwarded(
    ws_upstream: Any, make_proxy: Any, tmp_path: Path
) -> None:
    fake, url = ws_upstream
    keys = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"proxy-key").hexdigest()
    keys.write_text(f"keys:\n  - sha256: {digest}\n    name: desk\n")
    client: ProxyClient = await make_proxy(url, client_auth="keys", client_keys_file=str(keys))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/v1/ws/echo")
    assert refused.value.status == 401
    assert fake.handshakes == []
    async with client.ws_connect(
        "/v1/ws/echo", headers={"Authorization": "Bearer proxy-key", "xi-api-key": "up"}
    ) as ws:
        assert (await receive(ws)).data == "hello - "
    assert "Authorization" not in fake.handshakes[0]


async def test_a_websocket_on_a_speech_route_is_not_relayed(
    ws_upstream: Any, make_proxy: Any
) -> None:
    _, url = ws_upstream
    client: ProxyClient = await make_proxy(url, client_auth="none", routes=["get"])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/api/tts?text=hi")  # coqui's GET route: speech, not a socket
    assert refused.value.status != 101
