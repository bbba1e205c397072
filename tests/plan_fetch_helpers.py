"""Local servers and helpers shared by the plan fetching tests (tests/test_plan_fetch*.py).

Every server listens on a loopback address; hostnames are resolved by a static table passed to
the policy, so nothing leaves the machine. Test modules import the ``*_fixture`` functions
(pytest finds them under their ``name``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dvt_engine.errors import DvtError
from dvt_engine.models.plan import PlanRef
from dvt_engine.planning.fetch import PlanLoader

PLAN: dict[str, Any] = {
    "metadata": {"planId": "fetched", "planVersion": "1", "schemaVersion": "v1.2"},
    "steps": [{"stepId": "a", "kind": "noop"}, {"stepId": "b", "kind": "echo", "dependsOn": ["a"]}],
}
PLAN_BYTES = json.dumps(PLAN).encode()
PLAN_SHA = hashlib.sha256(PLAN_BYTES).hexdigest()


# --- HTTP servers ---


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


@pytest.fixture(name="server")
def server_fixture() -> Iterator[PlanServer]:
    srv = PlanServer()
    srv.routes["/plan.json"] = Route(body=PLAN_BYTES)
    yield srv
    srv.close()


@pytest.fixture(name="other_server")
def other_server_fixture() -> Iterator[PlanServer]:
    srv = PlanServer()
    srv.routes["/plan.json"] = Route(body=PLAN_BYTES)
    yield srv
    srv.close()


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(name="tls", scope="module")
def tls_fixture(tmp_path_factory: pytest.TempPathFactory) -> Tls:
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


@pytest.fixture(name="tls_server")
def tls_server_fixture(tls: Tls) -> Iterator[PlanServer]:
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



# --- scripted TCP servers: misbehaving peers, byte by byte ---

Script = Callable[[socket.socket, threading.Event, str], None]


class ScriptedServer:
    """A TCP server that reads each request's head, then runs ``script`` on the connection.

    ``script(conn, stop, path)`` plays the server's side (dripping, stalling, cutting short);
    ``stop`` is set when the test ends, so a script that paces itself with ``stop.wait`` ends
    then too, and close() shuts every connection down, which ends any blocked receive.
    """

    def __init__(self, script: Script, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script = script
        self.stop = threading.Event()
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server((host, port))
        self.host = host
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by close()
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                path = head.split(b" ", 2)[1].decode("latin-1") if b" " in head else ""
                self.script(conn, self.stop, path)
            except OSError:
                return  # the client gave up: that is what most scripts wait for

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self._sock.close()
        self._accepter.join(timeout=10)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)


def drip(conn: socket.socket, stop: threading.Event, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart (until ``stop``)."""
    for i in range(len(data)):
        conn.sendall(data[i : i + 1])
        if stop.wait(every):
            return


def forever(conn: socket.socket, stop: threading.Event, data: bytes, every: float) -> None:
    """Send ``data`` again and again, ``every`` seconds apart, until the client hangs up."""
    while not stop.is_set():
        conn.sendall(data)
        if every and stop.wait(every):
            return
