"""Every Python snippet of docs/clients.md runs against the demo upstream behind a proxy."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.demo.upstream import create_demo_upstream_app
from tests.support.paths import ROOT
from tests.support.proxies import ProxyFactory
from tests.support.servers import served

PAGE = ROOT / "docs" / "clients.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_snippets() -> None:
    assert len(SNIPPETS) >= 4


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    async with served(create_demo_upstream_app()) as url:
        yield url


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
async def test_snippet_runs(demo: str, make_proxy: ProxyFactory, index: int) -> None:
    client = await make_proxy(demo)
    code = SNIPPETS[index].replace("http://localhost:8080", str(client.make_url("")).rstrip("/"))
    namespace: dict[str, Any] = {"__name__": "snippet"}
    # Sync SDKs block: the snippet runs in a thread of its own while this loop serves it.
    await asyncio.wait_for(asyncio.to_thread(exec, compile(code, str(PAGE), "exec"), namespace), 60)
