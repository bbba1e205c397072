"""A real HTTP receiver on 127.0.0.1 for webhook tests: scripted answers, recorded requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class Answer:
    """What the receiver answers: a status and headers; ``hold`` first waits on an event."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None


class Receiver:
    """A threaded http.server; ``script(path)`` gives the answers of a path, in order."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._scripts: dict[str, list[Answer]] = {}
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                answer = receiver._next(self.path)
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                               body, time.monotonic())
                with receiver._changed:
                    receiver.received.append(got)
                    receiver._changed.notify_all()
                if answer.hold is not None:
                    answer.hold.wait(60)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answers for ``path`` in order; the last one repeats (200 when none)."""
        with self._changed:
            self._scripts[path] = list(answers)

    def _next(self, path: str) -> Answer:
        with self._changed:
            script = self._scripts.get(path) or [Answer()]
            return script.pop(0) if len(script) > 1 else script[0]

    def wait_for(self, predicate: Callable[[list[Received]], bool],
                 timeout: float = 30.0) -> list[Received]:
        """Block until ``predicate(received)`` holds (AssertionError after ``timeout``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.received), timeout):
                raise AssertionError(f"receiver condition not met; got {self.received!r}")
            return list(self.received)

    def at(self, path: str) -> list[Received]:
        """The requests to ``path`` so far."""
        with self._changed:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
