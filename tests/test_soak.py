"""A short soak in CI: mixed hits, misses, purges and cleanups; every byte checked."""

from __future__ import annotations

from bench.soak import run_soak


async def test_short_soak_serves_only_correct_audio() -> None:
    report = await run_soak(12, concurrency=6)
    print("\n" + report.table())
    assert report.requests > 100  # enough to mean something on a busy 2-core machine
    assert report.errors == 0
    assert report.wrong_bytes == 0
    assert report.results["HIT"] > 0 and report.results["MISS"] > 0
    assert report.cleanups > 0 and report.purges > 0
    assert report.fds_end <= report.fds_start + 2
    assert report.rss_end_kb - report.rss_warm_kb < 40 * 1024
