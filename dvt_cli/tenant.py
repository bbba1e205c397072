"""`dvt tenant purge`: remove a tenant's data everywhere, leaving a signed tombstone
(docs/retention.md)."""

from __future__ import annotations

import click

from dvt_cli.execution import execute
from dvt_cli.output import emit_json, say
from dvt_cli.retention import SIGNING, module, pg_url, signer_of
from dvt_cli.serve import _STORE
from dvt_cli.settings import default_actor
from dvt_engine.errors import UsageError


@click.group()
def tenant() -> None:
    """Tenant administration on the store."""


@tenant.command("purge")
@click.argument("tenant_id", metavar="TENANT")
@click.option("--yes", "confirm", metavar="TENANT",
              help="Confirm by repeating the tenant id (required: the purge cannot be undone).")
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--actor", default=None, help="Who purges, recorded in the tombstone"
                                            " (default: the local user).")
@click.option("--archive", "roots", multiple=True, metavar="URL",
              help="Also sweep this cold root (besides those the archive registry names).")
@SIGNING[0]
@SIGNING[1]
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def purge(tenant_id: str, confirm: str | None, dry_run: bool, actor: str | None,
          roots: tuple[str, ...], key_path: str | None, key_id: str | None,
          store_url: str | None, as_json: bool) -> None:
    """Delete every row and archive object of TENANT, hot and cold, and sign a tombstone.

    Whoever holds the store's credentials administers it, so the command acts as an admin.
    """

    async def body() -> int:
        if not dry_run and confirm != tenant_id:
            raise UsageError("a purge cannot be undone: confirm with --yes TENANT (the same"
                             " tenant id)", details={"tenant": tenant_id})
        purge_module = module("dvt_archive.purge")
        report = await purge_module.purge_tenant(
            pg_url(store_url), tenant_id, signer_of(key_path, key_id),
            actor=actor or default_actor(), roles=("admin",), dry_run=dry_run, roots=roots)
        data = report.to_dict()
        if as_json:
            emit_json({"purge": data})
            return 0
        removed = ", ".join(f"{n} {k}" for k, n in sorted(data["removed"].items()) if n)
        verb = "would remove" if dry_run else "removed"
        say(f"tenant {tenant_id}: {verb} {removed or 'no rows'}; {data['objects']} archive"
            " objects")
        if data["tombstone"] and not dry_run:
            stone = data["tombstone"]
            say(f"  tombstone {stone['tombstone']} signed with key {stone['keyId']} at"
                f" {stone['at']}")
        if data["checkpoints"] and not dry_run:
            first, last = data["checkpoints"]["rewritten"]
            say(f"  checkpoints {first}..{last} re-signed without the tenant; newest digest"
                f" {data['checkpoints']['before']} -> {data['checkpoints']['after']}")
        return 0

    execute(as_json, body)
