"""The ``tts-cache-proxy`` command: serve, demo, demo-upstream, check-config, settings-reference."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from typing import Any

import yaml
from aiohttp import web

from . import __version__
from .config.settings import ConfigError, Settings, load_settings
from .observability.access_log import runner_options
from .observability.metrics import MULTIPROCESS_DIR
from .store.embedded import EmbeddedStoreError, EmbeddedValkey, free_port

log = logging.getLogger("proxy")

NO_UPSTREAM = (
    "no upstream configured: set upstream_url in the config file, UPSTREAM_URL in the "
    "environment, or pass --upstream URL (e.g. --upstream https://api.openai.com). "
    "To try the proxy with a local speaking server, run `tts-cache-proxy demo`."
)
# Set by `serve --workers N` in the environment of the processes it starts.
WORKER_ENV = "TTS_CACHE_PROXY_WORKER"


class PortInUse(OSError):
    """The address a listener needs is taken by another process."""

    def __init__(self, host: str, port: int, what: str = "port") -> None:
        setting = "" if what == "port" else f" ({what})"
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} is already in use on {host}{setting}: stop what listens there "
            "or choose another port",
        )


def check_port_free(host: str, port: int, what: str = "port") -> None:
    """PortInUse when ``host:port`` cannot be bound, before anything else is started.

    Binds as asyncio's server does (SO_REUSEADDR, v6-only), so a port held by a listener
    fails here and one in TIME_WAIT does not."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return  # the real bind reports it
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(host, port, what) from None


def version() -> str:
    """The installed distribution's version, else the package's own."""
    try:
        return importlib.metadata.version("tts-cache-proxy")
    except importlib.metadata.PackageNotFoundError:
        return __version__


# json.dumps with an argument makes a new encoder per call: a fifth of an access line.
_JSON_LINE = json.JSONEncoder(ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _JSON_LINE(out)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Neither format shows the thread or process of a record; not looking them up for
    # each one saves a tenth of an access line (logging's documented optimizations).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _settings(args: argparse.Namespace, **extra: Any) -> tuple[Settings, list[str]]:
    """The settings (command-line flags over everything) and the environment warnings."""
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "upstream_url": getattr(args, "upstream", None),
        "redis_url": getattr(args, "redis_url", None),
        **extra,
    }
    warnings: list[str] = []
    settings = load_settings(getattr(args, "config", None), overrides=overrides, warnings=warnings)
    return settings, warnings


def _configured(args: argparse.Namespace, **extra: Any) -> Settings:
    """The settings, logging configured from them and the environment warnings logged."""
    settings, warnings = _settings(args, **extra)
    configure_logging(settings)
    for warning in warnings:
        log.warning("environment: %s", warning)
    return settings


def _check_ports(settings: Settings) -> None:
    check_port_free(settings.host, settings.port)
    if settings.admin_port is not None:
        check_port_free(settings.admin_host or settings.host, settings.admin_port, "admin_port")


