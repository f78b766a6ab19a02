"""``redis+cluster://`` URLs: the startup nodes they list, and one clear config error for
each kind of mistake."""

from __future__ import annotations

import pytest

from proxy.config.settings import ConfigError, load_settings
from proxy.store.client import RedisUrlError, cluster_nodes, is_cluster_url


def test_cluster_url_lists_startup_nodes() -> None:
    nodes = cluster_nodes("redis+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/0")
    assert [(n.host, n.port) for n in nodes] == [("10.0.0.1", 7000), ("10.0.0.2", 6379),
                                                 ("::1", 7002)]  # fmt: skip
    assert is_cluster_url("rediss+cluster://h:1")
    assert not is_cluster_url("redis://h:1")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:port", "invalid port"),
        ("redis+cluster://h:70000", "invalid port"),
        ("redis+cluster://:7000", "no host"),
        ("redis+cluster://", "at least one"),
    ],
)
def test_bad_cluster_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError, match=problem):
        cluster_nodes(url)
    with pytest.raises(ConfigError, match=f"redis_url: .*{problem}"):
        load_settings(env={}, overrides={"redis_url": url})
