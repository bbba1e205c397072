"""The `dvt` command: the group, the run commands and registration; the work happens in runs.py
and ops.py, and the larger command groups live in their own modules (lifecycle_commands,
limits, usage, retention, tenant, serve)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from dvt_cli import (
    lifecycle_commands,
    limits,
    ops,
    plans,
    remote,
    retention,
    runs,
    serve,
    tenant,
    usage,
)
from dvt_cli.execution import end_process, execute, json_requested
from dvt_cli.live import live_wanted
from dvt_cli.options import (
    engine_option,
    handlers_option,
    live_option,
    settings_from,
    store_options,
)
from dvt_cli.output import EXIT_REFUSED, emit_json, say
from dvt_cli.settings import (
    Settings,
    default_actor,
    parse_roles,
)
from dvt_engine import __version__
from dvt_engine.errors import DvtError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dvt")
@click.option("--api", "api_url", envvar="DVT_API_URL", metavar="URL",
              help="Talk to a dvt service (`dvt serve`) for run, validate, status, events, "
                   "runs and signal. [env DVT_API_URL]")
@click.option("--api-key", envvar="DVT_API_KEY", metavar="KEY",
              help="The service's API key (its tenant and roles apply). [env DVT_API_KEY]")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """Run execution plans durably on Temporal, Conductor or in process, with the truth about
    every run in an event log.

    Without a configured store, runs live in memory and only the command that started them
    sees them; `dvt dev up` starts a local PostgreSQL (and Temporal) that every command uses.
    With --api (or DVT_API_URL) the run commands go through a dvt service instead.
    """
    ctx.obj = remote.Remote(api_url, api_key) if api_url else None


def _remote(kw: dict[str, Any]) -> remote.Remote | None:
    """The service to talk to, when `dvt --api URL` (or DVT_API_URL) was given."""
    found = click.get_current_context().find_root().obj
    if not isinstance(found, remote.Remote):
        return None
    return remote.Remote(found.url, found.key, json=bool(kw.get("as_json")))


@cli.command()
@click.argument("plan", metavar="PLAN.json")
@engine_option
@store_options
@click.option("--run-id", help="Run id (default: a new UUID).")
@click.option("--request-id",
              help="Idempotency key of this start: repeating it starts nothing new.")
@click.option("--detach", is_flag=True, help="Return once the run started (needs a lasting store).")
@click.option("--worker/--no-worker", default=True, show_default=True,
              help="Host the engine's workers in this command (off when `dvt worker` runs).")
@click.option("--label", "labels", multiple=True, metavar="KEY:VALUE",
              help="A label of the run (repeatable), e.g. --label team:data.")
@live_option
def run(plan: str, engine: str | None, run_id: str | None, request_id: str | None,
        detach: bool, worker: bool, labels: tuple[str, ...], no_live: bool,
        **kw: Any) -> None:
    """Store PLAN.json in the registry, start it, follow it, print the final snapshot.

    Exit code 0 when the run COMPLETED, 1 when it FAILED or was CANCELLED, 2 when the plan was
    refused or the command was used wrongly.
    """
    options = runs.RunOptions(plan_path=plan, run_id=run_id, request_id=request_id,
                              detach=detach, worker=worker,
                              triggered_by=f"cli:{default_actor()}", labels=labels,
                              live=live_wanted(bool(kw["as_json"]), no_live))
    if (api := _remote(kw)) is not None:
        execute(api.json, lambda: remote.run_plan(api, options, engine))
    settings = settings_from(kw, engine)
    execute(settings.json, lambda: runs.run_plan(settings, options))


@cli.command()
@click.argument("plan", metavar="PLAN.json")
@engine_option
@store_options
def validate(plan: str, engine: str | None, **kw: Any) -> None:
    """Print the validation report of PLAN.json for an engine (exit 0: it can run, 2: not)."""
    if (api := _remote(kw)) is not None:
        execute(api.json, lambda: remote.validate_plan(api, plan, engine))
    settings = settings_from(kw, engine)
    execute(settings.json, lambda: runs.validate_plan(settings, plan))


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--dag", "with_dag", is_flag=True,
              help="Draw the plan's DAG in layers, with each step's state.")
@store_options
def status(run_id: str, with_dag: bool, **kw: Any) -> None:
    """Print the snapshot of a run (or its DAG with --dag)."""
    if (api := _remote(kw)) is not None:
        execute(api.json, lambda: remote.show_status(api, run_id, with_dag))
    settings = settings_from(kw)
    execute(settings.json, lambda: runs.show_status(settings, run_id, with_dag))


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
@click.option("--until", metavar="EVENT_TYPE",
              help="Stop after the first event of this type, e.g. StepAwaitingApproval "
                   "(waits for it; also stops when the run ends).")
@live_option
@store_options
def events(run_id: str, follow: bool, until: str | None, no_live: bool, **kw: Any) -> None:
    """Print the events of a run in runSeq order (JSON Lines with --json).

    On a terminal, following (-f, --until) adds a live progress display under the lines.
    """
    live = live_wanted(bool(kw["as_json"]), no_live)
    if (api := _remote(kw)) is not None:
        execute(api.json, lambda: remote.show_events(api, run_id, follow, until, live))
    settings = settings_from(kw)
    execute(settings.json, lambda: runs.show_events(settings, run_id, follow, until, live))


@cli.command(name="runs")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["PENDING", "APPROVED", "RUNNING", "PAUSED", "COMPLETED",
                                 "FAILED", "CANCELLED"], case_sensitive=False),
              help="Only runs in this status (repeatable).")
@click.option("--plan", "plan_id", metavar="PLAN_ID", help="Only runs of this planId.")
@click.option("--label", "labels", multiple=True, metavar="KEY:VALUE",
              help="Only runs with this label (repeatable: every one must match).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@store_options
def runs_(statuses: tuple[str, ...], plan_id: str | None, labels: tuple[str, ...], limit: int,
          **kw: Any) -> None:
    """List the tenant's runs, newest first."""
    query = runs.RunQuery(statuses=statuses, plan_id=plan_id, labels=labels, limit=limit)
    if (api := _remote(kw)) is not None:
        execute(api.json, lambda: remote.list_runs(api, query))
    settings = settings_from(kw)
    execute(settings.json, lambda: runs.list_runs(settings, query))


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.argument("action", metavar="ACTION|NAME")
@click.argument("step", required=False)
@click.option("--payload", "payload_text", metavar="JSON",
              help="Data of a custom signal (a JSON object); NAME is the signal the run's "
                   "plan declares.")
