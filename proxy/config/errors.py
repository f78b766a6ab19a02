"""The errors settings raise: one problem, or every problem found at once."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A setting is invalid; the message names it and what is allowed."""

    @property
    def problems(self) -> tuple[str, ...]:
        """One line per problem, each naming its setting."""
        return (str(self),)


class ConfigErrors(ConfigError):
    """Several settings are invalid: every problem found, one line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self._problems = tuple(problems)
        super().__init__("\n".join(self._problems))

    @property
    def problems(self) -> tuple[str, ...]:
        return self._problems


def raise_all(problems: list[str]) -> None:
    """Raise every problem found, if any."""
    if problems:
        raise ConfigErrors(problems)
