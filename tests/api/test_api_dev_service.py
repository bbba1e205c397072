"""`dvt serve --dev` (the memory store): webhooks are delivered, cursors of PostgreSQL refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import standardwebhooks
from api_helpers import ApiServer, chain_plan, start_server, stop_server
from webhook_receiver import Receiver

TEST_ENV = {"DVT_API_WEBHOOK_RETRY_SCHEDULE": "[0.3, 0.3, 0.3]",
            "DVT_API_WEBHOOK_TIMEOUT_S": "2"}


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, str]]:
    """`dvt serve --dev` allowing webhooks to 127.0.0.1, and the key it printed."""
    tmp = tmp_path_factory.mktemp("dev")
    server = start_server("memory://", tmp / "server.log", tmp / "home", "--dev",
                          "--allow-webhook-host", "127.0.0.1", env=TEST_ENV)
    try:
        # The key is printed on stdout (the log file) before uvicorn says it is running.
        line = next(x for x in server.log_path.read_text().splitlines() if "dev API key" in x)
        yield server, line.rsplit(" ", 1)[-1]
    finally:
        if server.process.poll() is None:
            assert stop_server(server) == 0, "a graceful stop exits 0"
            assert '"msg": "service stopped"' in server.log_text()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1."""
    found = Receiver()
    try:
        yield found
    finally:
        found.close()


def test_a_dev_service_delivers_webhooks(dev_server: tuple[ApiServer, str],
                                         receiver: Receiver) -> None:
    server, key = dev_server
    path = "/hook/dev"
    with server.client(key) as c:
        made = c.post("/v1/webhooks", json={"url": receiver.url(path),
                                            "events": ["run.completed"]})
        assert made.status_code == 201, made.text
        hook = made.json()
        started = c.post("/v1/runs", json={"plan": chain_plan(2)})
        assert started.status_code == 201, started.text
        run_id = started.json()["runId"]
        got = receiver.wait_for(lambda r: any(x.path == path for x in r))
        request = next(x for x in got if x.path == path)
        payload = standardwebhooks.Webhook(hook["secret"]).verify(request.body, request.headers)
        assert payload["type"] == "run.completed"
        assert payload["data"]["run"]["runId"] == run_id
        assert payload["data"]["run"]["status"] == "COMPLETED"


def test_a_cursor_of_the_postgresql_store_is_refused_before_the_stream(
        dev_server: tuple[ApiServer, str]) -> None:
    server, key = dev_server
    with server.client(key) as c:
        for where in ({"headers": {"Last-Event-ID": "812.33"}}, {"params": {"after": "812.33"}}):
            answer = c.get("/v1/stream", **where)  # type: ignore[arg-type]
            assert answer.status_code == 422, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            problem = answer.json()
            assert problem["code"] == "REQUEST_INVALID"
            assert "memory" in problem["errors"][0]["message"]
        with c.stream("GET", "/v1/stream", headers={"Last-Event-ID": "0"}) as s:
            assert s.status_code == 200
