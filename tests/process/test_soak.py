"""A short soak in CI: mixed hits, misses, purges and cleanups; every byte checked."""

from __future__ import annotations

from bench.soak import run_soak


async def test_short_soak_serves_only_correct_audio() -> None:
    # 12 s and at least 100 requests, however busy the machine (never past 120 s): what is
    # asserted is correctness, not throughput.
    report = await run_soak(12, concurrency=6, min_requests=100, max_seconds=120)
    table = "\n" + report.table()
    print(table)
    assert report.requests >= 100 or report.seconds >= 120, table
    assert report.errors == 0, table
    assert report.wrong_bytes == 0, table
    assert report.results["HIT"] > 0 and report.results["MISS"] > 0, table
    assert report.cleanups > 0 and report.purges > 0, table
    assert report.fds_end <= report.fds_start + 2, table
    assert report.rss_end_kb - report.rss_warm_kb < 40 * 1024, table
