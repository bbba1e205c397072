"""append_batch_if_last on PostgreSQL: one call at the expected runSeq, another process's write
seen (the process's cached runSeq does not decide), duplicates answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dvt_statestore_pg.store import PostgresRunStateStore
from tests import conditional_append_checks as checks


async def test_pg_batch_appends_only_at_the_expected_run_seq(
    pg_store: PostgresRunStateStore,
) -> None:
    await checks.appends_only_at_the_expected_run_seq(pg_store)


async def test_pg_batch_refuses_once_another_process_moved_the_run(
    pg_store: PostgresRunStateStore,
    pg_store_factory: Callable[[], Awaitable[PostgresRunStateStore]],
) -> None:
    await checks.refuses_once_another_writer_moved_the_run(pg_store, await pg_store_factory())


async def test_pg_batch_answers_stored_keys_as_duplicates(
    pg_store: PostgresRunStateStore,
) -> None:
    await checks.answers_stored_keys_as_duplicates(pg_store)
