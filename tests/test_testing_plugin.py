"""The dvt pytest plugin as a host sees it: a host's test file run by pytest in a new process,
with nothing but the installed ``pytest11`` entry point providing the fixtures."""

from __future__ import annotations

import pytest

HOST_TEST = '''
import json

import pytest

from dvt_engine.models import RunContext
from dvt_engine.planning import store_plan
from dvt_engine.steps import step_handler
from dvt_engine.waiting import wait_for_terminal


@step_handler("host.greet")
async def greet(ctx):
    return {"greeting": f"hello {ctx.params['name']}"}


PLAN = {
    "metadata": {"planId": "greet", "planVersion": "1.0.0", "schemaVersion": "v1.2"},
    "steps": [{"stepId": "greet", "kind": "host.greet", "params": {"name": "host"}}],
}


async def run_greet(engine, store, run_id):
    plan_ref = await store_plan(store, json.dumps(PLAN).encode())
    ctx = RunContext(tenant_id="acme", project_id="dw", environment_id="test", run_id=run_id)
    await engine.start_run(plan_ref, ctx)
    return await wait_for_terminal(store, "acme", run_id)


async def test_greet_on_reference(dvt_reference_engine, dvt_store):
    snapshot = await run_greet(dvt_reference_engine, dvt_store, "r-1")
    assert snapshot.status == "COMPLETED"
    assert snapshot.step("greet").output == {"greeting": "hello host"}


async def test_each_test_gets_a_fresh_store(dvt_store):
    assert await dvt_store.get_run("acme", "r-1") is None
'''

POSTGRES_CONFTEST = '''
import pytest


@pytest.fixture
def dvt_store(dvt_postgres_store):
    return dvt_postgres_store
'''

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


def test_host_runs_a_plan_on_the_reference_engine(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_host=HOST_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_host_switches_the_engines_to_postgres(
    pytester: pytest.Pytester, dvt_postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's process reuses this session's server instead of starting its own.
    monkeypatch.setenv("DVT_PG_DSN", dvt_postgres_dsn)
    pytester.makeini(INI)
    pytester.makeconftest(POSTGRES_CONFTEST)
    pytester.makepyfile(test_host=HOST_TEST + '''

async def test_the_store_is_postgres(dvt_store):
    assert type(dvt_store).__name__ == "PostgresRunStateStore"
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    for name in ("dvt_memory_store", "dvt_postgres_store", "dvt_reference_engine",
                 "dvt_temporal_engine", "dvt_temporal_time_skipping", "dvt_conductor_engine"):
        result.stdout.fnmatch_lines([f"{name}*"])


def test_host_switches_to_the_temporal_engine(
    pytester: pytest.Pytester, dvt_temporal_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's process reuses this session's dev server instead of starting its own.
    monkeypatch.setenv("DVT_TEST_TEMPORAL_ADDRESS", dvt_temporal_address)
    pytester.makeini(INI)
    pytester.makepyfile(test_host=HOST_TEST + '''

async def test_greet_on_temporal(dvt_temporal_engine, dvt_store):
    snapshot = await run_greet(dvt_temporal_engine, dvt_store, "r-2")
    assert snapshot.status == "COMPLETED"
    assert snapshot.engine_run_ref["provider"] == "temporal"
    assert snapshot.step("greet").output == {"greeting": "hello host"}
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "temporal")
    result.assert_outcomes(passed=1, deselected=2)
