"""`dvt limits show/set`: a tenant's limits in the store, from the shell (docs/limits.md).

The same store rows the HTTP service reads on every decision, so a change applies at once to
every process that shares the store.
"""

from __future__ import annotations

from typing import Any

import click

from dvt_cli.execution import execute
from dvt_cli.output import emit_json, say
from dvt_cli.serve import _STORE, _store_url
from dvt_engine.errors import UsageError

#: CLI option -> API field of the limits document.
_FIELDS = {"max_active_runs": "maxActiveRuns", "run_starts_per_minute": "runStartsPerMinute",
           "signals_per_minute": "signalsPerMinute", "max_plan_steps": "maxPlanSteps",
           "max_plan_bytes": "maxPlanBytes", "max_queued_runs": "maxQueuedRuns",
           "overflow": "overflow", "monthly_budget_units": "monthlyBudgetUnits",
           "budget_policy": "budgetPolicy"}


async def _admission(url: str | None) -> Any:
    if not url or url.startswith("memory:"):
        raise UsageError("tenant limits need a lasting store: pass --store postgresql://... "
                         "(or run `dvt dev up`)")
    from dvt_statestore_pg.admission import PostgresAdmissionStore

    return await PostgresAdmissionStore.open(url)


def _print(limits: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(limits)
        return
    for key, value in limits.items():
        say(f"{key:20} {'-' if value is None else value}")


@click.group()
def limits() -> None:
    """Tenant limits: active runs, start and signal rates, plan size, overflow."""


@limits.command("show")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(tenant: str, store_url: str | None, as_json: bool) -> None:
    """The tenant's effective limits (defaults from DVT_LIMITS_* with its overrides)."""

    async def body() -> int:
        admission = await _admission(_store_url(store_url))
        try:
            found = await admission.limits(tenant)
        finally:
            await admission.close()
        _print(found.document(), as_json)
        return 0

    execute(as_json, body)


@limits.command("set")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@click.option("--max-active-runs", type=int)
@click.option("--run-starts-per-minute", type=int)
@click.option("--signals-per-minute", type=int)
@click.option("--max-plan-steps", type=int)
@click.option("--max-plan-bytes", type=int)
@click.option("--max-queued-runs", type=int)
@click.option("--overflow", type=click.Choice(["reject", "queue"]))
@click.option("--monthly-budget-units", type=int)
@click.option("--budget-policy", type=click.Choice(["warn", "block"]))
@click.option("--reset", "resets", multiple=True, metavar="FIELD",
              help="Back to the default, e.g. --reset maxActiveRuns (repeatable).")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def set_(tenant: str, resets: tuple[str, ...], store_url: str | None, as_json: bool,
         **values: Any) -> None:
    """Change some of the tenant's limits; the others stay (LIMITS_INVALID when out of range)."""

    async def body() -> int:
        from dvt_engine.admission import LimitsPatch
        from dvt_engine.identifiers import validate_identifier

        validate_identifier("tenant", tenant)
        patch: dict[str, Any] = {_FIELDS[k]: v for k, v in values.items() if v is not None}
        patch.update({field: None for field in resets})
        if not patch:
            raise UsageError("nothing to change: name a limit, e.g. --max-active-runs 10")
        parsed = LimitsPatch.parse(patch)
        admission = await _admission(_store_url(store_url))
        try:
            found = await admission.set_limits(tenant, parsed)
        finally:
            await admission.close()
        _print(found.document(), as_json)
        return 0

    execute(as_json, body)
