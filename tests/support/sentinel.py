"""A real Redis Sentinel setup on loopback from the pip-installed binary: one master, one
replica and three sentinels watching them (quorum 2)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from proxy.store.embedded import EmbeddedValkey, free_port, server_binary

SERVICE = "ttscache"


def _wait(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f}s")


@dataclass
class SentinelSet:
    master: EmbeddedValkey
    replica: EmbeddedValkey
    sentinel_ports: list[int]
    workdir: Path
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0], socket_timeout=5)

    def master_port(self) -> int:
        _host, port = self.sentinel().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def wait_replica_synced(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        master = redis.Redis(port=self.master_port(), socket_timeout=5)
        while time.monotonic() < deadline:
            info = master.info("replication")
            if info.get("connected_slaves", 0) >= 1 and "online" in str(info.get("slave0", "")):
                return
            time.sleep(0.05)
        raise RuntimeError("the replica did not sync")

    def wait_sentinels_see_replica(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = 0
            for port in self.sentinel_ports:
                client = redis.Redis(port=port, socket_timeout=5)
                with contextlib.suppress(redis.RedisError):
                    if client.sentinel_slaves(SERVICE) and client.execute_command(
                        "SENTINEL", "CKQUORUM", SERVICE
                    ):
                        ready += 1
            if ready == len(self.sentinel_ports):
                return
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not find the replica and each other")

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        self.replica.stop()
        self.master.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_sentinels(timeout: float = 30.0) -> SentinelSet:
    master = EmbeddedValkey(port=free_port())
    master.start()
    assert master.port is not None
    replica = EmbeddedValkey(
        port=free_port(), extra_args=("--replicaof", "127.0.0.1", str(master.port))
    )
    replica.start()
    workdir = Path(tempfile.mkdtemp(prefix="tts-cache-sentinel-"))
    ports = [free_port() for _ in range(3)]
    group = SentinelSet(master, replica, ports, workdir)
    try:
        for port in ports:
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            log = (workdir / f"sentinel-{port}.log").open("ab")
            group.sentinels.append(
                subprocess.Popen(
                    [server_binary(), str(conf), "--sentinel"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for port in ports:
            _wait(port, timeout)
        group.wait_replica_synced(timeout)
        group.wait_sentinels_see_replica(timeout)
    except BaseException:
        group.stop()
        raise
    return group
