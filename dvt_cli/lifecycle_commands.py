"""`dvt store`, `dvt archive` and `dvt audit`: the store's life cycle and its audit trail."""

from __future__ import annotations

from typing import Any

import click

from dvt_cli import archive, ops
from dvt_cli import audit as audit_cmds
from dvt_cli.execution import execute
from dvt_cli.options import settings_from, store_options


@click.group()
def store() -> None:
    """State store administration."""


@store.command()
@click.option("--from-cold", is_flag=True,
              help="Also rebuild archived runs, reading their events from the cold archive.")
@store_options
def rebuild(from_cold: bool, **kw: Any) -> None:
    """Rebuild every snapshot from the event log."""
    settings = settings_from(kw)
    if from_cold:
        execute(settings.json, lambda: archive.rebuild_from_cold(settings))
    else:
        execute(settings.json, lambda: ops.rebuild(settings))


@click.group(name="archive")
def archive_group() -> None:
    """The cold archive: finished runs' events in Parquet files (docs/retention.md)."""


@archive_group.command(name="run")
@click.option("--older-than", default="90d", show_default=True, metavar="AGE",
              help="Archive terminal runs with no event for this long (90d, 12h, 30m, 45s).")
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@click.option("--to", "to", envvar="DVT_ARCHIVE_URL", metavar="URL",
              help="Cold root: a directory or s3://bucket/prefix. [env DVT_ARCHIVE_URL;"
                   " default $DVT_HOME/archive]")
@click.option("--only-tenant", "only_tenant", metavar="TENANT",
              help="Archive this tenant's runs only (default: every tenant).")
@store_options
def archive_run(older_than: str, dry_run: bool, to: str | None, only_tenant: str | None,
                **kw: Any) -> None:
    """Move the events of finished, idle runs from PostgreSQL to Parquet files."""
    settings = settings_from(kw)
    execute(settings.json,
            lambda: archive.archive_run(settings, older_than, dry_run, to, only_tenant))


@click.group()
def audit() -> None:
    """Compliance exports and tamper evidence of the event log (hot and cold)."""


@audit.command(name="export")
@click.option("--from", "start", required=True, metavar="TIME",
              help="Start of the period (ISO date or time, UTC unless zoned), included.")
@click.option("--to", "end", required=True, metavar="TIME", help="End of the period, excluded.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
              show_default=True, help="events.jsonl (one event per line) or events.parquet.")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="Directory (or s3://bucket/prefix) for the events file and manifest.json.")
@store_options
def export(start: str, end: str, fmt: str, out_dir: str, **kw: Any) -> None:
    """Write the tenant's events persisted in [--from, --to), with row counts and sha256."""
    settings = settings_from(kw)
    execute(settings.json, lambda: archive.audit_export(
        settings, settings.identity.tenant, start, end, fmt, out_dir))


@audit.command(name="keygen")
@click.option("--key-id", "key_id", required=True, help="Id of the new key (e.g. 2026-q1).")
@click.option("--out", "private_path", required=True, metavar="FILE",
              help="Where to write the private key (PEM, mode 0600; never overwritten).")
@click.option("--keyring", envvar="DVT_AUDIT_KEYRING", required=True, metavar="FILE",
              help="Keyring JSON file the public key is added to. [env DVT_AUDIT_KEYRING]")
@store_options
def audit_keygen(key_id: str, private_path: str, keyring: str, **kw: Any) -> None:
    """Create an Ed25519 checkpoint signing key; add its public key to the keyring."""
    settings = settings_from(kw)
    execute(settings.json, lambda: audit_cmds.keygen(settings, key_id, private_path, keyring))


@audit.command(name="seal")
@click.option("--signing-key", "key_path", envvar="DVT_AUDIT_SIGNING_KEY", metavar="FILE",
              help="Private key (PEM) that signs checkpoints. [env DVT_AUDIT_SIGNING_KEY]")
@click.option("--key-id", "key_id", envvar="DVT_AUDIT_KEY_ID",
              help="Id of the signing key, as in the keyring. [env DVT_AUDIT_KEY_ID]")
@click.option("--every", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Keep sealing at this interval until SIGTERM (default: one pass).")
@store_options
def audit_seal(key_path: str | None, key_id: str | None, every: float | None,
               **kw: Any) -> None:
    """Chain the events not yet sealed and sign a checkpoint over the new heads."""
    settings = settings_from(kw)
    execute(settings.json, lambda: audit_cmds.seal(settings, key_path, key_id, every))


@audit.command(name="verify")
@click.option("--keyring", envvar="DVT_AUDIT_KEYRING", metavar="FILE",
              help="Public keys by key id (JSON). [env DVT_AUDIT_KEYRING]")
@click.option("--run", "run_id", metavar="RUN", help="Verify this run only.")
@store_options
def audit_verify(keyring: str | None, run_id: str | None, **kw: Any) -> None:
    """Recompute the hash chains (hot and cold); exit 1 on the first altered, deleted,
    inserted or reordered event of each run. Every tenant unless --tenant/DVT_TENANT."""
    source = click.get_current_context().get_parameter_source("tenant")
    settings = settings_from(kw)
    given = source not in (None, click.core.ParameterSource.DEFAULT)
    tenant = settings.identity.tenant if given else None
    execute(settings.json, lambda: audit_cmds.verify(settings, keyring, tenant, run_id))
