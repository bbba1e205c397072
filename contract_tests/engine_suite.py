"""The engine contract suite: what every engine behind the engine port must do.

Write it once, run it per engine, in the style of eventsourcing's shared recorder tests: an
adapter subclasses :class:`EngineContractSuite` and provides one fixture, ``engine_harness``,
that yields an :class:`EngineHarness`::

    class TestTemporalEngine(EngineContractSuite):
        @pytest.fixture
        async def engine_harness(self, temporal_server):
            store = MemoryRunStateStore()                 # or the PostgreSQL store
            engine = open_engine("temporal", store=store, target=temporal_server.address)
            yield EngineHarness(engine, store, HarnessCapabilities(pause_drains=False))
            await engine.close()

The fixture interface is small on purpose:

- ``engine``: a started :class:`~dvt_engine.ports.WorkflowEngine` whose runs write to ``store``.
- ``store``: the :class:`~dvt_engine.ports.RunStateStore` the engine writes to; the suite reads
  runs, events and snapshots only through it (contract §7: the store holds the truth).
- ``capabilities``: a :class:`HarnessCapabilities` declaring the real differences between
  engines. The suite branches on these flags explicitly; it never skips a test.

The fixture's scope is the subclass's choice (a server-backed engine may share one engine across
the class); every test uses fresh run ids, so runs never collide. Each test waits on conditions
with bounded timeouts (``capabilities.timeout``), never on sleeps.
"""


from contract_tests.engine_harness import (
    EngineHarness,
    EngineSuiteBase,
    HarnessCapabilities,
    Started,
    plan_document,
)
from contract_tests.engine_suite_policies import RunRuleTests
from contract_tests.engine_suite_runs import RunLifecycleTests
from contract_tests.engine_suite_signals import SignalRuleTests

__all__ = [
    "EngineContractSuite",
    "EngineHarness",
    "EngineSuiteBase",
    "HarnessCapabilities",
    "Started",
    "plan_document",
]


class EngineContractSuite(RunLifecycleTests, SignalRuleTests, RunRuleTests):
    """Every engine must pass these tests; subclass it and provide ``engine_harness``.

    The tests live by responsibility in ``engine_suite_runs`` (a run's life),
    ``engine_suite_signals`` (signal rules) and ``engine_suite_policies`` (run rules).
    """