@click.option("--signal-id", help="Idempotency key of the signal (default: a new UUID).")
@click.option("--actor", envvar="DVT_ACTOR", help="Who sends it. [env DVT_ACTOR; default: $USER]")
@click.option("--role", "roles", multiple=True,
              help="Role of the actor (repeatable). [env DVT_ROLES, comma-separated; "
                   "default: admin,approver]")
@click.option("--reason", "--comment", "reason", help="Reason (or approval comment).")
@store_options
def signal(run_id: str, action: str, step: str | None, payload_text: str | None,
           signal_id: str | None, actor: str | None, roles: tuple[str, ...],
           reason: str | None, **kw: Any) -> None:
    """Send a signal to RUN: pause, resume, cancel, retry-step S, skip-step S, approve S, reject S,
    retry-run, approve-run, reject-run; or NAME [--payload JSON], a custom signal of its plan.

    Exit code 0 when the signal was accepted, 2 when it was refused (the decision is printed).
    """
    import os

    data = runs.parse_signal_data(action, payload_text)
    if (api := _remote(kw)) is not None:
        options = runs.SignalOptions(run_id=run_id, action=action, step_id=step,
                                     signal_id=signal_id, reason=reason, data=data)
        execute(api.json, lambda: remote.send_signal(api, options))
    settings = settings_from(kw)

    async def body() -> int:
        role_text = ",".join(roles) if roles else os.environ.get("DVT_ROLES")
        options = runs.SignalOptions(
            run_id=run_id, action=action, step_id=step, signal_id=signal_id,
            actor=default_actor() if actor is None else actor, roles=parse_roles(role_text),
            reason=reason, data=data,
        )
        return await runs.send_signal(settings, options)

    execute(settings.json, body)


@cli.command()
@click.argument("plan", metavar="PLAN.json")
@click.option("--engines", required=True, metavar="A,B",
              help="Engines to compare, e.g. reference,temporal.")
@click.option("--scenario", type=click.Path(dir_okay=False),
              help="Scenario file (signals, faults).")
@handlers_option
@store_options
def parity(plan: str, engines: str, scenario: str | None, **kw: Any) -> None:
    """Run PLAN.json on several engines; compare checksums and event logs (exit 0 only if equal)."""
    settings = settings_from(kw)

    async def body() -> int:
        return await ops.parity(settings, plan, ops.parse_engines(engines), scenario)

    execute(settings.json, body)


@cli.command()
@store_options
def migrate(**kw: Any) -> None:
    """Apply the PostgreSQL store's migrations (idempotent)."""
    settings = settings_from(kw)
    execute(settings.json, lambda: ops.migrate(settings))


@cli.group()
def plan() -> None:
    """Plan documents: move a plan between schema versions."""


