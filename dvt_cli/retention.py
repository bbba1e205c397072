"""`dvt retention set|show|apply`: a tenant's retention terms and the pass that applies them
(docs/retention.md)."""

from __future__ import annotations

import importlib
from typing import Any

import click

from dvt_cli.archive import archive_url
from dvt_cli.execution import execute
from dvt_cli.output import emit_json, say
from dvt_cli.serve import _STORE, _store_url
from dvt_cli.settings import default_actor
from dvt_engine.errors import UsageError

SIGNING = [
    click.option("--signing-key", "key_path", envvar="DVT_AUDIT_SIGNING_KEY", metavar="FILE",
                 help="Audit private key (PEM) that signs the tombstone."
                      " [env DVT_AUDIT_SIGNING_KEY]"),
    click.option("--key-id", "key_id", envvar="DVT_AUDIT_KEY_ID",
                 help="Id of the signing key, as in the keyring. [env DVT_AUDIT_KEY_ID]"),
]


def module(name: str) -> Any:
    """A module of the archive extra, or USAGE_ERROR saying which extra is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"retention and purge are not available in this installation ({exc})",
                         details={"module": name, "hint": "pip install 'dvt[all]'"}) from None


def pg_url(explicit: str | None) -> str:
    """The PostgreSQL store URL: --store, DVT_STORE_URL or the `dvt dev up` one."""
    url = _store_url(explicit) or ""
    if not url.startswith(("postgresql:", "postgres:")):
        raise UsageError("this command works on a PostgreSQL store",
                         details={"hint": "pass --store postgresql://... (or DVT_STORE_URL), "
                                          "or start the local one with `dvt dev up`"})
    return url


def signer_of(key_path: str | None, key_id: str | None) -> Any:
    """The audit signer, or None when no key was given."""
    if not key_path:
        return None
    from dvt_engine.audit_keys import load_signer

    return load_signer(key_path, key_id or "")


@click.group()
def retention() -> None:
    """Retention terms per tenant: days hot in PostgreSQL, years kept in the cold archive."""


def _print_policy(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json({"retention": data})
        return
    origin = " (default)" if data["default"] else ""
    say(f"tenant {data['tenantId']}: {data['hotDays']} days hot, {data['coldYears']} years"
        f" kept{origin}")


@retention.command("show")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(tenant: str, store_url: str | None, as_json: bool) -> None:
    """The tenant's terms (90 days hot and 7 years kept unless set)."""

    async def body() -> int:
        store = module("dvt_statestore_pg.erasure")
        _print_policy((await store.get_policy(pg_url(store_url), tenant)).to_dict(), as_json)
        return 0

    execute(as_json, body)


@retention.command("set")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@click.option("--hot-days", type=int, help="Days a finished run stays in PostgreSQL.")
@click.option("--cold-years", type=int, help="Years the log is kept, counted from each event.")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def set_(tenant: str, hot_days: int | None, cold_years: int | None, store_url: str | None,
         as_json: bool) -> None:
    """Change the tenant's terms; a term not given stays as it is."""

    async def body() -> int:
        if hot_days is None and cold_years is None:
            raise UsageError("nothing to change: give --hot-days and/or --cold-years")
        store = module("dvt_statestore_pg.erasure")
        policy = await store.set_policy(pg_url(store_url), tenant, hot_days=hot_days,
                                        cold_years=cold_years)
        _print_policy(policy.to_dict(), as_json)
        return 0

    execute(as_json, body)


def _signing(f: Any) -> Any:
    for option in reversed(SIGNING):
        f = option(f)
    return f


@retention.command("apply")
@click.option("--dry-run", is_flag=True, help="Count what would move and go; change nothing.")
@click.option("--to", "to", envvar="DVT_ARCHIVE_URL", metavar="URL",
              help="Cold root for runs archived now. [env DVT_ARCHIVE_URL;"
                   " default $DVT_HOME/archive]")
@click.option("--only-tenant", "only_tenant", metavar="TENANT",
              help="Apply this tenant's terms only (default: every tenant).")
@_signing
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def apply(dry_run: bool, to: str | None, only_tenant: str | None, key_path: str | None,
          key_id: str | None, store_url: str | None, as_json: bool) -> None:
    """Archive runs past their hot term; delete cold day partitions past their term."""

    async def body() -> int:
        retention_module = module("dvt_archive.retention")
        report = await retention_module.apply_retention(
            pg_url(store_url), archive_url(to), signer=signer_of(key_path, key_id),
            actor=default_actor(), dry_run=dry_run, tenant_id=only_tenant)
        data = report.to_dict()
        if as_json:
            emit_json({"retention": data})
            return 0
        verb = "would" if dry_run else "did"
        archived = data["archived"]
        say(f"{verb} archive {archived['runs']} runs ({archived['events']} events) past their"
            f" hot term")
        say(f"{verb} delete {data['expiredRuns']} runs ({data['expiredEvents']} events) past"
            f" their cold term: {data['files']} files in {data['partitions']} day partitions")
        for stone in data["tombstones"]:
            say(f"  tombstone {stone['tombstone']} for tenant {stone['tenantId']}"
                f" (key {stone['keyId']})")
        if data["finishedCleanups"]:
            say(f"  finished {data['finishedCleanups']} interrupted cleanups")
        return 0

    execute(as_json, body)
