"""The access-log writer: one record per request, written by a thread in batches."""

from __future__ import annotations

import io
import json
import logging
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
