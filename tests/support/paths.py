"""Where the repository's files are, for tests that read them (config/, deploy/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
