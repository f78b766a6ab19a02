"""The cost of one access line: CPU time on the event loop, and in all threads.

Run: ``python -m bench.access_log_cost [text|json] [--module OTHER_access_log.py]``
(a few seconds). 20,000 lines of a cache hit go through ``AccessLine.log`` on an event
loop to a stream handler writing to /dev/null, configured as ``serve`` configures logging;
best of 5.
"On the event loop" counts the lines' batches formatted there until the last line; the
last batch's formatting and write are in "all threads".
``--module`` loads another version of ``proxy/observability/access_log.py`` in its place,
to compare two versions on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
import types
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("format", nargs="?", default="text", choices=("text", "json"))
    p.add_argument("--module", help="another access_log.py to measure instead")
    p.add_argument("--lines", type=int, default=20_000)
    args = p.parse_args()
    if args.module:
        import proxy.observability

        name = "proxy.observability.access_log"
        spec = importlib.util.spec_from_file_location(name, args.module)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        proxy.observability.access_log = module  # type: ignore[attr-defined]
    from proxy.cli import configure_logging
    from proxy.config.settings import load_settings
    from proxy.observability import access_log as al

    settings = load_settings(
        None, overrides={"log_format": args.format, "upstream_url": "http://127.0.0.1:1"}
    )
    out = sys.stderr
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the handler's stream, for the run
    configure_logging(settings)

    class Request(dict[Any, Any]):
        method = "POST"
        path = "/v1/audio/speech"
        remote = "127.0.0.1"

    request = Request({al.REQUEST_ID: "0123456789abcdef0123456789abcdef", al.ROUTE: "openai"})
    answer = types.SimpleNamespace(
        status=200, headers={}, body_length=140500, content_length=140288, access_result="hit"
    )
    line = al.AccessLine(al.log, "")
    writer = getattr(al, "_WRITER", None)  # the version that formatted lines in a thread

    async def measure() -> tuple[float, float]:
        loop_best = all_best = float("inf")
        for _ in range(5):
            if writer is not None:  # start the thread, then keep the lines queued while timing
                writer.put((al.log, time.time(), al.access_fields(request, answer, 0.001)))  # type: ignore[arg-type]
                al.flush()
                writer.put = writer.pending.put
            loop0, all0 = time.thread_time(), time.process_time()
            for i in range(args.lines):
                line.log(request, answer, 0.00123)  # type: ignore[arg-type]
                if i % 16 == 15:  # as when answers go out on the event loop
                    await asyncio.sleep(0)
            loop1 = time.thread_time()
            if writer is not None:
                del writer.put
            al.flush()
            all1 = time.process_time()
            loop_best = min(loop_best, (loop1 - loop0) / args.lines * 1e6)
            all_best = min(all_best, (all1 - all0) / args.lines * 1e6)
        return loop_best, all_best

    loop_best, all_best = asyncio.run(measure())
    print(
        f"{args.format}: {loop_best:.2f} us per line on the event loop, "
        f"{all_best:.2f} us in all threads",
        file=out,
    )


if __name__ == "__main__":
    main()
