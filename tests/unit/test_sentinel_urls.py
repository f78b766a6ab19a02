"""``redis+sentinel://`` URLs: the sentinels, the master's service name and database, and a
clear config error for each kind of mistake."""

from __future__ import annotations

import pytest

from proxy.config.settings import ConfigError, load_settings
from proxy.store.client import RedisUrlError, is_sentinel_url, sentinel_target


def test_sentinel_url_names_sentinels_service_and_db() -> None:
    url = "redis+sentinel://user:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:26380/tts%20cache/2"
    sentinels, service, db = sentinel_target(url)
    assert sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 6379), ("::1", 26380)]
    assert (service, db) == ("tts cache", 2)
    assert sentinel_target("redis+sentinel://h:1/main")[1:] == ("main", 0)
    assert is_sentinel_url("rediss+sentinel://h:1/main")
    assert not is_sentinel_url("redis+cluster://h:1")
    load_settings(env={}, overrides={"redis_url": url})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:1", "service_name"),
        ("redis+sentinel://h:1/main/x", "invalid database"),
        ("redis+sentinel://h:1/main/0/extra", "service_name"),
        ("redis+sentinel://h:port/main", "invalid port"),
        ("redis+sentinel:///main", "at least one"),
    ],
)
def test_bad_sentinel_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError, match=problem):
        sentinel_target(url)
    with pytest.raises(ConfigError, match=f"redis_url: .*{problem}"):
        load_settings(env={}, overrides={"redis_url": url})
