"""Plan loading (contract §2.1): allowlist before fetching, integrity, version, validation.

Every network test talks to servers started here on 127.0.0.1; hostnames are resolved by a
static table passed to the policy, so nothing leaves the machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dvt_engine.errors import (
    DvtError,
    ErrorCode,
    PlanFetchFailed,
    PlanIntegrityValidationFailed,
    PlanInvalid,
    PlanNotFound,
    PlanSchemaVersionUnsupported,
    PlanUriNotAllowed,
    SchemaValidationFailed,
    UsageError,
)
from dvt_engine.models.plan import PlanRef
from dvt_engine.planning.fetch import LoadedPlan, PlanLoader, store_plan
from dvt_engine.planning.https import HttpsPlanFetcher
from dvt_engine.planning.uri_policy import UriPolicy, address_problem
from dvt_engine.stores.memory import MemoryRunStateStore

PLAN: dict[str, Any] = {
    "metadata": {"planId": "fetched", "planVersion": "1", "schemaVersion": "v1.2"},
    "steps": [{"stepId": "a", "kind": "noop"}, {"stepId": "b", "kind": "echo", "dependsOn": ["a"]}],
}
PLAN_BYTES = json.dumps(PLAN).encode()
PLAN_SHA = hashlib.sha256(PLAN_BYTES).hexdigest()


# --- local servers ---


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stall: threading.Event | None = None  # send headers and part of the body, then wait


class PlanServer:
    """A threaded HTTP(S) server on 127.0.0.1 that records every request it receives."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Host", "")))
                route = server.routes.get(self.path, Route(404, b"no such plan"))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.stall is not None:
                    self.wfile.write(route.body[:10])
                    self.wfile.flush()
                    route.stall.wait(timeout=30)
                    return
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # refused TLS handshakes are part of the tests

        self.httpd = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[PlanServer]:
    srv = PlanServer()
    srv.routes["/plan.json"] = Route(body=PLAN_BYTES)
    yield srv
    srv.close()


@pytest.fixture
def other_server() -> Iterator[PlanServer]:
    srv = PlanServer()
    srv.routes["/plan.json"] = Route(body=PLAN_BYTES)
    yield srv
    srv.close()


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate for localhost and 127.0.0.1, made for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dvt plan fetch test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode())
    return Tls(server=server_ctx, client=client_ctx)


@pytest.fixture
def tls_server(tls: Tls) -> Iterator[PlanServer]:
    srv = PlanServer(tls.server)
    srv.routes["/plan.json"] = Route(body=PLAN_BYTES)
    yield srv
    srv.close()


