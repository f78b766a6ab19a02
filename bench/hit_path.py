"""Cache hits: the proxy (in-process hot tier, and Redis alone) against a bare aiohttp server
and nginx proxy_cache, side by side in one run.

Run: ``python -m bench.hit_path`` (about 7 minutes; every load is bounded by ``--seconds``).

For each body (``--cases``: 137 KB and 20 KB WAV, 20 KB MP3) and each number of connections
(16 and 64), the
same OpenAI-style ``POST /v1/audio/speech`` requests, rotating over ``--phrases`` cached
sentences, go to:

- ``bare``: an aiohttp server answering the same bytes from memory (it also serves as the
  upstream of the proxies and nginx): the ceiling of an aiohttp process;
- ``hot``: one ``tts-cache-proxy serve`` process as shipped: hot tier and access log on
  (the load repeats each request byte for byte, as an SDK does for the same sentence, so
  once warm these are known hits, answered by the connection: proxy/request/known_hits.py);
- ``hot-full``: the same with ``known_hits_enabled: false``, every hit through the full
  request path (what known hits save);
- ``hot-nolog`` and ``hot-uvloop``: the same with the access log off, and on uvloop;
- ``hot-otel`` (``--otel``): the same with ``otel_enabled``, every request traced and its
  spans exported over OTLP/HTTP (to the bare server, which answers any POST);
- ``redis``: the same with ``audio_cache_hot_tier_mb: 0``, so every hit reads Redis
  (a Valkey server on loopback TCP) and, above the 100 KB compression threshold,
  decodes the entry (zstd, the default codec);
- ``redis-plain`` (bodies above the threshold only): the same with compression off, to
  show the Redis path itself;
- ``nginx``: nginx ``proxy_cache`` keyed on the request body, one worker (when ``nginx``
  is on PATH; its config is generated in a temporary directory).

Load: ``wrk`` (2 threads) when it is on PATH, else a Python aiohttp load generator (slower:
it caps every figure, so the ratios say less). The table gives requests/s, p50 and p99 and
the ratios of the issue's targets, and each server process's CPU time per request (user +
system, from /proc): on a machine shared with other work, throughput swings with the
neighbours while CPU per request mostly does not. Each target is measured ``--rounds``
times in turn and the median kept. A PNG goes to ``bench/out/hit_path.png``. Everything runs
on 127.0.0.1; the load generator shares the machine's cores with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from proxy.store.embedded import EmbeddedValkey, free_port

from .loopback import (
    BARE_SERVER,
    SPEECH,
    mp3_of_size,
    python_load,
    speech_body,
    speech_of_size,
    wait_ready,
)

OUT = Path(__file__).resolve().parent / "out"
TARGETS = (
    "bare",
    "hot",
    "hot-full",
    "hot-nolog",
    "hot-uvloop",
    "hot-otel",
    "redis",
    "redis-plain",
    "nginx",
)
COMPRESSION_THRESHOLD_KB = 100  # the default: larger bodies are stored compressed

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  proxy_cache_path {tmp}/cache levels=1:2 keys_zone=tts:10m max_size=1g inactive=1h
                   use_temp_path=off;
  server {{
    listen 127.0.0.1:{port} reuseport;
    client_body_buffer_size 64k;
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache tts;
      proxy_cache_methods POST;
      proxy_cache_key "$request_uri|$request_body";
      proxy_cache_valid 200 1h;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"""

WRK_SCRIPT = """
local phrases = {phrases}
local requests = {{}}
local n = 0
function init(args)
  for i = 0, phrases - 1 do
    local body = '{{"model":"tts-1","voice":"alloy","input":"Phrase number ' .. i ..
      ' for the guests."}}'
    requests[i + 1] = wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, body)
  end
end
function request()
  n = n + 1
  return requests[(n % phrases) + 1]
end
"""


