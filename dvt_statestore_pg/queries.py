"""Every SQL statement of the store, with table names qualified by the store's schema.

Names come from psycopg's identifier quoting and values are always bound parameters: no text
from a caller is ever spliced into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")

# (schema, template) -> the statement's text; a handful of templates per schema in a process.
_FORMATTED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Queries:
    """The statements of one schema."""

    schema: str

    def _fmt(self, template: str) -> str:
        # Every statement is asked for per call; composing it showed in profiles of the
        # single append (about 5 % of its client time), so each text is made once per schema.
        key = (self.schema, template)
        text = _FORMATTED.get(key)
        if text is None:
            text = _FORMATTED[key] = self._compose(template)
        return text

    def _compose(self, template: str) -> str:
        names = {
            name: sql.Identifier(self.schema, name)
            for name in (
                "dvt_runs",
                "dvt_events",
                "dvt_plans",
                "dvt_outbox",
                "dvt_append_events",
                "dvt_run_lock_key",
                "dvt_lock_runs",
            )
        }
        return sql.SQL(template).format(**names).as_string(None)

    @property
    def append(self) -> str:
        """Call the append function for one run (migration 0002)."""
        return self._fmt(
            "SELECT outcome, idempotency_key, run_seq, event_id, persisted_at, last_seq,"
            " content_hash"
            " FROM {dvt_append_events}(%s, %s, %s, %s::json, %s, %s, %s::json, %s, %s)"
        )

    @property
    def load_state(self) -> str:
        """A run's stored snapshot and the log after it, read in one statement snapshot.

        When the caller already knows the run at its current runSeq (the last parameter),
        only the counter comes back.
        """
        return self._fmt(
            "SELECT r.last_seq, r.snapshot_seq,"
            " CASE WHEN r.last_seq = %(known)s THEN NULL ELSE r.snapshot::text END,"
            " CASE WHEN r.last_seq = %(known)s THEN NULL ELSE"
            "  ARRAY(SELECT e.run_seq FROM {dvt_events} e WHERE e.tenant_id = r.tenant_id"
            "        AND e.run_id = r.run_id AND e.run_seq > r.snapshot_seq"
            "        ORDER BY e.run_seq) END,"
            " CASE WHEN r.last_seq = %(known)s THEN NULL ELSE"
            "  ARRAY(SELECT e.envelope::text FROM {dvt_events} e WHERE e.tenant_id = r.tenant_id"
            "        AND e.run_id = r.run_id AND e.run_seq > r.snapshot_seq"
            "        ORDER BY e.run_seq) END"
            " FROM {dvt_runs} r WHERE r.run_id = %(run)s AND r.tenant_id = %(tenant)s"
        )

    @property
    def lock_run(self) -> str:
        """Take a run's writer lock for the rest of the transaction (migration 0003).

        A statement of its own: the reads after it take a fresh snapshot, which sees what the
        writer before us committed. An advisory lock, not a row lock, so waiting for it does not
        give this transaction an id (see the tenant stream's order).
        """
        return self._fmt("SELECT pg_advisory_xact_lock({dvt_run_lock_key}(%s, %s))")

    @property
    def lock_runs(self) -> str:
        """Take several runs' writer locks in one global order, before a batch writes."""
        return self._fmt("SELECT {dvt_lock_runs}(%s::text[], %s::text[])")

    @property
    def register(self) -> str:
        """Insert a run unless its (tenant, runId) or its run-request key is taken."""
        return self._fmt(
            "INSERT INTO {dvt_runs} (run_id, tenant_id, project_id, environment_id, plan_id,"
            " plan_version, engine, run_request_key, header, status, substatus, snapshot,"
            " created_at, labels) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::json, %s, %s,"
            " %s::json, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING run_id"
        )

    @property
    def header_by_request(self) -> str:
        """The header registered under a run-request key."""
        return self._fmt(
            "SELECT header::text FROM {dvt_runs} WHERE tenant_id = %s AND run_request_key = %s"
        )

    @property
    def header(self) -> str:
        """A run's header, for its tenant only."""
        return self._fmt("SELECT header::text FROM {dvt_runs} WHERE run_id = %s AND tenant_id = %s")

    def list_runs(
        self, *, status: bool, project: bool, environment: bool, before: bool = False,
        plan: bool = False, labels: bool = False, created_after: bool = False,
        created_before: bool = False, one_status: bool = False, statuses: int = 0,
    ) -> str:
        """The latest-status index, newest first; only the filters asked for are in the SQL.

        Each filter is a condition an index of migrations 0001/0006 serves: equality on
        tenant with status or plan, a created_at range on the tenant's order, and ``@>`` on
        the labels' GIN index. With ``one_status`` the status is one value, not an array:
        equality lets the (tenant, status, created_at) index give the order itself, so a page
        reads its rows and stops; ``= ANY`` makes the planner fetch and sort every run of the
        tenant in that status, or (as a prepared statement, whose generic plan does not know
        the limit) walk the tenant's runs newest first and filter them. With ``statuses`` > 1
        the array's elements are read one per branch of a UNION ALL, each an equality that
        the index orders, and the branches are merged in order (a Merge Append that stops at
        the limit): the page reads about ``limit`` rows, whatever the mix of statuses.
        """
        where = ["tenant_id = %(tenant)s"]
        if project:
            where.append("project_id = %(project)s")
        if environment:
            where.append("environment_id = %(environment)s")
        if plan:
            where.append("plan_id = %(plan)s")
        if labels:
            where.append("labels @> %(labels)s::jsonb")
        if created_after:
            where.append("created_at >= %(created_after)s")
        if created_before:
            where.append("created_at < %(created_before)s")
        if before:
            where.append("(created_at, run_id) < (%(before_at)s, %(before_id)s)")
        # No tenant_id in the columns: the caller asked for one tenant and knows it.
        select = (
            "SELECT run_id, project_id, environment_id, plan_id, plan_version, engine,"
            " status, substatus, last_seq, created_at, updated_at, labels::text"
            " FROM {dvt_runs} WHERE "
        )
        order = " ORDER BY created_at DESC, run_id DESC LIMIT %(limit)s"
        if status and not one_status and statuses > 1:
            branches = [
                "(" + select + " AND ".join([*where, f"status = (%(status)s::text[])[{i}]"])
                + order + ")"
                for i in range(1, statuses + 1)
            ]
            return self._fmt("SELECT * FROM (" + " UNION ALL ".join(branches) + ") u" + order)
        if status and one_status:
            where.insert(1, "status = %(status)s")
        elif status:
            where.insert(1, "status = ANY(%(status)s::text[])")
        return self._fmt(select + " AND ".join(where) + order)

    @property
    def fetch(self) -> str:
        """Events of a run after a watermark, ascending."""
        return self._fmt(
            "SELECT run_seq, persisted_at, envelope::text FROM {dvt_events}"
            " WHERE run_id = %s AND tenant_id = %s AND run_seq > %s ORDER BY run_seq LIMIT %s"
        )


    @property
    def by_key(self) -> str:
        """The event stored under an idempotency key."""
        return self._fmt(
            "SELECT run_seq, persisted_at, envelope::text FROM {dvt_events}"
            " WHERE run_id = %s AND tenant_id = %s AND idempotency_key = %s"
        )

    @property
    def stored_keys(self) -> str:
        """The events already stored under any of several (tenant, run, key) triples.

        Committed rows never change, so what this finds is final: a batch of retries is
        answered from it without locking a run or projecting a snapshot.

        The triples come as one JSON document, ``[[tenant, run, offset, [key, ...]], ...]``
        (a batch's events grouped by run, ``offset`` the position of the run's first event in
        the batch): one C-encoded text instead of three text arrays the driver dumps item by
        item, which was the largest client cost of a batch of retries. Each row found comes
        back with its event's position in the batch.
        """
        return self._fmt(
            "SELECT (g->>2)::int + k.n::int - 1, e.run_seq, e.event_id, e.persisted_at,"
            " e.content_hash"
            " FROM json_array_elements(%s::json) AS g"
            " CROSS JOIN LATERAL json_array_elements_text(g->3) WITH ORDINALITY AS k(key, n)"
            # One probe of the (tenant, run, key) unique index per key. As a plain join the
            # planner, which cannot count a JSON document's elements, read each run's whole log
            # by the primary key and hashed it: fine for 10 events, not for 10,000. LIMIT 1
            # keeps the subquery a per-key lookup (the index is unique: at most one row).
            " CROSS JOIN LATERAL (SELECT x.run_seq, x.event_id, x.persisted_at, x.content_hash"
            "  FROM {dvt_events} x WHERE x.tenant_id = g->>0 AND x.run_id = g->>1"
            "  AND x.idempotency_key = k.key LIMIT 1) AS e"
        )

    @property
    def content_by_key(self) -> str:
        """The envelope stored under an idempotency key, for a row without content_hash."""
        return self._fmt(
            "SELECT envelope::text FROM {dvt_events}"
            " WHERE run_id = %s AND tenant_id = %s AND idempotency_key = %s"
        )

    @property
    def all_events(self) -> str:
        """The whole log of a run, for project()."""
        return self._fmt(
            "SELECT run_seq, persisted_at, envelope::text FROM {dvt_events}"
            " WHERE run_id = %s AND tenant_id = %s ORDER BY run_seq"
        )

    @property
    def tenant_stream(self) -> str:
        """A tenant's events after a cursor, in commit order, below the in-progress horizon.

        Only transactions older than the oldest one still running (the snapshot's xmin) are
        read: every one of them has ended, and every later writer gets a larger transaction
        id, so nothing can ever be committed below the last position returned. A last row of
        NULLs says that committed events after the cursor are held back above the horizon:
        the transaction holding it may write no event and so send no notification when it
        ends, so the follower re-reads soon instead of waiting for one.
        """
        # The output column is named xid_text: ORDER BY commit_xid would otherwise sort by the
        # text of the id ('1000' < '999'), which the stress suite caught. Both branches read
        # one snapshot, so "held back" and the page agree.
        after = ("e.tenant_id = %(tenant)s"
                 " AND (e.commit_xid, e.position) > (%(xid)s::xid8, %(position)s)")
        return self._fmt(
            "WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)"
            " SELECT xid_text, position, run_seq, persisted_at, envelope FROM ("
            "(SELECT e.commit_xid AS k, e.commit_xid::text AS xid_text, e.position, e.run_seq,"
            " e.persisted_at, e.envelope::text AS envelope FROM {dvt_events} e, h"
            f" WHERE {after} AND e.commit_xid < h.x"
            " ORDER BY e.commit_xid, e.position LIMIT %(limit)s)"
            " UNION ALL"
            " (SELECT NULL::xid8, NULL, NULL, NULL, NULL, NULL FROM h WHERE EXISTS ("
            f"SELECT 1 FROM {{dvt_events}} e WHERE {after} AND e.commit_xid >= h.x))"
            ") u ORDER BY k NULLS LAST, position"
        )

    @property
    def stream_head(self) -> str:
        """The oldest transaction still in progress: every position below it is final."""
        return "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"

    @property
    def put_plan(self) -> str:
        """Store plan bytes once."""
        return self._fmt(
            "INSERT INTO {dvt_plans} (sha256, content, size_bytes) VALUES (%s, %s, %s)"
            " ON CONFLICT (sha256) DO NOTHING"
        )

    @property
    def get_plan(self) -> str:
        """Plan bytes by digest."""
        return self._fmt("SELECT content FROM {dvt_plans} WHERE sha256 = %s")

    @property
    def claim_outbox(self) -> str:
        """Lease undelivered outbox rows to one consumer; others skip them."""
        return self._fmt(
            "WITH c AS (SELECT id FROM {dvt_outbox} WHERE delivered_at IS NULL"
            " AND (claimed_until IS NULL OR claimed_until < clock_timestamp())"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE {dvt_outbox} o"
            " SET claimed_until = clock_timestamp() + make_interval(secs => %s),"
            " attempts = o.attempts + 1 FROM c WHERE o.id = c.id"
            " RETURNING o.id, o.tenant_id, o.run_id, o.run_seq"
        )

    @property
    def ack_outbox(self) -> str:
        """Remove delivered outbox rows: the table holds only work still to do."""
        return self._fmt("DELETE FROM {dvt_outbox} WHERE id = ANY(%s::bigint[])")

    @property
    def event_at(self) -> str:
        """One event by its place in the log (no tenant filter: outbox consumers are trusted)."""
        return self._fmt(
            "SELECT run_seq, persisted_at, envelope::text FROM {dvt_events}"
            " WHERE tenant_id = %s AND run_id = %s AND run_seq = %s"
        )