async def _serve_forever(
    runners: Sequence[web.AppRunner], *, parent_pid: int | None = None
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully: readiness turns false, the
    proxy keeps serving for ``shutdown_delay_seconds`` (a second signal cuts it short),
    stops accepting, and lets in-flight requests and fills finish (``shutdown_drain_seconds``).
    A worker (``parent_pid`` given) also stops when its parent is gone."""
    from .runtime import start_draining
    from .state import SETTINGS

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def orphaned() -> None:
        while True:  # polled: no event tells a process that its parent died
            await asyncio.sleep(1.0)
            if os.getppid() != parent_pid:
                break
        log.warning("the parent process is gone: shutting down")
        stop.set()

    watchdog = asyncio.create_task(orphaned()) if parent_pid is not None else None
    try:
        await stop.wait()
        stop.clear()
        delay = 0.0
        for runner in runners:
            if SETTINGS in runner.app:
                start_draining(runner.app)
                delay = max(delay, runner.app[SETTINGS].shutdown_delay_seconds)
        log.info("shutting down: not ready; draining in-flight requests")
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for runner in reversed(runners):
            await runner.cleanup()


async def _start(
    app: web.Application,
    host: str,
    port: int,
    *,
    drain_seconds: float = 25.0,
    reuse_port: bool = False,
) -> web.AppRunner:
    from .request.connection import ProxyRunner
    from .state import HOME, SETTINGS

    proxy = app.get(HOME, app)  # the admin listener shares the proxy's settings
    options: dict[str, Any] = {"access_log": None}
    if SETTINGS in proxy:
        settings = proxy[SETTINGS]
        options = runner_options(
            access_log=settings.access_log, idle_timeout=settings.client_idle_timeout_seconds
        )
    runner = ProxyRunner(app, handle_signals=False, shutdown_timeout=drain_seconds, **options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    except OSError as exc:
        await runner.cleanup()  # its background tasks would keep the process alive
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    return runner


async def _start_proxy(
    app: web.Application, settings: Settings, host: str, port: int, *, reuse_port: bool = False
) -> list[web.AppRunner]:
    """The proxy, and the admin listener when ``admin_port`` is set (started after it).
    Workers of ``serve --workers`` share both ports (``reuse_port``)."""
    from .app import create_admin_app

    drain = settings.shutdown_drain_seconds
    runners = [await _start(app, host, port, drain_seconds=drain, reuse_port=reuse_port)]
    if settings.admin_port is not None:
        admin_host = settings.admin_host or host
        try:
            admin = await _start(
                create_admin_app(app),
                admin_host,
                settings.admin_port,
                drain_seconds=drain,
                reuse_port=reuse_port,
            )
        except BaseException:
            await runners[0].cleanup()
            raise
        runners.append(admin)
        log.info("admin API on http://%s:%d/admin", admin_host, settings.admin_port)
    return runners


def _run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> int:
    """Run ``main`` on asyncio's loop or on uvloop's (setting ``event_loop``)."""
    factory = None
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            print("tts-cache-proxy: event_loop uvloop needs `pip install uvloop`", file=sys.stderr)
            return 2
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "loop", None):  # the setting's environment name: workers inherit it
        os.environ["EVENT_LOOP"] = args.loop
    settings = _configured(args)
    if not settings.upstream_url:
        print(f"tts-cache-proxy: {NO_UPSTREAM}", file=sys.stderr)
        return 2
    workers = getattr(args, "workers", 1) or 1
    if workers < 1:
        print("tts-cache-proxy: --workers must be at least 1", file=sys.stderr)
        return 2
    parent_pid = int(os.environ.get(WORKER_ENV) or 0) or None
    is_worker = parent_pid is not None
    # SIGHUP means "reload the client keys": one that arrives before the keys watcher (or
    # the workers' supervisor) takes it over must not end the process, its default.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not is_worker:  # workers share the port with their siblings on purpose
        _check_ports(settings)
    from .app import create_app

    embedded: EmbeddedValkey | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedValkey(data_dir=settings.embedded_data_dir)
        redis_url = embedded.start()
        log.info("embedded valkey-server started at %s", redis_url)
    try:
        if workers > 1 and not is_worker:
            return asyncio.run(_run_workers(args, workers, redis_url, settings, embedded))
        app = create_app(settings, redis_url=redis_url)

        async def main() -> None:
            supervisor = asyncio.create_task(embedded.supervise()) if embedded else None
            runners = await _start_proxy(
                app, settings, settings.host, settings.port, reuse_port=is_worker
            )
            log.info(
                "tts-cache-proxy listening on http://%s:%d -> %s (event loop: %s)",
                settings.host, settings.port, settings.upstream_url, settings.event_loop,
            )  # fmt: skip
            # Everything loaded so far lives as long as the process: keep it out of the
            # cyclic collector's full passes, which otherwise rescan it under load.
            gc.freeze()
            await _serve_forever(runners, parent_pid=parent_pid)
            if supervisor is not None:
                supervisor.cancel()

        return _run_on_loop(main(), settings.event_loop)
    finally:
        if embedded is not None:
            embedded.stop()


async def _run_workers(
    args: argparse.Namespace,
    workers: int,
    redis_url: str,
    settings: Settings,
    embedded: EmbeddedValkey | None,
) -> int:
    """``serve --workers N``: N processes sharing the port (SO_REUSEPORT) and the store
    (the embedded one is started once, here). SIGTERM/SIGINT are passed on to every worker
    (each shuts down gracefully); a worker that dies is started again."""
    argv = [sys.executable, "-m", "proxy.cli", "serve", "--redis-url", redis_url]
    for flag, value in (
        ("--config", args.config),
        ("--host", args.host),
        ("--port", args.port),
        ("--upstream", args.upstream),
    ):
        if value is not None:
            argv += [flag, str(value)]
    env = {**os.environ, WORKER_ENV: str(os.getpid())}
    # One scrape of any worker reports them all (prometheus_client's multiprocess mode).
    own_metrics_dir = MULTIPROCESS_DIR not in env
    if own_metrics_dir:
        env[MULTIPROCESS_DIR] = tempfile.mkdtemp(prefix="tts-cache-metrics-")
    try:
        return await _supervise_workers(argv, env, workers, settings, embedded)
    finally:
        if own_metrics_dir:
            shutil.rmtree(env[MULTIPROCESS_DIR], ignore_errors=True)


async def _supervise_workers(
    argv: list[str],
    env: dict[str, str],
    workers: int,
    settings: Settings,
    embedded: EmbeddedValkey | None,
) -> int:
    from prometheus_client import multiprocess

    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*argv, env=env)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = asyncio.create_task(embedded.supervise()) if embedded else None
    children: list[asyncio.subprocess.Process] = []

    def reload_keys() -> None:  # each worker reloads its client keys file on SIGHUP
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload_keys)
    children += [await spawn() for _ in range(workers)]
    started = [loop.time()] * workers
    log.info("tts-cache-proxy: %d workers on %s:%d", workers, settings.host, settings.port)
    failed = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        for i, child in enumerate(children):
            if child.returncode is None or stop.is_set():
                continue
            if loop.time() - started[i] < 5:  # fails at start (config, port): give up
                log.error("worker %d exited at start with %s", child.pid, child.returncode)
                failed = True
                stop.set()
                break
            log.warning("worker %d exited with %s; starting another", child.pid, child.returncode)
            multiprocess.mark_process_dead(child.pid, env[MULTIPROCESS_DIR])  # type: ignore[no-untyped-call]
            children[i], started[i] = await spawn(), loop.time()
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    budget = settings.shutdown_delay_seconds + settings.shutdown_drain_seconds + 5
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), budget)
    except TimeoutError:
        for child in children:
            if child.returncode is None:
                child.kill()
        await asyncio.gather(*(c.wait() for c in children))
    if supervisor is not None:
        supervisor.cancel()
    return 1 if failed or any(c.returncode != 0 for c in children) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    upstream_port = free_port()
    settings = _configured(args, upstream_url=f"http://127.0.0.1:{upstream_port}", redis_url=None)
    _check_ports(settings)
    from .app import create_app
    from .demo.upstream import create_demo_upstream_app

    with EmbeddedValkey(data_dir=settings.embedded_data_dir) as store:

        async def main() -> None:
            upstream = await _start(create_demo_upstream_app(), "127.0.0.1", upstream_port)
            try:
                proxy = await _start_proxy(
                    create_app(settings, redis_url=store.url),
                    settings,
                    settings.host,
                    settings.port,
                )
            except BaseException:
                await upstream.cleanup()
                raise
            print(
                f"demo: proxy on http://{settings.host}:{settings.port} -> espeak-ng demo "
                f"upstream on http://127.0.0.1:{upstream_port}, embedded Valkey at {store.url}\n"
                f"try:  curl -s -D- -o a.wav "
                f"http://{settings.host}:{settings.port}/v1/audio/speech "
                "-H 'content-type: application/json' "
                '-d \'{"model":"tts-1","input":"Bienvenido al hotel","voice":"es",'
                '"response_format":"wav"}\'',
                flush=True,
            )
            await _serve_forever([upstream, *proxy])

        asyncio.run(main())
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    check_port_free(args.host, args.port)
    from .demo.upstream import run_demo_upstream

    logging.basicConfig(level=logging.INFO)
    try:
        run_demo_upstream(args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(args.host, args.port) from None
        raise
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    try:
        settings = load_settings(args.file, warnings=warnings)
    finally:  # also beside the errors: a typo in a name may be the cause of one
        for warning in warnings:
            print(f"# warning: environment: {warning}", file=sys.stderr)
    yaml.safe_dump(settings.public(), sys.stdout, sort_keys=False, allow_unicode=True)
    if not settings.upstream_url:
        print(f"# warning: {NO_UPSTREAM}", file=sys.stderr)
    return 0


def cmd_settings_reference(args: argparse.Namespace) -> int:
    from .config.reference import render_reference

    sys.stdout.write(render_reference())
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, unless it has none (the settings decide) or says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def _default(name: str) -> str:
    value = Settings.__dataclass_fields__[name].default
    return f"the {name} setting, default {value}"


def _listener_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config", metavar="FILE", help="YAML settings file (default: none, built-in settings)"
    )
    command.add_argument(
        "--host", help=f"address to listen on, over the settings ({_default('host')})"
    )
    command.add_argument(
        "--port", type=int, help=f"port to listen on, over the settings ({_default('port')})"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tts-cache-proxy",
        description="A caching reverse proxy for text-to-speech APIs.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=summary, description=summary, formatter_class=_HelpFormatter
        )

    serve = command("serve", "run the proxy in front of a TTS API")
    _listener_flags(serve)
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="TTS API base URL, e.g. https://api.openai.com (default: the upstream_url setting)",
    )
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="redis://, rediss://, unix:// or redis+cluster:// (default: the redis_url "
        "setting; empty starts an embedded Valkey)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT) and the store",
    )
    serve.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        help="event loop (default: the event_loop setting, asyncio)",
    )
    serve.set_defaults(func=cmd_serve)

    demo = command("demo", "embedded Valkey + speaking demo upstream + proxy")
    _listener_flags(demo)
    demo.set_defaults(func=cmd_demo)

    up = command("demo-upstream", "an OpenAI-compatible TTS server on espeak-ng")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--port", type=int, default=9000, help="port to listen on")
    up.set_defaults(func=cmd_demo_upstream)

    check = command(
        "check-config", "validate a config file (and the environment), print the settings"
    )
    check.add_argument("file", help="YAML settings file")
    check.set_defaults(func=cmd_check_config)

    reference = command(
        "settings-reference", "print the configuration reference (markdown) of every setting"
    )
    reference.set_defaults(func=cmd_settings_reference)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"tts-cache-proxy: config error: {problem}", file=sys.stderr)
        return 2
    except PortInUse as exc:
        print(f"tts-cache-proxy: {exc.strerror}", file=sys.stderr)
        return 1
    except EmbeddedStoreError as exc:
        print(f"tts-cache-proxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
