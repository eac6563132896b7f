"""`fournil serve` under load and abuse, as a real uvicorn process on loopback (tiny random model, SmolLM2's
tokenizer): a soak of 64 concurrent streaming clients (zero errors, bounded RSS, no leaked slot), a storm of clients
that drop their streams after a few chunks (every slot freed, greedy output unchanged), a non-streaming client that
goes away, and garbage on the socket (the server keeps serving, no 5xx, no traceback in its log).

Schemathesis, the API key, 413 for oversized bodies and one mid-stream disconnect are in `tests/serve/test_server*.py`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from tests.serve.test_server import KEY, ServerProcess

SOAK_SECONDS = float(os.environ.get("FOURNIL_SOAK_SECONDS", "60"))
SOAK_CLIENTS = 64
LIMIT = 200  # --max-tokens-limit of the abuse server: an uncancelled request holds its slot for 200 decode steps
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = [
    "Bonjour !", "The capital of France is", "Écris un poème sur le pain.", "Translate to French: good morning",
    "Quelle heure est-il à Montréal ?", "Once upon a time", "Le fournil sent le levain et la farine.",
    "List three colours.", "Ça va ? 🙂", "Explain continuous batching in one sentence.",
]
SERVER_FLAGS = ("--api-key", KEY, "--model-name", "tiny", "--context", "256", "--slots", "16", "--threads", "1")


def health(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.url + "/health", timeout=30).json()


def wait_idle(server: ServerProcess, timeout: float = 60) -> dict[str, Any]:
    """/health once no request is active or waiting (or the last answer at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        state = health(server)
        if (state["active"] == 0 and state["waiting"] == 0) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def assert_log_clean(server: ServerProcess, since: int = 0) -> None:
    """No traceback and no 500 in the server's log (from offset `since`): every abuse ended as a client error or a
    closed socket."""
    text = server.output()[since:]
    for needle in ("Traceback", "unexpected error", "Exception in ASGI application", " 500 "):
        assert needle not in text, text[-4000:]


# --- soak ---------------------------------------------------------------------------------------------------------

@dataclass
class SoakStats:
    requests: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


def random_request(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A streaming chat or text completion with varied prompt, length and sampling (always with usage)."""
    text = " ".join(rng.choice(PROMPTS) for _ in range(rng.randint(1, 4)))
    body: dict[str, Any] = {"model": "tiny", "max_tokens": rng.randint(1, 32), "stream": True,
                            "stream_options": {"include_usage": True}, "ignore_eos": rng.random() < 0.5}
    if rng.random() < 0.5:
        body["temperature"] = 0
    else:
        body.update(temperature=rng.uniform(0.3, 1.5), top_p=rng.choice([0.5, 0.9, 1.0]), seed=rng.randrange(10**6))
    if rng.random() < 0.2:
        body["stop"] = rng.choice(["\n", ".", ["le", "the"]])
    if rng.random() < 0.5:
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": text}]}
    return "/v1/completions", {**body, "prompt": text}


def check_stream(lines: list[str], chat: bool, max_tokens: int) -> int:
    """Assert one SSE response is well-formed (JSON chunks of one id, one finish_reason, usage, then [DONE]);
    returns its completion tokens."""
    data = [line[len("data: "):] for line in lines if line]
    assert all(line.startswith("data: ") for line in lines if line), lines
    assert data and data[-1] == "[DONE]" and data.count("[DONE]") == 1, data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == "tiny" for c in chunks)
    assert all(c["object"] == ("chat.completion.chunk" if chat else "text_completion") for c in chunks)
    *choices, usage = chunks
    assert usage["choices"] == [], usage
    reasons = [c["choices"][0]["finish_reason"] for c in choices]
    assert reasons[-1] in ("stop", "length") and all(r is None for r in reasons[:-1]), reasons
    if chat:
        assert choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    u = usage["usage"]
    assert 1 <= u["completion_tokens"] <= max_tokens and u["prompt_tokens"] > 0, u
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
    assert reasons[-1] == "stop" or u["completion_tokens"] == max_tokens, (reasons[-1], u)
    return u["completion_tokens"]


async def soak_client(client: httpx.AsyncClient, rng: random.Random, until: float, stats: SoakStats) -> None:
    while time.monotonic() < until:
        path, body = random_request(rng)
        try:
            async with client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise AssertionError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
                lines = [line async for line in response.aiter_lines()]
            stats.tokens += check_stream(lines, path.endswith("chat/completions"), body["max_tokens"])
            stats.requests += 1
        except Exception as exc:  # counted, not raised: the test reports every kind of failure at the end
            stats.errors.append(f"{path} {json.dumps(body)[:200]}: {exc!r}")


async def soak(url: str, pid: int, seconds: float) -> tuple[SoakStats, list[tuple[float, int]]]:
    """SOAK_CLIENTS streaming clients for `seconds`; the server's RSS sampled every second."""
    stats, samples = SoakStats(), []
    start = time.monotonic()
    limits = httpx.Limits(max_connections=SOAK_CLIENTS, max_keepalive_connections=SOAK_CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as client:
        clients = [asyncio.create_task(soak_client(client, random.Random(i), start + seconds, stats))
                   for i in range(SOAK_CLIENTS)]
        process = psutil.Process(pid)
        while not all(c.done() for c in clients):
            samples.append((time.monotonic() - start, process.memory_info().rss))
            await asyncio.sleep(1)
        await asyncio.gather(*clients)
    return stats, samples


@pytest.mark.slow
def test_soak_64_streaming_clients(tiny_dir):
    """64 streaming clients for SOAK_SECONDS: zero errors, bounded RSS after warm-up, nothing left running."""
    server = ServerProcess(tiny_dir, *SERVER_FLAGS, "--max-tokens-limit", "32")
    try:
        warmup = min(15.0, SOAK_SECONDS / 4)
        stats, samples = asyncio.run(soak(server.url, server.process.pid, SOAK_SECONDS))
        state = wait_idle(server, timeout=30)
        rss_idle = psutil.Process(server.process.pid).memory_info().rss
        rss_warm = next(rss for t, rss in samples if t >= warmup)
        rss_end = samples[-1][1]
        mb = 1 << 20
        print(f"\nsoak: {SOAK_SECONDS:.0f} s, {SOAK_CLIENTS} clients, {stats.requests} requests, {stats.tokens} "
              f"tokens, {len(stats.errors)} errors; server RSS after {warmup:.0f} s warm-up {rss_warm / mb:.0f} MB, "
              f"at the end {rss_end / mb:.0f} MB, idle after {rss_idle / mb:.0f} MB, peak "
              f"{max(r for _, r in samples) / mb:.0f} MB; health {state}")
        assert not stats.errors, f"{len(stats.errors)} errors, first: {stats.errors[:5]}"
        assert stats.requests >= SOAK_CLIENTS, stats  # every client finished at least one request
        # no leaked slot or queued request once every client has its answer
        assert state["active"] == 0 and state["waiting"] == 0 and state["cancelled"] == 0, state
        # Bounded memory: weights and the KV cache (16 slots × 256 columns) are allocated before the first request,
        # so after warm-up only per-request garbage comes and goes; 64 MB is far above allocator noise (a few MB)
        # and far below what a per-request leak of the event queue or decoder state adds over thousands of requests.
        assert rss_end - rss_warm < 64 * mb, (rss_warm, rss_end)
        assert rss_idle - rss_warm < 64 * mb, (rss_warm, rss_idle)
        assert_log_clean(server)
    finally:
        server.stop()


# --- disconnects and garbage: one server shared by the quick tests ------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ServerProcess(tiny_dir, *SERVER_FLAGS, "--max-tokens-limit", str(LIMIT), "--temperature", "0")
    yield srv
    srv.stop()


def http_request(path: str, body: dict[str, Any] | None = None, method: str = "POST") -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


def drop_after(port: int, path: str, body: dict[str, Any], chunks: int, reset: bool) -> None:
    """Send a request on a raw socket, read until `chunks` SSE events arrived (0: none), then close it abruptly
    (`reset`: RST through SO_LINGER 0, else FIN) without reading the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(http_request(path, body))
        received = b""
        while received.count(b"data: ") < chunks:
            got = sock.recv(65536)
            assert got, f"the server closed the stream early: {received[-300:]!r}"
            received += got
        if chunks:
            assert received.startswith(b"HTTP/1.1 200"), received[:300]
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def long_body(i: int, stream: bool = True) -> tuple[str, dict[str, Any]]:
    """A request that would hold its slot for LIMIT decode steps if nobody cancelled it."""
    body = {"model": "tiny", "max_tokens": LIMIT, "ignore_eos": True, "stream": stream}
    if i % 2:
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
    return "/v1/completions", {**body, "prompt": PROMPTS[i % len(PROMPTS)]}


def greedy(client: httpx.Client) -> tuple[str, str]:
    body = {"model": "tiny", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
    done = client.post("/v1/completions", json={**body, "prompt": "The capital of France is"})
    chat = client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "Bonjour"}]})
    assert done.status_code == 200 and chat.status_code == 200, (done.text, chat.text)
    return done.json()["choices"][0]["text"], chat.json()["choices"][0]["message"]["content"]


def test_disconnect_storm_frees_every_slot(server):
    mark = len(server.output())
    rounds, clients = 3, 32
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        before_text = greedy(client)
        before = wait_idle(server)
        with ThreadPoolExecutor(clients) as pool:
            for r in range(rounds):
                # 1–3 chunks, or none at all (the request is sent and the socket closed at once); FIN or RST
                jobs = [pool.submit(drop_after, server.port, *long_body(i), (i + r) % 4, i % 3 == 0)
                        for i in range(clients)]
                for job in jobs:
                    job.result()
        after = wait_idle(server)
        assert after["active"] == 0 and after["waiting"] == 0, after
        # every dropped request was cancelled, none ran its 200 tokens to the end
        assert after["cancelled"] - before["cancelled"] == rounds * clients, (before, after)
        assert greedy(client) == before_text  # the freed slots' stale cache columns do not leak into new requests
    assert_log_clean(server, mark)


def test_non_streaming_client_that_leaves_is_bounded_by_max_tokens(server):
    """A non-streaming request is not cancelled when its client goes (nothing is sent until it ends): it runs to
    max_tokens, then its slot is free and the server answers as before."""
    mark = len(server.output())
    before = wait_idle(server)
    path, body = long_body(0, stream=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(http_request(path, body))
        deadline = time.monotonic() + 30
        while health(server)["active"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    after = wait_idle(server)
    assert after["active"] == 0 and after["waiting"] == 0 and after["cancelled"] == before["cancelled"], after
    assert after["steps"] - before["steps"] >= LIMIT - 1, (before, after)  # it did run to the end
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        assert client.post("/v1/completions", json={"model": "tiny", "prompt": "ok", "max_tokens": 2}).status_code \
            == 200
    assert_log_clean(server, mark)


GARBAGE = {
    "invalid request line": b"GARBAGE\r\n\r\n",
    "binary junk": bytes(range(256)) * 64,
    "unknown HTTP version": b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    "truncated headers": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le",
    "header without colon": b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "huge header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n",
    "many headers": b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 100_000 + b"\r\n",
    "bad content-length": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "negative content-length": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    "two content-lengths": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9"
                           b"\r\n\r\n{}",
    "body longer than declared": http_request("/v1/completions", {"model": "tiny", "prompt": "a"})[:-3] + b"x" * 500,
    # uvicorn answers 400 itself while the app already runs and answers too (a 401 here, 200 for /health)
    "bad chunked encoding": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "bad chunked encoding, no auth needed": b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"zz\r\n",
    "partial body then close": http_request("/v1/chat/completions", {"model": "tiny", "messages": [
        {"role": "user", "content": "x" * 1000}]})[:-500],
    "partial chunked body then close": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                       KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"model\": ",
}


def send_garbage(port: int, payload: bytes) -> bytes:
    """Send `payload`, half-close, return whatever the server answers before it closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        answer = b""
        try:
            sock.sendall(payload)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:  # ENOTCONN: the server answered and reset before reading all of it
                if exc.errno != errno.ENOTCONN:
                    raise
            while got := sock.recv(65536):
                answer += got
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass  # the server may close as soon as it has seen enough
        return answer


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_on_the_socket(server, name):
    mark = len(server.output())
    answer = send_garbage(server.port, GARBAGE[name])
    if answer:  # a status line, never a 5xx
        status = answer.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 ") and status[9:10] in (b"2", b"4"), answer[:300]
    state = health(server)
    assert state["status"] == "ok", state
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "ok", "max_tokens": 2})
        assert reply.status_code == 200, reply.text
    assert_log_clean(server, mark)


def test_slow_clients_do_not_block_others(server):
    """Slowloris: 64 connections hold half-sent headers or bodies open; everyone else is still served promptly,
    and when they hang up nothing is left behind."""
    mark = len(server.output())
    body = http_request("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    partial = [body[:30], body[:len(body) - 10]]
    socks = []
    try:
        for i in range(64):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(partial[i % 2])
            socks.append(sock)
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            for _ in range(5):
                started = time.monotonic()
                reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "ok", "max_tokens": 2})
                assert reply.status_code == 200 and time.monotonic() - started < 30, reply.text
    finally:
        for sock in socks:
            sock.close()
    state = wait_idle(server)
    assert state["active"] == 0 and state["waiting"] == 0, state
    assert_log_clean(server, mark)

