"""dvt_client against a real `dvt serve` on PostgreSQL: runs, streams, signals, refusals.

Connection failures are real ones: a TCP proxy (tcp_proxy.py) between the client and the
server cuts connections mid-stream or swallows an answer the server did send.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import ApiServer, chain_plan, gated_plan, tenant
from tcp_proxy import TcpProxy

from dvt_client import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    RunEvent,
    Unauthenticated,
)

ROLES = ("runner", "reader", "operator", "approver")


@pytest.fixture
def key(api_server: ApiServer) -> str:
    """A key of a fresh tenant with every run role."""
    return api_server.key(tenant(), *ROLES)


@pytest.fixture
def proxy(api_server: ApiServer) -> Iterator[TcpProxy]:
    """A proxy in front of the server."""
    p = TcpProxy(api_server.base_url)
    try:
        yield p
    finally:
        p.close()


def _assert_log_once(events: list[RunEvent], log: list[RunEvent]) -> None:
    """The streamed events are the stored log, each once, in runSeq order."""
    assert [e.run_seq for e in events] == list(range(1, len(log) + 1))
    assert [e.event_id for e in events] == [e.event_id for e in log]
    assert events[-1].is_terminal


def _last_event_id(head: str) -> int | None:
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "last-event-id":
            return int(value.strip())
    return None


def test_create_follow_and_read_a_run(api_server: ApiServer, key: str) -> None:
    with Client(api_server.base_url, key) as dvt:
        run = dvt.runs.create(chain_plan(3), labels={"team": "data"})
        assert run.status in ("PENDING", "RUNNING", "COMPLETED")
        events = list(dvt.runs.stream(run.run_id))
        _assert_log_once(events, list(dvt.runs.events(run.run_id, page_size=2)))
        done = dvt.runs.get(run.run_id)
        assert done.status == "COMPLETED"
        assert [s.status for s in done.steps] == ["SUCCESS"] * 3
        assert done.labels == {"team": "data"}
        assert done.last_event_seq == events[-1].run_seq


def test_stream_resumes_after_cut_connections_without_gap_or_repeat(
        api_server: ApiServer, key: str, proxy: TcpProxy) -> None:
    with Client(proxy.url, key) as dvt, Client(api_server.base_url, key) as direct:
        run = dvt.runs.create(gated_plan())
        seen: list[RunEvent] = []
        cuts = 0
        for event in dvt.runs.stream(run.run_id):
            seen.append(event)
            if event.event_type == "StepAwaitingApproval":
                # The run sends nothing more until approved: the rest must come over a new
                # connection that resumed with Last-Event-ID.
                cuts += proxy.cut()
                direct.runs.approve(run.run_id, "signoff")
            elif event.event_type == "StepStarted" and event.step_id == "publish":
                cuts += proxy.cut()
        assert cuts >= 2
        # One stream request per connection; each resumed after the last event it had.
        streams = proxy.requests_to(f"/v1/runs/{run.run_id}/stream")
        # (A later cut may find the rest of the run already in the client's buffer.)
        assert len(streams) >= 2
        resumed = [_last_event_id(h) for h in streams]
        assert resumed[0] is None
        assert all(r is not None for r in resumed[1:])
        approval = next(e.run_seq for e in seen if e.event_type == "StepAwaitingApproval")
        assert resumed[1] == approval
        _assert_log_once(seen, list(direct.runs.events(run.run_id)))
        assert direct.runs.get(run.run_id).status == "COMPLETED"


def test_create_retried_after_a_lost_answer_starts_one_run(
        api_server: ApiServer, key: str, proxy: TcpProxy) -> None:
    plan = chain_plan(2, plan_id=f"lost-{tenant()}")
    with Client(proxy.url, key, retry=RetryPolicy(backoff_s=0.01)) as dvt:
        proxy.drop_next_answer()  # the server starts the run; its answer never arrives
        run = dvt.runs.create(plan)
        assert proxy.dropped_answers == 1
        runs = list(dvt.runs.list(plan_id=run.plan_id))
        assert run.plan_id.startswith("lost-")
        assert [r.run_id for r in runs] == [run.run_id]


def test_create_without_retries_reports_the_lost_answer(
        api_server: ApiServer, key: str, proxy: TcpProxy) -> None:
    from dvt_client import ConnectionFailed

    with Client(proxy.url, key, retry=RetryPolicy(max_attempts=1)) as dvt:
        proxy.drop_next_answer()
        with pytest.raises(ConnectionFailed):
            dvt.runs.create(chain_plan(1))


def test_pause_resume_approve_and_refusals_are_typed(api_server: ApiServer, key: str) -> None:
    with Client(api_server.base_url, key) as dvt:
        run = dvt.runs.create(gated_plan())
        events = dvt.runs.stream(run.run_id)
        next(e for e in events if e.event_type == "StepAwaitingApproval")
        assert dvt.runs.pause(run.run_id, reason="window").decision == "accepted"
        # The engine pauses the run after deciding the signal: wait for it in the stream.
        next(e for e in events if e.event_type == "RunPaused")
        assert dvt.runs.get(run.run_id).status == "PAUSED"
        assert dvt.runs.resume(run.run_id).decision == "accepted"
        next(e for e in events if e.event_type == "RunResumed")
        with pytest.raises(InvalidRequest) as bad_step:
            dvt.runs.approve(run.run_id, "no-such-step")
        assert bad_step.value.code == "STEP_NOT_FOUND"
        assert bad_step.value.status == 422
        answer = dvt.runs.approve(run.run_id, "signoff")
        assert answer.decision == "accepted"
        assert answer.run_seq is not None
        assert dvt.runs.wait(run.run_id).status == "COMPLETED"
        with pytest.raises(Conflict) as terminal:
            dvt.runs.cancel(run.run_id)
        assert terminal.value.code == "RUN_TERMINAL"
        with pytest.raises(NotFound) as missing:
            dvt.runs.get("no-such-run")
        assert missing.value.code == "RUN_NOT_FOUND"
        assert missing.value.request_id
    with Client(api_server.base_url, "dvt_sk_wrong") as stranger, \
            pytest.raises(Unauthenticated) as denied:
        stranger.runs.get(run.run_id)
    assert denied.value.code == "UNAUTHENTICATED"
    assert denied.value.status == 401


def test_retry_and_skip_step_reach_the_core_decision(api_server: ApiServer, key: str) -> None:
    # Both are decided by the core (the body was well-formed, the run and step exist): a step
    # that did not fail cannot be retried, and a step not started yet can be skipped.
    with Client(api_server.base_url, key) as dvt:
        run = dvt.runs.create(gated_plan())
        for event in dvt.runs.stream(run.run_id):
            if event.event_type == "StepAwaitingApproval":
                break
        with pytest.raises(ApiError) as retried:
            dvt.runs.retry_step(run.run_id, "build", reason="again")
        assert retried.value.code == "STEP_NOT_RETRYABLE"
        assert dvt.runs.skip_step(run.run_id, "publish").decision == "accepted"
        log = [e.event_type for e in dvt.runs.events(run.run_id)]
        assert log.count("SignalRejected") + log.count("SignalAccepted") >= 2
        dvt.runs.approve(run.run_id, "signoff")
        assert dvt.runs.wait(run.run_id).status == "COMPLETED"


def test_run_list_pages_are_iterated_newest_first(api_server: ApiServer, key: str) -> None:
    with Client(api_server.base_url, key) as dvt:
        made = [dvt.runs.create(chain_plan(1), labels={"batch": "pages"}).run_id
                for _ in range(5)]
        listed = [r.run_id for r in dvt.runs.list(labels={"batch": "pages"}, page_size=2)]
        assert listed == made[::-1]
        assert list(dvt.runs.list(labels={"batch": "none"})) == []


def test_plans_store_validate_and_run_by_reference(api_server: ApiServer, key: str) -> None:
    plan = chain_plan(2, plan_id="by-ref")
    with Client(api_server.base_url, key) as dvt:
        report = dvt.plans.validate(plan)
        assert report.ok
        assert report.plan_id == "by-ref"
        broken = dvt.plans.validate({"planId": "x"})
        assert not broken.ok
        assert broken.issues
        ref = dvt.plans.store(plan)
        assert dvt.plans.store(plan) == ref
        assert dvt.runs.wait(dvt.runs.create(plan_ref=ref).run_id).status == "COMPLETED"
        assert b'"by-ref"' in dvt.plans.get(ref.sha256)


async def test_async_client_follows_and_steers_a_run(api_server: ApiServer, key: str,
                                                     proxy: TcpProxy) -> None:
    async with AsyncClient(proxy.url, key) as dvt:
        run = await dvt.runs.create(gated_plan(), run_id=f"async-{tenant()}")
        seen: list[RunEvent] = []
        async for event in dvt.runs.stream(run.run_id):
            seen.append(event)
            if event.event_type == "StepAwaitingApproval":
                proxy.cut()
                await dvt.runs.approve(run.run_id, "signoff")
        log = [e async for e in dvt.runs.events(run.run_id)]
        _assert_log_once(seen, log)
        assert [r.run_id async for r in dvt.runs.list(plan_id="gated", page_size=1)
                ][:1] == [run.run_id]
        with pytest.raises(NotFound):
            await dvt.runs.get("nope")