def _plan_version_command(direction: str) -> Any:
    @plan.command(name=direction)
    @click.argument("plan_path", metavar="PLAN.json")
    @click.option("--to", "target", required=True, metavar="VERSION",
                  help="Target schemaVersion, e.g. v1.3.")
    @click.option("-o", "--output", type=click.Path(dir_okay=False),
                  help="Write the plan here (default: standard output).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable errors.")
    def command(plan_path: str, target: str, output: str | None, as_json: bool) -> None:
        execute(as_json, lambda: plans.change_version(plan_path, target, output,
                                                      direction=direction))

    command.__doc__ = (
        "Rewrite PLAN.json for a newer schemaVersion (only the version changes)."
        if direction == "upgrade" else
        "Rewrite PLAN.json for an older schemaVersion; refused (PLAN_DOWNGRADE_UNSUPPORTED) "
        "when it uses a newer field.")
    return command


plan_upgrade = _plan_version_command("upgrade")
plan_downgrade = _plan_version_command("downgrade")


@cli.command()
@handlers_option
@click.option("--engine", envvar="DVT_ENGINE", required=True,
              type=click.Choice(["temporal", "conductor"]), help="Engine whose workers to run.")
@click.option("--queue", "queues", multiple=True,
              help="Serve only these step task queues (repeatable; default: every queue).")
@click.option("--resource-class", "resource_classes", multiple=True,
              help="Serve only the queues these resource classes are routed to (repeatable).")
@store_options
def worker(engine: str, queues: tuple[str, ...], resource_classes: tuple[str, ...],
           **kw: Any) -> None:
    """Run an engine's workers until Ctrl-C or SIGTERM (running steps finish first)."""
    settings = settings_from(kw, engine)
    execute(settings.json, lambda: ops.worker(settings, engine, queues, resource_classes))


@cli.group()
def dev() -> None:
    """Local servers that outlive one command (data under DVT_HOME, default ~/.dvt)."""


@dev.command()
@click.option("--postgres/--no-postgres", default=None, help="Embedded PostgreSQL store.")
@click.option("--temporal/--no-temporal", default=None, help="Temporal dev server.")
@click.option("--conductor/--no-conductor", default=False, show_default=True,
              help="Conductor server (downloads a ~450 MB jar on first use).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def up(postgres: bool | None, temporal: bool | None, conductor: bool, as_json: bool) -> None:
    """Start the local servers in the background; later commands use them by default."""
    settings = Settings(json=as_json)

    async def body() -> int:
        parts = ops.default_dev_parts()
        for name, wanted in (("postgres", postgres), ("temporal", temporal),
                             ("conductor", conductor)):
            if wanted is True and name not in parts:
                parts.append(name)
            if wanted is False and name in parts:
                parts.remove(name)
        return await ops.dev_up(settings, parts)

    execute(as_json, body)


@dev.command()
@click.option("--purge", is_flag=True, help="Also delete their data (runs, workflow history).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def down(purge: bool, as_json: bool) -> None:
    """Stop the local servers (their data stays unless --purge)."""
    execute(as_json, lambda: ops.dev_down(Settings(json=as_json), purge))


@dev.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dev_status(as_json: bool) -> None:
    """Show which local servers run."""
    execute(as_json, lambda: ops.show_dev(Settings(json=as_json)))


cli.add_command(lifecycle_commands.store)
cli.add_command(lifecycle_commands.archive_group)
cli.add_command(lifecycle_commands.audit)
cli.add_command(serve.serve)
cli.add_command(serve.keys)
cli.add_command(limits.limits)
cli.add_command(usage.usage)
cli.add_command(retention.retention)
cli.add_command(tenant.tenant)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: click's usage errors become USAGE_ERROR, JSON under --json.

    Without ``argv`` this is the ``dvt`` process itself, which ends through ``end_process``
    (no interpreter finalization while Temporal's native threads live); with ``argv`` (a
    program embedding the command, the tests) it raises SystemExit like any click command.
    """
    code = run_command(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        end_process(code)
    sys.exit(code)


def run_command(args: list[str]) -> int:
    """Run ``dvt ARGS`` and return its exit status (errors are printed, never raised)."""
    try:
        code = cli.main(args=args, prog_name="dvt", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.UsageError as exc:
        return _usage_error(exc, json_requested(args))
    except click.exceptions.Abort:
        say("aborted", err=True)
        return 130
    except DvtError as exc:  # raised while reading options (e.g. --handlers)
        from dvt_cli.output import print_error

        print_error(exc, as_json=json_requested(args))
        return EXIT_REFUSED
    return code if isinstance(code, int) else 0


def _usage_error(exc: click.UsageError, as_json: bool) -> int:
    hint = (f"see `{exc.ctx.command_path} --help`" if exc.ctx is not None
            else "see `dvt --help`")
    if as_json:
        emit_json({"error": {"code": "USAGE_ERROR", "message": exc.format_message(),
                             "details": {"retryable": False, "hint": hint}}})
    else:
        say(f"error USAGE_ERROR: {exc.format_message()}", err=True)
        say(f"hint: {hint}", err=True)
    return EXIT_REFUSED


if __name__ == "__main__":  # pragma: no cover
    main()
