"""Fetch plan bytes over https (or explicitly allowlisted http) with the standard library only.

Every hop (the first request and each redirect) is checked by the UriPolicy first, and the
connection goes to an address the policy approved, so DNS cannot change its answer between the
check and the connect. Proxies from the environment are not used. Bodies are capped.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urljoin

from dvt_engine.errors import PlanFetchFailed, PlanNotFound, PlanUriNotAllowed
from dvt_engine.planning.uri_policy import CheckedUri, UriPolicy
from dvt_engine.ports import PlanFetcher

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024


TOO_LARGE = "too_large"


def plan_too_large(uri: str, max_bytes: int) -> PlanFetchFailed:
    """PLAN_FETCH_FAILED (not retryable) for a body over ``max_bytes``; details.reason names it."""
    return PlanFetchFailed(
        f"plan at {uri!r} is larger than {max_bytes} bytes",
        details={"uri": uri, "maxBytes": max_bytes, "reason": TOO_LARGE},
        retryable=False,
    )


def is_too_large(error: PlanFetchFailed) -> bool:
    """True when a fetcher refused a body for its size (any fetcher may say so this way)."""
    return error.details.get("reason") == TOO_LARGE


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a pre-checked address while speaking to ``host`` (Host header)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """Like the http one, with TLS verified against ``host`` (SNI and certificate name)."""

    default_port = 443

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, address, timeout)
        self._tls = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


@dataclass(frozen=True)
class _Response:
    status: int
    location: str | None
    body: bytes


class HttpsPlanFetcher(PlanFetcher):
    """The PlanFetcher for https:// (and allowlisted http://) plan URIs."""

    schemes: ClassVar[tuple[str, ...]] = ("https", "http")

    def __init__(
        self,
        policy: UriPolicy,
        *,
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        max_redirects: int = 3,
        user_agent: str = "dvt-plan-fetcher",
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        # Built on first use: loading the CA bundle costs 0.1-0.3 s, and most engines only
        # ever read plans from the registry.
        self._ssl_context = ssl_context
        self.max_redirects = max_redirects
        self.user_agent = user_agent

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for plan fetches (the system's trust store by default)."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        """GET ``uri`` (at most ``max_bytes``), re-checking every redirect hop with the policy."""
        current = uri
        for _hop in range(self.max_redirects + 1):
            checked = await self.policy.check(current)
            if checked.scheme not in self.schemes:
                raise PlanUriNotAllowed(
                    f"redirect to a non-http(s) URI refused: {current!r}",
                    details={"uri": current, "reason": "redirect scheme"},
                )
            response = await asyncio.to_thread(self._request, checked, max_bytes)
            if response.status in REDIRECT_STATUSES:
                if not response.location:
                    raise PlanFetchFailed(
                        f"redirect without Location from {current!r}",
                        details={"uri": current, "status": response.status},
                        retryable=False,
                    )
                current = urljoin(current, response.location)
                continue
            return response.body
        raise PlanFetchFailed(
            f"more than {self.max_redirects} redirects fetching {uri!r}",
            details={"uri": uri},
            retryable=False,
        )

    def _request(self, checked: CheckedUri, max_bytes: int) -> _Response:
        last_error: Exception | None = None
        for address in checked.addresses:
            conn = self._connection(checked, address)
            try:
                return self._exchange(conn, checked, max_bytes)
            except ssl.SSLCertVerificationError as exc:
                raise PlanFetchFailed(
                    f"TLS certificate of {checked.host} not trusted: {exc.verify_message}",
                    details={"uri": checked.uri},
                    retryable=False,
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                last_error = exc
            finally:
                conn.close()
        raise PlanFetchFailed(
            f"cannot fetch {checked.uri!r}: {last_error}", details={"uri": checked.uri}
        )

    def _connection(self, checked: CheckedUri, address: str) -> _PinnedHTTPConnection:
        if checked.scheme == "https":
            return _PinnedHTTPSConnection(
                checked.host, checked.port, address, self.timeout_s, self.ssl_context
            )
        return _PinnedHTTPConnection(checked.host, checked.port, address, self.timeout_s)

    def _exchange(
        self, conn: _PinnedHTTPConnection, checked: CheckedUri, max_bytes: int
    ) -> _Response:
        deadline = time.monotonic() + self.timeout_s
        conn.request(
            "GET",
            checked.target,
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "identity",
                "User-Agent": self.user_agent,
            },
        )
        resp = conn.getresponse()
        if resp.status in REDIRECT_STATUSES:
            return _Response(resp.status, resp.getheader("Location"), b"")
        if resp.status in (404, 410):
            raise PlanNotFound(f"no plan at {checked.uri!r}", details={"uri": checked.uri})
        if resp.status != 200:
            raise PlanFetchFailed(
                f"fetching {checked.uri!r} answered HTTP {resp.status}",
                details={"uri": checked.uri, "status": resp.status},
                retryable=resp.status >= 500 or resp.status == 429,
            )
        declared = resp.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise self._too_large(checked, max_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise PlanFetchFailed(
                    f"fetching {checked.uri!r} took longer than {self.timeout_s}s",
                    details={"uri": checked.uri},
                )
            # read1 returns what has arrived, so a slowly dripping body meets the deadline check.
            chunk = resp.read1(CHUNK_BYTES)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise self._too_large(checked, max_bytes)
            chunks.append(chunk)
        return _Response(200, None, b"".join(chunks))

    @staticmethod
    def _too_large(checked: CheckedUri, max_bytes: int) -> PlanFetchFailed:
        return plan_too_large(checked.uri, max_bytes)
