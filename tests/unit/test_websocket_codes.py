"""The close codes the WebSocket relay passes on (pure)."""

from __future__ import annotations

import pytest

from proxy.request.websocket import sendable


@pytest.mark.parametrize(
    ("received", "failed", "sent"),
    [
        (1000, False, 1000),
        (4001, False, 4001),
        (1011, False, 1011),
        (None, False, 1000),
        (1005, False, 1000),  # "no status" may not be sent: a plain close
        (1006, True, 1011),  # an abnormal end is said as an internal error
        (1015, True, 1011),
        (999, False, 1000),
        (5000, True, 1011),
    ],
)
def test_codes_that_may_not_be_sent_are_replaced(
    received: int | None, failed: bool, sent: int
) -> None:
    assert sendable(received, failed=failed) == sent
