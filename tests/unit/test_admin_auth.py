"""Who may call the admin API, as pure rules: loopback addresses, bearer tokens, and the
warning at start-up when no token is configured."""

from __future__ import annotations

import pytest

from proxy.admin.auth import bearer_token, is_loopback, token_matches
from proxy.app import create_app
from proxy.config.settings import load_settings

WITH_TOKEN = {"ADMIN_TOKEN": "s3cret-admin-token"}


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    for remote in ("10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "2001:db8::1", "", None, "x"):
        assert not is_loopback(remote)


def test_bearer_parsing_and_comparison() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None
    assert token_matches("abc", "abc") and not token_matches("abd", "abc")
    assert not token_matches("ab", "abc") and not token_matches("\udcff", "abc")


def test_start_up_warns_when_no_admin_token_is_configured(caplog: pytest.LogCaptureFixture) -> None:
    overrides = {"upstream_url": "http://127.0.0.1:9"}
    with caplog.at_level("WARNING", logger="proxy.admin.auth"):
        create_app(load_settings(env=WITH_TOKEN, overrides=overrides), redis_url="redis://x:1")
        assert not caplog.records
        create_app(load_settings(env={}, overrides=overrides), redis_url="redis://x:1")
    assert [r.getMessage() for r in caplog.records] == [
        "no admin token configured (ADMIN_TOKEN / ADMIN_TOKEN_FILE): "
        "the admin API answers loopback clients only"
    ]
