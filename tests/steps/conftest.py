"""Running plans of the standard kinds on the reference engine, with an in-memory artifact store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from dvt_engine import Client, HandlerRegistry, PlanBuilder, ReferenceSettings
from dvt_engine.models.events import Event
from dvt_engine.models.signals import Actor, Role
from dvt_engine.models.snapshot import ArtifactRef, RunSnapshot
from dvt_engine.plugins import open_engine
from dvt_engine.ports import StepHandler
from dvt_engine.secrets import MappingSecretsProvider
from dvt_engine.steps import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore


@dataclass
class Ran:
    """A finished run: its snapshot, its events and the artifact store its steps wrote to."""

    snapshot: RunSnapshot
    events: list[Event]
    artifacts: MemoryArtifactStore

    def output(self, step_id: str) -> Any:
        """The step's recorded output."""
        return self.snapshot.step(step_id).output

    def error(self, step_id: str) -> dict[str, Any]:
        """The StepFailed error of the step (the last one), as recorded in the log."""
        failed = [e for e in self.events
                  if e.event_type == "StepFailed" and e.step_id == step_id]
        assert failed, f"step {step_id} did not fail"
        error: dict[str, Any] = failed[-1].payload["error"]
        return error

    async def artifact(self, uri: str) -> bytes:
        """The bytes of a recorded artifact, read back (and verified) from the store."""
        refs = [a for e in self.events if e.event_type == "StepCompleted"
                for a in e.payload["artifacts"] if a["uri"] == uri]
        assert refs, f"no StepCompleted event records {uri}"
        return await self.artifacts.get(ArtifactRef.model_validate(refs[0]))

    def text(self) -> str:
        """Everything the log and snapshot say, as one string (for leak checks)."""
        return json.dumps([e.model_dump(mode="json") for e in self.events]) + \
            self.snapshot.model_dump_json()


class StepClient:
    """An open client whose engine has the given handlers, secrets and a memory artifact store."""

    def __init__(self, client: Client, artifacts: MemoryArtifactStore) -> None:
        self.client = client
        self.artifacts = artifacts

    async def run(self, steps: Sequence[Mapping[str, Any]], *,
                  on_start: Callable[[Any], Awaitable[None]] | None = None) -> Ran:
        """Run a plan of ``steps`` (stepId, kind, params, dependsOn) to its end."""
        builder = PlanBuilder("steps", "1")
        for step in steps:
            builder.step(step["stepId"], step["kind"], params=step.get("params", {}),
                         depends_on=step.get("dependsOn", ()),
                         timeout_ms=step.get("timeoutMs"), retry=step.get("retry"))
        handle = await self.client.start_run(builder.build(),
                                             run_id=f"r-{uuid.uuid4().hex[:10]}")
        if on_start is not None:
            await on_start(handle)
        snapshot = await handle.result(timeout=120)
        events = [e async for e in handle.events(follow=False)]
        return Ran(snapshot=snapshot, events=events, artifacts=self.artifacts)


@pytest.fixture
def step_client() -> Callable[..., Any]:
    """Opens a StepClient: ``async with step_client({"sql": handler}, secrets={...}) as c``."""

    class _Open:
        def __init__(self, handlers: Mapping[str, StepHandler],
                     secrets: Mapping[str, str] | None = None, *,
                     with_artifacts: bool = True) -> None:
            registry: HandlerRegistry = builtin_registry()
            for kind, handler in handlers.items():
                registry.register(kind, handler)
            self.registry = registry
            self.secrets = MappingSecretsProvider(secrets or {})
            self.artifacts = MemoryArtifactStore()
            self.with_artifacts = with_artifacts
            self.client: Client | None = None

        async def __aenter__(self) -> StepClient:
            store = MemoryRunStateStore()
            engine = open_engine(ReferenceSettings(), store=store, registry=self.registry,
                                 secrets=self.secrets,
                                 artifacts=self.artifacts if self.with_artifacts else None)
            self.client = Client(engine=engine, store=store, tenant="acme", project="dw",
                                 environment="dev", owns_store=True,
                                 actor=Actor(id="ops", roles=(Role.OPERATOR,)))
            return StepClient(self.client, self.artifacts)

        async def __aexit__(self, *exc: object) -> None:
            assert self.client is not None
            await self.client.close()

    return _Open
