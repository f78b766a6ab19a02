"""Settings: one place that reads YAML and the environment, validates, and says what is wrong.

Precedence: built-in defaults < YAML file < environment (setting name upper-cased) <
command-line flags. Secrets come from the environment (or a ``*_FILE`` path), never YAML.
The definitions are in :mod:`.model`, reading in :mod:`.loading`, checks across settings
in :mod:`.checks`; this module gathers the names the rest of the proxy uses.
"""

from __future__ import annotations

from .errors import ConfigError, ConfigErrors
from .files import load_client_keys
from .loading import env_name, load_settings, unknown_env_warnings
from .model import (
    AUTH_MODES,
    CONTENT_TYPE_NAME,
    SEED_CONTENT_TYPE_FACTORS,
    SEED_CONTENT_TYPE_TTLS,
    ContentTypeRule,
    Settings,
    is_loopback,
)

__all__ = [
    "AUTH_MODES",
    "CONTENT_TYPE_NAME",
    "SEED_CONTENT_TYPE_FACTORS",
    "SEED_CONTENT_TYPE_TTLS",
    "ConfigError",
    "ConfigErrors",
    "ContentTypeRule",
    "Settings",
    "env_name",
    "is_loopback",
    "load_client_keys",
    "load_settings",
    "unknown_env_warnings",
]
