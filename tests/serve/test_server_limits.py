"""`fournil serve` at its edges, as a real process on loopback: HEAD on every GET route, OpenAI-shaped JSON for
what the HTTP layer refuses, a chunked body over the limit answered and closed at once, caps on stop strings, and
/health counting connections. The connection deadlines and cap are in test_server_connections.py (exact timings)
and tests/reliability/test_server_starvation.py (a thousand slow clients)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.serve.test_server import KEY, ServerProcess

LIMIT = 65536


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ServerProcess(tiny_dir, "--api-key", KEY, "--model-name", "tiny", "--context", "256", "--temperature", "0",
                        "--max-body-bytes", str(LIMIT), "--client-timeout", "1", "--max-connections", "64")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data`, return all the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while got := sock.recv(65536):
            out += got
        return out


def openai_error(data: bytes, status: int) -> dict:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), data[:300]
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


def test_head_is_get_without_a_body(server, client):
    for path in ("/health", "/v1/models", "/v1/models/tiny", "/"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    assert client.head("/v1/models/other").status_code == 404
    assert httpx.head(server.url + "/v1/models").status_code == 401  # the key is still checked


@pytest.mark.parametrize("request_head", [
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /health HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000,
], ids=["negative length", "float length", "two lengths", "header without colon", "bad request line",
        "unending header"])
def test_requests_the_http_layer_refuses_get_openai_json(server, request_head):
    error = openai_error(raw(server.port, request_head), 400)
    assert error["type"] == "invalid_request_error", error
    assert server.health()["status"] == "ok"


def test_a_chunked_body_over_the_limit_is_answered_413_at_once_and_closed(server):
    """20 MB in 64 kB chunks: the 413 arrives while the client is still sending, then the server closes (after
    reading a little more, so the answer is not destroyed by a reset) long before 20 MB."""
    total, chunk = 20 << 20, 1 << 16
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, chunk)  # what the client sent ≈ what the server took
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent, answered_at, answer = 0, None, b""
        try:
            while sent < total:
                sock.sendall(b"%x\r\n" % chunk + b" " * chunk + b"\r\n")
                sent += chunk
                if answered_at is None:
                    sock.setblocking(False)
                    try:
                        answer += sock.recv(65536)
                        answered_at = sent
                    except BlockingIOError:
                        pass
                    sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server: what it answered before is still readable
        try:
            while got := sock.recv(65536):
                answer += got
        except ConnectionResetError:
            pass
    assert openai_error(answer, 413)["code"] == "body_too_large"
    assert b"connection: close" in answer.lower()
    assert answered_at is not None and answered_at < 8 * LIMIT + (4 << 20), answered_at
    assert sent < total // 2, sent  # not read to the end
    assert server.health()["status"] == "ok"


def test_stop_strings_are_capped_and_a_long_one_is_cheap(client):
    body = {"model": "tiny", "prompt": "Bonjour", "max_tokens": 8, "ignore_eos": True}
    r = client.post("/v1/completions", json={**body, "stop": ["x"] * 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
    r = client.post("/v1/completions", json={**body, "stop": ["a", "é" * 1001]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop" and "1000" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={**body, "stop": ["§" * 1000] * 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8, r.text


def test_health_counts_connections_and_closes_clients_past_their_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head, never finished
        time.sleep(0.2)
        state = server.health()["connections"]
        assert state["max"] == 64 and state["open"] >= 2 and state["waiting_on_client"] >= 1, state
        started, out = time.monotonic(), b""
        while got := sock.recv(65536):
            out += got
    assert openai_error(out, 408)["code"] == "request_timeout"
    assert time.monotonic() - started < 5
    assert server.health()["connections"]["timed_out"] >= 1
