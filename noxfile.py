"""Repository tasks. `nox -s tests` is the one command CI runs (.ci/run) and the README shows.

Every session installs what it needs into its own virtualenv; servers (PostgreSQL, Temporal,
Conductor) are installed and started by the test fixtures and the demo themselves.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
LINT_PATHS = ["dvt_engine", "dvt_cli", "dvt_statestore_pg", "dvt_adapters_temporal",
              "dvt_adapters_conductor", "dvt_local", "dvt_testing", "contract_tests", "tests",
              "benchmarks", "noxfile.py", "dvt_api", "dvt_steps", "dvt_artifacts", "examples",
              "dvt_client", "dvt_archive"]
#: Type-checked with --strict: the pure core, the CLI, the local servers, the pytest plugin,
#: the HTTP service, the step kinds, the artifact stores, the service's client and the cold
#: archive.
TYPED_PATHS = ["dvt_engine", "dvt_cli", "dvt_local", "dvt_testing", "dvt_api", "dvt_steps",
               "dvt_artifacts", "dvt_client", "dvt_archive"]


def _install(session: nox.Session, extras: str = "all,dev") -> None:
    # Editable, so tests and docs checks see the checkout's files (golden fixtures, docs/).
    # `all` holds the local servers (`local`) and the pytest plugin (`testing`) too.
    session.install("--upgrade", "pip")
    session.install("-e", f".[{extras}]")


def _lint(session: nox.Session) -> None:
    session.run("ruff", "check", *[p for p in LINT_PATHS if (ROOT / p).exists()])


def _typecheck(session: nox.Session) -> None:
    session.run("mypy", "--strict", *TYPED_PATHS)


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, type-check, then the whole test suite against real servers (CI runs this).

    Arguments after `--` go to pytest and skip lint and type-check, for a focused run:
    `nox -s tests -- tests/test_cli.py -x`.
    """
    _install(session)
    failed: list[str] = []
    if not session.posargs:
        # Every check runs even when an earlier one fails, so one report shows all problems.
        for name, check in (("lint", _lint), ("typecheck", _typecheck)):
            try:
                check(session)
            except CommandFailed:
                failed.append(name)
    # pytest's exit code 5 ("no tests ran") is not in success_codes, so it fails too.
    try:
        args = session.posargs or ["tests", "--durations=25"]
        session.run("pytest", *args, env={"PYTHONUNBUFFERED": "1"})
    except CommandFailed:
        failed.append("pytest")
    if failed:
        session.error(f"failed: {', '.join(failed)}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over every package, the tests and the tooling."""
    session.install("ruff>=0.5")
    _lint(session)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core, the CLI, the local servers and the pytest plugin."""
    _install(session)
    _typecheck(session)


@nox.session
def docs(session: nox.Session) -> None:
    """Check docs/errors.md, the JSON Schemas and docs/openapi.json against the code."""
    _install(session, "api,dev")
    session.run("python", "-m", "dvt_cli.errors_doc", "--check")
    session.run("python", "-m", "dvt_engine.schemas.export", "--check")
    session.run("python", "-m", "dvt_api.openapi", "--check")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark with its bare baseline (`-- --quick` for a smoke run); prints tables.

    Then the sustained-load rows of docs/benchmarks.md, through the load harness at the target
    rates for 10 minutes each (1 with `--quick`): one-step runs on Temporal, ten-step runs on
    the reference engine (10,000 steps a minute), and the PAUSE storm. A missed speed target
    (the harness's exit 1) is a figure to record, not a failure of the session; a wrong run
    (exit 2) is. The bare Temporal mode (`--engine temporal-bare`) is a diagnosis, not a row
    here: `nox -s load -- --engine temporal-bare --rate 1000/min --minutes 10` runs it.
    """
    _install(session)
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
    minutes = "1" if "--quick" in session.posargs else "10"
    for load in (["--engine", "temporal", "--rate", "1000/min", "--steps", "1"],
                 ["--engine", "reference", "--rate", "1000/min", "--steps", "10"],
                 ["--engine", "temporal", "--rate", "60/min", "--steps", "4", "--step-ms",
                  "1500", "--signals", "100"]):
        session.run("python", "-m", "benchmarks.load", *load, "--minutes", minutes,
                    "--drain", "300", env={"PYTHONUNBUFFERED": "1"}, success_codes=[0, 1])


@nox.session
def stress(session: nox.Session) -> None:
    """The concurrency suites at a larger size.

    The tenant-stream suite (DVT_STRESS_SIZE, default 20) on both stores; each run prints one
    `stress[...]` line (events, followers, seconds, missing, duplicated), the numbers
    docs/postgres.md records. Then the signal storm on every engine (DVT_SIGNAL_STORM_RUNS,
    _SECONDS and _RATE; default 20 runs for 20 s at 100 signals a second); each prints one
    `signal storm on ...` line, the numbers docs/signals.md records.
    """
    _install(session)
    size = os.environ.get("DVT_STRESS_SIZE", "20")
    session.run(
        "pytest", "-s", "-q", "tests/pg/test_pg_concurrency.py", "tests/test_store_memory.py",
        "-k", "Concurrency", *session.posargs,
        env={"DVT_STRESS_SIZE": size, "PYTHONUNBUFFERED": "1"},
    )
    storm = {name: os.environ.get(name, default) for name, default in (
        ("DVT_SIGNAL_STORM_RUNS", "20"), ("DVT_SIGNAL_STORM_SECONDS", "20"),
        ("DVT_SIGNAL_STORM_RATE", "100"))}
    session.run(
        "pytest", "-s", "-q", "tests/test_engine_reference.py", "tests/pg/test_pg_signals.py",
        "tests/temporal/test_engine_contract.py", "tests/conductor/test_engine_contract.py",
        "-k", "signal_storm", *session.posargs, env={**storm, "PYTHONUNBUFFERED": "1"},
    )


@nox.session
def load(session: nox.Session) -> None:
    """The load and chaos harness against real local servers (benchmarks/load/).

    `nox -s load -- --rate 1000/min --minutes 10 --engine temporal --chaos all`: starts
    PostgreSQL (and a streaming standby for pg-failover), the engine's server and `dvt worker`
    processes, drives runs through the host API, injects the faults, checks every run's log and
    snapshot, and prints per-minute throughput, latency percentiles, store lag, RSS and a
    pass/fail line (exit 0 all good, 1 a target missed, 2 a run wrong). `--help` lists options.
    """
    _install(session)
    session.run("python", "-m", "benchmarks.load", *session.posargs,
                env={"PYTHONUNBUFFERED": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: install dvt, start local servers, run golden plans durably, steer one,
    then build the example dbt project through the HTTP service.

    Starts PostgreSQL (the store) and a Temporal dev server from the pinned wheels of the
    `local` extra (part of `all`; no system PostgreSQL is used) in a scratch DVT_HOME, runs a
    diamond plan with live progress, then starts a plan with an approval gate for a background
    `dvt worker`, approves the gate from another command and follows the run to its end.
    Last, `dvt serve` with a connection `warehouse` on the same PostgreSQL runs the dbt plan
    (seed, run, test) started and followed with curl (see `_serve_demo`).
    Servers are stopped at the end unless `-- --keep`.
    """
    _install(session, "all")
    keep = "--keep" in session.posargs
    home = Path(os.environ.get("DVT_DEMO_HOME") or tempfile.mkdtemp(prefix="dvt-demo-"))
    env = {"DVT_HOME": str(home), "DVT_ENGINE": "temporal", "PYTHONUNBUFFERED": "1"}
    suffix = uuid.uuid4().hex[:8]
    diamond, gated = f"diamond-{suffix}", f"approval-{suffix}"
    worker: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    try:
        session.run("dvt", "dev", "up", env=env)
        session.run("dvt", "validate", "golden_fixtures/plans/diamond.json", env=env)
        session.run("dvt", "run", "golden_fixtures/plans/diamond.json", "--run-id", diamond,
                    env=env)
        session.log("a run that waits for an approver, executed by a separate worker process")
        worker = subprocess.Popen([_bin(session, "dvt"), "worker", "--engine", "temporal"],
                                  env={**os.environ, **env})
        session.run("dvt", "run", "golden_fixtures/plans/approval.json", "--run-id", gated,
                    "--detach", "--no-worker", env=env)
        session.run("dvt", "events", gated, "--until", "StepAwaitingApproval", env=env)
        session.run("dvt", "signal", gated, "approve", "signoff", "--actor", "alice",
                    "--comment", "looks good", env=env)
        session.run("dvt", "events", gated, "--follow", env=env)
        session.run("dvt", "status", gated, env=env)
        session.run("dvt", "runs", env=env)
        # From here on `dvt serve` hosts the only workers, so the dbt steps run where the
        # warehouse connection is configured.
        _stop(worker)
        worker = None
        server = _serve_demo(session, env, home)
    finally:
        if server is not None:
            _stop(server)
        if worker is not None:
            _stop(worker)
        if keep:
            session.log(f"servers keep running; stop them with `DVT_HOME={home} dvt dev down`")
        else:
            session.run("dvt", "dev", "down", "--purge", env=env)
            shutil.rmtree(home, ignore_errors=True)


def _serve_demo(session: nox.Session, env: dict[str, str], home: Path
                ) -> subprocess.Popen[bytes]:
    """The example dbt project built through the HTTP service, on the local PostgreSQL.

    `dvt serve` runs with a named connection `warehouse` on the PostgreSQL of `dvt dev up`
    (schema `shop`; the local server trusts loopback, so the connection needs no password
    reference). An API key is created, the dbt plan (seed, run, test) is POSTed with curl, its
    SSE stream is followed to RunCompleted, then the run's step outputs (GET /v1/runs/{id}) and
    the row counts of the tables dbt built are shown. Returns the server process (the caller
    stops it), started before anything can fail.
    """
    import json
    import socket

    session.log("the service: dvt serve builds the example dbt project, started over HTTP")
    warehouse = _warehouse_url(session, env)
    with socket.socket() as probe:  # a free port of 127.0.0.1
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    serve_env = {**os.environ, **env, "DVT_CONNECTIONS__WAREHOUSE__URL": warehouse}
    session.log(f"DVT_CONNECTIONS__WAREHOUSE__URL={warehouse} dvt serve --port {port}")
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - handed to the server process
    server = subprocess.Popen([_bin(session, "dvt"), "serve", "--engine", "temporal",
                               "--port", str(port)], env=serve_env, stdout=log, stderr=log)
    try:
        # curl retries while the port is closed: it returns as soon as the service answers.
        session.run("curl", "-sS", "--retry-connrefused", "--retry", "60", "--retry-delay", "1",
                    f"{base}/readyz", external=True)
        made = subprocess.run([_bin(session, "dvt"), "keys", "create", "--tenant", "demo",
                               "--role", "runner", "--role", "reader", "--json"],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              check=True)
        key = json.loads(made.stdout)["key"]
        session.log("dvt keys create --tenant demo --role runner --role reader --json")
        body = home / "run-request.json"
        plan = json.loads(Path("examples/plans/dbt_seed_run_test.json").read_text("utf-8"))
        body.write_text(json.dumps({"plan": plan}), "utf-8")
        auth = f"Authorization: Bearer {key}"
        created = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", auth,
                                  "-H", "Content-Type: application/json",
                                  "--data-binary", f"@{body}", f"{base}/v1/runs"],
                                 capture_output=True, text=True, check=True)
        run_id = json.loads(created.stdout)["runId"]
        session.log(f"POST /v1/runs (examples/plans/dbt_seed_run_test.json) -> {run_id}; "
                    "its event stream (GET /v1/runs/{id}/stream), until the run ends:")
        stream = _tee(["curl", "-sSN", "--fail-with-body", "-H", auth,
                       f"{base}/v1/runs/{run_id}/stream"])
        if "event: RunCompleted" not in stream:
            session.error("the dbt run did not complete")
        fetched = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", auth,
                                  f"{base}/v1/runs/{run_id}"],
                                 capture_output=True, text=True, check=True)
        snapshot = json.loads(fetched.stdout)
        session.log(f"GET /v1/runs/{run_id} -> {snapshot['status']}; the dbt steps' outputs:")
        for step in snapshot["steps"]:
            out = step["output"] or {}
            print(f"  {step['stepId']:5} {step['status']:8} dbt {out.get('command')}: "
                  f"{out.get('passed')} passed, {out.get('failed')} failed, "
                  f"{len(step['artifacts'])} artifacts", flush=True)
        session.log("the tables and views dbt built in schema shop, with their row counts:")
        counted = subprocess.run([_bin(session, "python"), "-c", _ROW_COUNTS, warehouse],
                                 capture_output=True, text=True, check=True)
        print(counted.stdout, end="", flush=True)
    except BaseException:
        _stop(server)
        session.log((home / "serve.log").read_text("utf-8", errors="replace")[-4000:])
        raise
    return server


#: Prints each relation of the connection's schema with its row count (psycopg, no psql).
_ROW_COUNTS = """
import sys
from urllib.parse import parse_qs, urlsplit
import psycopg
from psycopg import sql
url = sys.argv[1]
schema = parse_qs(urlsplit(url).query)["schema"][0]
with psycopg.connect(url.split("?")[0]) as db:
    names = db.execute("select table_name from information_schema.tables"
                       " where table_schema = %s order by 1", [schema]).fetchall()
    for (name,) in names:
        query = sql.SQL("select count(*) from {}").format(sql.Identifier(schema, name))
        print(f"  {schema}.{name:16} {db.execute(query).fetchone()[0]:>4} rows")
"""


def _warehouse_url(session: nox.Session, env: dict[str, str]) -> str:
    """The local PostgreSQL of `dvt dev up`, as a connection URL whose schema is `shop`."""
    import json
    from urllib.parse import urlsplit, urlunsplit

    status = subprocess.run([_bin(session, "dvt"), "dev", "status", "--json"],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            check=True)
    url: str = json.loads(status.stdout)["postgres"]["url"]
    store = urlsplit(url)
    return urlunsplit((store.scheme, store.netloc, store.path, "schema=shop", ""))


def _tee(argv: list[str]) -> str:
    """Runs a command, printing its output as it comes; returns the output (exit 0 required).

    Long lines (an SSE event's JSON) are printed cut to 150 characters; the return is whole.
    """
    lines = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            shown = line.rstrip("\n")
            print(shown if len(shown) <= 150 else shown[:150] + " ...", flush=True)
            lines.append(line)
    if process.returncode != 0:
        raise CommandFailed(f"{argv[0]} exited with {process.returncode}")
    return "".join(lines)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server or worker this session started, and wait for it to finish."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def _bin(session: nox.Session, name: str) -> str:
    """A console script of the session's virtualenv."""
    path = shutil.which(name, path=session.bin)
    if path is None:
        session.error(f"{name} is not installed in the session's virtualenv")
    return str(path)
