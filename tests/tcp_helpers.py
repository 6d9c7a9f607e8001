"""Loopback TCP servers and clients for the TCP-stream tests (blocking, in threads)."""

from __future__ import annotations

import socket
import socketserver
import threading


class _Echo(socketserver.BaseRequestHandler):
    """Echoes bytes until EOF, then sends ``bye`` and half-closes (a half-close check)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                break
            sock.sendall(data)
        try:
            sock.sendall(b"bye")  # written after the client's EOF: half-close kept the way back
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class EchoServer:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Echo)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def exchange(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send ``payload``, half-close, read to EOF: what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(read_all(sock)))
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(timeout)
        return result[0] if result else b"<timeout>"


def closed_promptly(port: int, timeout: float = 10.0) -> bool:
    """Connect and see the connection end (EOF or reset) without sending anything."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionResetError:
        return True  # reset before connect() even returned
    with sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
