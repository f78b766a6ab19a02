"""The access-log writer: one record per request, formatted in batches on the loop and
written by a thread."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
import time
from typing import Any

from proxy.cli import JsonFormatter
from proxy.observability import access_log
from proxy.observability.access_log import REQUEST_ID, ROUTE, AccessLine
from tests.support.waits import eventually


class Request(dict[Any, Any]):
    method = "POST"
    path = "/v1/audio/speech"
    remote = "127.0.0.1"


class Answer:
    status = 200
    headers: dict[str, str] = {}
    body_length = 1200
    content_length = 1000
    access_result = "hit"


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_every_request_gets_exactly_one_record_in_order() -> None:
    logger = logging.getLogger("test.access.writer")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(JsonFormatter())
    kept = Kept()
    logger.handlers[:] = [plain, kept]
    try:
        line = AccessLine(logger, "")
        before = time.time()
        for i in range(500):
            line.log(Request({REQUEST_ID: f"id-{i}", ROUTE: "openai"}), Answer(), 0.002)  # type: ignore[arg-type]
        await eventually(lambda: len(kept.records) == 500)
        access_log.flush()
        written = [json.loads(text) for text in stream.getvalue().splitlines()]
        assert [w["request_id"] for w in written] == [f"id-{i}" for i in range(500)]
        assert {(w["route"], w["result"], w["status"], w["bytes_sent"]) for w in written} == {
            ("openai", "hit", 200, 1200)
        }
        first = kept.records[0]
        assert first.name == "test.access.writer" and first.levelno == logging.INFO
        assert first.getMessage().startswith("POST /v1/audio/speech 200 hit route=openai")
        assert before <= first.created <= time.time()  # when the answer went, not later
        assert first.fields["duration_ms"] == 2.0  # type: ignore[attr-defined]
    finally:
        logger.handlers.clear()


def test_nothing_is_queued_when_info_is_off() -> None:
    logger = logging.getLogger("test.access.quiet")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    kept = Kept()
    logger.handlers[:] = [kept]
    try:
        AccessLine(logger, "").log(Request(), Answer(), 0.001)  # type: ignore[arg-type]
        access_log.flush()
        assert kept.records == []
    finally:
        logger.handlers.clear()


def _serve_formatter() -> logging.Formatter:
    """The text formatter ``serve`` configures (proxy.cli.configure_logging)."""
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


async def test_text_lines_are_those_logging_would_write_across_batches() -> None:
    """The writer formats text lines itself (the date of a second once): the same text as
    the handler's own formatter, for lines of several batches and seconds."""
    logger = logging.getLogger("test.access.text")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(_serve_formatter())
    kept = Kept()
    logger.handlers[:] = [plain, kept]
    try:
        line = AccessLine(logger, "")
        for i in range(60):
            line.log(Request({REQUEST_ID: f"id-{i}", ROUTE: "openai"}), Answer(), 0.001 * i)  # type: ignore[arg-type]
            if i % 20 == 19:  # the rest in later batches
                await eventually(lambda n=i + 1: len(kept.records) == n)
        access_log.flush()
        expected = [_serve_formatter().format(record) for record in kept.records]
        assert stream.getvalue().splitlines() == expected
        assert [r.fields["request_id"] for r in kept.records] == [f"id-{i}" for i in range(60)]  # type: ignore[attr-defined]
        assert kept.records[7].fields["duration_ms"] == 7.0  # type: ignore[attr-defined]
    finally:
        logger.handlers.clear()


def test_a_line_logged_with_no_event_loop_is_written_at_once() -> None:
    logger = logging.getLogger("test.access.noloop")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    logger.handlers[:] = [logging.StreamHandler(stream)]
    try:
        AccessLine(logger, "").log(Request({REQUEST_ID: "alone"}), Answer(), 0.001)  # type: ignore[arg-type]
        assert "id=alone" in stream.getvalue()
    finally:
        logger.handlers.clear()


