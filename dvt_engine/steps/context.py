"""What a running handler sees: the StepContext implementation and the cancellation token."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import ArtifactStoreNotConfigured, SecretNotFound, StepCancelled
from dvt_engine.ports import SecretsProvider, StepContext
from dvt_engine.secrets import resolve_refs
from dvt_engine.waiting import settles_within

if TYPE_CHECKING:
    from dvt_engine.steps.invocation import StepInvocation


class CancelToken:
    """A cooperative stop request for one step attempt; ``cancel()`` is safe from any thread."""

    def __init__(self) -> None:
        self._cancelled = False
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def cancel(self, reason: str | None = None) -> None:
        """Ask the step to stop; later calls change nothing."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self._reason = reason
            waiters = list(self._waiters)
        for loop, event in waiters:
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                event.set()
            else:
                loop.call_soon_threadsafe(event.set)

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled

    def abandon(self) -> None:
        """The engine lost this attempt (timed out, worker shutting down): when the task running
        it is cancelled, record nothing, because the engine runs the attempt again elsewhere."""
        self._abandoned = True

    @property
    def abandoned(self) -> bool:
        """True once abandon() was called."""
        return getattr(self, "_abandoned", False)

    @property
    def reason(self) -> str | None:
        """The reason given to cancel(), if any."""
        return self._reason

    async def wait(self) -> None:
        """Return once the token is cancelled."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self._cancelled:
                return
            self._waiters.append(entry)
        try:
            await event.wait()
        finally:
            with self._lock:
                self._waiters.remove(entry)


class RunnerStepContext(StepContext):
    """The StepContext the step runner hands to a handler.

    Secrets resolved through it are remembered (``resolved_secrets``) so the runner can mask
    them in anything it writes; they are never put back into ``params``.
    """

    def __init__(
        self,
        invocation: StepInvocation,
        *,
        secrets: SecretsProvider | None,
        cancel_token: CancelToken,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        step = invocation.step
        self.invocation = invocation
        self.tenant_id = invocation.tenant_id
        self.project_id = invocation.project_id
        self.environment_id = invocation.environment_id
        self.run_id = invocation.run_id
        self.plan_id = invocation.plan_id
        self.plan_version = invocation.plan_version
        self.step_id = step.step_id
        self.kind = step.kind
        self.params: Mapping[str, Any] = step.params
        self.plan_params: Mapping[str, Any] = invocation.plan_params
        self.logical_attempt_id = invocation.logical_attempt_id
        self.engine_attempt_id = invocation.engine_attempt_id
        self.max_attempts = step.max_attempts
        self.timeout_ms = step.timeout_ms
        self.cancel_token = cancel_token
        self._secrets = secrets
        self._artifacts = artifacts
        self._resolved: dict[str, str] = {}

    @property
    def artifacts(self) -> ArtifactStore:
        """The engine's artifact store; ArtifactStoreNotConfigured when it was opened without."""
        if self._artifacts is None:
            raise ArtifactStoreNotConfigured(
                f"step {self.step_id!r} asked for ctx.artifacts, but the engine has no artifact"
                " store", details={"stepId": self.step_id})
        return self._artifacts

    async def secret(self, ref: str) -> str:
        """Resolve a secret reference through the host's SecretsProvider."""
        if ref in self._resolved:
            return self._resolved[ref]
        if self._secrets is None:
            raise SecretNotFound(
                f"no secrets provider is configured to resolve {ref!r}", details={"ref": ref}
            )
        value = await self._secrets.resolve(ref)
        self._resolved[ref] = value
        return value

    async def resolve_params(self) -> dict[str, Any]:
        """A deep copy of the params with every ``{"secretRef": ...}`` resolved."""
        resolved: dict[str, Any] = await resolve_refs(dict(self.params), self.secret)
        return resolved

    @property
    def resolved_secrets(self) -> tuple[str, ...]:
        """Every secret value this context handed out (for masking)."""
        return tuple(self._resolved.values())

    @property
    def cancelled(self) -> bool:
        """True once the engine asked this step to stop."""
        return self.cancel_token.cancelled

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise StepCancelled as soon as the step is asked to stop."""
        if self.cancel_token.cancelled:
            raise _cancelled(self.cancel_token)
        if await settles_within(self.cancel_token.wait(), max(0.0, seconds)):
            raise _cancelled(self.cancel_token)

    def check_cancelled(self) -> None:
        """Raise StepCancelled if the step was asked to stop (for CPU-bound loops)."""
        if self.cancel_token.cancelled:
            raise _cancelled(self.cancel_token)


def _cancelled(token: CancelToken) -> StepCancelled:
    reason = token.reason
    return StepCancelled("step was cancelled" + (f": {reason}" if reason else ""),
                         details={"reason": reason} if reason else {})
