"""Fetch plan bytes over https (or explicitly allowlisted http) with the standard library only.

Every hop (the first request and each redirect) is checked by the UriPolicy first, and the
connection goes to an address the policy approved, so DNS cannot change its answer between the
check and the connect. Proxies from the environment are not used.

One deadline covers the whole fetch: name resolution, connect, TLS, the request, status line,
headers, any ``100 Continue``, body and trailers, across every address and redirect hop. The
exchange runs in a worker thread whose every socket operation gets a timeout derived from the
time left, so the thread ends by the deadline too. Every byte read counts: the response head
(status lines and headers) against ``HEAD_LIMIT``, the rest (body, chunk framing, trailers)
against ``max_bytes`` plus ``TRAILER_LIMIT``, and the body alone against ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import io
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urljoin

from dvt_engine.errors import PlanFetchFailed, PlanNotFound, PlanUriNotAllowed
from dvt_engine.planning.uri_policy import CheckedUri, UriPolicy
from dvt_engine.ports import PlanFetcher

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
HEAD_LIMIT = 64 * 1024
TRAILER_LIMIT = 64 * 1024

TOO_LARGE = "too_large"
RESPONSE_TOO_LARGE = "response_too_large"
TIMEOUT = "timeout"
TRUNCATED = "truncated"
NETWORK = "network"
PROTOCOL = "protocol"

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dvt_plan_fetch_deadline", default=None
)


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


def fetch_timeout(uri: str, seconds: float) -> PlanFetchFailed:
    """PLAN_FETCH_FAILED (retryable) for a fetch that ran out of time."""
    return PlanFetchFailed(
        f"fetching {uri!r} took longer than {seconds:g}s",
        details={"uri": uri, "reason": TIMEOUT, "timeoutS": seconds},
        retryable=True,
    )


@contextmanager
def fetch_deadline(seconds: float) -> Iterator[float]:
    """Set (or tighten) the monotonic deadline every plan fetch in this context must meet."""
    outer = _DEADLINE.get()
    deadline = time.monotonic() + seconds
    if outer is not None:
        deadline = min(deadline, outer)
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


class _OutOfTime(Exception):
    pass


class _OverLimit(Exception):
    pass


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    return left


class _BudgetedReader(io.RawIOBase):
    """The socket as a raw stream whose reads meet the deadline and a byte limit."""

    def __init__(self, sock: socket.socket, deadline: float, limit: int) -> None:
        super().__init__()
        self._sock = sock
        # A makefile stream holds a reference, so the socket stays open for the response even
        # after http.client closes the connection (it does so for "Connection: close").
        self._io = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Receive at most the bytes still allowed, within the time left."""
        view = memoryview(buffer).cast("B")
        allowed = self.limit - self.count
        self._sock.settimeout(_left(self._deadline))
        if allowed <= 0:
            # The limit is used up: only the end of the stream may still come.
            if self._io.readinto(view[:1]):
                raise _OverLimit
            return 0
        got = self._io.readinto(view[:allowed]) or 0
        self.count += got
        return got

    def close(self) -> None:
        """Release the socket reference."""
        self._io.close()
        super().close()


class _SocketShim:
    """What HTTPResponse needs of a socket: a ``makefile`` that hands back our reader."""

    def __init__(self, reader: io.BufferedReader) -> None:
        self._reader = reader

    def makefile(self, mode: str) -> io.BufferedReader:
        return self._reader


