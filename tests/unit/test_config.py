"""Settings: defaults, YAML, environment precedence, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.settings import SEED_CONTENT_TYPE_TTLS, ConfigError, ConfigErrors, load_settings
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

    from proxy.config.model import SECRETS
    from proxy.config.settings import Settings

    documented = set(yaml.safe_load((CONFIG_DIR / "default.yaml").read_text()))
    settable = {f for f in Settings.__dataclass_fields__ if f not in SECRETS}
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


def _problems(tmp_path: Path, yaml_text: str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigErrors) as info:
        load_settings(path, env=env or {})
    return list(info.value.problems)


def test_every_problem_is_reported_at_once_each_naming_its_field(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        "audio_cache_ttl_secnds: 5\n"
        "audio_cache_compression_level: 0\n"
        "log_format: jsn\n"
        "audio_cache_content_type_ttls: {welcome_message: 0, room_options: 60}\n"
        "tenants: {acme: {quota_mb: 0}, globex: {quota: 5}}\n"
        "routes: [openai, elevenlabz, {name: x, method: GET, path: /a}]\n",
        env={"PORT": "http"},
    )
    assert problems == [
        "audio_cache_ttl_secnds: unknown setting; did you mean 'audio_cache_ttl_seconds'? "
        "(see config/default.yaml)",
        "audio_cache_compression_level: must be between 1 and 9, got 0",
        "log_format: must be one of ['text', 'json'], got 'jsn'; did you mean 'json'?",
        "audio_cache_content_type_ttls.welcome_message: must be at least 1, got 0",
        "tenants.acme.quota_mb: must be greater than 0, got 0",
        "tenants.globex.quota: unknown key; did you mean 'quota_mb'? (allowed: enabled, "
        "namespace, quota_mb, ttl_seconds, ttls, requests_per_minute, upstream_characters_per_day, audio_cache_segments)",
        "routes[1]: unknown route preset 'elevenlabz'; presets: ['azure', 'cartesia', 'deepgram', 'elevenlabs', 'get', 'google', 'openai', 'polly']; "
        "did you mean 'elevenlabs'?",
        "routes[2].text: route field 'text' is required and must be a string",
        "port: expected int, got 'http' (from PORT)",
    ]


def test_one_problem_is_still_a_config_error_of_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AUDIO_CACHE_ENABLED": "maybe"})
    assert isinstance(info.value, ConfigErrors)
    assert info.value.problems == (
        "audio_cache_enabled: expected true or false, got 'maybe' (from AUDIO_CACHE_ENABLED)",
    )


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ('port: "8080"\n', "port: expected int, got '8080' (a string: unquote it)"),
        ("port: 8080.5\n", "port: expected int (a whole number), got 8080.5"),
        (
            "audio_cache_ttl_seconds: 100.0\n",
            "audio_cache_ttl_seconds: expected int (a whole number), got 100.0",
        ),
        (
            'audio_cache_enabled: "no"\n',
            "audio_cache_enabled: expected true or false (unquoted), got 'no'",
        ),
        (
            "audio_cache_enabled: 1\n",
            "audio_cache_enabled: expected true or false (unquoted), got 1",
        ),
        (
            "audio_cache_key_prefix: 123\n",
            "audio_cache_key_prefix: expected a string, got 123 (quote it in YAML)",
        ),
        (
            'audio_cache_content_type_ttls: {welcome_message: "60"}\n',
            "audio_cache_content_type_ttls.welcome_message: expected int, got '60' (a string: unquote it)",
        ),
        (
            "cost_per_million_characters: {openai: -1}\n",
            "cost_per_million_characters.openai: must be at least 0, got -1",
        ),
        (
            "client_key_headers: [x-key, 'bad header']\n",
            "client_key_headers[1]: expected an HTTP header name, got 'bad header'",
        ),
        (
            "audio_cache_cleanup_content_type_factors: {room_options: 2}\n",
            "audio_cache_cleanup_content_type_factors.room_options: must be between 0 and 1, got 2",
        ),
    ],
)
def test_yaml_values_keep_their_yaml_type(tmp_path: Path, yaml_text: str, problem: str) -> None:
    assert _problems(tmp_path, yaml_text) == [problem]


def test_yaml_booleans_and_whole_numbers_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("audio_cache_enabled: no\naccess_log: off\naudio_cache_max_size_mb: 5\n")
    s = load_settings(path, env={})
    assert (s.audio_cache_enabled, s.access_log, s.audio_cache_max_size_mb) == (False, False, 5.0)
    assert isinstance(s.audio_cache_max_size_mb, float)


def test_environment_text_is_parsed_strictly() -> None:
    s = load_settings(env={"PORT": "8080", "AUDIO_CACHE_MAX_SIZE_MB": "2.5", "ACCESS_LOG": "no"})
    assert (s.port, s.audio_cache_max_size_mb, s.access_log) == (8080, 2.5, False)
    for env, problem in [
        ({"PORT": "100.5"}, "port: expected int, got '100.5' (from PORT)"),
        ({"AUDIO_CACHE_MAX_SIZE_MB": "nan"}, "audio_cache_max_size_mb: expected a finite number"),
        ({"ACCESS_LOG": "enabled"}, "access_log: expected true or false, got 'enabled'"),
        ({"ADMIN_PORT": "0x1f90"}, "admin_port: expected int, got '0x1f90'"),
    ]:
        with pytest.raises(ConfigErrors) as info:
            load_settings(env=env)
        assert [p for p in info.value.problems if p.startswith(problem)], (env, info.value.problems)


def test_a_file_mistake_is_reported_even_when_the_environment_overrides_it(tmp_path: Path) -> None:
    assert _problems(tmp_path, 'port: "8080"\n', env={"PORT": "9000"}) == [
        "port: expected int, got '8080' (a string: unquote it)"
    ]


def test_a_check_across_settings_is_skipped_when_its_input_is_invalid(tmp_path: Path) -> None:
    """The default standing in for a bad value must not draw a second, misleading complaint."""
    assert _problems(tmp_path, "audio_cache_target_size_percent: 99.5\n") == [
        "audio_cache_target_size_percent: must be below audio_cache_cleanup_threshold_percent "
        "(99.5 >= 95.0)"
    ]
    assert _problems(
        tmp_path, "audio_cache_target_size_percent: 96\naudio_cache_cleanup_threshold_percent: x\n"
    ) == ["audio_cache_cleanup_threshold_percent: expected float, got 'x'"]


def test_environment_typos_are_warned_with_a_suggestion(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "AUDIO_CACHE_TTL_SECNDS": "60",
        "UPSTREAM_URLL": "http://a",
        "TENANT_HEADR": "X-Tenant",
        # Not settings, and not warned about: secret files, other programs' names.
        "ADMIN_TOKEN_FILE": "/dev/null",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/m",
        "REDIS_SERVICE_HOST": "10.0.0.1",
        "REDIS_PORT": "tcp://10.0.0.1:6379",
        "REDIS_PORT_6379_TCP_ADDR": "10.0.0.1",
        "HOSTNAME": "pod-1",
        "PATH": "/usr/bin",
    }
    warnings: list[str] = []
    settings = load_settings(env=env, warnings=warnings)
    assert settings.audio_cache_ttl_seconds == 86400  # ignored, as the warning says
    assert warnings == [
        "AUDIO_CACHE_TTL_SECNDS: not a setting, ignored; did you mean 'AUDIO_CACHE_TTL_SECONDS'?",
        "TENANT_HEADR: not a setting, ignored; did you mean 'TENANT_HEADER'?",
        "UPSTREAM_URLL: not a setting, ignored; did you mean 'UPSTREAM_URL'?",
    ]
    with caplog.at_level("WARNING", logger="proxy.config"):
        load_settings(env={"REDIS_URLL": "redis://x"})
    assert [r.getMessage() for r in caplog.records] == [
        "environment: REDIS_URLL: not a setting, ignored; did you mean 'REDIS_URL'?"
    ]


def test_the_reference_lists_every_setting_with_its_default_and_environment_name() -> None:
    from proxy.config.model import FIELDS, SECRETS
    from proxy.config.reference import default_text, render_reference

    sections = render_reference().split("\n## ")[1:]
    by_name = {s.split("`")[1]: s for s in sections}
    assert list(by_name) == list(FIELDS)
    for name, section in by_name.items():
        assert f"- Environment: `{name.upper()}`" in section
        assert f"- Default: `{default_text(name)}`" in section
        assert section.split("\n")[2].strip(), f"{name} has no description"
        if name in SECRETS:
            assert f"`{name.upper()}_FILE` (environment only)" in section
    assert "- Default: `86400`" in by_name["audio_cache_ttl_seconds"]
    assert "- Allowed: 1 to 9" in by_name["audio_cache_compression_level"]
    assert "- Allowed: one of `text`, `json`" in by_name["log_format"]


def test_the_committed_reference_is_up_to_date() -> None:
    from proxy.config.reference import render_reference

    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/configuration.md is stale: tts-cache-proxy settings-reference > docs/configuration.md"
    )
