"""`dvt usage`: what a tenant used in a window of days, folded from the store's event log
(docs/cost.md); the same numbers as ``GET /v1/usage``."""

from __future__ import annotations

import click

from dvt_cli.execution import execute
from dvt_cli.output import emit_json, say
from dvt_cli.serve import _STORE, _store_url


@click.command("usage")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@click.option("--from", "start", metavar="YYYY-MM-DD", help="First UTC day (default: the 1st).")
@click.option("--to", "end", metavar="YYYY-MM-DD", help="Day after the last (default: tomorrow).")
@click.option("--by", "group_by", type=click.Choice(["plan", "run", "day"]), default="plan",
              show_default=True)
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def usage(tenant: str, start: str | None, end: str | None, group_by: str,
          store_url: str | None, as_json: bool) -> None:
    """Units the tenant used: per plan, run or day (USAGE_QUERY_INVALID for bad dates)."""

    async def body() -> int:
        from dvt_cli.session import _open_store
        from dvt_engine.cost import PriceTable, UsageWindow, summarize, usage_rows
        from dvt_engine.identifiers import validate_identifier

        validate_identifier("tenant", tenant)
        window = UsageWindow.parse(start, end, group_by)
        store = await _open_store(_store_url(store_url) or "memory://")
        try:
            rows = await usage_rows(store, tenant, PriceTable(), before=window.end)
        finally:
            await store.close()
        answer = summarize(rows, window)
        if as_json:
            emit_json(answer)
            return 0
        say(f"{'key':36} {'runs':>6} {'compute':>14} {'data':>12} {'total':>14}")
        for item in answer["items"]:
            say(f"{item['key']:36} {item['runs']:>6} {item['computeUnits']:>14} "
                f"{item['dataUnits']:>12} {item['totalUnits']:>14}")
        say(f"total {answer['totalUnits']} units, {answer['from']} to {answer['to']} (exclusive)")
        return 0

    execute(as_json, body)
