"""The real servers a load run drives, the worker processes, and the faults done to them.

Everything comes from dvt_local (the pinned wheels and jars) and listens on loopback only:
PostgreSQL (plus a synchronous streaming standby when pg-failover is asked for), the Temporal
dev server with its SQLite file, the Conductor server, and `dvt worker` processes. Each fault
returns the seconds the fault itself took; recovery is measured by the driver on the runs.
The bare Temporal mode (``temporal-bare``) starts only the dev server and bare workers
(bare_temporal.py): its runs never touch PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.sandbox_bytecode import compile_for_sandbox
from dvt_local import lifecycle, standby
from dvt_local import postgres as pg

#: The faults the harness knows, in the order `--chaos all` injects them.
CHAOS_KINDS = ("pg-restart", "worker-kill", "temporal-restart", "pg-failover")
#: Seconds a killed activity's step is retried after (the Temporal worker's heartbeat budget).
WORKER_HEARTBEAT_S = "2"
#: What `dvt worker` prints once it serves, and how long it gets to say it.
WORKER_READY = "dvt worker:"
WORKER_START_S = 120.0
#: The engines served by the Temporal dev server.
TEMPORAL_ENGINES = ("temporal", "temporal-bare")


#: The checkout the harness runs from (a bare worker imports its workflow from it).
REPO_ROOT = Path(__file__).resolve().parents[2]


def _dvt_bin() -> str:
    found = shutil.which("dvt", path=str(Path(sys.executable).parent))
    return found or "dvt"


@dataclass
class Servers:
    """What one load run started; ``close`` stops all of it and removes its files."""

    engine: str
    scratch: Path
    #: None in the bare Temporal mode, which needs no store.
    primary: pg.PostgresServer | None
    schema: str
    standby: pg.PostgresServer | None = None
    temporal_dir: Path | None = None
    temporal_port: int | None = None
    temporal_pid: int | None = None
    conductor: object | None = None
    task_queue: str = field(default_factory=lambda: f"load-{uuid.uuid4().hex[:8]}")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    failed_over: bool = False
    #: `--dynamic-config-value` settings of the Temporal dev server, kept across its restarts.
    temporal_config: tuple[str, ...] = ()

    # --- addresses -----------------------------------------------------------------------
    @property
    def store_url(self) -> str:
        """The store URL every process uses: a multi-host URL when a standby exists."""
        if self.primary is None:
            raise RuntimeError(f"the {self.engine} load runs without PostgreSQL")
        if self.standby is None:
            return self.primary.dsn() + f"?schema={self.schema}"
        return standby.failover_url([self.primary, self.standby], schema=self.schema)

    @property
    def temporal_address(self) -> str:
        """``127.0.0.1:port`` of the dev server."""
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def conductor_url(self) -> str:
        """The Conductor API root."""
        return str(getattr(self.conductor, "api_url", ""))

    # --- workers -------------------------------------------------------------------------
    def worker_env(self) -> dict[str, str]:
        """The environment of a `dvt worker` process of this run."""
        env = {**os.environ, "DVT_HOME": str(self.scratch / "home"), "PYTHONUNBUFFERED": "1"}
        if self.primary is not None:
            env["DVT_STORE_URL"] = self.store_url
        if self.engine in TEMPORAL_ENGINES:
            env.update(DVT_TEMPORAL_ADDRESS=self.temporal_address,
                       DVT_TEMPORAL_TASK_QUEUE=self.task_queue,
                       DVT_TEMPORAL_HEARTBEAT_TIMEOUT_S=WORKER_HEARTBEAT_S)
        elif self.engine == "conductor":
            env.update(DVT_CONDUCTOR_URL=self.conductor_url)
        return env

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start one `dvt worker` process and wait until it says it serves (bounded).

        Its output goes to a log in the scratch dir; a worker that exits first fails the start
        with that log's tail, so a broken installation is not mistaken for a slow engine.
        """
        path = self.scratch / f"worker-{len(self.workers)}.log"
        command = [_dvt_bin(), "worker", "--engine", self.engine]
        what, ready, env = "dvt worker", WORKER_READY, self.worker_env()
        if self.engine == "temporal-bare":
            from benchmarks.load import bare_temporal

            command = [sys.executable, "-m", "benchmarks.load.bare_temporal",
                       "--address", self.temporal_address, "--task-queue", self.task_queue]
            what, ready = "bare worker", bare_temporal.READY
            # The harness runs from a checkout, where `benchmarks` is not an installed package.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with path.open("ab") as log:
            proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.workers.append(proc)
        lifecycle.wait_ready(lambda: ready in lifecycle.log_tail(path), proc,
                             what=what, log_file=path, timeout_s=WORKER_START_S)
        return proc

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes still running."""
        return [w for w in self.workers if w.poll() is None]

    def worker_rss(self) -> int:
        """Resident memory of the running worker processes, in bytes."""
        total = 0
        for proc in self.live_workers():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(proc.pid).memory_info().rss
        return total

    # --- where the CPU goes --------------------------------------------------------------
    def cpu_by_process(self) -> dict[tuple[str, int], float]:
        """CPU seconds (user + system) used so far by each process of the run, children
        included, keyed by part (driver, workers, engine server, postgres) and pid."""
        postmaster = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            if self.primary is not None:
                pid_file = self.primary.data_dir / "postmaster.pid"
                postmaster = int(pid_file.read_text().split()[0])
        server = self.temporal_pid if self.engine in TEMPORAL_ENGINES else getattr(
            self.conductor, "pid", None)
        found = {("driver", os.getpid()): _tree_cpu(os.getpid(), children=False)}
        found.update({("workers", w.pid): _tree_cpu(w.pid) for w in self.live_workers()})
        if server is not None:
            found["engine server", server] = _tree_cpu(server)
        if postmaster is not None:
            found["postgres", postmaster] = _tree_cpu(postmaster)
        return found

    # --- faults --------------------------------------------------------------------------
    def pg_restart(self) -> float:
        """SIGKILL the primary's whole process group, start it again on its port and data."""
        assert self.primary is not None
        began = time.monotonic()
        standby.crash(self.primary)
        self.primary.start()
        return time.monotonic() - began

    def pg_failover(self) -> float:
        """SIGKILL the primary, promote the standby; clients find it through the URL."""
        if self.standby is None:
            raise RuntimeError("pg-failover needs the standby started with the servers")
        assert self.primary is not None
        began = time.monotonic()
        standby.crash(self.primary)
        standby.promote(self.standby)
        self.failed_over = True
        return time.monotonic() - began

    def worker_kill(self) -> float:
        """SIGKILL every worker process and start one new worker."""
        began = time.monotonic()
        for proc in self.live_workers():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.start_worker()
        return time.monotonic() - began

    def temporal_restart(self) -> float:
        """SIGKILL the Temporal dev server, start it again on its port with its SQLite file."""
        from dvt_local import temporal

        assert self.temporal_dir is not None
        began = time.monotonic()
        if self.temporal_pid is not None:
            lifecycle.stop_process(self.temporal_pid, signals=(signal.SIGKILL,), timeout_s=10)
        record = temporal.dev_server_up(self.temporal_dir, port=self.temporal_port,
                                        die_with_parent=True,
                                        dynamic_config=self.temporal_config).record
        self.temporal_pid = record.pid
        return time.monotonic() - began

    def inject(self, kind: str) -> float:
        """Do the fault named ``kind``; the seconds it took.

        The driver calls this in the event loop's executor threads, which live until the loop
        closes: that matters because the PR_SET_PDEATHSIG of a server started here fires when
        the starting thread ends, not the process.
        """
        return {"pg-restart": self.pg_restart, "pg-failover": self.pg_failover,
                "worker-kill": self.worker_kill,
                "temporal-restart": self.temporal_restart}[kind]()

    def close(self) -> None:
        """Stop workers and servers, remove the scratch directory."""
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
        if self.temporal_pid is not None:
            lifecycle.stop_process(self.temporal_pid, timeout_s=10)
        stop = getattr(self.conductor, "stop", None)
        if stop is not None:
            stop()
        for server in (self.standby, self.primary):
            if server is not None:
                server.destroy()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _tree_cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds of a process and (``children``) its live and reaped descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)] if children else [proc]
    except psutil.Error:
        return 0.0
    total = 0.0
    for each in procs:
        with contextlib.suppress(psutil.Error):
            t = each.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if children else 0)
    return total


