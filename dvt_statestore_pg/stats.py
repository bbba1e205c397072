"""What an operator's gauges read from the store: active runs, snapshot lag, the outbox backlog.

One statement, read by the service when it is scraped (and cached there), never on a timer,
so an idle service with no scraper sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from dvt_statestore_pg.core import Conn, StoreCore
from dvt_statestore_pg.queries import TERMINAL


@dataclass(frozen=True)
class StoreStats:
    """Active runs by engine, the largest snapshot lag, and the undelivered outbox rows."""

    active_runs: dict[str, int] = field(default_factory=dict)
    snapshot_lag: int = 0
    outbox_depth: int = 0
    outbox_oldest_age_s: float = 0.0


def _query(schema: str) -> str:
    # The outbox part reads only pending rows (partial index dvt_outbox_pending). The runs part
    # scans dvt_runs (one row per run, not per event); the service caches the answer, so a
    # scraper costs at most one such read per cache period.
    return sql.SQL(
        "SELECT 'run' AS part, engine, count(*)::bigint,"
        " COALESCE(max(last_seq - snapshot_seq), 0)::float8"
        " FROM {runs} WHERE status <> ALL(%s) GROUP BY engine"
        " UNION ALL"
        " SELECT 'outbox', NULL, count(*)::bigint,"
        " COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8"
        " FROM {outbox} WHERE delivered_at IS NULL"
    ).format(runs=sql.Identifier(schema, "dvt_runs"),
             outbox=sql.Identifier(schema, "dvt_outbox")).as_string(None)


async def read_stats(store: StoreCore) -> StoreStats:
    """The store's gauges now (one query on one pooled connection)."""
    text = _query(store.config.schema)

    async def work(conn: Conn) -> list[tuple[str, str | None, int, float]]:
        cur = await conn.execute(text, (list(TERMINAL),))
        return list(await cur.fetchall())

    rows = await store._run(work)
    active: dict[str, int] = {}
    lag, depth, age = 0, 0, 0.0
    for part, engine, count, value in rows:
        if part == "run":
            active[str(engine)] = int(count)
            lag = max(lag, int(value))
        else:
            depth, age = int(count), max(0.0, float(value))
    return StoreStats(active, lag, depth, age)
