"""The Lua scripts in ``proxy/store/scripts``: real files, loaded once as package data.

Each becomes a redis-py ``Script`` (SHA computed once; EVALSHA, reloaded on NOSCRIPT,
usable in pipelines). Redis cannot ``require`` a file, so a script that uses the shared
helpers runs as the text of ``prelude.lua`` followed by its own. Redis reports an error's
line as ``user_script:N`` in that joined text; :meth:`Source.located` rewrites it to the
file and line it comes from (``put.lua:9``, ``prelude.lua:40``), so it can be looked up.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

PRELUDE = "prelude"
_USER_SCRIPT = re.compile(r"user_script:(\d+)")


def read(name: str) -> str:
    """The text of ``scripts/<name>.lua``, from the installed package."""
    return resources.files("proxy.store").joinpath("scripts", f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True)
class Source:
    """What Redis runs for one script, and where each of its lines comes from."""

    name: str
    text: str
    prelude_lines: int  # lines of prelude.lua before the script's own first line

    def where(self, line: int) -> tuple[str, int]:
        """(file, line in it) of line ``line`` of the text Redis runs."""
        if line <= self.prelude_lines:
            return f"{PRELUDE}.lua", line
        return f"{self.name}.lua", line - self.prelude_lines

    def located(self, exc: ResponseError) -> ResponseError:
        """``exc`` with each ``user_script:N`` replaced by its file and line (same class,
        so callers and the circuit breaker treat it as before); ``exc`` itself if it
        names no line."""
        message = str(exc)
        if _USER_SCRIPT.search(message) is None:
            return exc

        def named(match: re.Match[str]) -> str:
            file, line = self.where(int(match[1]))
            return f"{file}:{line}"

        return type(exc)(_USER_SCRIPT.sub(named, message))


@cache
def source(name: str, *, prelude: bool = False) -> Source:
    """``scripts/<name>.lua``, after ``prelude.lua`` when ``prelude``; read once."""
    own = read(name)
    if not prelude:
        return Source(name, own, 0)
    shared = read(PRELUDE)
    if not shared.endswith("\n"):
        shared += "\n"
    return Source(name, shared + own, shared.count("\n"))


class Lua:
    """One script of ``proxy/store/scripts``, registered on one client."""

    def __init__(self, redis: Any, name: str, *, prelude: bool = False) -> None:
        self.source = source(name, prelude=prelude)
        self._script = redis.register_script(self.source.text)

    @property
    def sha(self) -> str:
        """The script's SHA1, for an EVALSHA sent some other way (NOSCRIPT: call it here)."""
        sha: str = self._script.sha
        return sha

    async def __call__(
        self, *, keys: Sequence[Any], args: Sequence[Any], client: Any = None
    ) -> Any:
        """Run it (``client``: a pipeline to queue it on instead)."""
        with self.located_errors():
            return await self._script(keys=keys, args=args, client=client)

    @contextlib.contextmanager
    def located_errors(self) -> Iterator[None]:
        """Errors of this script raised inside (e.g. by a pipeline it was queued on) name
        the file and line they come from."""
        try:
            yield
        except ResponseError as exc:
            located = self.source.located(exc)
            if located is exc:
                raise
            raise located from exc
