"""YAML files the settings name: the settings file itself and the client keys file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..core.clients import ClientKeys, KeyFileError, parse_keys
from .errors import ConfigError


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def read_yaml(path: Path) -> dict[Any, Any]:
    """The settings file: a mapping of setting names (empty file: no settings)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {yaml_problem(exc)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of settings")
    return document


def load_client_keys(path: str) -> ClientKeys:
    """The client keys file at ``path``; ConfigError naming the bad entry and field."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"client_keys_file: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"client_keys_file {path}: not valid YAML: {yaml_problem(exc)}") from None
    try:
        return parse_keys(document, source=f"client_keys_file {path}")
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