class _BudgetedResponse(http.client.HTTPResponse):
    """An HTTPResponse that reads through a _BudgetedReader."""

    raw: _BudgetedReader

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None, *, deadline: float = 0.0) -> None:  # fmt: skip
        self.raw = _BudgetedReader(sock, deadline, HEAD_LIMIT)
        shim: Any = _SocketShim(io.BufferedReader(self.raw, CHUNK_BYTES))
        super().__init__(shim, debuglevel, method, url)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a pre-checked address while speaking to ``host`` (Host header)."""

    def __init__(
        self, host: str, port: int, address: str, deadline: float, share: float = 1.0
    ) -> None:
        super().__init__(host, port, timeout=_left(deadline))
        self._address = address
        self._deadline = deadline
        self._share = share

    def connect(self) -> None:
        # An address that drops the connection attempt must leave time for the next ones.
        timeout = _left(self._deadline) * self._share
        self.sock = socket.create_connection((self._address, self.port), timeout)

    # Sending the tiny request is bounded by the connect timeout still set on the socket; every
    # read of the response sets its own timeout from the time left.
    def response_class(  # type: ignore[override]
        self, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> Any:
        return _BudgetedResponse(sock, *args, deadline=self._deadline, **kwargs)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """Like the http one, with TLS verified against ``host`` (SNI and certificate name)."""

    default_port = 443

    def __init__(
        self,
        host: str,
        port: int,
        address: str,
        deadline: float,
        share: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, address, deadline, share)
        self._tls = context

    def connect(self) -> None:
        super().connect()
        # The handshake is one socket operation: the timeout bounds all of it.
        self.sock.settimeout(_left(self._deadline))
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
        """GET ``uri`` (at most ``max_bytes``) within one deadline, re-checking every hop."""
        with fetch_deadline(self.timeout_s) as deadline:
            try:
                return await self._fetch(uri, max_bytes, deadline)
            except (_OutOfTime, TimeoutError):
                raise fetch_timeout(uri, self.timeout_s) from None

    async def _fetch(self, uri: str, max_bytes: int, deadline: float) -> bytes:
        current = uri
        for _hop in range(self.max_redirects + 1):
            checked = await asyncio.wait_for(self.policy.check(current), _left(deadline))
            if checked.scheme not in self.schemes:
                raise PlanUriNotAllowed(
                    f"redirect to a non-http(s) URI refused: {current!r}",
                    details={"uri": current, "reason": "redirect scheme"},
                )
            # Not wrapped in a timeout: the thread meets the deadline itself, and awaiting it
            # means no fetch thread outlives this call.
            response = await asyncio.to_thread(self._request, checked, max_bytes, deadline)
            if response.status in REDIRECT_STATUSES:
                if not response.location:
                    raise PlanFetchFailed(
                        f"redirect without Location from {current!r}",
                        details={"uri": current, "status": response.status},
                        retryable=False,
                    )
                try:
                    current = urljoin(current, response.location)
                except ValueError as exc:
                    raise PlanUriNotAllowed(
                        f"unreadable redirect Location from {current!r}",
                        details={"uri": current, "reason": "redirect location"},
                    ) from exc
                continue
            return response.body
        raise PlanFetchFailed(
            f"more than {self.max_redirects} redirects fetching {uri!r}",
            details={"uri": uri},
            retryable=False,
        )

    def _request(self, checked: CheckedUri, max_bytes: int, deadline: float) -> _Response:
        last: PlanFetchFailed | None = None
        for i, address in enumerate(checked.addresses):
            # Each address may spend its share of the time left on connecting.
            share = 1.0 / (len(checked.addresses) - i)
            conn = self._connection(checked, address, deadline, share)
            try:
                return self._exchange(conn, checked, max_bytes)
            except ssl.SSLCertVerificationError as exc:
                raise PlanFetchFailed(
                    f"TLS certificate of {checked.host} not trusted: {exc.verify_message}",
                    details={"uri": checked.uri},
                    retryable=False,
                ) from exc
            except _OutOfTime:
                raise  # the deadline is shared: no time is left for another address
            except TimeoutError:
                if conn.sock is not None or i == len(checked.addresses) - 1:
                    raise  # connected, then out of time: nothing is left for another address
                last = self._network_error(checked, TIMEOUT, f"connecting to {address} timed out")
            except _OverLimit:
                raise PlanFetchFailed(
                    f"response from {checked.uri!r} is over its size limit",
                    details={"uri": checked.uri, "reason": RESPONSE_TOO_LARGE},
                    retryable=False,
                ) from None
            except http.client.IncompleteRead as exc:
                last = self._network_error(checked, TRUNCATED, f"body cut short ({exc!r})")
            except http.client.LineTooLong as exc:
                raise PlanFetchFailed(
                    f"response from {checked.uri!r} has an overlong line: {exc}",
                    details={"uri": checked.uri, "reason": RESPONSE_TOO_LARGE},
                    retryable=False,
                ) from exc
            except OSError as exc:
                last = self._network_error(checked, NETWORK, str(exc) or type(exc).__name__)
            except http.client.HTTPException as exc:
                raise PlanFetchFailed(
                    f"{checked.uri!r} answered something that is not HTTP/1.x: {exc!r}",
                    details={"uri": checked.uri, "reason": PROTOCOL},
                    retryable=False,
                ) from exc
            finally:
                conn.close()
        raise last or self._network_error(checked, NETWORK, "no address to connect to")

    @staticmethod
    def _network_error(checked: CheckedUri, reason: str, why: str) -> PlanFetchFailed:
        return PlanFetchFailed(
            f"cannot fetch {checked.uri!r}: {why}",
            details={"uri": checked.uri, "reason": reason},
            retryable=True,
        )

    def _connection(
        self, checked: CheckedUri, address: str, deadline: float, share: float
    ) -> _PinnedHTTPConnection:
        if checked.scheme == "https":
            return _PinnedHTTPSConnection(
                checked.host, checked.port, address, deadline, share, self.ssl_context
            )
        return _PinnedHTTPConnection(checked.host, checked.port, address, deadline, share)

    def _exchange(
        self, conn: _PinnedHTTPConnection, checked: CheckedUri, max_bytes: int
    ) -> _Response:
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
        assert isinstance(resp, _BudgetedResponse)
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
            raise plan_too_large(checked.uri, max_bytes)
        # From here on: the body, chunk framing and trailers, never more than this.
        resp.raw.limit = resp.raw.count + max_bytes + TRAILER_LIMIT
        chunks: list[bytes] = []
        size = 0
        while chunk := resp.read1(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise plan_too_large(checked.uri, max_bytes)
            chunks.append(chunk)
        if resp.length:
            # The connection ended before Content-Length bytes came: a network failure.
            raise http.client.IncompleteRead(b"", resp.length)
        return _Response(200, None, b"".join(chunks))
