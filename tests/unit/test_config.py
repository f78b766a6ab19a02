"""Settings: defaults, YAML, environment precedence, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.settings import SEED_CONTENT_TYPE_TTLS, ConfigError, load_settings
from tests.support.paths import ROOT

CONFIG_DIR = ROOT / "config"


def test_defaults_are_the_seeds() -> None:
    s = load_settings(env={})
    assert s.audio_cache_enabled is True
    assert s.audio_cache_ttl_seconds == 86400
    assert s.audio_cache_max_size_mb == 100
    assert s.audio_cache_compression_enabled is True
    assert s.audio_cache_compression_threshold_kb == 100
    assert s.audio_cache_compression_level == 6
    assert s.audio_cache_cleanup_threshold_percent == 95
    assert s.audio_cache_target_size_percent == 80
    assert dict(s.audio_cache_content_type_ttls) == SEED_CONTENT_TYPE_TTLS
    assert s.ttl_for("availability_response") == 12 * 3600
    assert s.ttl_for("something_else") == 86400
    assert s.ttl_for(None) == 86400


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_config_files_load(name: str) -> None:
    load_settings(CONFIG_DIR / name, env={})


def test_default_yaml_spells_out_every_setting() -> None:
    import yaml

    from proxy.config.settings import Settings

    documented = set(yaml.safe_load((CONFIG_DIR / "default.yaml").read_text()))
    secrets = ("upstream_api_key", "admin_token", "audio_cache_key_secret")  # environment only
    settable = {f for f in Settings.__dataclass_fields__ if f not in secrets}
    assert settable - documented == set()


def test_precedence_yaml_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("audio_cache_max_size_mb: 10\nport: 9001\nupstream_url: http://a:1\n")
    s = load_settings(path, env={"AUDIO_CACHE_MAX_SIZE_MB": "20", "PORT": "9002"})
    assert (s.audio_cache_max_size_mb, s.port, s.upstream_url) == (20, 9002, "http://a:1")
    s = load_settings(path, env={"PORT": "9002"}, overrides={"port": 9003})
    assert s.port == 9003


def test_env_booleans_and_structures() -> None:
    env = {
        "AUDIO_CACHE_ENABLED": "false",
        "AUDIO_CACHE_CONTENT_TYPE_TTLS": '{"welcome_message": 60}',
        "ROUTES": "[openai]",
    }
    s = load_settings(env=env)
    assert s.audio_cache_enabled is False
    assert dict(s.audio_cache_content_type_ttls) == {"welcome_message": 60}
    assert [r.name for r in s.rules] == ["openai"]


@pytest.mark.parametrize(
    ("yaml_text", "env", "fragment"),
    [
        (
            "audio_cache_compression_level: 12\n",
            {},
            "audio_cache_compression_level: must be between 1 and 9",
        ),
        ("audio_cache_enabled: maybe\n", {}, "audio_cache_enabled: expected true or false"),
        ("audio_cache_max_size_mb: lots\n", {}, "audio_cache_max_size_mb: expected float"),
        ("no_such_setting: 1\n", {}, "no_such_setting: unknown setting"),
        ("upstream_api_key: sk-123\n", {}, "upstream_api_key: secrets are never read from YAML"),
        ("routes: [openai, nope]\n", {}, "unknown route preset 'nope'"),
        ("routes: [{name: x, method: GET, path: /a}]\n", {}, "route field 'text' is required"),
        ("upstream_url: ftp://x\n", {}, "upstream_url: expected http(s)://"),
        ("redis_url: mysql://x\n", {}, "redis_url: expected redis://"),
        ("log_format: xml\n", {}, "log_format: must be one of ['text', 'json']"),
        (
            "audio_cache_target_size_percent: 96\n",
            {},
            "audio_cache_target_size_percent: must be below",
        ),
        ("- a\n- b\n", {}, "the top level must be a mapping"),
        ("a: [\n", {}, "not valid YAML"),
        ("", {"AUDIO_CACHE_TTL_SECONDS": "1.5"}, "audio_cache_ttl_seconds: expected int"),
        (
            "audio_cache_content_type_rules: [{pattern: '(', content_type: x}]\n",
            {},
            "invalid regex",
        ),
        ("audio_cache_content_type_ttls: {'Bad Name': 5}\n", {}, "content type 'Bad Name'"),
    ],
)
def test_bad_settings_name_the_field(
    tmp_path: Path, yaml_text: str, env: dict[str, str], fragment: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_secrets_from_env_and_files(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    s = load_settings(env={"UPSTREAM_API_KEY": "sk-1", "ADMIN_TOKEN_FILE": str(secret)})
    assert (s.upstream_api_key, s.admin_token) == ("sk-1", "s3cret")
    assert s.public()["upstream_api_key"] == "***"
    assert "sk-1" not in repr(s)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "absent.yaml", env={})
