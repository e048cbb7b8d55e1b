"""A loopback TCP relay the tests put between a client and a real server, to do to the
connection what a network or a server would: terminate TLS, count connections, hang,
drop them all at once, refuse new ones. Subclasses decide what happens to each accepted
connection (`admit`); the relaying is the same for all."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from typing import Self


class LoopbackRelay:
    """Relays every admitted connection on a free 127.0.0.1 port to 127.0.0.1:backend_port,
    one thread per connection (select() over both sides: an SSL socket must not be read
    and written from two threads at once)."""

    scheme = "tcp"

    def __init__(self, backend_port: int, name: str = "relay") -> None:
        self.backend_port = backend_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve, name=name, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def admit(self, conn: socket.socket) -> socket.socket | None:
        """The connection to relay (possibly wrapped), or None to leave it (the subclass
        then owns it: closes or holds it)."""
        return conn

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client = self.admit(conn)
            if client is None:
                continue
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), 5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open += [client, backend]
        peers = {client: backend, backend: client}
        pending = getattr(client, "pending", None)  # TLS: bytes decrypted, not yet read
        try:
            while not self._stopping.is_set():
                ready = [client] if pending and pending() else select.select(
                    list(peers), [], [], 0.1)[0]
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (ssl.SSLError, OSError, ValueError):  # ValueError: closed under select
            return
        finally:
            client.close()
            backend.close()

    def drop_all(self) -> None:
        """Hang up every relayed connection at once (a server restart, a network cut)."""
        with self._lock:
            socks, self._open = self._open, []
        for sock in socks:
            with contextlib.suppress(OSError):  # already closed by its relay thread
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopping.set()
        self.drop_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
