"""API keys over HTTP and from the shell: 401, 403, roles per route, revocation at once."""

from __future__ import annotations

import json

from api_helpers import ApiServer, dvt, tenant


def _problem(answer: object) -> dict[str, object]:
    import httpx

    assert isinstance(answer, httpx.Response)
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = answer.json()
    assert body["type"] == f"urn:dvt:error:{body['code']}"
    assert body["status"] == answer.status_code
    assert body["instance"] == answer.headers["x-request-id"]
    return body


def test_a_request_without_a_valid_key_is_401_with_a_bearer_challenge(
        api_server: ApiServer) -> None:
    with api_server.client() as c:
        for headers in ({}, {"Authorization": "Bearer dvt_sk_" + "x" * 43},
                        {"Authorization": "Basic dXNlcjpwYXNz"},
                        {"Authorization": "Bearer not-a-key"}):
            answer = c.get("/v1/runs", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert _problem(answer)["code"] == "UNAUTHENTICATED"


def test_a_key_without_the_role_is_403_and_admin_implies_no_other_role(
        api_server: ApiServer) -> None:
    t = tenant()
    reader = api_server.key(t, "reader")
    with api_server.client(reader) as c:
        assert c.get("/v1/runs").status_code == 200
        answer = c.post("/v1/runs", json={"planRef": {"sha256": "a" * 64}})
        assert answer.status_code == 403
        assert _problem(answer)["code"] == "FORBIDDEN"
        assert c.get("/v1/api-keys").status_code == 403
    with api_server.client(api_server.admin(t)) as c:
        assert c.get("/v1/api-keys").status_code == 200
        answer = c.get("/v1/runs")
        assert answer.status_code == 403
        assert _problem(answer)["code"] == "FORBIDDEN"


def test_a_revoked_key_fails_on_its_very_next_request(api_server: ApiServer) -> None:
    t = tenant()
    key = api_server.key(t, "reader")
    with api_server.client(api_server.admin(t)) as admin:
        key_id = next(k["keyId"] for k in admin.get("/v1/api-keys").json()["items"]
                      if k["roles"] == ["reader"])
        with api_server.client(key) as c:
            assert c.get("/v1/runs").status_code == 200
            assert admin.delete(f"/v1/api-keys/{key_id}").status_code == 204
            answer = c.get("/v1/runs")
            assert answer.status_code == 401
            assert _problem(answer)["code"] == "UNAUTHENTICATED"
        listed = admin.get("/v1/api-keys").json()["items"]
        assert next(k for k in listed if k["keyId"] == key_id)["revokedAt"] is not None
        assert all("key" not in k for k in listed)


def test_an_admin_manages_only_its_own_tenants_keys(api_server: ApiServer) -> None:
    a, b = tenant(), tenant()
    api_server.key(a, "reader")
    with api_server.client(api_server.admin(a)) as admin_a:
        a_ids = [k["keyId"] for k in admin_a.get("/v1/api-keys").json()["items"]]
    with api_server.client(api_server.admin(b)) as admin_b:
        listed = admin_b.get("/v1/api-keys").json()["items"]
        assert {k["tenantId"] for k in listed} == {b}
        foreign = admin_b.delete(f"/v1/api-keys/{a_ids[0]}")
        missing = admin_b.delete("/v1/api-keys/key_0000000000000000")
        assert foreign.status_code == missing.status_code == 404
        assert _problem(foreign)["code"] == _problem(missing)["code"] == "API_KEY_NOT_FOUND"
    with api_server.client(api_server.admin(a)) as admin_a:
        assert admin_a.get("/v1/api-keys").status_code == 200  # still valid


def test_keys_from_the_shell_create_list_and_revoke(api_server: ApiServer) -> None:
    t = tenant()
    made = json.loads(dvt(api_server.env, "keys", "create", "--tenant", t, "--role", "reader",
                          "--role", "runner", "--name", "ci", "--store", api_server.store_url,
                          "--json").stdout)
    assert set(made) >= {"keyId", "key", "tenantId", "roles"}
    assert made["key"].startswith("dvt_sk_")
    assert made["tenantId"] == t
    assert made["roles"] == ["reader", "runner"]
    listed = json.loads(dvt(api_server.env, "keys", "list", "--tenant", t, "--store",
                            api_server.store_url, "--json").stdout)
    assert [k["keyId"] for k in listed["items"]] == [made["keyId"]]
    assert made["key"] not in json.dumps(listed)
    with api_server.client(made["key"]) as c:
        assert c.get("/v1/runs").status_code == 200
        done = dvt(api_server.env, "keys", "revoke", made["keyId"], "--tenant", t, "--store",
                   api_server.store_url)
        assert done.returncode == 0, done.stderr
        assert c.get("/v1/runs").status_code == 401
    bad = dvt(api_server.env, "keys", "create", "--tenant", t, "--role", "root", "--store",
              api_server.store_url, "--json")
    assert bad.returncode != 0
    assert json.loads(bad.stdout)["error"]["code"] == "USAGE_ERROR"
