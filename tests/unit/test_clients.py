"""The client keys file, how a request presents its key, and the settings that choose how
clients are known: pure functions (no store, no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config.settings import ConfigError, load_settings
from proxy.core.clients import (
    ClientKeys,
    KeyFileError,
    credential_digest,
    digest_of,
    parse_keys,
    presented_key,
)

DIGEST = digest_of("sk-front-desk")


def test_a_full_entry_is_read_with_its_tenant_limits_and_rights() -> None:
    keys = parse_keys(
        {
            "keys": [
                {
                    "sha256": DIGEST.upper(),
                    "name": "front-desk",
                    "tenant": "hotel-a",
                    "requests_per_minute": 600,
                    "upstream_characters_per_day": 200_000,
                    "may_classify": True,
                    "may_refresh": True,
                }
            ]
        }
    )
    key = keys.find("sk-front-desk")
    assert key is not None
    assert (key.digest, key.name, key.tenant) == (DIGEST, "front-desk", "hotel-a")
    assert (key.requests_per_minute, key.upstream_characters_per_day) == (600, 200_000)
    assert key.may_classify and key.may_refresh


def test_defaults_name_the_key_by_its_digest_and_grant_no_rights() -> None:
    key = parse_keys({"keys": [{"sha256": DIGEST}]}).find("sk-front-desk")
    assert key is not None
    assert key.name == f"key-{DIGEST[:12]}"
    assert key.tenant is None and key.requests_per_minute is None
    assert not key.may_classify and not key.may_refresh


def test_a_wrong_or_missing_key_finds_nothing() -> None:
    keys = parse_keys({"keys": [{"sha256": DIGEST}]})
    assert keys.find("sk-front-desk ") is None
    assert keys.find("SK-FRONT-DESK") is None
    assert keys.find(None) is None
    assert keys.find(DIGEST) is None  # the digest itself is not a key
    assert len(parse_keys({"keys": []})) == 0
    assert len(parse_keys({"keys": None})) == 0


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ([], "keys: [...]"),
        ({"keys": [], "extra": 1}, "keys: [...]"),
        ({"keys": {"a": 1}}, "keys: expected a list"),
        ({"keys": ["abc"]}, "keys[0]"),
        ({"keys": [{"sha256": "abc"}]}, "keys[0].sha256"),
        ({"keys": [{"sha256": DIGEST}, {"sha256": DIGEST}]}, "keys[1].sha256: listed twice"),
        ({"keys": [{"sha256": DIGEST, "key": "x"}]}, "unknown field(s) ['key']"),
        ({"keys": [{"sha256": DIGEST, "name": "a b"}]}, "keys[0].name"),
        ({"keys": [{"sha256": DIGEST, "tenant": "a/b"}]}, "keys[0].tenant"),
        ({"keys": [{"sha256": DIGEST, "requests_per_minute": 0}]}, "requests_per_minute"),
        ({"keys": [{"sha256": DIGEST, "requests_per_minute": True}]}, "requests_per_minute"),
        ({"keys": [{"sha256": DIGEST, "upstream_characters_per_day": "9"}]}, "characters_per"),
        ({"keys": [{"sha256": DIGEST, "may_refresh": "yes"}]}, "keys[0].may_refresh"),
    ],
)
def test_a_malformed_file_names_the_entry_and_field(document: Any, names: str) -> None:
    with pytest.raises(KeyFileError, match=None) as raised:
        parse_keys(document, source="keys.yaml")
    assert names in str(raised.value)
    assert str(raised.value).startswith("keys.yaml")


def test_presented_key_reads_bearer_token_and_the_sdk_headers() -> None:
    assert presented_key({"authorization": "Bearer sk-1"}) == "sk-1"
    assert presented_key({"authorization": "bearer   sk-1  "}) == "sk-1"
    assert presented_key({"authorization": "Token dg-1"}) == "dg-1"
    assert presented_key({"xi-api-key": "el-1"}) == "el-1"
    assert presented_key({"x-api-key": "ca-1"}) == "ca-1"
    assert presented_key({"x-goog-api-key": "g-1"}) == "g-1"
    # Authorization is looked at first; a scheme that carries no key falls to the next.
    assert presented_key({"authorization": "Bearer a", "xi-api-key": "b"}) == "a"
    assert presented_key({"authorization": "Basic dXNlcjpwYXNz", "xi-api-key": "b"}) == "b"
    assert presented_key({"authorization": "Basic dXNlcjpwYXNz"}) is None
    assert presented_key({"authorization": "Bearer "}) is None
    assert presented_key({"xi-api-key": "  "}) is None
    assert presented_key({}) is None


def test_presented_key_only_reads_the_headers_it_is_given() -> None:
    headers = {"authorization": "Bearer a", "x-proxy-key": "p"}
    assert presented_key(headers, ("x-proxy-key",)) == "p"
    assert presented_key({"authorization": "Bearer a"}, ("x-proxy-key",)) is None


def test_keys_iterate_and_count() -> None:
    other = digest_of("sk-other")
    keys = parse_keys({"keys": [{"sha256": DIGEST, "name": "a"}, {"sha256": other}]})
    assert len(keys) == 2
    assert {k.name for k in keys} == {"a", f"key-{other[:12]}"}
    assert len(ClientKeys()) == 0


def test_credential_digest_is_keyed_by_the_secret() -> None:
    a = credential_digest("authorization:Bearer sk-1", b"one")
    assert a == credential_digest("authorization:Bearer sk-1", b"one")
    assert a != credential_digest("authorization:Bearer sk-1", b"two")
    assert a != credential_digest("authorization:Bearer sk-2", b"one")
    assert "sk-1" not in a


def test_anonymous_clients_with_an_injected_key_stay_on_loopback() -> None:
    env = {"UPSTREAM_API_KEY": "sk-up"}
    for host in ("127.0.0.1", "localhost", "::1"):
        assert load_settings(env=env, overrides={"host": host}).auth_mode == "none"
    for auth in ("none", "auto"):
        with pytest.raises(ConfigError) as raised:
            load_settings(env=env, overrides={"host": "0.0.0.0", "client_auth": auth})
        assert "allow_anonymous_clients" in str(raised.value)
    consent = {"host": "0.0.0.0", "allow_anonymous_clients": True}
    assert load_settings(env=env, overrides=consent).auth_mode == "none"
    # Without an injected key nobody's account is at stake: upstream mode, any host.
    assert load_settings(env={}, overrides={"host": "0.0.0.0"}).auth_mode == "upstream"


def test_upstream_mode_refuses_an_injected_key() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"UPSTREAM_API_KEY": "sk-up"}, overrides={"client_auth": "upstream"})
    assert "client_auth" in str(raised.value)


def test_keys_mode_needs_a_valid_keys_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, overrides={"client_auth": "keys"})
    assert "client_keys_file" in str(raised.value)
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [{sha256: nope}]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, overrides={"client_keys_file": str(path)})
    assert "keys[0].sha256" in str(raised.value)
    path.write_text(f"keys: [{{sha256: {DIGEST}}}]\n", encoding="utf-8")
    assert load_settings(env={}, overrides={"client_keys_file": str(path)}).auth_mode == "keys"