async def test_filters_and_levels_of_loggers_and_handlers_are_honoured() -> None:
    logger = logging.getLogger("test.access.filters")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addFilter(lambda record: not record.fields["request_id"].startswith("drop"))  # type: ignore[attr-defined]
    evens, everything, above = io.StringIO(), io.StringIO(), io.StringIO()
    even = logging.StreamHandler(evens)
    even.addFilter(lambda record: int(record.fields["request_id"][-1]) % 2 == 0)  # type: ignore[attr-defined]
    quiet = logging.StreamHandler(above)
    quiet.setLevel(logging.WARNING)
    kept = Kept()
    logger.handlers[:] = [even, logging.StreamHandler(everything), quiet, kept]
    try:
        line = AccessLine(logger, "")
        for name in ("keep-1", "drop-2", "keep-2", "keep-3", "keep-4"):
            line.log(Request({REQUEST_ID: name}), Answer(), 0.001)  # type: ignore[arg-type]
        await eventually(lambda: len(kept.records) == 4)
        access_log.flush()

        def ids(stream: io.StringIO) -> list[str]:
            return [text.rsplit("id=", 1)[1] for text in stream.getvalue().splitlines()]

        assert ids(everything) == ["keep-1", "keep-2", "keep-3", "keep-4"]
        assert ids(evens) == ["keep-2", "keep-4"]
        assert above.getvalue() == ""
    finally:
        logger.handlers.clear()
        logger.filters.clear()


def test_a_batch_left_by_a_closed_loop_goes_out_with_the_next_line() -> None:
    """Its timer died with its loop: the next line, on another loop, ends it too."""
    logger = logging.getLogger("test.access.loops")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    kept = Kept()
    logger.handlers[:] = [kept]
    line = AccessLine(logger, "")

    async def log(names: list[str]) -> None:
        for name in names:
            line.log(Request({REQUEST_ID: name}), Answer(), 0.001)  # type: ignore[arg-type]

    try:
        first = asyncio.new_event_loop()
        first.run_until_complete(log(["a", "b"]))
        first.close()  # before the batch's timer fired
        assert kept.records == []

        async def then() -> None:
            await log(["c"])
            await eventually(lambda: len(kept.records) == 3)

        asyncio.run(then())
        assert [r.fields["request_id"] for r in kept.records] == ["a", "b", "c"]  # type: ignore[attr-defined]
    finally:
        logger.handlers.clear()


def test_lines_still_waiting_at_exit_are_written_in_order() -> None:
    """A process that stops right after answering still writes every line (atexit)."""
    program = textwrap.dedent(
        """
        import asyncio, logging, sys
        from proxy.observability.access_log import REQUEST_ID, AccessLine
        class Request(dict):
            method = "POST"; path = "/v1/audio/speech"; remote = "127.0.0.1"
        class Answer:
            status = 200; headers = {}; body_length = 10; content_length = 5
            access_result = "hit"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        line = AccessLine(logging.getLogger("proxy.access"), "")
        async def main():
            for i in range(300):
                line.log(Request({REQUEST_ID: f"id-{i}"}), Answer(), 0.001)
        asyncio.run(main())  # the loop closes with the last batch still waiting
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    ids = [text.rsplit("id=", 1)[1] for text in done.stderr.splitlines() if "id=" in text]
    assert ids == [f"id-{i}" for i in range(300)]


async def test_serve_s_own_configuration_writes_whole_lines_without_records() -> None:
    """One stream handler with the text formatter, as ``serve`` has: lines are written
    without a record being made, and read as logging would write them."""
    logger = logging.getLogger("test.access.served")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(_serve_formatter())
    logger.handlers[:] = [plain]
    try:
        line = AccessLine(logger, "")
        for i in range(3):
            line.log(Request({REQUEST_ID: f"id-{i}", ROUTE: "openai"}), Answer(), 0.002)  # type: ignore[arg-type]
        await eventually(lambda: stream.getvalue().count("\n") == 3)
        pattern = re.compile(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO test\.access\.served: "
            r"POST /v1/audio/speech 200 hit route=openai bytes=1200 2\.0ms id=id-(\d)"
        )
        found = [pattern.fullmatch(text) for text in stream.getvalue().splitlines()]
        assert [m.group(1) if m else None for m in found] == ["0", "1", "2"]
    finally:
        logger.handlers.clear()
