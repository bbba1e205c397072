"""Which plan URIs are fetched at all: allowlist, address forms, schemes, redirects (SSRF).

Every refusal is PLAN_URI_NOT_ALLOWED and happens before a request reaches the server.
"""

from __future__ import annotations

import ipaddress

import pytest
from plan_fetch_helpers import (
    PLAN_SHA,
    PlanServer,
    Route,
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
    PlanUriNotAllowed,
    UsageError,
)
from dvt_engine.planning.fetch import PlanLoader
from dvt_engine.planning.uri_policy import UriPolicy, address_problem
from dvt_engine.stores.memory import MemoryRunStateStore

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
