"""HTTP (and one-line) probes of 127.0.0.1: one request on a fresh connection, read to EOF."""

from __future__ import annotations

import socket
import time


def exchange(port: int, request: bytes, timeout: float) -> bytes:
    """Sends `request` on a fresh connection to 127.0.0.1:port and reads the reply to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


HTTP_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def http_get(port: int, timeout: float) -> bytes:
    return exchange(port, HTTP_GET, timeout)


def wait_systemfd_serving(server: "Server", timeout: float) -> None:
    """Waits until systemfd has its socket and the app behind it answers `GET /`."""
    server.wait_line(r"^~> socket http://127\.0\.0\.1:\d+/? -> fd #\d+", timeout=timeout)
    deadline = time.monotonic() + timeout
    while answered_text(server.port) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app never answered:\n{server.tail()}")
        if server.proc.poll() is not None:
            raise RuntimeError(f"systemfd exited:\n{server.tail()}")
        time.sleep(0.05)


def answered_text(port: int, timeout: float = 2.0) -> bytes | None:
    try:
        reply = http_get(port, timeout)
    except OSError:
        return None
    return reply if reply.startswith(b"HTTP/1.1 200") else None