@dataclass
class Measured:
    target: str
    payload_kb: int
    kind: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float  # the server process's CPU time per request (0: not measured)
    store_cpu_us: float = 0.0  # Valkey's CPU time per request meanwhile (0: not measured)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from ``wrk --latency`` output."""

    def latency(q: str) -> float:
        m = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"no {q}% latency in wrk output:\n{output}")
        return float(m.group(1)) * _UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    return float(rps.group(1)), latency("50"), latency("99"), errors


class Load:
    """Drives one URL for a bounded time with wrk, or the Python generator without it."""

    def __init__(self, tool: str, phrases: int, tmp: Path) -> None:
        self.tool = tool
        self.phrases = phrases
        self.script = tmp / "speech.lua"
        self.script.write_text(WRK_SCRIPT.format(phrases=phrases, path=SPEECH))

    async def run(self, url: str, *, connections: int, seconds: float) -> tuple[float, ...]:
        if self.tool == "wrk":
            threads, duration = str(min(2, connections)), f"{max(1, round(seconds))}s"
            proc = await asyncio.create_subprocess_exec(
                "wrk", "-t", threads, "-c", str(connections), "-d", duration, "--latency",
                "-s", str(self.script), url,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
            return parse_wrk(out.decode())
        run = await python_load(
            url, requests=10**6, seconds=seconds, concurrency=connections, phrases=self.phrases
        )
        return run.rate, run.percentile(0.5), run.percentile(0.99), 0


@contextlib.asynccontextmanager
async def process(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[int]:
    """A child process for the duration of the block; SIGTERM (then SIGKILL) after."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def warm(url: str, phrases: int, rounds: int) -> None:
    """Ask for every phrase ``rounds`` times (a miss, then hits that earn a hot-tier place);
    check that the last round was all hits."""
    async with aiohttp.ClientSession() as session:
        for r in range(rounds):
            for i in range(phrases):
                async with session.post(url + SPEECH, json=speech_body(i)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: status {resp.status} while warming")
                    if r == rounds - 1 and resp.headers.get("X-Cache") not in ("HIT", None):
                        raise RuntimeError(f"{url}: phrase {i} is not a hit after warming")


async def measure_size(
    kind: str,
    payload_kb: int,
    args: argparse.Namespace,
    store_url: str,
    load: Load,
    tmp: Path,
    store_pid: int | None = None,
) -> list[Measured]:
    size = payload_kb * 1024
    ports = {name: free_port() for name in TARGETS}
    upstream = f"http://127.0.0.1:{ports['bare']}"
    proxy_bin = str(Path(sys.executable).with_name("tts-cache-proxy"))
    prefix = f"hp{uuid.uuid4().hex[:8]}"
    base_env = {
        "AUDIO_CACHE_KEY_PREFIX": prefix,
        "AUDIO_CACHE_MAX_SIZE_MB": "1024",
        # On as shipped (one line per request, to stderr, here /dev/null); nginx's is off.
        "ACCESS_LOG": "true" if args.access_log else "false",
        "LOG_LEVEL": "INFO" if args.access_log else "WARNING",
        **({"EVENT_LOOP": args.loop} if args.loop else {}),
    }
    workers = ["--workers", str(args.workers)] if args.workers > 1 else []

    def proxy(name: str, **env: str) -> contextlib.AbstractAsyncContextManager[int]:
        return process(
            proxy_bin, "serve", "--upstream", upstream, "--redis-url", store_url,
            "--port", str(ports[name]), *workers,
            env={**base_env, **env},
        )  # fmt: skip

    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    audio = tmp / f"speech-{payload_kb}.{kind}"
    audio.write_bytes(speech_of_size(size) if kind == "wav" else mp3_of_size(size))
    content_type = "audio/wav" if kind == "wav" else "audio/mpeg"
    async with contextlib.AsyncExitStack() as stack:
        pids: dict[str, int] = {}
        pids["bare"] = await stack.enter_async_context(
            process(sys.executable, "-c", BARE_SERVER, str(ports["bare"]), str(audio), content_type)
        )
        pids["hot"] = await stack.enter_async_context(
            proxy("hot", AUDIO_CACHE_HOT_TIER_MB=str(args.hot_tier_mb))
        )
        targets = ["bare", "hot"]
        if args.full_path:  # the same as shipped with known hits off: what they save
            pids["hot-full"] = await stack.enter_async_context(
                proxy(
                    "hot-full",
                    AUDIO_CACHE_HOT_TIER_MB=str(args.hot_tier_mb),
                    KNOWN_HITS_ENABLED="false",
                )
            )
            targets.append("hot-full")
        if args.access_log:  # the same proxy without its log line: what the line costs
            pids["hot-nolog"] = await stack.enter_async_context(
                proxy(
                    "hot-nolog",
                    AUDIO_CACHE_HOT_TIER_MB=str(args.hot_tier_mb),
                    ACCESS_LOG="false",
                    LOG_LEVEL="WARNING",
                )
            )
            targets.append("hot-nolog")
        if args.uvloop and args.loop != "uvloop":  # the same as shipped, on uvloop
            pids["hot-uvloop"] = await stack.enter_async_context(
                proxy(
                    "hot-uvloop", AUDIO_CACHE_HOT_TIER_MB=str(args.hot_tier_mb), EVENT_LOOP="uvloop"
                )
            )
            targets.append("hot-uvloop")
        if args.otel:  # the same as shipped, every request traced and exported
            otel = {"OTEL_ENABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": upstream}
            pids["hot-otel"] = await stack.enter_async_context(
                proxy("hot-otel", AUDIO_CACHE_HOT_TIER_MB=str(args.hot_tier_mb), **otel)
            )
            targets.append("hot-otel")
        pids["redis"] = await stack.enter_async_context(proxy("redis", AUDIO_CACHE_HOT_TIER_MB="0"))
        targets.append("redis")
        if payload_kb > COMPRESSION_THRESHOLD_KB and kind == "wav":
            plain = {"AUDIO_CACHE_HOT_TIER_MB": "0", "AUDIO_CACHE_COMPRESSION_ENABLED": "false"}
            pids["redis-plain"] = await stack.enter_async_context(
                proxy("redis-plain", **plain, AUDIO_CACHE_KEY_PREFIX=prefix + "p")
            )
            targets.append("redis-plain")
        if args.nginx:
            conf = tmp / f"nginx-{kind}{payload_kb}.conf"
            nginx_dir = tmp / f"nginx-{kind}{payload_kb}"
            nginx_dir.mkdir()
            conf.write_text(
                NGINX_CONF.format(tmp=nginx_dir, port=ports["nginx"], upstream=ports["bare"])
            )
            nginx = ("nginx", "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log"))
            await stack.enter_async_context(process(*nginx, "-c", str(conf)))
            targets.append("nginx")
        for name in targets:
            try:
                await wait_ready(urls[name])
            except RuntimeError:
                raise RuntimeError(f"{name} at {urls[name]} did not start") from None
        for name in targets[1:]:
            await warm(urls[name], args.phrases, rounds=3)
        results = []
        for connections in args.connections:
            # Other work on a shared machine comes and goes: every target is measured in
            # turn ``--rounds`` times, and the median round of each is kept.
            runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name in targets:
                    pid = pids.get(name)
                    before, store_before = cpu_seconds(pid), cpu_seconds(store_pid)
                    run = await load.run(urls[name], connections=connections, seconds=args.seconds)
                    spent = cpu_seconds(pid) - before
                    store_spent = cpu_seconds(store_pid) - store_before
                    served = run[0] * args.seconds
                    per = 1e6 / served if served else 0.0
                    cpu = spent * per if pid else 0.0
                    store_cpu = store_spent * per if pid and store_pid and name != "bare" else 0.0
                    runs[name].append((*run, cpu, store_cpu))
            for name in targets:
                ordered = sorted(runs[name])
                rps, p50, p99, errors, _, _ = ordered[len(ordered) // 2]
                cpu = sorted(r[4] for r in runs[name])[len(ordered) // 2]
                store_cpu = sorted(r[5] for r in runs[name])[len(ordered) // 2]
                measured = Measured(
                    name, payload_kb, kind, connections, rps, p50, p99, int(errors), cpu, store_cpu
                )
                results.append(measured)
                failed = f"  ERRORS {errors}" if errors else ""
                print(
                    f"  {kind} {payload_kb:>4} KB  c={connections:<3} {name:<6} {rps:>8.0f} req/s  "
                    f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms{failed}",
                    flush=True,
                )
    return results


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0 without one."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(results: Sequence[Measured]) -> str:
    """The figures and the ratios the issue sets targets for."""
    lines = [
        f"{'body':>10} {'conns':>5} {'target':<12}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'vs bare':>9}{'p99/bare':>9}{'vs nginx':>9}{'cpu us/req':>11}{'cpu/bare':>9}"
        f"{'valkey us':>10}"
    ]
    groups: dict[tuple[str, int, int], dict[str, Measured]] = {}
    for m in results:
        groups.setdefault((m.kind, m.payload_kb, m.connections), {})[m.target] = m
    for (kind, kb, conns), by in groups.items():
        bare, nginx = by["bare"], by.get("nginx")
        for name in TARGETS:
            m = by.get(name)
            if m is None:
                continue
            vs_nginx = f"{m.rps / nginx.rps:9.2f}" if nginx is not None else f"{'-':>9}"
            cpu_ratio = m.cpu_us / bare.cpu_us if m.cpu_us and bare.cpu_us else 0.0
            lines.append(
                f"{kind:>4}{kb:>4}KB {conns:>5} {name:<12}{m.rps:>8.0f}"
                f"{m.p50_ms:>8.2f}{m.p99_ms:>8.2f}"
                f"{m.rps / bare.rps:>9.2f}{m.p99_ms / bare.p99_ms:>9.2f}{vs_nginx}"
                f"{m.cpu_us:>11.0f}{cpu_ratio:>9.2f}"
                + (f"{m.store_cpu_us:>10.0f}" if m.store_cpu_us else f"{'-':>10}")
            )
    return "\n".join(lines)


def verdict(results: Sequence[Measured]) -> list[str]:
    """Each target of issue 9, with the worst case over sizes and connection counts."""
    by = {((m.kind, m.payload_kb), m.connections, m.target): m for m in results}
    cases = sorted({((m.kind, m.payload_kb), m.connections) for m in results})

    def worst(target: str, of: str, attr: str = "rps") -> float | None:
        ratios = [
            getattr(by[(kb, c, target)], attr) / getattr(by[(kb, c, of)], attr)
            for kb, c in cases
            if (kb, c, target) in by and (kb, c, of) in by
        ]
        return min(ratios) if attr == "rps" and ratios else (max(ratios) if ratios else None)

    checks = [
        ("hot tier >= 0.9x bare throughput", worst("hot", "bare"), 0.9, True),
        ("Redis path >= 0.5x bare throughput", worst("redis", "bare"), 0.5, True),
        ("Redis path, stored plain >= 0.5x bare", worst("redis-plain", "bare"), 0.5, True),
        ("hot p99 <= 1.5x bare p99", worst("hot", "bare", "p99_ms"), 1.5, False),
        ("Redis p99 <= 1.5x bare p99", worst("redis", "bare", "p99_ms"), 1.5, False),
        ("one process (hot) >= 0.3x nginx", worst("hot", "nginx"), 0.3, True),
    ]
    out = []
    for label, value, bound, at_least in checks:
        if value is None:
            out.append(f"{label}: not measured")
            continue
        ok = value >= bound if at_least else value <= bound
        out.append(f"{label}: worst case {value:.2f} -> {'met' if ok else 'NOT met'}")
    return out


def plot(results: Sequence[Measured], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(
        {(f"{m.kind} {m.payload_kb}", m.connections) for m in results},
        key=lambda c: (c[0], c[1]),
    )
    names = [t for t in TARGETS if any(m.target == t for m in results)]
    by = {(f"{m.kind} {m.payload_kb}", m.connections, m.target): m for m in results}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(cases))]
        rps = [by[(kb, c, name)].rps if (kb, c, name) in by else 0 for kb, c in cases]
        p99 = [by[(kb, c, name)].p99_ms if (kb, c, name) in by else 0 for kb, c in cases]
        axes[0].bar(xs, rps, width, label=name)
        axes[1].bar(xs, p99, width, label=name)
    labels = [f"{kb} KB\n{c} conns" for kb, c in cases]
    for ax, title in zip(axes, ("requests / s (higher is better)", "p99 latency, ms"), strict=True):
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(cases))], labels)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Cache hits: tts-cache-proxy vs bare aiohttp vs nginx proxy_cache\n{subtitle}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def run_all(args: argparse.Namespace, load: Load, tmp: Path) -> list[Measured]:
    results: list[Measured] = []
    with EmbeddedValkey(port=free_port()) as store:
        for case in args.cases:
            kind, kb = case.split(":")
            pid = store.process.pid if store.process is not None else None
            results += await measure_size(kind, int(kb), args, store.url, load, tmp, pid)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per measured load")
    p.add_argument("--rounds", type=int, default=3, help="turns over the targets; median kept")
    p.add_argument(
        "--cases", nargs="+", default=["wav:137", "wav:20", "mp3:20"], help="FORMAT:KB bodies"
    )
    p.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    p.add_argument("--phrases", type=int, default=64)
    p.add_argument("--hot-tier-mb", type=float, default=32.0)
    p.add_argument("--workers", type=int, default=1, help="proxy processes (--workers)")
    p.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-nginx", dest="nginx", action="store_false")
    p.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="turn the proxy's access log off (it is on as shipped, here to /dev/null)",
    )
    p.add_argument("--loop", choices=("asyncio", "uvloop"), help="the proxy's event loop")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="skip hot-uvloop")
    p.add_argument("--no-full-path", dest="full_path", action="store_false", help="skip hot-full")
    p.add_argument("--otel", action="store_true", help="also hot-otel (needs the otel extra)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    if args.uvloop and importlib.util.find_spec("uvloop") is None:
        print("uvloop: not installed, not measured (pip install uvloop)")
        args.uvloop = False
    if args.nginx and shutil.which("nginx") is None:
        print("nginx: not on PATH, not measured (apt-get install nginx)")
        args.nginx = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hit-path-") as tmp_dir:
        tmp = Path(tmp_dir)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started by root
        load = Load(tool, args.phrases, tmp)
        where = "wrk, 2 threads" if tool == "wrk" else "Python aiohttp load generator"
        print(f"load tool: {where}; {os.cpu_count()} cores shared by load and servers")
        results = asyncio.run(run_all(args, load, tmp))
    log_state = "on (as shipped)" if args.access_log else "off"
    subtitle = (
        f"load: {where}; {args.seconds:.0f} s per point, median of {args.rounds}; "
        f"{os.cpu_count()} cores shared; proxy: {args.workers} process(es), "
        f"access log {log_state}, loop {args.loop or 'asyncio'}"
    )
    print()
    print(table(results))
    print()
    print("\n".join(verdict(results)))
    plot(results, OUT / "hit_path.png", subtitle)
    if args.json:
        Path(args.json).write_text(json.dumps([m.__dict__ for m in results], indent=1))
    print(
        textwrap.dedent(
            f"""
            ({subtitle}; {args.phrases} cached phrases in rotation;
             plot: {OUT / "hit_path.png"}; whole run {time.monotonic() - started:.0f} s)"""
        ).strip()
    )


if __name__ == "__main__":
    main()