def applicable(engine: str, kinds: list[str]) -> tuple[list[str], list[str]]:
    """The faults that make sense on ``engine`` and the ones that do not (with no worker
    process, the reference engine has nothing to kill but the driver itself)."""
    skipped = [k for k in kinds if (k == "worker-kill" and engine == "reference")
               or (k == "temporal-restart" and engine not in TEMPORAL_ENGINES)]
    return [k for k in kinds if k not in skipped], skipped


def start(engine: str, chaos: list[str], workers: int = 1, *,
          stock_server: bool = False) -> Servers:
    """Start PostgreSQL (and a standby for pg-failover), the engine's server and workers.

    The Temporal dev server runs without its transfer-queue cap unless ``stock_server``.
    The bare Temporal mode starts no PostgreSQL: nothing of its runs reaches a store.
    """
    scratch = Path(tempfile.mkdtemp(prefix="dvt-load-"))
    primary = None if engine == "temporal-bare" else pg.start_server()
    servers = Servers(engine=engine, scratch=scratch, primary=primary,
                      schema=f"load_{uuid.uuid4().hex[:8]}")
    try:
        if "pg-failover" in chaos and primary is not None:
            servers.standby = standby.start_standby(primary, synchronous=True)
        if engine in TEMPORAL_ENGINES:
            from dvt_local import temporal

            # Each workflow run imports these afresh: measure them as installed code.
            compile_for_sandbox("benchmarks.load" if engine == "temporal-bare"
                                else "dvt_adapters_temporal")

            servers.temporal_dir = scratch / "temporal"
            servers.temporal_config = () if stock_server else (temporal.UNCAPPED_TRANSFER_QUEUE,)
            record = temporal.dev_server_up(servers.temporal_dir, port=lifecycle.free_port(),
                                            die_with_parent=True,
                                            dynamic_config=servers.temporal_config).record
            servers.temporal_port, servers.temporal_pid = record.port, record.pid
        elif engine == "conductor":
            from dvt_local import conductor

            servers.conductor = conductor.ConductorServer(data_dir=scratch / "conductor").start()
        if engine != "reference":
            for _ in range(workers):
                servers.start_worker()
        return servers
    except BaseException:
        servers.close()
        raise
