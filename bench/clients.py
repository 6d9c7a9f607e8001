"""Purpose-built HTTP/1.1 clients for the scenarios a load generator cannot express.

All of them stream: bodies are sent from one reused buffer and read into one reused buffer,
so the client never holds a body and its own memory never limits what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

from procs import HOST

_BUF = 1024 * 1024
_SEND = b"\0" * _BUF


class ClientError(RuntimeError):
    pass


def _read_head(sock: socket.socket, pending: bytearray) -> tuple[int, dict[bytes, bytes]]:
    while b"\r\n\r\n" not in pending:
        data = sock.recv(65536)
        if not data:
            raise ClientError("connection closed before the response head")
        pending += data
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    pending[:] = rest
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def _drain(sock: socket.socket, pending: bytearray, length: int) -> int:
    """Read and discard ``length`` body bytes (some may already be in ``pending``)."""
    got = min(len(pending), length)
    del pending[:got]
    buf = bytearray(_BUF)
    view = memoryview(buf)
    while got < length:
        n = sock.recv_into(view, min(_BUF, length - got))
        if not n:
            raise ClientError(f"connection closed after {got} of {length} body bytes")
        got += n
    return got


@dataclass
class Transfer:
    nbytes: int
    seconds: float
    status: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def upload(port: int, size: int, timeout: float) -> Transfer:
    """POST ``size`` bytes with a Content-Length to ``/upload``; the app answers the count."""
    with socket.create_connection((HOST, port), timeout) as sock:
        head = f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {size}\r\n"
        head += "Content-Type: application/octet-stream\r\n\r\n"
        start = time.perf_counter()
        sock.sendall(head.encode())
        view = memoryview(_SEND)
        left = size
        while left:
            n = min(left, _BUF)
            sock.sendall(view[:n])
            left -= n
        pending = bytearray()
        status, headers = _read_head(sock, pending)
        length = int(headers.get(b"content-length", b"0"))
        while len(pending) < length:
            data = sock.recv(65536)
            if not data:
                break
            pending += data
        seconds = time.perf_counter() - start
    if status != 200 or int(pending[:length] or b"-1") != size:
        raise ClientError(f"upload: status {status}, app counted {bytes(pending[:length])!r}")
    return Transfer(size, seconds, status)


def download(port: int, size: int, timeout: float) -> Transfer:
    """GET ``/download?size=N`` and count the bytes as they arrive."""
    with socket.create_connection((HOST, port), timeout) as sock:
        request = f"GET /download?size={size} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        start = time.perf_counter()
        sock.sendall(request)
        pending = bytearray()
        status, headers = _read_head(sock, pending)
        if headers.get(b"content-length") != str(size).encode():
            raise ClientError(f"download: status {status}, headers {headers}")
        got = _drain(sock, pending, size)
        seconds = time.perf_counter() - start
    return Transfer(got, seconds, status)


def sse_first_event(port: int, timeout: float) -> float:
    """Seconds from sending ``GET /sse`` to holding the first event (a fresh connection,
    opened before the clock starts); the rest of the stream is read to its end."""
    with socket.create_connection((HOST, port), timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = f"GET /sse HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        start = time.perf_counter()
        sock.sendall(request)
        data = bytearray()
        first = None
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if first is None and b"data: event 0\n\n" in data:
                first = time.perf_counter() - start
    if first is None or not data.startswith(b"HTTP/1.1 200") or b"data: event 2" not in data:
        raise ClientError(f"sse: unexpected response {bytes(data[:200])!r}")
    return first


# --- many connections at once (asyncio) ---------------------------------------------------


async def _open(port: int, gate: asyncio.Semaphore, timeout: float):
    async with gate:
        return await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)


async def _exchange(reader: asyncio.StreamReader, writer, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


@dataclass
class Burst:
    total: int
    ok: int
    failures: dict[str, int]
    connect_seconds: float
    wall_seconds: float  # first request written -> last response read


async def _close_all(conns: list) -> None:
    for _, writer in conns:
        writer.close()
    for _, writer in conns:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 5)


async def concurrent_burst(
    port: int, count: int, path: str, *, connect_parallel: int, timeout: float
) -> Burst:
    """Open ``count`` connections (``connect_parallel`` at a time, so the listen backlog is
    not what is measured), then send one request on each at once and wait for all."""
    gate = asyncio.Semaphore(connect_parallel)
    start = time.perf_counter()
    opened = await asyncio.gather(
        *(_open(port, gate, timeout) for _ in range(count)), return_exceptions=True
    )
    connect_seconds = time.perf_counter() - start
    conns = [c for c in opened if not isinstance(c, BaseException)]
    failures: dict[str, int] = {}
    for c in opened:
        if isinstance(c, BaseException):
            key = f"connect {type(c).__name__}"
            failures[key] = failures.get(key, 0) + 1
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    start = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(_exchange(r, w, request) for r, w in conns), return_exceptions=True),
            timeout,
        )
    except asyncio.TimeoutError:
        results = [asyncio.TimeoutError()] * len(conns)
    wall = time.perf_counter() - start
    await _close_all(conns)
    ok = 0
    for res in results:
        if res == 200:
            ok += 1
        else:
            key = f"status {res}" if isinstance(res, int) else type(res).__name__
            failures[key] = failures.get(key, 0) + 1
    return Burst(count, ok, failures, connect_seconds, wall)


class IdleConnections:
    """``count`` keep-alive connections, each after one completed ``GET /small``, held open."""

    def __init__(self, port: int, count: int, *, connect_parallel: int, timeout: float) -> None:
        self.port, self.count = port, count
        self.parallel, self.timeout = connect_parallel, timeout
        self.conns: list = []
        self.failures = 0
        self.reasons: dict[str, int] = {}

    async def open(self) -> None:
        gate = asyncio.Semaphore(self.parallel)
        request = f"GET /small HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode()

        async def one():
            reader, writer = await _open(self.port, gate, self.timeout)
            try:
                status = await asyncio.wait_for(_exchange(reader, writer, request), self.timeout)
            except BaseException:
                writer.close()
                raise
            if status != 200:
                writer.close()
                raise ClientError(f"status {status}")
            return reader, writer

        opened = await asyncio.gather(*(one() for _ in range(self.count)), return_exceptions=True)
        self.conns = [c for c in opened if not isinstance(c, BaseException)]
        self.failures = len(opened) - len(self.conns)
        self.reasons: dict[str, int] = {}
        for c in opened:
            if isinstance(c, BaseException):
                key = str(c) if isinstance(c, ClientError) else type(c).__name__
                self.reasons[key] = self.reasons.get(key, 0) + 1

    async def still_open(self) -> int:
        """How many of the held connections the server has not closed (EOF not seen)."""
        await asyncio.sleep(0)
        return sum(1 for reader, _ in self.conns if not reader.at_eof())

    async def close(self) -> None:
        await _close_all(self.conns)
