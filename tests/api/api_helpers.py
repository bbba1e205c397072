"""Talking to a real `dvt serve` process over HTTP: the server, keys, plans and SSE parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from dvt_engine.builder import PlanBuilder

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ApiServer:
    """A `dvt serve` subprocess on 127.0.0.1 and what it logged."""

    process: subprocess.Popen[str]
    base_url: str
    store_url: str
    log_path: Path
    env: dict[str, str]
    tail: LogTail
    admin_keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        """A client for the server, authenticated with ``key`` when given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kw)

    def admin(self, tenant: str) -> str:
        """An admin key of ``tenant``, made once through `dvt keys create`."""
        if tenant not in self.admin_keys:
            self.admin_keys[tenant] = cli_key(self, tenant, "admin")["key"]
        return self.admin_keys[tenant]

    def key(self, tenant: str, *roles: str) -> str:
        """A key of ``tenant`` with ``roles``, made through POST /v1/api-keys."""
        return self.key_and_id(tenant, *roles)[0]

    def key_and_id(self, tenant: str, *roles: str) -> tuple[str, str]:
        """A new key of ``tenant`` and its keyId."""
        with self.client(self.admin(tenant)) as c:
            answer = c.post("/v1/api-keys", json={"roles": list(roles)})
            assert answer.status_code == 201, answer.text
            return str(answer.json()["key"]), str(answer.json()["keyId"])

    def log_text(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text("utf-8", errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> str:
        """Block until a logged line holds ``needle``; that line.

        The server writes a request's line after the response has gone out, so a test that
        reads the log straight after its answer would race the writer.
        """
        return self.tail.wait_for(needle, timeout)


class LogTail:
    """The lines copied from the server's stderr, with a wake-up for each new one."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False

    def add(self, line: str) -> None:
        """Record one line and wake the waiters."""
        with self._changed:
            self._lines.append(line)
            self._changed.notify_all()

    def close(self) -> None:
        """The stream ended: waiters stop waiting."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float) -> str:
        """The first line holding ``needle``, waiting for it to be written."""
        def found() -> str | None:
            return next((line for line in self._lines if needle in line), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._closed, timeout)
            line = found()
        if line is None:
            raise AssertionError(f"the server never logged a line with {needle!r}")
        return line


def dvt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the dvt CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "dvt_cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def cli_key(server: ApiServer, tenant: str, *roles: str) -> dict[str, Any]:
    """`dvt keys create --json` against the server's store."""
    args = ["keys", "create", "--tenant", tenant, "--store", server.store_url, "--json"]
    for role in roles:
        args += ["--role", role]
    done = dvt(server.env, *args)
    assert done.returncode == 0, done.stderr
    made: dict[str, Any] = json.loads(done.stdout)
    return made


def start_server(store_url: str, log_path: Path, home: Path, *extra: str,
                 engine: str = "reference", env: dict[str, str] | None = None) -> ApiServer:
    """Start `dvt serve --port 0` and wait for uvicorn's "running on" line (its real port)."""
    env = {**os.environ, "DVT_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("DVT_STORE_URL", None)
    log: IO[str] = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - kept for the process
    process = subprocess.Popen(
        [sys.executable, "-m", "dvt_cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--store", store_url, "--engine", engine, *extra],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    base_url = None
    for line in process.stderr:  # blocks on the server's own output, no polling
        log.write(line)
        log.flush()
        if "Uvicorn running on" in line:
            address = json.loads(line)["msg"].split("running on ", 1)[1].split()[0]
            base_url = address
            break
    if base_url is None:
        log.close()
        raise AssertionError(f"dvt serve did not start: {log_path.read_text()}")
    tail = LogTail()
    _drain(process.stderr, log, tail)
    return ApiServer(process, base_url, store_url, log_path, env, tail)


def _drain(stream: IO[str], log: IO[str], tail: LogTail) -> None:
    def copy() -> None:
        for line in stream:
            log.write(line)
            log.flush()
            tail.add(line)
        log.close()
        tail.close()

    threading.Thread(target=copy, daemon=True).start()


def stop_server(server: ApiServer) -> int:
    """SIGTERM, then wait for the graceful exit; the exit code."""
    server.process.terminate()
    return server.process.wait(timeout=30)


def tenant() -> str:
    """A fresh tenant id."""
    return f"t-{uuid.uuid4().hex[:10]}"


def chain_plan(n: int = 3, plan_id: str = "chain") -> dict[str, Any]:
    """n noop steps, each after the previous one."""
    builder = PlanBuilder(plan_id, "1")
    for i in range(n):
        builder = builder.step(f"s{i}", "noop", depends_on=[f"s{i - 1}"] if i else [])
    return builder.build()


def gated_plan() -> dict[str, Any]:
    """build, then an approval gate, then publish: the run waits for an approver."""
    return (PlanBuilder("gated", "1").step("build", "noop")
            .approval("signoff", depends_on=["build"])
            .step("publish", "echo", depends_on=["signoff"], params={"to": "prod"})
            .build())


@dataclass
class SseMessage:
    """One server-sent event."""

    id: str | None
    event: str | None
    data: str


def sse_messages(lines: Iterator[str]) -> Iterator[SseMessage]:
    """Parse text/event-stream lines into messages (comments and retry lines skipped)."""
    ident: str | None = None
    event: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SseMessage(ident, event, "\n".join(data))
            ident, event, data = None, None, []
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                ident = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
