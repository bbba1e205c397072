"""A real TCP proxy between a test's client and a server, which can break connections.

Not a fake of the server: every byte either side sends is the real one. The proxy can cut
every open connection at once (``cut()``) and can swallow the next answer the server sends,
closing the client's connection instead (``drop_next_answer()``), which is what a network
failure after the server acted looks like to a client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit


class TcpProxy:
    """Listens on 127.0.0.1 and forwards each connection to ``upstream`` (``http://h:p``;
    any TCP service: an HTTP server, or PostgreSQL)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._drop_answers = 0
        self.connections = 0
        #: Connections closed at once because the proxy was refusing.
        self.refused = 0
        self.dropped_answers = 0
        #: While set, new connections are accepted and closed at once (the peer is "down").
        self.refusing = False
        #: What clients sent, chunk by chunk (requests, headers included).
        self.sent: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_answer(self) -> None:
        """The next bytes the server sends are discarded and that connection is closed."""
        with self._lock:
            self._drop_answers += 1

    def cut(self) -> int:
        """Close every open connection, both sides; how many there were."""
        with self._lock:
            pairs, self._open = self._open, []
        for pair in pairs:
            _close(*pair)
        return len(pairs)

    def requests_to(self, path: str) -> list[str]:
        """The request heads clients sent for ``path`` (start line and headers), in order."""
        heads = [chunk.split(b"\r\n\r\n", 1)[0].decode("latin-1") for chunk in self.sent]
        return [h for h in heads if h.split(" ", 2)[1:2] == [path]]

    def close(self) -> None:
        """Stop listening and cut everything."""
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                _close(client)
                with self._lock:
                    self.refused += 1
                continue
            server = socket.create_connection(self._target)
            with self._lock:
                self._open.append((client, server))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self._take_drop():
                    break
                if not answers:
                    with self._lock:
                        self.sent.append(data)
                sink.sendall(data)
        except OSError:
            pass
        _close(source, sink)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drop_answers:
                self._drop_answers -= 1
                self.dropped_answers += 1
                return True
            return False


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
