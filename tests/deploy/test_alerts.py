"""deploy/prometheus/alerts.yaml: checked and unit-tested by promtool.

deploy/prometheus/tests/*.test.yaml feed each alert input series and say when it must be
inactive, pending or firing. promtool comes from Debian's ``prometheus`` package (.ci/run
installs it); without it these tests skip on a developer's machine and fail in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yaml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must run the alert tests", pytrace=False)
        pytest.skip(message)
    return found


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = _run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_rules_pass_their_promtool_tests(promtool: str) -> None:
    assert RULE_TESTS
    result = _run(promtool, "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_is_shown_firing_then_resolved() -> None:
    """Each alert has a test case where it fires at one time and is inactive later."""
    shown: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../alerts.yaml"], path
        for case in document["tests"]:
            by_alert: dict[str, list[tuple[float, bool]]] = {}
            for check in case.get("alert_rule_test", []):
                when = _seconds(check["eval_time"])
                by_alert.setdefault(check["alertname"], []).append(
                    (when, bool(check["exp_alerts"]))
                )
            for alert, checks in by_alert.items():
                fired = [t for t, firing in checks if firing]
                if fired and any(t > min(fired) and not firing for t, firing in checks):
                    shown.add(alert)
    assert {rule["alert"] for rule in _rules()} - shown == set()


def test_no_rule_needs_older_history_than_its_windows() -> None:
    """An ``offset`` (e.g. the same hour yesterday) cannot fire on a new Prometheus."""
    for rule in _rules():
        assert "offset" not in rule["expr"], rule["alert"]


def test_the_rule_tests_catch_a_slower_or_laxer_rule(promtool: str, tmp_path: Path) -> None:
    text = RULES.read_text()
    laxer = text.replace("for: 1m", "for: 3m").replace(") < 0.5 * (", ") < 0.2 * (")
    assert laxer != text and laxer.count("for:") == text.count("for:")
    (tmp_path / "alerts.yaml").write_text(laxer)
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    result = _run(promtool, "test", "rules", *sorted((tmp_path / "tests").iterdir()))
    assert result.returncode != 0
    for alert in ("TTSCacheRedisDown", "TTSCacheHitRatioCollapsed"):
        assert f"alertname: {alert}," in result.stdout + result.stderr, alert


def _seconds(duration: str) -> float:
    """A Prometheus duration such as ``1h2m30s`` in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in parts)
