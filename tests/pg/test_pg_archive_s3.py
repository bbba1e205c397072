"""The cold archive on the S3-protocol server (S3Proxy): the same reads as before archiving."""

from __future__ import annotations

from datetime import timedelta

from archive_helpers import drain_outbox, hot_counts, read_all, seed_runs

from dvt_archive.archiver import archive_runs
from dvt_archive.reader import ParquetColdReader
from dvt_archive.rebuild import rebuild_from_cold
from dvt_local.s3 import S3Server
from dvt_statestore_pg.store import PostgresRunStateStore


async def test_runs_archived_to_s3_read_identically(
    pg_store: PostgresRunStateStore, pg_store_url: str, pg_dsn: str, pg_schema: str,
    dvt_s3_server: S3Server, dvt_s3_artifacts_url: str,
) -> None:
    options = dvt_s3_server.client_options()
    runs = await seed_runs(pg_store, ["diamond", "approval-rejected", "cancel-mid-run"], "s3")
    before = await read_all(pg_store, runs)
    await drain_outbox(pg_store)
    report = await archive_runs(pg_store_url, dvt_s3_artifacts_url, older_than=timedelta(0),
                                **options)
    assert report.runs == len(runs)
    assert report.root == dvt_s3_artifacts_url
    assert set(hot_counts(pg_dsn, pg_schema, runs).values()) == {0}

    # The store reads the bucket with the credentials it is given (never from the registry).
    reader = ParquetColdReader(dvt_s3_artifacts_url, **options)
    assert await read_all(pg_store, runs, reader) == before
    rebuilt = await rebuild_from_cold(pg_store_url, **options)
    assert rebuilt.differed == []
    assert rebuilt.runs == len(runs)
    assert await read_all(pg_store, runs, reader) == before
