"""What the tests share: fake upstreams, bounded waits, a fake clock, request builders and
ways to start a proxy. Fixtures live in tests/conftest.py; this package holds plain code."""
