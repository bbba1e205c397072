"""Webhooks end to end: a real `dvt serve`, real PostgreSQL, real receivers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from api_helpers import ApiServer, chain_plan, start_server, stop_server, tenant
from secret_helpers import assert_no_secrets
from webhook_receiver import Answer, Receiver

from dvt_statestore_pg.testing import schema_store_url

#: Short retry delays (seconds) so a test sees a delivery's whole life.
TEST_ENV = {"DVT_API_WEBHOOK_RETRY_SCHEDULE": "[0.3, 0.3, 0.3]",
            "DVT_API_WEBHOOK_TIMEOUT_S": "2"}


def _start(store_url: str, tmp: Path, name: str) -> ApiServer:
    return start_server(store_url, tmp / f"{name}.log", tmp / "home",
                        "--allow-webhook-host", "127.0.0.1", env=TEST_ENV)


@pytest.fixture(scope="module")
def hook_server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ApiServer]:
    """`dvt serve` allowing webhooks to 127.0.0.1, with a short retry schedule."""
    server = _start(api_store_url, tmp_path_factory.mktemp("hooks"), "server")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert stop_server(server) == 0


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """One receiver per module; each test uses paths of its own."""
    found = Receiver()
    try:
        yield found
    finally:
        found.close()


def _path() -> str:
    return f"/hook/{uuid.uuid4().hex[:8]}"


def _subscribe(client: httpx.Client, url: str, *events: str) -> dict[str, Any]:
    answer = client.post("/v1/webhooks", json={"url": url,
                                               "events": list(events or ["run.completed"])})
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


def _run(client: httpx.Client) -> str:
    answer = client.post("/v1/runs", json={"plan": chain_plan(2)})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["runId"])


def _deliveries_until(client: httpx.Client, webhook_id: str, check: Any,
                      timeout: float = 30.0) -> list[dict[str, Any]]:
    """Poll the deliveries API until ``check(items)`` holds, within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/v1/webhooks/{webhook_id}/deliveries")
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        if check(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries never matched: {items}")
        time.sleep(0.1)  # polling interval of the API read, not synchronisation by sleep


def _client(server: ApiServer, who: str) -> httpx.Client:
    return server.client(server.key(who, "admin", "runner", "reader"))


def test_a_signed_delivery_verifies_with_the_standard_library(
        hook_server: ApiServer, receiver: Receiver) -> None:
    path = _path()
    with _client(hook_server, tenant()) as c:
        hook = _subscribe(c, receiver.url(path), "run.completed")
        assert hook["secret"].startswith("whsec_")
        assert "secret" not in c.get(f"/v1/webhooks/{hook['webhookId']}").json()
        run_id = _run(c)
        got = receiver.wait_for(lambda r: any(x.path == path for x in r))
        request = next(x for x in got if x.path == path)
        payload = standardwebhooks.Webhook(hook["secret"]).verify(request.body, request.headers)
        assert payload["type"] == "run.completed"
        assert payload["data"]["run"]["runId"] == run_id
        assert payload["data"]["event"]["eventType"] == "RunCompleted"
        other = standardwebhooks.Webhook("whsec_" + "QUJD" * 8)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            other.verify(request.body, request.headers)
        items = _deliveries_until(c, hook["webhookId"],
                                  lambda i: i and i[0]["status"] == "delivered")
        assert items[0]["deliveryId"] == request.headers["webhook-id"]
        assert items[0]["runId"] == run_id
        assert items[0]["lastStatusCode"] == 200
        shown = [c.get("/v1/webhooks").json(), c.get(f"/v1/webhooks/{hook['webhookId']}").json(),
                 items, request.headers]
    # The secret leaves the service once (the creating answer): never in a listing, a
    # delivery's headers, or the log.
    assert_no_secrets(hook_server.log_text(), *shown, known=[hook["secret"]])


def test_a_receiver_failing_three_times_gets_the_same_webhook_id(
        hook_server: ApiServer, receiver: Receiver) -> None:
    path = _path()
    receiver.script(path, Answer(500), Answer(502), Answer(500), Answer(200))
    with _client(hook_server, tenant()) as c:
        hook = _subscribe(c, receiver.url(path))
        _run(c)
        got = receiver.wait_for(lambda r: len([x for x in r if x.path == path]) >= 4)
        ids = {x.headers["webhook-id"] for x in got if x.path == path}
        assert len(ids) == 1
        items = _deliveries_until(c, hook["webhookId"],
                                  lambda i: i and i[0]["status"] == "delivered")
        assert items[0]["attempts"] == 4
        metrics = c.get("/metrics").text
        assert 'dvt_webhook_attempts_total{outcome="retry"}' in metrics
        assert 'dvt_webhook_attempts_total{outcome="delivered"}' in metrics


def test_retry_after_is_honoured(hook_server: ApiServer, receiver: Receiver) -> None:
    path = _path()
    receiver.script(path, Answer(429, {"Retry-After": "2"}), Answer(200))
    with _client(hook_server, tenant()) as c:
        _subscribe(c, receiver.url(path))
        _run(c)
        receiver.wait_for(lambda r: len([x for x in r if x.path == path]) >= 2)
        first, second = receiver.at(path)[:2]
        # The schedule alone would retry after ~0.3 s; the receiver asked for 2 s.
        assert second.at - first.at >= 1.9


def test_gone_disables_the_endpoint(hook_server: ApiServer, receiver: Receiver) -> None:
    path = _path()
    receiver.script(path, Answer(410))
    with _client(hook_server, tenant()) as c:
        hook = _subscribe(c, receiver.url(path))
        _run(c)
        items = _deliveries_until(c, hook["webhookId"],
                                  lambda i: i and i[0]["status"] == "failed")
        assert items[0]["lastStatusCode"] == 410
        assert items[0]["attempts"] == 1
        shown = c.get(f"/v1/webhooks/{hook['webhookId']}").json()
        assert shown["disabledAt"] is not None
        assert "410" in shown["disabledReason"]
        refused = c.post(f"/v1/webhooks/{hook['webhookId']}/deliveries/"
                         f"{items[0]['deliveryId']}/redeliver")
        assert refused.status_code == 409
        assert refused.json()["code"] == "WEBHOOK_DISABLED"
        _run(c)  # a disabled endpoint gets no new deliveries
        assert len(receiver.at(path)) == 1


def test_a_failed_delivery_can_be_redelivered(hook_server: ApiServer,
                                              receiver: Receiver) -> None:
    path = _path()
    receiver.script(path, Answer(500))
    with _client(hook_server, tenant()) as c:
        hook = _subscribe(c, receiver.url(path))
        _run(c)
        items = _deliveries_until(c, hook["webhookId"],
                                  lambda i: i and i[0]["status"] == "failed")
        assert items[0]["attempts"] == 4  # the first try and three retries
        receiver.script(path, Answer(200))
        answer = c.post(f"/v1/webhooks/{hook['webhookId']}/deliveries/"
                        f"{items[0]['deliveryId']}/redeliver")
        assert answer.status_code == 202, answer.text
        items = _deliveries_until(c, hook["webhookId"],
                                  lambda i: i and i[0]["status"] == "delivered")
        assert {x.headers["webhook-id"] for x in receiver.at(path)} == {items[0]["deliveryId"]}


def test_a_hanging_receiver_does_not_delay_another_tenant(
        hook_server: ApiServer, receiver: Receiver) -> None:
    slow, fast = _path(), _path()
    release = threading.Event()
    receiver.script(slow, Answer(200, hold=release))
    try:
        with _client(hook_server, tenant()) as a, _client(hook_server, tenant()) as b:
            _subscribe(a, receiver.url(slow))
            _run(a)
            receiver.wait_for(lambda r: any(x.path == slow for x in r))
            hook = _subscribe(b, receiver.url(fast))
            for _ in range(3):
                _run(b)
            _deliveries_until(b, hook["webhookId"], lambda i: len(i) == 3 and all(
                x["status"] == "delivered" for x in i))
            assert not release.is_set()  # all of it while the slow receiver still hangs
    finally:
        release.set()


def test_rotation_signs_with_both_secrets(hook_server: ApiServer, receiver: Receiver) -> None:
    path = _path()
    with _client(hook_server, tenant()) as c:
        hook = _subscribe(c, receiver.url(path))
        rotated = c.post(f"/v1/webhooks/{hook['webhookId']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != hook["secret"]
        _run(c)
        receiver.wait_for(lambda r: any(x.path == path for x in r))
        request = receiver.at(path)[0]
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in (hook["secret"], new):
            standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_private_targets_are_refused_and_foreign_webhooks_look_missing(
        hook_server: ApiServer, receiver: Receiver) -> None:
    with _client(hook_server, tenant()) as c, _client(hook_server, tenant()) as other:
        for url in ("http://10.0.0.7/hook", "http://127.0.0.2:9/hook", "http://169.254.169.254/",
                    "ftp://example.com/x", "http://user:pw@127.0.0.1/x"):
            answer = c.post("/v1/webhooks", json={"url": url, "events": ["run.failed"]})
            assert answer.status_code == 422, url
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "WEBHOOK_URL_NOT_ALLOWED"
        hook = _subscribe(c, receiver.url(_path()))
        missing = "wh_" + "0" * 16
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/deliveries"),
                               ("POST", "/deliveries/msg_x/redeliver")):
            foreign = other.request(method, f"/v1/webhooks/{hook['webhookId']}{suffix}")
            absent = other.request(method, f"/v1/webhooks/{missing}{suffix}")
            assert foreign.status_code == absent.status_code == 404
            assert foreign.json()["code"] == absent.json()["code"] == "WEBHOOK_NOT_FOUND"
        assert other.get("/v1/webhooks").json()["items"] == []
        assert [h["webhookId"] for h in c.get("/v1/webhooks").json()["items"]] == \
            [hook["webhookId"]]
        assert c.delete(f"/v1/webhooks/{hook['webhookId']}").status_code == 204
        assert c.get(f"/v1/webhooks/{hook['webhookId']}").status_code == 404


@pytest.fixture
def own_store_url(dvt_postgres_dsn: str) -> Iterator[str]:
    """A schema no other running server reads (the module's server would take the work)."""
    with schema_store_url(dvt_postgres_dsn, prefix="dvt_webhook_kill") as url:
        yield url


def test_a_delivery_survives_a_killed_service(own_store_url: str, receiver: Receiver,
                                              tmp_path: Path) -> None:
    """SIGKILL while the first attempt is in flight: the restarted service sends it again,
    under the same webhook-id, once the dead process's lease has run out."""
    api_store_url = own_store_url
    path = _path()
    release = threading.Event()
    receiver.script(path, Answer(200, hold=release), Answer(200))
    server = _start(api_store_url, tmp_path, "first")
    try:
        key = server.key(tenant(), "admin", "runner", "reader")
        with server.client(key) as c:
            hook = _subscribe(c, receiver.url(path))
            run_id = _run(c)
            receiver.wait_for(lambda r: any(x.path == path for x in r))
        os.kill(server.process.pid, signal.SIGKILL)
        assert server.process.wait(timeout=30) == -signal.SIGKILL
    finally:
        release.set()
        if server.process.poll() is None:
            server.process.kill()
    again = _start(api_store_url, tmp_path, "second")
    try:
        with again.client(key) as c:
            items = _deliveries_until(c, hook["webhookId"],
                                      lambda i: i and i[0]["status"] == "delivered", 60)
        assert len(items) == 1
        assert items[0]["runId"] == run_id
        sent = receiver.at(path)
        assert len(sent) == 2
        assert sent[0].headers["webhook-id"] == sent[1].headers["webhook-id"]
    finally:
        assert stop_server(again) == 0


def test_two_services_on_one_store_send_each_delivery_once(
        hook_server: ApiServer, receiver: Receiver, tmp_path: Path) -> None:
    """A second `dvt serve` on the same schema shares intake and sending (SKIP LOCKED)."""
    path = _path()
    second = _start(hook_server.store_url, tmp_path, "second")
    try:
        key = hook_server.key(tenant(), "admin", "runner", "reader")
        with hook_server.client(key) as a, second.client(key) as b:
            hook = _subscribe(a, receiver.url(path))
            for i in range(10):
                _run(a if i % 2 else b)
            _deliveries_until(a, hook["webhookId"], lambda i: len(i) == 10 and all(
                x["status"] == "delivered" for x in i))
        ids = [x.headers["webhook-id"] for x in receiver.at(path)]
        assert len(ids) == 10
        assert len(set(ids)) == 10
    finally:
        assert stop_server(second) == 0
