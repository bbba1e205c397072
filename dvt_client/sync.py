"""The blocking client: ``Client(base_url, api_key)`` with ``runs`` and ``plans``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

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


class Client:
    """A connection to a dvt service; use as a context manager or call ``close()``.

    Requests that are safe to send twice (reads, run creation with its Idempotency-Key,
    signals with their signalId, plan storage) are retried on connection errors and on 429
    and 503 answers, honouring ``Retry-After``; see :class:`RetryPolicy`.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.runs = Runs(self)
        self.plans = Plans(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def request(self, method: str, path: str, *, safe: bool, json: Any = None,
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
                response = self._http.request(method, path, json=json, content=content,
                                              params=params, headers=headers)
            except _core.RETRYABLE_TRANSPORT as exc:
                if attempt >= policy.max_attempts:
                    raise ConnectionFailed(f"{method} {path}: {exc!r}") from exc
                self._sleep(policy.backoff(attempt))
                continue
            if response.is_success:
                return response
            wait = _core.retry_wait(response, policy, attempt)
            if wait is None:
                raise _core.error_of(response)
            self._sleep(wait)


class Plans:
    """Stored plans of the key's tenant."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def store(self, plan: dict[str, Any] | str | bytes) -> PlanRef:
        """Validate and store a plan (content-addressed, so storing twice is harmless)."""
        answer = self._c.request("POST", "/v1/plans", safe=True, **_plan_body(plan))
        return PlanRef.model_validate(answer.json()["planRef"])

    def validate(self, plan: dict[str, Any] | str | bytes,
                 engine: str | None = None) -> ValidationReport:
        """The validation report for ``engine`` (default: the served one); stores nothing."""
        answer = self._c.request("POST", "/v1/plans/validate", safe=True,
                                 params=_core.query(engine=engine), **_plan_body(plan))
        return ValidationReport.model_validate(answer.json())

    def get(self, sha256: str) -> bytes:
        """The stored plan's exact bytes."""
        return self._c.request("GET", f"/v1/plans/{sha256}", safe=True).content


def _plan_body(plan: dict[str, Any] | str | bytes) -> dict[str, Any]:
    if isinstance(plan, dict):
        return {"json": plan}
    data = plan.encode() if isinstance(plan, str) else plan
    return {"content": data, "headers": {"Content-Type": "application/json"}}


class Runs:
    """Runs of the key's tenant: create, read, list, follow and steer them."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, plan: dict[str, Any] | str | bytes | None = None, *,
               plan_ref: PlanRef | str | None = None, run_id: str | None = None,
               inputs: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
               engine: str | None = None, idempotency_key: str | None = None) -> Run:
        """Start a run of a plan document or a stored plan; safe to retry.

        Every call sends an ``Idempotency-Key`` (a new one unless given), so a retry after a
        lost answer gets the first answer again instead of a second run.
        """
        body = _core.run_body(plan, plan_ref, run_id, inputs, labels, engine)
        key = idempotency_key or _core.new_key()
        answer = self._c.request("POST", "/v1/runs", safe=True, json=body,
                                 headers={"Idempotency-Key": key})
        return Run.model_validate(answer.json())

    def get(self, run_id: str) -> Run:
        """The run's snapshot."""
        return Run.model_validate(self._c.request("GET", _run_path(run_id), safe=True).json())

    def list(self, *, status: list[str] | str | None = None, plan_id: str | None = None,
             labels: dict[str, str] | None = None, created_after: datetime | None = None,
             created_before: datetime | None = None, page_size: int = 50) -> Iterator[Run]:
        """Every matching run, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            params = _core.query(status=status, planId=plan_id,
                                 label=_core.label_filters(labels), createdAfter=created_after,
                                 createdBefore=created_before, limit=page_size, cursor=cursor)
            page = RunList.model_validate(
                self._c.request("GET", "/v1/runs", safe=True, params=params).json())
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def events(self, run_id: str, *, after: int = 0, page_size: int = 100) -> Iterator[RunEvent]:
        """The run's stored events after runSeq ``after``, in order, a page at a time."""
        while True:
            page = EventPage.model_validate(self._c.request(
                "GET", _run_path(run_id) + "/events", safe=True,
                params={"after": after, "limit": page_size}).json())
            yield from page.items
            if not page.items:
                return
            after = page.next_after

    def stream(self, run_id: str, *, after: int = 0) -> Iterator[RunEvent]:
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
                with self._c._http.stream("GET", path, headers=headers) as response:
                    if not response.is_success:
                        response.read()
                        wait = _core.retry_wait(response, self._c.retry, failures + 1)
                        if wait is None:
                            raise _core.error_of(response)
                        failures += 1
                        self._c._sleep(wait)
                        continue
                    for message in parser.messages(response.iter_lines()):
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
                run = self.get(run_id)
                if run.is_terminal and run.last_event_seq <= last:
                    return
            except _core.RETRYABLE_TRANSPORT as exc:
                if failures + 1 >= self._c.retry.max_attempts:
                    raise ConnectionFailed(f"stream of {run_id}: {exc!r}") from exc
            failures += 1
            hint = parser.retry_ms
            self._c._sleep(_reconnect_wait(parser, self._c.retry, failures))

    def wait(self, run_id: str) -> Run:
        """Follow the run to its end; its final snapshot."""
        for _ in self.stream(run_id):
            pass
        return self.get(run_id)

    def signal(self, run_id: str, kind: SignalType, *, step_id: str | None = None,
               reason: str | None = None, signal_id: str | None = None,
               name: str | None = None,
               payload: Mapping[str, Any] | None = None) -> SignalAnswer:
        """Send a signal; retried safely (its signalId makes a repeat the same decision).

        A CUSTOM signal (plan v1.3) carries the ``name`` its plan declares and its ``payload``.
        """
        body = _core.signal_body(kind, step_id, reason, signal_id or _core.new_key(),
                                 name, payload)
        answer = self._c.request("POST", _run_path(run_id) + "/signals", safe=True, json=body)
        return SignalAnswer.model_validate(answer.json())

    def send(self, run_id: str, name: str, payload: Mapping[str, Any] | None = None,
             *, signal_id: str | None = None) -> SignalAnswer:
        """Send the custom signal ``name`` its plan declares, with its payload (plan v1.3)."""
        return self.signal(run_id, "CUSTOM", name=name, payload=payload or {},
                           signal_id=signal_id)

    def pause(self, run_id: str, *, reason: str | None = None) -> SignalAnswer:
        """Pause the run: running steps finish, no new step starts."""
        return self.signal(run_id, "PAUSE", reason=reason)

    def resume(self, run_id: str) -> SignalAnswer:
        """Resume a paused run."""
        return self.signal(run_id, "RESUME")

    def cancel(self, run_id: str, *, reason: str | None = None) -> SignalAnswer:
        """Cancel the run."""
        return self.signal(run_id, "CANCEL", reason=reason)

    def retry_step(self, run_id: str, step_id: str, *, reason: str | None = None
                   ) -> SignalAnswer:
        """Run a failed step again."""
        return self.signal(run_id, "RETRY_STEP", step_id=step_id, reason=reason)

    def skip_step(self, run_id: str, step_id: str, *, reason: str | None = None
                  ) -> SignalAnswer:
        """Skip a step."""
        return self.signal(run_id, "SKIP_STEP", step_id=step_id, reason=reason)

    def approve(self, run_id: str, step_id: str | None = None, *,
                comment: str | None = None) -> SignalAnswer:
        """Approve an approval step, or (without ``step_id``) a run awaiting approval."""
        if step_id is None:
            return self.signal(run_id, "APPROVE_RUN", reason=comment)
        return self.signal(run_id, "APPROVE_STEP", step_id=step_id, reason=comment)

    def reject(self, run_id: str, step_id: str, *, comment: str | None = None) -> SignalAnswer:
        """Reject an approval step."""
        return self.signal(run_id, "REJECT_STEP", step_id=step_id, reason=comment)


def _run_path(run_id: str) -> str:
    return f"/v1/runs/{quote(run_id, safe='')}"


def _reconnect_wait(parser: _core.SseParser, policy: RetryPolicy, failures: int) -> float:
    """The service's ``retry:`` hint for the first reconnection, backoff after that."""
    if failures == 1 and parser.retry_ms is not None:
        return parser.retry_ms / 1000
    return max(policy.backoff(failures), (parser.retry_ms or 0) / 1000)
