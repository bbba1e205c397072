"""Store contract: runs, reads, snapshots, list_runs, the plan registry, isolation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contract_tests.store_helpers import (
    StoreSuiteBase,
    fresh_copy,
    happy_path,
    make_header,
    new_id,
)
from dvt_engine.errors import (
    DvtError,
    ErrorCode,
    RunNotFound,
    SchemaValidationFailed,
    UsageError,
)
from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import signal_key
from dvt_engine.models.run import RunHeader, RunStatus, RunSummary
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import project


class RunsContract(StoreSuiteBase):
    """Registering and reading runs, snapshots and plans; tenants never see each other."""

    # --- runs -------------------------------------------------------------------------------
    async def test_register_is_idempotent_on_run_request_key(self, store: RunStateStore) -> None:
        header = make_header()
        stored, created = await store.register_run(header)
        assert created
        assert stored == header
        again = header.model_copy(update={"run_id": new_id("other-run")})
        first, created_again = await store.register_run(again)
        assert not created_again
        assert first.run_id == header.run_id
        assert await store.get_run(header.tenant_id, again.run_id) is None

    async def test_reusing_a_run_id_for_another_request_is_refused(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        other = make_header(tenant_id=header.tenant_id, run_id=header.run_id)
        with pytest.raises(UsageError):
            await store.register_run(other)

    async def test_another_tenants_run_id_is_a_fresh_one(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        await store.append_batch(happy_path(header))
        # Same runId, another tenant: exactly what a never-used runId does, so registering
        # cannot tell whether the id exists elsewhere.
        foreign = make_header(run_id=header.run_id)
        fresh = make_header(tenant_id=foreign.tenant_id)
        for candidate in (foreign, fresh):
            stored, created = await store.register_run(candidate)
            assert created
            assert stored == candidate
            assert await store.get_run(candidate.tenant_id, candidate.run_id) == candidate
        assert await store.fetch_events(foreign.tenant_id, foreign.run_id) == []
        snapshot = await store.get_snapshot(foreign.tenant_id, foreign.run_id)
        assert snapshot is not None
        assert snapshot.status == RunStatus.PENDING
        results = await store.append_batch(happy_path(foreign))
        assert not any(r.duplicate for r in results), "the other tenant's keys are not ours"
        assert [r.run_seq for r in results] == list(range(1, len(results) + 1))
        mine = await store.fetch_events(header.tenant_id, header.run_id)
        theirs = await store.fetch_events(foreign.tenant_id, foreign.run_id)
        assert {e.tenant_id for e in mine} == {header.tenant_id}
        assert {e.tenant_id for e in theirs} == {foreign.tenant_id}
        assert len(mine) == len(theirs) == len(happy_path(header))
        again = make_header(tenant_id=foreign.tenant_id, run_id=header.run_id)
        with pytest.raises(UsageError):
            await store.register_run(again)

    async def test_get_run_returns_the_header_to_its_tenant_only(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        assert await store.get_run(header.tenant_id, header.run_id) == header
        assert await store.get_run(new_id("tenant"), header.run_id) is None
        assert await store.get_run(header.tenant_id, new_id("run")) is None

    # --- read -------------------------------------------------------------------------------
    async def test_fetch_after_watermark_pages_in_run_seq_order(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        # Producer clocks disagree: order is runSeq order, never timestamp order.
        late_first = [
            e.model_copy(update={"emitted_at": datetime(2030, 1, 1, tzinfo=UTC) - timedelta(i)})
            for i, e in enumerate(events)
        ]
        results = await store.append_batch(late_first)
        seqs = [r.run_seq for r in results]
        for after in [0, *seqs]:
            got = await store.fetch_events(header.tenant_id, header.run_id, after_seq=after)
            assert [e.run_seq for e in got] == [s for s in seqs if s > after]
        pages: list[int] = []
        cursor = 0
        while True:
            page = await store.fetch_events(
                header.tenant_id, header.run_id, after_seq=cursor, limit=3
            )
            if not page:
                break
            assert len(page) <= 3
            pages += [e.run_seq or 0 for e in page]
            cursor = page[-1].run_seq or 0
        assert pages == seqs

    async def test_get_event_by_key_finds_signal_decisions(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        key = signal_key(header.tenant_id, header.run_id, "sig-1")
        decision = EventFactory(header, emitted_by="operator").signal_event(
            "SignalRejected",
            key,
            {
                "signalId": "sig-1",
                "signalType": "PAUSE",
                "actor": {"id": "ann", "roles": ["operator"]},
                "errorCode": "RUN_TERMINAL",
            },
        )
        await store.append(decision)
        found = await store.get_event_by_key(header.tenant_id, header.run_id, key)
        assert found is not None
        assert found.event_id == decision.event_id
        assert found.payload == decision.payload
        assert await store.get_event_by_key(new_id("tenant"), header.run_id, key) is None
        assert await store.get_event_by_key(header.tenant_id, header.run_id, "f" * 64) is None

    async def test_unknown_event_type_is_stored_and_only_advances_the_watermark(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        f = EventFactory(header, emitted_by="engine")
        await store.append(f.run_event("RunStarted", {"engine": "reference"}))
        before = await store.get_snapshot(header.tenant_id, header.run_id)
        future = f.run_event("RunTeleported", {"where": "mars"})
        result = await store.append(future)
        after = await store.get_snapshot(header.tenant_id, header.run_id)
        assert before is not None
        assert after is not None
        assert after.last_event_seq == result.run_seq
        assert after.model_copy(update={"last_event_seq": before.last_event_seq}) == before
        (stored,) = await store.fetch_events(
            header.tenant_id, header.run_id, after_seq=result.run_seq - 1
        )
        assert stored.event_type == "RunTeleported"
        assert stored.payload == {"where": "mars"}

    # --- snapshots --------------------------------------------------------------------------
    async def test_snapshot_follows_the_log_and_equals_a_rebuild(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        initial = await store.get_snapshot(header.tenant_id, header.run_id)
        assert initial is not None
        assert initial.status == RunStatus.PENDING
        assert [s.step_id for s in initial.steps] == [s.step_id for s in header.steps]
        events = happy_path(header)
        for i, event in enumerate(events, start=1):
            await store.append(event)
            stored = await store.get_snapshot(header.tenant_id, header.run_id)
            rebuilt = await store.project(header.tenant_id, header.run_id)
            assert stored is not None
            assert stored.model_dump_json() == rebuilt.model_dump_json()
            assert (
                stored.last_event_seq
                == (await store.fetch_events(header.tenant_id, header.run_id))[-1].run_seq
            )
            if i == 1:
                assert stored.status == RunStatus.RUNNING
        final = await store.get_snapshot(header.tenant_id, header.run_id)
        assert final is not None
        assert final.status == RunStatus.COMPLETED
        log = await store.fetch_events(header.tenant_id, header.run_id)
        assert final.model_dump_json() == project(header, log).model_dump_json()

    async def test_duplicates_leave_the_snapshot_unchanged(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        await store.append_batch(events[:3])
        before = await store.get_snapshot(header.tenant_id, header.run_id)
        for event in events[:3]:
            assert (await store.append(fresh_copy(event))).duplicate
        assert all(r.duplicate for r in await store.append_batch(events[:3]))
        after = await store.get_snapshot(header.tenant_id, header.run_id)
        assert before is not None
        assert after is not None
        assert after.model_dump_json() == before.model_dump_json()

    async def test_unknown_runs_have_no_snapshot(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        assert await store.get_snapshot(header.tenant_id, new_id("run")) is None
        assert await store.get_snapshot(new_id("tenant"), header.run_id) is None
        with pytest.raises(RunNotFound):
            await store.project(new_id("tenant"), header.run_id)

    # --- list_runs --------------------------------------------------------------------------
    async def test_list_runs_newest_first_with_filters(self, store: RunStateStore) -> None:
        tenant = new_id("tenant")
        base = datetime(2026, 11, 1, tzinfo=UTC)
        headers = [
            await self.registered(
                store,
                tenant_id=tenant,
                created_at=base + timedelta(minutes=i),
                project_id="p1" if i % 2 else "p2",
                environment_id="dev" if i < 3 else "prod",
            )
            for i in range(6)
        ]
        await self.registered(store)  # another tenant's run
        for header in headers[:2]:
            await store.append_batch(happy_path(header))
        await store.append(happy_path(headers[2])[0])
        listed = await store.list_runs(tenant)
        assert [r.run_id for r in listed] == [h.run_id for h in reversed(headers)]
        assert {r.tenant_id for r in listed} == {tenant}
        done = await store.list_runs(tenant, status=[RunStatus.COMPLETED])
        assert [r.run_id for r in done] == [headers[1].run_id, headers[0].run_id]
        assert (
            done[0].last_event_seq
            == (await store.fetch_events(tenant, headers[1].run_id))[-1].run_seq
        )
        active = await store.list_runs(tenant, status=[RunStatus.PENDING, RunStatus.RUNNING])
        assert [r.run_id for r in active] == [h.run_id for h in reversed(headers[2:])]
        assert active[-1].status == RunStatus.RUNNING
        p1_dev = await store.list_runs(tenant, project_id="p1", environment_id="dev")
        assert [r.run_id for r in p1_dev] == [headers[1].run_id]
        assert len(await store.list_runs(tenant, limit=2)) == 2
        assert await store.list_runs(tenant, limit=0) == []
        assert await store.list_runs(new_id("tenant")) == []

    async def test_list_runs_pages_by_keyset_without_gaps_or_repeats(
        self, store: RunStateStore
    ) -> None:
        tenant = new_id("tenant")
        base = datetime(2026, 11, 1, tzinfo=UTC)
        # Two runs share a creation time: the runId breaks the tie, so neither is lost.
        times = [base, base + timedelta(minutes=1), base + timedelta(minutes=1),
                 base + timedelta(minutes=2), base + timedelta(minutes=3)]
        for at in times:
            await self.registered(store, tenant_id=tenant, created_at=at)
        everything = [r.run_id for r in await store.list_runs(tenant)]
        paged: list[str] = []
        before = None
        while True:
            page = await store.list_runs(tenant, limit=2, before=before)
            paged += [r.run_id for r in page]
            if len(page) < 2:
                break
            before = (page[-1].created_at, page[-1].run_id)
        assert paged == everything
        assert len(set(paged)) == len(times)

    async def _labelled(self, store: RunStateStore, tenant: str, minute: int, plan_id: str,
                        labels: dict[str, str]) -> RunHeader:
        base = make_header(tenant_id=tenant,
                           created_at=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minute))
        header = base.model_copy(update={
            "plan_id": plan_id, "labels": labels,
            "plan_ref": base.plan_ref.model_copy(update={"plan_id": plan_id}),
        })
        stored, created = await store.register_run(header)
        assert created
        return stored

    async def test_list_runs_filters_by_plan_labels_and_creation_time(
        self, store: RunStateStore
    ) -> None:
        tenant = new_id("tenant")
        specs = [("orders", {"team": "data", "trigger": "cron"}),
                 ("orders", {"team": "data", "trigger": "manual"}),
                 ("billing", {"team": "finance", "trigger": "cron"}),
                 ("billing", {}),
                 ("orders", {"team": "data", "trigger": "cron", "app.example.com/tier": "gold"})]
        runs = [await self._labelled(store, tenant, i, plan, labels)
                for i, (plan, labels) in enumerate(specs)]
        # Another tenant with the very same labels and plan must never show up.
        await self._labelled(store, new_id("tenant"), 2, "orders", {"team": "data"})

        def ids(rows: list[RunSummary]) -> list[str]:
            return [r.run_id for r in rows]

        def expect(*which: int) -> list[str]:
            return [runs[i].run_id for i in which]

        everything = await store.list_runs(tenant)
        assert [r.labels for r in everything] == [specs[i][1] for i in (4, 3, 2, 1, 0)]
        again = await store.get_run(tenant, runs[4].run_id)
        assert again is not None
        assert again.labels == specs[4][1]
        assert ids(await store.list_runs(tenant, plan_id="orders")) == expect(4, 1, 0)
        assert ids(await store.list_runs(tenant, plan_id="nope")) == []
        assert ids(await store.list_runs(tenant, labels={"team": "data"})) == expect(4, 1, 0)
        assert ids(await store.list_runs(
            tenant, labels={"team": "data", "trigger": "cron"})) == expect(4, 0)
        assert ids(await store.list_runs(tenant, labels={"app.example.com/tier": "gold"})) \
            == expect(4)
        assert ids(await store.list_runs(tenant, labels={"team": "Data"})) == []
        assert ids(await store.list_runs(tenant, labels={"team": "data", "x": ""})) == []
        assert ids(await store.list_runs(tenant, labels={"trigger": "cron"},
                                         plan_id="billing")) == expect(2)
        # Half open: createdAfter is inclusive, createdBefore exclusive.
        at = [r.created_at for r in runs]
        assert ids(await store.list_runs(tenant, created_after=at[1])) == expect(4, 3, 2, 1)
        assert ids(await store.list_runs(tenant, created_before=at[1])) == expect(0)
        assert ids(await store.list_runs(tenant, created_after=at[1], created_before=at[3])) \
            == expect(2, 1)
        assert ids(await store.list_runs(tenant, created_after=at[3], created_before=at[3])) == []
        assert ids(await store.list_runs(
            tenant, labels={"team": "data"}, created_after=at[1], status=[RunStatus.PENDING],
        )) == expect(4, 1)
        assert ids(await store.list_runs(tenant, labels={"team": "data"},
                                         status=[RunStatus.COMPLETED])) == []

    async def test_filtered_pages_have_no_gaps_or_repeats(self, store: RunStateStore) -> None:
        tenant = new_id("tenant")
        for i in range(11):
            labels = {"team": "data"} if i % 3 else {"team": "web"}
            await self._labelled(store, tenant, i // 2, "orders", labels)  # ties in createdAt
        wanted = [r.run_id for r in await store.list_runs(tenant, labels={"team": "data"})]
        assert len(wanted) == 7
        paged: list[str] = []
        before = None
        while True:
            page = await store.list_runs(tenant, labels={"team": "data"}, plan_id="orders",
                                         limit=2, before=before)
            paged += [r.run_id for r in page]
            if len(page) < 2:
                break
            before = (page[-1].created_at, page[-1].run_id)
        assert paged == wanted

    async def test_impossible_filters_match_nothing_without_store_errors(
        self, store: RunStateStore
    ) -> None:
        header = await self._labelled(store, new_id("tenant"), 0, "orders", {"team": "data"})
        tenant = header.tenant_id
        for labels in ({"team": "nul\x00"}, {"nul\x00": "data"}, {"TEAM": "data"},
                       {"team": "x" * 5000}, {f"k{i}": "v" for i in range(40)}):
            assert await store.list_runs(tenant, labels=labels) == []
        for plan_id in ("nul\x00", "x" * 5000, "pipe|"):
            assert await store.list_runs(tenant, plan_id=plan_id) == []
        assert [r.run_id for r in await store.list_runs(tenant, labels={})] == [header.run_id]

    # --- plan registry ----------------------------------------------------------------------
    async def test_plan_registry_is_content_addressed(self, store: RunStateStore) -> None:
        data = ('{"metadata": {"planId": "p"}, "note": "' + uuid.uuid4().hex + '"}').encode()
        uri = await store.put_plan(data)
        assert uri.startswith("plan://sha256/")
        digest = uri.removeprefix("plan://sha256/")
        assert await store.put_plan(data) == uri
        assert await store.get_plan(digest) == data
        assert await store.put_plan(data + b" ") != uri
        assert await store.get_plan("0" * 64) is None
        assert await store.get_plan("not-a-digest") is None

    # --- isolation and hostile input --------------------------------------------------------
    async def test_reads_never_cross_tenants(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        await store.append_batch(happy_path(header))
        thief = new_id("tenant")
        assert await store.fetch_events(thief, header.run_id) == []
        assert await store.get_snapshot(thief, header.run_id) is None
        assert await store.get_run(thief, header.run_id) is None
        key = happy_path(header)[0].idempotency_key
        assert await store.get_event_by_key(thief, header.run_id, key) is None

    async def test_hostile_identifiers_and_payloads_are_stored_exactly(
        self, store: RunStateStore
    ) -> None:
        hostile = "t'; DROP TABLE dvt_events; --\"\\ ünïcødé 🚀 $1 %s {}"
        header = await self.registered(
            store,
            tenant_id=hostile[:190] + uuid.uuid4().hex[:8],
            steps=["step ' \" \\ 🚀"],
            run_id="run '\"\\🚀" + uuid.uuid4().hex[:8],
        )
        f = EventFactory(header, emitted_by="engine")
        payload_text = hostile * 1000
        events = [
            f.run_event("RunStarted", {"engine": "reference"}),
            f.step_event("StepStarted", header.steps[0].step_id, {"kind": "noop"}),
            f.step_event(
                "StepCompleted",
                header.steps[0].step_id,
                {
                    "output": {
                        "text": payload_text,
                        "n": 1e300,
                        "small": 5e-324,
                        "neg": -0.0,
                        "list": [None, True, "\u2028\ud7ff"],
                    }
                },
            ),
        ]
        await store.append_batch(events)
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.payload for e in stored] == [e.payload for e in events]
        assert stored[2].payload["output"]["text"] == payload_text
        snapshot = await store.get_snapshot(header.tenant_id, header.run_id)
        assert snapshot is not None
        assert snapshot.steps[0].output == events[2].payload["output"]

    async def test_impossible_identifiers_are_answered_without_store_errors(
        self, store: RunStateStore
    ) -> None:
        for bad in ["nul\x00byte", "x" * 5000, "", "pipe|char", "\ud800"]:
            assert await store.fetch_events(bad, bad) == []
            assert await store.get_snapshot(bad, bad) is None
            assert await store.get_run(bad, bad) is None
            assert await store.list_runs(bad) == []
            assert await store.get_event_by_key(bad, bad, bad) is None
            with pytest.raises(DvtError) as caught:
                await store.project(bad, bad)
            assert caught.value.code in (ErrorCode.RUN_NOT_FOUND, ErrorCode.IDENTIFIER_INVALID)

    async def test_oversized_payload_is_refused_with_a_code(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        f = EventFactory(header, emitted_by="engine")
        huge = f.run_event("RunStarted", {"engine": "reference", "blob": "x" * (1024 * 1024)})
        with pytest.raises(SchemaValidationFailed):
            await store.append(huge)
        assert await store.fetch_events(header.tenant_id, header.run_id) == []
