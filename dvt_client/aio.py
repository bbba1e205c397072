"""The asyncio client: ``AsyncClient(base_url, api_key)`` with ``runs`` and ``plans``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from dvt_client import _core
from dvt_client._core import RetryPolicy
from dvt_client.errors import ConnectionFailed
from dvt_client.models import (
    EventPage,
    PlanRef,
    Run,
    RunEvent,
    RunList,
    SignalAnswer,
    SignalType,
    ValidationReport,
)
from dvt_client.sync import _plan_body, _reconnect_wait, _run_path


class AsyncClient:
    """A connection to a dvt service; use as a context manager or call ``close()``.

    Requests that are safe to send twice (reads, run creation with its Idempotency-Key,
    signals with their signalId, plan storage) are retried on connection errors and on 429
    and 503 answers, honouring ``Retry-After``; see :class:`RetryPolicy`.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, http: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.runs = Runs(self)
        self.plans = Plans(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def request(self, method: str, path: str, *, safe: bool, json: Any = None,
                content: bytes | None = None, params: Any = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        """Send a request (again, when ``safe``, after a retryable failure); a 2xx answer.

        Raises the typed :class:`~dvt_client.errors.ApiError` for an error answer, and
        :class:`~dvt_client.errors.ConnectionFailed` when the service cannot be reached.
        """
        policy = self.retry if safe else _core.NO_RETRY
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, json=json, content=content,
                                              params=params, headers=headers)
            except _core.RETRYABLE_TRANSPORT as exc:
                if attempt >= policy.max_attempts:
                    raise ConnectionFailed(f"{method} {path}: {exc!r}") from exc
                await self._sleep(policy.backoff(attempt))
                continue
            if response.is_success:
                return response
            wait = _core.retry_wait(response, policy, attempt)
            if wait is None:
                raise _core.error_of(response)
            await self._sleep(wait)


class Plans:
    """Stored plans of the key's tenant."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def store(self, plan: dict[str, Any] | str | bytes) -> PlanRef:
        """Validate and store a plan (content-addressed, so storing twice is harmless)."""
        answer = await self._c.request("POST", "/v1/plans", safe=True, **_plan_body(plan))
        return PlanRef.model_validate(answer.json()["planRef"])

    async def validate(self, plan: dict[str, Any] | str | bytes,
                 engine: str | None = None) -> ValidationReport:
        """The validation report for ``engine`` (default: the served one); stores nothing."""
        answer = await self._c.request("POST", "/v1/plans/validate", safe=True,
                                 params=_core.query(engine=engine), **_plan_body(plan))
        return ValidationReport.model_validate(answer.json())

    async def get(self, sha256: str) -> bytes:
        """The stored plan's exact bytes."""
        return (await self._c.request("GET", f"/v1/plans/{sha256}", safe=True)).content


class Runs:
    """Runs of the key's tenant: create, read, list, follow and steer them."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, plan: dict[str, Any] | str | bytes | None = None, *,
               plan_ref: PlanRef | str | None = None, run_id: str | None = None,
               inputs: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
               engine: str | None = None, idempotency_key: str | None = None) -> Run:
        """Start a run of a plan document or a stored plan; safe to retry.

        Every call sends an ``Idempotency-Key`` (a new one unless given), so a retry after a
        lost answer gets the first answer again instead of a second run.
        """
        body = _core.run_body(plan, plan_ref, run_id, inputs, labels, engine)
        key = idempotency_key or _core.new_key()
        answer = await self._c.request("POST", "/v1/runs", safe=True, json=body,
                                 headers={"Idempotency-Key": key})
        return Run.model_validate(answer.json())

    async def get(self, run_id: str) -> Run:
        """The run's snapshot."""
        answer = await self._c.request("GET", _run_path(run_id), safe=True)
        return Run.model_validate(answer.json())

    async def list(self, *, status: list[str] | str | None = None, plan_id: str | None = None,
             labels: dict[str, str] | None = None, created_after: datetime | None = None,
             created_before: datetime | None = None, page_size: int = 50) -> AsyncIterator[Run]:
        """Every matching run, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            params = _core.query(status=status, planId=plan_id,
                                 label=_core.label_filters(labels), createdAfter=created_after,
                                 createdBefore=created_before, limit=page_size, cursor=cursor)
            answer = await self._c.request("GET", "/v1/runs", safe=True, params=params)
            page = RunList.model_validate(answer.json())
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def events(self, run_id: str, *, after: int = 0, page_size: int = 100
                     ) -> AsyncIterator[RunEvent]:
        """The run's stored events after runSeq ``after``, in order, a page at a time."""
        while True:
            answer = await self._c.request("GET", _run_path(run_id) + "/events", safe=True,
                                           params={"after": after, "limit": page_size})
            page = EventPage.model_validate(answer.json())
            for item in page.items:
                yield item
            if not page.items:
                return
            after = page.next_after

    async def stream(self, run_id: str, *, after: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after ``after`` as they happen, until its terminal event.

        A dropped connection is resumed with ``Last-Event-ID``: every event comes once, in
        runSeq order. Raises ConnectionFailed after ``retry.max_attempts`` reconnections in a
        row that brought nothing.
        """
        last, failures, hint = after, 0, None
        path = _run_path(run_id) + "/stream"
        while True:
            parser = _core.SseParser()
            parser.retry_ms = hint
            headers = {"Last-Event-ID": str(last)} if last else {}
            try:
                async with self._c._http.stream("GET", path, headers=headers) as response:
                    if not response.is_success:
                        await response.aread()
                        wait = _core.retry_wait(response, self._c.retry, failures + 1)
                        if wait is None:
                            raise _core.error_of(response)
                        failures += 1
                        await self._c._sleep(wait)
                        continue
                    async for line in response.aiter_lines():
                        message = parser.feed(line)
                        if message is None:
                            continue
                        if message.id is None:
                            continue
                        event = RunEvent.model_validate_json(message.data)
                        if event.run_seq <= last:
                            continue  # never twice, whatever the server resends
                        last, failures = event.run_seq, 0
                        yield event
                        if event.is_terminal:
                            return
                # A clean end without the terminal event: the run had ended before ``after``,
                # or the service closed the stream (a restart); look before resuming.
                run = await self.get(run_id)
                if run.is_terminal and run.last_event_seq <= last:
                    return
            except _core.RETRYABLE_TRANSPORT as exc:
                if failures + 1 >= self._c.retry.max_attempts:
                    raise ConnectionFailed(f"stream of {run_id}: {exc!r}") from exc
            failures += 1
            hint = parser.retry_ms
            await self._c._sleep(_reconnect_wait(parser, self._c.retry, failures))

    async def wait(self, run_id: str) -> Run:
        """Follow the run to its end; its final snapshot."""
        async for _ in self.stream(run_id):
            pass
        return await self.get(run_id)

    async def signal(self, run_id: str, kind: SignalType, *, step_id: str | None = None,
               reason: str | None = None, signal_id: str | None = None,
               name: str | None = None,
               payload: Mapping[str, Any] | None = None) -> SignalAnswer:
        """Send a signal; retried safely (its signalId makes a repeat the same decision).

        A CUSTOM signal (plan v1.3) carries the ``name`` its plan declares and its ``payload``.
        """
        body = _core.signal_body(kind, step_id, reason, signal_id or _core.new_key(),
                                 name, payload)
        answer = await self._c.request("POST", _run_path(run_id) + "/signals", safe=True,
                                       json=body)
        return SignalAnswer.model_validate(answer.json())

    async def send(self, run_id: str, name: str, payload: Mapping[str, Any] | None = None,
                   *, signal_id: str | None = None) -> SignalAnswer:
        """Send the custom signal ``name`` its plan declares, with its payload (plan v1.3)."""
        return await self.signal(run_id, "CUSTOM", name=name, payload=payload or {},
                                 signal_id=signal_id)

    async def pause(self, run_id: str, *, reason: str | None = None) -> SignalAnswer:
        """Pause the run: running steps finish, no new step starts."""
        return await self.signal(run_id, "PAUSE", reason=reason)

    async def resume(self, run_id: str) -> SignalAnswer:
        """Resume a paused run."""
        return await self.signal(run_id, "RESUME")

    async def cancel(self, run_id: str, *, reason: str | None = None) -> SignalAnswer:
        """Cancel the run."""
        return await self.signal(run_id, "CANCEL", reason=reason)

    async def retry_step(self, run_id: str, step_id: str, *, reason: str | None = None
                   ) -> SignalAnswer:
        """Run a failed step again."""
        return await self.signal(run_id, "RETRY_STEP", step_id=step_id, reason=reason)

    async def skip_step(self, run_id: str, step_id: str, *, reason: str | None = None
                  ) -> SignalAnswer:
        """Skip a step."""
        return await self.signal(run_id, "SKIP_STEP", step_id=step_id, reason=reason)

    async def approve(self, run_id: str, step_id: str | None = None, *,
                comment: str | None = None) -> SignalAnswer:
        """Approve an approval step, or (without ``step_id``) a run awaiting approval."""
        if step_id is None:
            return await self.signal(run_id, "APPROVE_RUN", reason=comment)
        return await self.signal(run_id, "APPROVE_STEP", step_id=step_id, reason=comment)

    async def reject(self, run_id: str, step_id: str, *, comment: str | None = None
                     ) -> SignalAnswer:
        """Reject an approval step."""
        return await self.signal(run_id, "REJECT_STEP", step_id=step_id, reason=comment)