def static_resolver(table: dict[str, Sequence[str]]) -> Any:
    """A resolver answering from a table (so tests never ask real DNS)."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(f"{host} is not in the test's table")
        return table[host]

    return resolve


def ref_for(uri: str, data: bytes = PLAN_BYTES, **changes: Any) -> PlanRef:
    fields: dict[str, Any] = {
        "uri": uri,
        "sha256": hashlib.sha256(data).hexdigest(),
        "schema_version": "v1.2",
        "plan_id": "fetched",
        "plan_version": "1",
    }
    fields.update(changes)
    return PlanRef(**fields)


async def expect(loader: PlanLoader, ref: PlanRef, cls: type[DvtError]) -> DvtError:
    with pytest.raises(DvtError) as info:
        await loader.load(ref)
    assert type(info.value) is cls or isinstance(info.value, cls), repr(info.value)
    return info.value


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


async def test_a_stalled_body_fails_retryably_within_the_timeout(server: PlanServer) -> None:
    release = threading.Event()
    server.routes["/stalled"] = Route(body=PLAN_BYTES, stall=release)
    loader = PlanLoader(None, allowed_hosts=[server.origin], timeout_s=0.3)
    try:
        err = await expect(loader, ref_for(server.url("/stalled")), PlanFetchFailed)
    finally:
        release.set()
    assert err.retryable is True
    assert server.requests == [("/stalled", f"127.0.0.1:{server.port}")]


async def test_body_larger_than_declared_size_is_an_integrity_failure(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    ref = ref_for(server.url("/plan.json"), size_bytes=len(PLAN_BYTES) - 1)
    err = await expect(loader, ref, PlanIntegrityValidationFailed)
    assert err.details["expectedSizeBytes"] == len(PLAN_BYTES) - 1
    ok = ref_for(server.url("/plan.json"), size_bytes=len(PLAN_BYTES))
    assert (await loader.load(ok)).size_bytes == len(PLAN_BYTES)


async def test_body_larger_than_the_cap_is_refused(server: PlanServer) -> None:
    server.routes["/huge"] = Route(body=b" " * 5000 + PLAN_BYTES)
    loader = PlanLoader(None, allowed_hosts=[server.origin], max_plan_bytes=4096)
    err = await expect(loader, ref_for(server.url("/huge")), PlanFetchFailed)
    assert err.retryable is False
    assert err.details["maxBytes"] == 4096


async def test_declared_size_over_the_cap_is_refused_before_fetching(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin], max_plan_bytes=4096)
    await expect(loader, ref_for(server.url("/plan.json"), size_bytes=10_000), PlanFetchFailed)
    assert server.requests == []


# --- refusals before any request ---


def hostile_uris(port: int) -> list[str]:
    return [
        "file:///etc/passwd",
        f"ftp://127.0.0.1:{port}/plan.json",
        f"https://127.0.0.1:{port}/plan.json",  # https is not the allowlisted http origin
        f"http://127.0.0.1:{port + 1}/plan.json",  # another port
        "http://127.0.0.1/plan.json",  # default port
        f"http://user:secret@127.0.0.1:{port}/plan.json",
        f"http://127.0.0.1:{port}@evil.test/plan.json",
        f"http://2130706433:{port}/plan.json",
        f"http://0x7f000001:{port}/plan.json",
        f"http://0x7f.0.0.1:{port}/plan.json",
        f"http://0177.0.0.1:{port}/plan.json",
        f"http://127.1:{port}/plan.json",
        f"http://127.000.000.001:{port}/plan.json",
        f"http://[::ffff:127.0.0.1]:{port}/plan.json",
        f"http://[::ffff:7f00:1]:{port}/plan.json",
        f"http://[::1]:{port}/plan.json",
        f"http://localhost:{port}/plan.json",
        f"http://%31%32%37.0.0.1:{port}/plan.json",
        f"http://127.0.0.1:{port}\\@evil.test/plan.json",
        f"http://127.0.0.1 :{port}/plan.json",
        f"http://127.0.0.1:{port}:80/plan.json",
        f"http://[fe80::1%25eth0]:{port}/plan.json",
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "gopher://127.0.0.1/",
        "data:application/json,{}",
        "javascript:alert(1)",
        "//127.0.0.1/plan.json",
        "plan.json",
    ]


async def test_hostile_uris_are_refused_without_any_request(server: PlanServer) -> None:
    loader = PlanLoader(MemoryRunStateStore(), allowed_hosts=[server.origin])
    for uri in hostile_uris(server.port):
        err = await expect(loader, ref_for(uri), PlanUriNotAllowed)
        assert err.code is ErrorCode.PLAN_URI_NOT_ALLOWED
        assert err.retryable is False
    assert server.requests == []


async def test_http_is_refused_unless_its_origin_is_named(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[f"127.0.0.1:{server.port}"])  # https only
    await expect(loader, ref_for(server.url("/plan.json")), PlanUriNotAllowed)
    assert server.requests == []


async def test_redirect_escaping_the_allowlist_is_refused(
    server: PlanServer, other_server: PlanServer
) -> None:
    server.routes["/out"] = Route(302, headers={"Location": other_server.url("/plan.json")})
    server.routes["/meta"] = Route(301, headers={"Location": "http://169.254.169.254/latest/"})
    server.routes["/file"] = Route(307, headers={"Location": "file:///etc/passwd"})
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    for path in ("/out", "/meta", "/file"):
        await expect(loader, ref_for(server.url(path)), PlanUriNotAllowed)
    assert [p for p, _ in server.requests] == ["/out", "/meta", "/file"]
    assert other_server.requests == []


async def test_redirect_within_the_allowlist_is_followed_and_loops_stop(server: PlanServer) -> None:
    server.routes["/moved"] = Route(308, headers={"Location": "/plan.json"})
    server.routes["/loop"] = Route(302, headers={"Location": "/loop"})
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    assert (await loader.load(ref_for(server.url("/moved")))).sha256 == PLAN_SHA
    err = await expect(loader, ref_for(server.url("/loop")), PlanFetchFailed)
    assert err.retryable is False
    assert [p for p, _ in server.requests].count("/loop") == 4  # first request + 3 redirects


# --- the policy on its own ---


RESOLVER = static_resolver(
    {
        "plans.example.com": ["93.184.216.34"],
        "cdn.example.com": ["93.184.216.35", "2606:2800:220:1:248:1893:25c8:1946"],
        "rebind.example.com": ["93.184.216.36", "127.0.0.1"],
        "internal.example.com": ["10.1.2.3"],
        "meta.example.com": ["169.254.169.254"],
        "meta6.example.com": ["fd00:ec2::254"],
        "mapped.example.com": ["::ffff:10.0.0.1"],
        "zero.example.com": ["0.0.0.0"],
    }
)


async def test_policy_allows_public_and_explicit_private_hosts() -> None:
    policy = UriPolicy(
        ["plans.example.com", "*.example.com", "internal.example.com"], resolver=RESOLVER
    )
    checked = await policy.check("https://plans.example.com/a/plan.json?v=1#frag")
    assert checked.addresses == ("93.184.216.34",)
    assert checked.target == "/a/plan.json?v=1"
    assert (await policy.check("https://cdn.example.com/p")).addresses[0] == "93.184.216.35"
    assert (await policy.check("https://INTERNAL.example.com./p")).addresses == ("10.1.2.3",)


@pytest.mark.parametrize(
    "uri",
    [
        "https://rebind.example.com/p",  # one loopback answer among public ones, via wildcard
        "https://internal.example.com/p",  # private, matched only by the wildcard
        "https://meta.example.com/p",  # metadata, even though named exactly
        "https://meta6.example.com/p",
        "https://mapped.example.com/p",  # IPv4-mapped private address
        "https://zero.example.com/p",
        "https://example.com/p",  # the wildcard does not cover the apex
        "http://plans.example.com/p",  # http needs its own entry
        "https://plans.example.com:8443/p",  # entries without a port mean the default port
    ],
)
async def test_policy_refusals(uri: str) -> None:
    policy = UriPolicy(
        ["*.example.com", "meta.example.com", "meta6.example.com", "zero.example.com",
         "plans.example.com"],
        resolver=RESOLVER,
    )  # fmt: skip
    with pytest.raises(PlanUriNotAllowed):
        await policy.check(uri)


async def test_unresolvable_host_is_a_retryable_fetch_failure() -> None:
    policy = UriPolicy(["nowhere.example.com"], resolver=RESOLVER)
    with pytest.raises(PlanFetchFailed) as info:
        await policy.check("https://nowhere.example.com/p")
    assert info.value.retryable is True


async def test_metadata_ip_is_reachable_only_when_named_exactly() -> None:
    policy = UriPolicy(["http://169.254.169.254"])
    checked = await policy.check("http://169.254.169.254/latest")
    assert checked.addresses == ("169.254.169.254",)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("93.184.216.34", None),
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not a public address"),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_address_problem(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    "entry",
    ["ftp://host", "file:///", "*.10.0.0.1", "host:99999", "user@host", "host/path", "0x7f.1", ""],
)
def test_bad_allowlist_entries_are_usage_errors(entry: str) -> None:
    with pytest.raises(UsageError):
        UriPolicy([entry])


def test_loader_takes_either_hosts_or_a_policy() -> None:
    with pytest.raises(ValueError, match="either"):
        PlanLoader(None, allowed_hosts=["a.example.com"], policy=UriPolicy())
