"""The command line and the embedded store, as a user runs them: real processes."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from proxy.store.embedded import EmbeddedValkey, free_port
from tests.support.proxies import serve_process
from tests.support.speech import speech_body
from tests.support.waits import eventually, until_entries, wait_ready

CLI = [sys.executable, "-m", "proxy.cli"]
SPEECH = speech_body("Hello there", voice="en")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_serve_refuses_to_start_without_an_upstream() -> None:
    result = run("serve", env={"UPSTREAM_URL": ""})
    assert result.returncode == 2
    assert "no upstream configured" in result.stderr
    assert "--upstream" in result.stderr


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream_url: http://127.0.0.1:9\naudio_cache_max_size_mb: 42\n")
    result = run("check-config", str(path), env={"UPSTREAM_API_KEY": "sk-hidden"})
    assert result.returncode == 0, result.stderr
    assert "audio_cache_max_size_mb: 42" in result.stdout
    assert "sk-hidden" not in result.stdout


def test_check_config_reports_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("audio_cache_compression_level: 0\n")
    result = run("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tts-cache-proxy: config error: audio_cache_compression_level: must be between 1 and 9, got 0"
    ]


def test_embedded_store_starts_and_stops_cleanly() -> None:
    store = EmbeddedValkey()
    url = store.start()
    assert url.startswith("unix://")
    assert redis.Redis.from_url(url).ping()
    process = store.process
    assert process is not None
    store.stop()
    assert process.poll() is not None
    assert not store.data_dir.exists()


def test_embedded_store_with_a_data_dir_keeps_the_cache(tmp_path: Path) -> None:
    with EmbeddedValkey(data_dir=tmp_path) as store:
        redis.Redis.from_url(store.url).set("k", "v")
    with EmbeddedValkey(data_dir=tmp_path) as store:
        assert redis.Redis.from_url(store.url).get("k") == b"v"


async def test_serve_on_the_embedded_store_end_to_end(upstream: Any, tmp_path: Path) -> None:
    fake, url = upstream
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--upstream", url, "--port", str(port),
        env={**os.environ, "EMBEDDED_DATA_DIR": str(tmp_path), "REDIS_URL": ""},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
            async with session.post(base + "/v1/audio/speech", json=SPEECH) as r:
                first = await r.read()
                assert r.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
            await until_entries(session, base, 1)
            async with session.post(base + "/v1/audio/speech", json=SPEECH) as r:
                assert r.headers["X-Cache"] == "HIT"
                assert await r.read() == first
        assert fake.calls["openai"] == 1
        assert (tmp_path / "valkey.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    # The embedded server went with the proxy.
    assert not (tmp_path / "valkey.sock").exists()


async def test_embedded_store_dies_with_a_killed_proxy(upstream: Any, tmp_path: Path) -> None:
    """kill -9 of the proxy leaves no orphaned valkey-server behind."""
    _, url = upstream
    env = {"EMBEDDED_DATA_DIR": str(tmp_path), "REDIS_URL": ""}
    async with serve_process("--upstream", url, env=env) as (_, proc):
        servers = _valkey_children(proc.pid)
        assert len(servers) == 1
        proc.kill()
        await proc.wait()
        await eventually(
            lambda: not _running(servers[0]), 5.0, interval=0.1,
            what="valkey-server outlived the killed proxy",
        )  # fmt: skip


def _valkey_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"valkey" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init, a zombie is already dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_demo_speaks_through_the_proxy_end_to_end() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "demo", "--port", str(port), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    body = speech_body("Bienvenido al hotel", voice="es")
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
            async with session.post(base + "/v1/audio/speech", json=body) as r:
                first = await r.read()
                assert r.headers["Cache-Status"] == "tts-cache; fwd=miss; stored"
            assert first[:4] == b"RIFF" and len(first) > 20_000  # real speech
            await until_entries(session, base, 1)
            async with session.post(base + "/v1/audio/speech", json=body) as r:
                assert r.headers["X-Cache"] == "HIT"
                assert await r.read() == first
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_serve_with_a_separate_admin_port_and_a_token_file(
    upstream: Any, redis_url: str, tmp_path: Path
) -> None:
    _, url = upstream
    port, admin_port = free_port(), free_port()
    secret = tmp_path / "admin-token"
    secret.write_text("from-a-mounted-secret\n")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--upstream", url, "--port", str(port), "--redis-url", redis_url,
        env={**os.environ, "ADMIN_PORT": str(admin_port), "ADMIN_TOKEN_FILE": str(secret),
             "AUDIO_CACHE_KEY_PREFIX": f"cli{admin_port}"},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    auth = {"Authorization": "Bearer from-a-mounted-secret"}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
            async with session.post(base + "/v1/audio/speech", json=SPEECH) as r:
                await r.read()
            async with session.get(base + "/admin/audio-cache/stats", headers=auth) as r:
                assert r.status == 404  # not on the proxy's port
            async with session.get(admin + "/admin/audio-cache/stats") as r:
                assert r.status == 401
            await until_entries(session, admin, 1, headers=auth)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert proc.stderr is not None
    assert b"admin API answers loopback clients only" not in await proc.stderr.read()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A free loopback port with a real listener on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [["serve", "--upstream", "http://127.0.0.1:9"], ["demo"], ["demo-upstream"]],
    ids=lambda c: c[0],
)
def test_a_busy_port_is_refused_at_once(command: list[str], busy_port: int) -> None:
    # The bound is about not hanging (they used to wait forever), not about speed.
    result = subprocess.run(
        [*CLI, *command, "--port", str(busy_port)],
        capture_output=True, text=True, timeout=20, env={**os.environ, "REDIS_URL": ""},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tts-cache-proxy: port {busy_port} is already in use on 127.0.0.1: stop what "
        "listens there or choose another port"
    ]


def test_a_busy_admin_port_is_named(busy_port: int) -> None:
    result = run(
        "serve", "--upstream", "http://127.0.0.1:9", "--port", str(free_port()),
        env={"ADMIN_PORT": str(busy_port)},
    )  # fmt: skip
    assert result.returncode == 1
    assert f"port {busy_port} is already in use on 127.0.0.1 (admin_port)" in result.stderr


async def test_a_listener_losing_the_race_for_its_port_cleans_up(busy_port: int) -> None:
    """Taken between the check and the bind: the same error, and the app is shut down."""
    from aiohttp import web

    from proxy.cli import PortInUse, _start

    cleaned: list[bool] = []
    app = web.Application()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        cleaned.append(True)

    app.cleanup_ctx.append(ctx)
    with pytest.raises(PortInUse, match=f"port {busy_port} is already in use"):
        await _start(app, "127.0.0.1", busy_port)
    assert cleaned == [True]


def test_version() -> None:
    from proxy import __version__

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"tts-cache-proxy {__version__}"


def test_every_flag_has_help_that_shows_its_default() -> None:
    from proxy.cli import parser

    def walk(p: argparse.ArgumentParser, where: str) -> Iterator[tuple[str, argparse.Action, str]]:
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{where} {name}")
            else:
                yield where, action, formatter._get_help_string(action) or ""

    actions = list(walk(parser(), "tts-cache-proxy"))
    assert {a.dest for _, a, _ in actions} >= {"config", "host", "port", "workers", "file"}
    for where, action, text in actions:
        assert action.help, f"{where} {action.option_strings or action.dest} has no help"
        if action.option_strings and action.default is not argparse.SUPPRESS:
            assert "default" in text, f"{where} {action.option_strings} does not show its default"
    result = run("serve", "--help")
    assert "(default: 1)" in result.stdout and "default 8080" in result.stdout


def test_check_config_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("audio_cache_compression_level: 0\nlog_formt: json\n")
    result = run("check-config", str(path), env={"AUDIO_CACHE_TTL_SECNDS": "60"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "# warning: environment: AUDIO_CACHE_TTL_SECNDS: not a setting, ignored; "
        "did you mean 'AUDIO_CACHE_TTL_SECONDS'?",
        "tts-cache-proxy: config error: log_formt: unknown setting; did you mean 'log_format'? "
        "(see config/default.yaml)",
        "tts-cache-proxy: config error: audio_cache_compression_level: must be between 1 and 9, got 0",
    ]


def test_check_config_warns_about_environment_typos(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream_url: http://127.0.0.1:9\n")
    result = run("check-config", str(path), env={"AUDIO_CACHE_TTL_SECNDS": "60"})
    assert result.returncode == 0, result.stderr
    assert (
        "# warning: environment: AUDIO_CACHE_TTL_SECNDS: not a setting, ignored; "
        "did you mean 'AUDIO_CACHE_TTL_SECONDS'?"
    ) in result.stderr.splitlines()


def test_settings_reference_prints_the_committed_reference() -> None:
    from tests.support.paths import ROOT

    result = run("settings-reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


def test_tracing_without_the_otel_extra_fails_with_the_install_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream_url: http://127.0.0.1:9\notel_enabled: true\n")
    # The extra made missing: its top package cannot be imported in this process.
    code = (
        "import sys; sys.modules['opentelemetry'] = None; from proxy.cli import main; "
        f"sys.exit(main(['check-config', {str(path)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tts-cache-proxy: config error: otel_enabled: tracing needs OpenTelemetry: "
        "pip install 'tts-cache-proxy[otel]'"
    ]
