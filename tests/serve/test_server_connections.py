"""The connection layer of `fournil serve` (fournil.serve.connections) in a real uvicorn server on loopback, with a
small ASGI app instead of a model so that timings are exact: request deadlines (absolute for the head, between reads
for the body), 408 versus a silent close, the cap closing the connection silent for longest, 503 when every
connection is busy, and the cap derived from the file limit. The whole server is in test_server_limits.py and
tests/reliability/test_server_starvation.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from fournil.serve.connections import Connections, connection_cap

RELEASE = threading.Event()


async def app(scope, receive, send):
    """Reads the whole body; /wait then holds the response until RELEASE is set."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    while scope["path"] == "/wait" and not RELEASE.is_set():
        await asyncio.sleep(0.01)
    data = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


@contextlib.contextmanager
def serving(cap: int, timeout: float) -> Iterator[tuple[int, Connections]]:
    connections = Connections(cap, timeout)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=connections.protocol(), lifespan="off",
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1], connections
    finally:
        RELEASE.set()
        server.should_exit = True
        thread.join(30)
        RELEASE.clear()


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while got := sock.recv(65536):
            out += got
    return out


def response(sock: socket.socket) -> bytes:
    """One response of the test app (its body is one JSON object)."""
    out = b""
    while not out.endswith(b"}"):
        got = sock.recv(65536)
        assert got, out
        out += got
    return out


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.settimeout(seconds)
    return answer(sock), time.monotonic() - started


def assert_error(data: bytes, status: int, code: str) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) and b"connection: close" in head.lower(), data
    assert json.loads(body)["error"]["code"] == code, data


HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n"


def test_deadlines_close_silent_clients_and_answer_408_to_half_sent_requests():
    timeout = 0.6
    with serving(cap=64, timeout=timeout) as (port, connections):
        silent = connect(port)
        partial = connect(port, HEAD[:20])
        no_body = connect(port, HEAD + b"\r\n123")
        keep_alive = connect(port, HEAD + b"\r\n12345678")
        dribble_head, dribble_body = connect(port), connect(port, HEAD + b"\r\n")
        assert b'"size": 8' in response(keep_alive)
        # one byte every 0.2 s: the head's deadline is absolute, the body's runs between two reads
        for byte in range(8):
            with contextlib.suppress(OSError):  # closed after `timeout` seconds
                dribble_head.send(HEAD[byte:byte + 1])
            dribble_body.send(b"x")
            time.sleep(0.2)
        assert response(dribble_body).startswith(b"HTTP/1.1 200 OK")
        for sock, expected in ((silent, b""), (keep_alive, b""), (partial, 408), (no_body, 408), (dribble_head, 408)):
            data, waited = closed_within(sock, 5)
            assert waited < 3, waited
            if expected == 408:
                assert_error(data, 408, "request_timeout")
            else:
                assert data == expected, data
        assert connections.closed["timed_out"] >= 5 and connections.stats()["open"] <= 1, connections.stats()


def test_over_the_cap_the_connection_silent_longest_is_closed():
    with serving(cap=4, timeout=60) as (port, connections):
        a, b, c = (connect(port, HEAD[:10]) for _ in range(3))
        time.sleep(0.1)
        a.sendall(HEAD[10:20])  # heard from again: now the most recent
        time.sleep(0.1)
        d = connect(port)
        time.sleep(0.1)
        e = connect(port)  # the fifth: b goes, then c, then a
        assert_error(closed_within(b, 5)[0], 408, "request_timeout")
        assert is_open(c) and is_open(a)
        f = connect(port)
        assert_error(closed_within(c, 5)[0], 408, "request_timeout")
        with connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") as g:
            assert g.recv(4096).startswith(b"HTTP/1.1 200 OK")
            assert_error(closed_within(a, 5)[0], 408, "request_timeout")
        assert all(is_open(s) for s in (d, e, f))
        assert connections.closed["evicted"] == 3, connections.closed
        for s in (a, b, c, d, e, f):
            s.close()


def test_a_newcomer_gets_503_when_every_connection_is_busy():
    with serving(cap=2, timeout=60) as (port, connections):
        busy = [connect(port, b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(2)]
        deadline = time.monotonic() + 10
        while connections.stats()["open"] < 2 or connections.stats()["waiting_on_client"]:
            assert time.monotonic() < deadline, connections.stats()
            time.sleep(0.01)
        with connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") as late:
            assert_error(closed_within(late, 5)[0], 503, "server_overloaded")
        RELEASE.set()
        for sock in busy:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
            sock.close()
        assert connections.closed["refused"] == 1, connections.closed


def test_the_cap_stays_below_the_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        cap = connection_cap(None)
        assert 700 < cap < 1024 - 64, cap
        assert connection_cap(100) == 100
        with pytest.raises(ValueError, match=r"ulimit -n 1024"):
            connection_cap(1024)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
