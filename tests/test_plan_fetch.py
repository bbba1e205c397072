"""Plan loading (contract §2.1): the registry, http(s) fetching, integrity, version, validation.

Every network test talks to servers started here on 127.0.0.1 (tests/plan_fetch_helpers.py).
SSRF refusals are in test_plan_fetch_policy.py, deadlines and size limits in
test_plan_fetch_limits.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from plan_fetch_helpers import (
    PLAN,
    PLAN_BYTES,
    PLAN_SHA,
    PlanServer,
    Route,
    Tls,
    expect,
    ref_for,
    static_resolver,
)
from plan_fetch_helpers import other_server_fixture as other_server_fixture
from plan_fetch_helpers import server_fixture as server_fixture
from plan_fetch_helpers import tls_fixture as tls_fixture
from plan_fetch_helpers import tls_server_fixture as tls_server_fixture

from dvt_engine.errors import (
    ErrorCode,
    PlanFetchFailed,
    PlanIntegrityValidationFailed,
    PlanInvalid,
    PlanNotFound,
    PlanSchemaVersionUnsupported,
    PlanUriNotAllowed,
    SchemaValidationFailed,
)
from dvt_engine.planning.fetch import LoadedPlan, PlanLoader, store_plan
from dvt_engine.planning.https import HttpsPlanFetcher
from dvt_engine.planning.uri_policy import UriPolicy
from dvt_engine.stores.memory import MemoryRunStateStore

# --- the registry ---


async def test_store_plan_then_load_from_the_registry() -> None:
    store = MemoryRunStateStore()
    ref = await store_plan(store, PLAN_BYTES)
    assert ref.uri == f"plan://sha256/{PLAN_SHA}"
    assert ref.sha256 == PLAN_SHA
    assert ref.size_bytes == len(PLAN_BYTES)
    assert (ref.plan_id, ref.plan_version, ref.schema_version) == ("fetched", "1", "v1.2")
    loaded = await PlanLoader(store).load(ref)
    assert isinstance(loaded, LoadedPlan)
    assert loaded.data == PLAN_BYTES
    assert loaded.sha256 == PLAN_SHA
    assert loaded.plan.step_ids == ("a", "b")


async def test_store_plan_is_content_addressed_and_idempotent() -> None:
    store = MemoryRunStateStore()
    first = await store_plan(store, PLAN)
    second = await store_plan(store, dict(reversed(list(PLAN.items()))))
    assert first == second  # objects are stored as sorted compact JSON
    assert await store.get_plan(first.sha256) is not None


async def test_store_plan_refuses_an_invalid_plan_and_stores_nothing() -> None:
    store = MemoryRunStateStore()
    bad = json.dumps({**PLAN, "steps": [{"stepId": "a", "kind": "noop", "dependsOn": ["a"]}]})
    with pytest.raises(PlanInvalid):
        await store_plan(store, bad)
    assert await store.get_plan(hashlib.sha256(bad.encode()).hexdigest()) is None


async def test_registry_miss_is_plan_not_found() -> None:
    err = await expect(
        PlanLoader(MemoryRunStateStore()), ref_for(f"plan://sha256/{PLAN_SHA}"), PlanNotFound
    )
    assert err.code is ErrorCode.PLAN_NOT_FOUND


async def test_registry_uri_digest_must_equal_the_ref_digest() -> None:
    store = MemoryRunStateStore()
    ref = await store_plan(store, PLAN_BYTES)
    other = "0" * 64
    err = await expect(
        PlanLoader(store), ref.model_copy(update={"sha256": other}), PlanIntegrityValidationFailed
    )
    assert err.details["expected"] == other
    assert err.details["actual"] == PLAN_SHA
    assert err.retryable is False


@pytest.mark.parametrize(
    "uri",
    [f"plan://sha256/{PLAN_SHA.upper()}", f"plan://sha1/{PLAN_SHA[:40]}", "plan://x", "plan:///"],
)
async def test_malformed_registry_uris_are_refused(uri: str) -> None:
    await expect(PlanLoader(MemoryRunStateStore()), ref_for(uri), PlanUriNotAllowed)


async def test_registry_reads_honour_sizes() -> None:
    store = MemoryRunStateStore()
    ref = await store_plan(store, PLAN_BYTES)
    short = ref.model_copy(update={"size_bytes": len(PLAN_BYTES) - 1})
    err = await expect(PlanLoader(store), short, PlanIntegrityValidationFailed)
    assert err.details["reason"] == "size"
    longer = ref.model_copy(update={"size_bytes": len(PLAN_BYTES) + 1})
    err = await expect(PlanLoader(store), longer, PlanIntegrityValidationFailed)
    assert err.details["actualSizeBytes"] == len(PLAN_BYTES)
    capped = PlanLoader(store, max_plan_bytes=len(PLAN_BYTES) - 1)
    err = await expect(capped, ref.model_copy(update={"size_bytes": None}), PlanFetchFailed)
    assert err.details["reason"] == "too_large"
    assert err.retryable is False


async def test_registry_is_refused_when_no_store_is_configured() -> None:
    await expect(PlanLoader(None), ref_for(f"plan://sha256/{PLAN_SHA}"), PlanUriNotAllowed)



# --- http(s) fetching ---


async def test_explicitly_allowlisted_http_origin_is_fetched(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    loaded = await loader.load(ref_for(server.url("/plan.json")))
    assert loaded.plan.metadata.plan_id == "fetched"
    assert server.requests == [("/plan.json", f"127.0.0.1:{server.port}")]


async def test_https_with_a_trusted_certificate(tls_server: PlanServer, tls: Tls) -> None:
    policy = UriPolicy([f"127.0.0.1:{tls_server.port}", f"localhost:{tls_server.port}"])
    fetcher = HttpsPlanFetcher(policy, ssl_context=tls.client)
    loader = PlanLoader(None, policy=policy, fetchers=[fetcher])
    loaded = await loader.load(ref_for(tls_server.url("/plan.json")))
    assert loaded.sha256 == PLAN_SHA
    by_name = ref_for(f"https://localhost:{tls_server.port}/plan.json")
    assert (await loader.load(by_name)).sha256 == PLAN_SHA
    assert len(tls_server.requests) == 2


async def test_https_with_an_untrusted_certificate_fails_without_retry(
    tls_server: PlanServer,
) -> None:
    loader = PlanLoader(None, allowed_hosts=[f"127.0.0.1:{tls_server.port}"])
    err = await expect(loader, ref_for(tls_server.url("/plan.json")), PlanFetchFailed)
    assert err.retryable is False
    assert tls_server.requests == []


async def test_connection_is_pinned_to_the_checked_address(server: PlanServer) -> None:
    # plans.internal.test exists only in this table: a fetch that asked DNS again would fail.
    policy = UriPolicy(
        [f"http://plans.internal.test:{server.port}"],
        resolver=static_resolver({"plans.internal.test": ["127.0.0.1"]}),
    )
    loader = PlanLoader(None, policy=policy)
    await loader.load(ref_for(f"http://plans.internal.test:{server.port}/plan.json"))
    assert server.requests == [("/plan.json", f"plans.internal.test:{server.port}")]


async def test_integrity_mismatch_is_not_retryable_and_names_both_digests(
    server: PlanServer,
) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    wanted = hashlib.sha256(b"another plan").hexdigest()
    err = await expect(
        loader, ref_for(server.url("/plan.json"), sha256=wanted), PlanIntegrityValidationFailed
    )
    assert err.code is ErrorCode.PLAN_INTEGRITY_VALIDATION_FAILED
    assert err.details["expected"] == wanted
    assert err.details["actual"] == PLAN_SHA
    assert err.retryable is False


async def test_integrity_is_checked_before_the_schema_version(server: PlanServer) -> None:
    doc = json.dumps({**PLAN, "metadata": {**PLAN["metadata"], "schemaVersion": "v7"}}).encode()
    server.routes["/v7.json"] = Route(body=doc)
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    await expect(
        loader,
        ref_for(server.url("/v7.json"), sha256="1" * 64, schema_version="v7"),
        PlanIntegrityValidationFailed,
    )
    err = await expect(
        loader,
        ref_for(server.url("/v7.json"), doc, schema_version="v7"),
        PlanSchemaVersionUnsupported,
    )
    assert err.details["schemaVersion"] == "v7"


async def test_document_version_unknown_even_when_ref_claims_a_known_one(
    server: PlanServer,
) -> None:
    doc = json.dumps({**PLAN, "metadata": {**PLAN["metadata"], "schemaVersion": "v7"}}).encode()
    server.routes["/v7.json"] = Route(body=doc)
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    await expect(loader, ref_for(server.url("/v7.json"), doc), PlanSchemaVersionUnsupported)


async def test_schema_and_dag_errors_after_fetch(server: PlanServer) -> None:
    broken = b'{"metadata": {"schemaVersion": "v1.2"}, "steps": 3}'
    cyclic = json.dumps(
        {
            **PLAN,
            "steps": [
                {"stepId": "a", "kind": "noop", "dependsOn": ["b"]},
                {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
            ],
        }
    ).encode()
    server.routes["/broken.json"] = Route(body=broken)
    server.routes["/cyclic.json"] = Route(body=cyclic)
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    err = await expect(loader, ref_for(server.url("/broken.json"), broken), SchemaValidationFailed)
    assert err.details["errors"]
    err = await expect(loader, ref_for(server.url("/cyclic.json"), cyclic), PlanInvalid)
    assert err.details["cycle"] in (["a", "b", "a"], ["b", "a", "b"])


async def test_ref_must_describe_the_plan(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    err = await expect(loader, ref_for(server.url("/plan.json"), plan_id="other"), PlanInvalid)
    assert err.details["field"] == "planId"


async def test_http_status_codes(server: PlanServer) -> None:
    server.routes["/gone"] = Route(410)
    server.routes["/boom"] = Route(503)
    server.routes["/nope"] = Route(403)
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    await expect(loader, ref_for(server.url("/missing")), PlanNotFound)
    await expect(loader, ref_for(server.url("/gone")), PlanNotFound)
    err = await expect(loader, ref_for(server.url("/boom")), PlanFetchFailed)
    assert err.retryable is True
    err = await expect(loader, ref_for(server.url("/nope")), PlanFetchFailed)
    assert err.retryable is False


async def test_body_larger_than_declared_size_is_an_integrity_failure(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    ref = ref_for(server.url("/plan.json"), size_bytes=len(PLAN_BYTES) - 1)
    err = await expect(loader, ref, PlanIntegrityValidationFailed)
    assert err.details["expectedSizeBytes"] == len(PLAN_BYTES) - 1
    ok = ref_for(server.url("/plan.json"), size_bytes=len(PLAN_BYTES))
    assert (await loader.load(ok)).size_bytes == len(PLAN_BYTES)
