"""The embedded store's server process: started with glibc's malloc told to keep freed
memory (large replies otherwise cost page faults on every hit), and an operator's own
GLIBC_TUNABLES still applying after it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from proxy.store.embedded import MALLOC_TUNABLES, EmbeddedValkey, free_port, server_environment

LOADER = Path("/lib64/ld-linux-x86-64.so.2")


def test_the_tunables_come_first_and_an_operators_own_last() -> None:
    assert server_environment({"HOME": "/h"}) == {"HOME": "/h", "GLIBC_TUNABLES": MALLOC_TUNABLES}
    mine = "glibc.malloc.trim_threshold=4096"
    env = server_environment({"GLIBC_TUNABLES": mine})
    assert env["GLIBC_TUNABLES"] == f"{MALLOC_TUNABLES}:{mine}"


def tunables_seen(environ: dict[str, str]) -> str:
    listed = subprocess.run(
        [str(LOADER), "--list-tunables"], env=environ, capture_output=True, text=True, timeout=10
    ).stdout
    return next(line for line in listed.splitlines() if "malloc.trim_threshold" in line)


@pytest.mark.skipif(not LOADER.exists(), reason="needs glibc's x86-64 loader")
def test_glibc_reads_the_tunables_and_keeps_an_operators_value() -> None:
    assert "0x1000000 " in tunables_seen(server_environment({}))  # 16 MiB
    assert "0x1000 " in tunables_seen(
        server_environment({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4096"})
    )


def test_the_server_starts_with_them_and_answers_large_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    server = EmbeddedValkey(port=free_port())
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        body = bytes(range(256)) * 600  # larger than glibc's default trim threshold
        for i in range(20):
            client.hset(f"embedded:{i}", "body", body)
        pipe = client.pipeline(transaction=False)
        for i in range(20):
            pipe.hget(f"embedded:{i}", "body")
        assert pipe.execute() == [body] * 20
        client.close()
    finally:
        server.stop()
