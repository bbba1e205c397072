"""The Conductor REST calls dvt makes, over conductor-python's API client (auth, pooling)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from conductor.client.configuration.configuration import (  # type: ignore[import-untyped]
    Configuration,
)
from conductor.client.configuration.settings.authentication_settings import (  # type: ignore[import-untyped]
    AuthenticationSettings,
)
from conductor.client.http.api_client import ApiClient  # type: ignore[import-untyped]
from conductor.client.http.rest import ApiException  # type: ignore[import-untyped]

from dvt_engine.errors import EngineUnavailable

T = TypeVar("T")

logger = logging.getLogger("dvt.conductor.api")

#: HTTP answers that mean "the server (or the proxy before it) is not there right now".
TRANSIENT_STATUS = frozenset({0, 502, 503, 504})

#: Seconds a call keeps retrying a transient failure before it raises ENGINE_UNAVAILABLE.
DEFAULT_RETRY_S = 5.0

_JSON = {"Accept": "application/json", "Content-Type": "application/json"}

TERMINAL_WORKFLOW = frozenset({"COMPLETED", "FAILED", "TERMINATED", "TIMED_OUT"})
TERMINAL_TASK = frozenset({
    "COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "FAILED_WITH_TERMINAL_ERROR",
    "CANCELED", "TIMED_OUT", "SKIPPED",
})


class ConductorApiError(Exception):
    """A non-2xx answer from the server (never a transient one: those are EngineUnavailable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def normalize_url(server_url: str) -> str:
    """The API root: ``http://host:port/api`` whether or not the ``/api`` suffix was given."""
    url = server_url.rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def configuration(server_url: str, auth: Any = None) -> Configuration:
    """conductor-python configuration; ``auth`` is (key, secret), a dict, or None."""
    settings = None
    if isinstance(auth, AuthenticationSettings):
        settings = auth
    elif isinstance(auth, dict) and auth:
        settings = AuthenticationSettings(key_id=auth.get("key_id") or auth.get("key"),
                                          key_secret=auth.get("key_secret") or auth.get("secret"))
    elif isinstance(auth, (tuple, list)) and len(auth) == 2:
        settings = AuthenticationSettings(key_id=auth[0], key_secret=auth[1])
    return Configuration(server_api_url=normalize_url(server_url),
                         authentication_settings=settings)


def server_health(server_url: str, timeout_s: float) -> tuple[bool, str]:
    """Whether the server's own ``/health`` (beside ``/api``) reports healthy, and why not."""
    root = normalize_url(server_url).removesuffix("/api")
    try:
        # The health endpoint sits outside the API root the SDK's client is bound to.
        with urllib.request.urlopen(f"{root}/health", timeout=timeout_s) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, type(exc).__name__
    healthy = isinstance(body, dict) and body.get("healthy") is True
    return healthy, "" if healthy else "reports unhealthy"


class ConductorApi:
    """Blocking REST calls plus ``a*`` coroutine twins that run them in a thread."""

    def __init__(self, server_url: str, auth: Any = None) -> None:
        self.server_url = normalize_url(server_url)
        self._client = ApiClient(configuration(server_url, auth))
        # Long polls hold a thread each: a pool of our own keeps them from starving the
        # application's default executor (6 threads on a 2-core machine).
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dvt-conductor")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call of this API in its own thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Release the thread pool (running calls finish)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- plumbing --------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        path_params: dict[str, Any] | None = None,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        timeout_s: float = 30.0,
        retry_s: float = DEFAULT_RETRY_S,
        idempotent: bool = True,
    ) -> Any:
        """One REST call, retried with backoff while the server is unreachable.

        Connection errors, timeouts and 502/503/504 become a retryable ENGINE_UNAVAILABLE once
        ``retry_s`` has passed; other non-2xx answers raise :class:`ConductorApiError` at once.
        A call that is not ``idempotent`` is retried only when it surely never reached the
        server (connection refused).
        """
        deadline = time.monotonic() + retry_s
        delay = 0.1
        while True:
            try:
                return self._call_once(method, path, path_params=path_params, query=query,
                                       body=body, timeout_s=timeout_s)
            except EngineUnavailable as exc:
                never_sent = bool(exc.details.get("neverSent"))
                if (not idempotent and not never_sent) or time.monotonic() + delay > deadline:
                    raise
                logger.debug("%s %s: %s; retrying in %.1f s", method, path, exc, delay)
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 2.0)

    def _call_once(self, method: str, path: str, *, path_params: dict[str, Any] | None,
                   query: Sequence[tuple[str, Any]], body: Any, timeout_s: float) -> Any:
        try:
            return self._client.call_api(
                path, method, path_params=path_params or {}, query_params=list(query),
                header_params=dict(_JSON), body=body, response_type="object",
                auth_settings=["api_key"], _return_http_data_only=True,
                _request_timeout=timeout_s,
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            text = str(exc.body or exc.reason)
            if status in TRANSIENT_STATUS:
                # conductor-python reports every transport failure as status 0; "Connection
                # error" is its wording for a connect that failed, i.e. a request never sent.
                raise self._unavailable(f"{status or 'no answer'}: {text}",
                                        never_sent=text.startswith("Connection error")) from exc
            raise ConductorApiError(status, text) from exc
        except OSError as exc:
            raise self._unavailable(str(exc),
                                    never_sent=isinstance(exc, ConnectionRefusedError)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("httpx"):
                raise self._unavailable(str(exc), never_sent=False) from exc
            raise

    def _unavailable(self, why: str, *, never_sent: bool) -> EngineUnavailable:
        return EngineUnavailable(f"Conductor server unreachable at {self.server_url}: {why}",
                                 retryable=True, details={"neverSent": never_sent})

    async def acall(self, method: str, path: str, **kwargs: Any) -> Any:
        """``call`` in this API's thread pool."""
        return await self.run(self.call, method, path, **kwargs)

    # --- metadata --------------------------------------------------------------------------
    def register_task_defs(self, defs: list[dict[str, Any]]) -> None:
        """Register (or update) task definitions."""
        self.call("POST", "/metadata/taskdefs", body=defs)

    def get_workflow_def(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        """A workflow definition (latest when no version), or None."""
        query = [("version", version)] if version is not None else []
        try:
            found: dict[str, Any] = self.call("GET", "/metadata/workflow/{name}",
                                              path_params={"name": name}, query=query)
        except ConductorApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found or None

    def create_workflow_def(self, definition: dict[str, Any]) -> None:
        """Register a new workflow definition version (never overwrites one)."""
        self.call("POST", "/metadata/workflow", body=definition)

    # --- workflows -------------------------------------------------------------------------
    def start_workflow(self, request: dict[str, Any]) -> str:
        """Start a workflow; returns its id."""
        # Not idempotent on Conductor OSS (it ignores idempotencyKey): retried only when the
        # request surely never reached the server.
        return str(self.call("POST", "/workflow", body=request, idempotent=False)).strip('"')

    def get_workflow(self, workflow_id: str, include_tasks: bool = True) -> dict[str, Any]:
        """A workflow execution with (by default) its tasks."""
        found: dict[str, Any] = self.call(
            "GET", "/workflow/{id}", path_params={"id": workflow_id},
            query=[("includeTasks", str(include_tasks).lower())],
        )
        return found

    def get_workflow_state(self, workflow_id: str) -> dict[str, Any]:
        """A workflow's id and status (and, when TERMINATED, its reason), without its tasks or
        its definition.

        ``GET /workflow/{id}`` carries the whole workflow definition even without tasks (about
        1 MB for a 1,000-step plan): read on every step, it made a run's cost grow with the
        square of its length. The status endpoint answers in a few hundred bytes; only a
        terminated workflow is read again for the reason it was terminated with.
        """
        found: dict[str, Any] = self.call(
            "GET", "/workflow/{id}/status", path_params={"id": workflow_id},
            query=[("includeOutput", "false"), ("includeVariables", "false")],
        )
        if found.get("status") == "TERMINATED":
            full = self.get_workflow(workflow_id, include_tasks=False)
            return {"workflowId": workflow_id, "status": full.get("status"),
                    "reasonForIncompletion": full.get("reasonForIncompletion")}
        return {"workflowId": str(found.get("workflowId") or workflow_id),
                "status": found.get("status")}

    def find_by_correlation(self, name: str, correlation_id: str) -> list[dict[str, Any]]:
        """Workflows of ``name`` started with ``correlation_id`` (closed ones too)."""
        found: list[dict[str, Any]] = self.call(
            "GET", "/workflow/{name}/correlated/{cid}",
            path_params={"name": name, "cid": correlation_id},
            query=[("includeClosed", "true"), ("includeTasks", "false")],
        )
        return found or []

    def pause(self, workflow_id: str) -> None:
        """The server's pause: no new task is scheduled."""
        self.call("PUT", "/workflow/{id}/pause", path_params={"id": workflow_id})

    def resume(self, workflow_id: str) -> None:
        """The server's resume."""
        self.call("PUT", "/workflow/{id}/resume", path_params={"id": workflow_id})

    def terminate(self, workflow_id: str, reason: str) -> None:
        """Terminate a workflow (no-op on a terminal one)."""
        try:
            self.call("DELETE", "/workflow/{id}", path_params={"id": workflow_id},
                      query=[("reason", reason)])
        except ConductorApiError as exc:
            if exc.status not in (400, 404, 409):
                raise

    def skip_task(self, workflow_id: str, task_ref: str) -> None:
        """The server's skip of a task that has not been scheduled yet."""
        self.call("PUT", "/workflow/{id}/skiptask/{ref}",
                  path_params={"id": workflow_id, "ref": task_ref}, body={})

    # --- tasks -----------------------------------------------------------------------------
    def poll(self, task_type: str, worker_id: str, count: int, timeout_ms: int,
             domain: str | None = None) -> list[dict[str, Any]]:
        """Long-poll up to ``count`` tasks of a type."""
        query: list[tuple[str, Any]] = [("workerid", worker_id), ("count", count),
                                        ("timeout", timeout_ms)]
        if domain:
            query.append(("domain", domain))
        found = self.call("GET", "/tasks/poll/batch/{type}", path_params={"type": task_type},
                          query=query, timeout_s=timeout_ms / 1000 + 30, retry_s=0)
        return list(found or [])

    def update_task(
        self,
        workflow_id: str,
        task_id: str,
        status: str,
        output: dict[str, Any] | None = None,
        *,
        callback_after_s: int | None = None,
        reason: str | None = None,
        worker_id: str | None = None,
        extend_lease: bool = False,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        """Report a task's result (or park it with a callback, or extend its lease)."""
        body: dict[str, Any] = {
            "workflowInstanceId": workflow_id, "taskId": task_id, "status": status,
            "outputData": output or {},
        }
        if callback_after_s is not None:
            body["callbackAfterSeconds"] = callback_after_s
        if reason:
            body["reasonForIncompletion"] = reason[:500]
        if worker_id:
            body["workerId"] = worker_id
        if extend_lease:
            body["extendLease"] = True
        self.call("POST", "/tasks", body=body, retry_s=retry_s)

    def get_task(self, task_id: str, retry_s: float = DEFAULT_RETRY_S) -> dict[str, Any]:
        """One task."""
        found: dict[str, Any] = self.call("GET", "/tasks/{id}", path_params={"id": task_id},
                                          retry_s=retry_s)
        return found

    def in_progress_tasks(self, task_types: Sequence[str], limit: int = 1000,
                          ) -> list[dict[str, Any]]:
        """Summaries of the IN_PROGRESS tasks of some types, from the server's task index."""
        query = f"taskType IN ({','.join(task_types)}) AND status IN (IN_PROGRESS)"
        found = self.call("GET", "/tasks/search",
                          query=[("query", query), ("freeText", "*"), ("size", limit)])
        return list((found or {}).get("results") or [])

    def decide(self, workflow_id: str) -> None:
        """Run the server's decider on a workflow now (it times out tasks whose lease ran out)."""
        self.call("PUT", "/workflow/decide/{id}", path_params={"id": workflow_id})

    def health(self) -> bool:
        """Whether the server answers its health check."""
        try:
            self.call("GET", "/metadata/taskdefs", query=[("access", "READ")], timeout_s=5,
                      retry_s=0)
        except (ConductorApiError, EngineUnavailable):
            return False
        return True
