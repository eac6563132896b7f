"""`fournil serve` against clients that never finish: a real server process on loopback whose file limit is 1,024
(as `ulimit -n` often is), and raw sockets that stop at every point of a request.

- 2,000 idle connections, reopened as soon as the server closes one (more than the server has descriptors): a
  normal client's /health and short completions are still answered promptly; the figures are printed.
- Hypothesis draws mixes of slow clients (nothing sent, half a request line, half the headers, headers without the
  body, a stalled chunked body, a byte every few tenths of a second, an idle keep-alive connection): normal clients
  are served within a bound meanwhile, the server closes every slow client once its deadline passes (408 when part
  of a request came), nothing is ever a 5xx, and the log has no traceback.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.test_server_load import AUTH, assert_log_clean
from tests.serve.test_server import KEY, ServerProcess

FILE_LIMIT = 1024  # the server's
CLIENT_TIMEOUT = 2.0
IDLE = 2000

_HEAD = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() +
         b"\r\nContent-Type: application/json\r\n")
SLOW = {  # what each kind of slow client sends, then it sends nothing more
    "silent": b"",
    "request line": b"POST /v1/chat/compl",
    "headers": _HEAD[:60],
    "no body": _HEAD + b"Content-Length: 200\r\n\r\n",
    "part of the body": _HEAD + b'Content-Length: 200\r\n\r\n{"model": "tiny", ',
    "stalled chunk": _HEAD + b'Transfer-Encoding: chunked\r\n\r\n40\r\n{"model": ',
    "dribble": _HEAD + b"X-Slow: " + b"z" * 200,  # sent one byte per tick
    "keep-alive": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a complete request, then idle
}
PARTIAL = {"request line", "headers", "no body", "part of the body", "stalled chunk", "dribble"}


@contextlib.contextmanager
def file_limit(soft: int) -> Iterator[None]:
    """This process's soft file limit set to `soft` for what it starts meanwhile (children inherit it)."""
    old, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old, hard))


@pytest.fixture(scope="module")
def server(tiny_dir):
    with file_limit(FILE_LIMIT):
        srv = ServerProcess(tiny_dir, "--api-key", KEY, "--model-name", "tiny", "--context", "256", "--threads", "1",
                            "--client-timeout", str(CLIENT_TIMEOUT))
    # the test's own sockets: the idle clients and a few normal ones
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE + 256:
        srv.stop()
        pytest.skip(f"needs a hard file limit of {IDLE + 256} for the test's sockets, got {hard}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE + 256), hard))
    try:
        yield srv
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        srv.stop()


class SlowClients(threading.Thread):
    """Raw sockets that each send the start of a request (`SLOW[kind]`) and then wait; `reopen` replaces a socket the
    server closes. Records the first status line each received and when the server closed it."""

    def __init__(self, port: int, kinds: list[str], reopen: bool = False, tick: float = 0.3):
        super().__init__(daemon=True)
        self.port, self.kinds, self.reopen, self.tick = port, kinds, reopen, tick
        self.selector = selectors.DefaultSelector()
        self.statuses: Counter[str] = Counter()  # (kind, first status line or "closed silently")
        self.closed: list[tuple[str, float]] = []  # (kind, seconds from opening to the server's close)
        self.ready, self.done = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setblocking(False)
        payload = SLOW[kind][:1] if kind == "dribble" else SLOW[kind]
        if payload:
            sock.send(payload)
        self.selector.register(sock, selectors.EVENT_READ, {"kind": kind, "sent": len(payload), "got": b"",
                                                            "opened": time.monotonic()})

    def run(self) -> None:
        try:
            for kind in self.kinds:
                self.open(kind)
            self.ready.set()
            next_tick = time.monotonic() + self.tick
            while not self.done.is_set():
                for key, _ in self.selector.select(timeout=0.05):
                    self.read(key)
                if time.monotonic() >= next_tick:
                    next_tick += self.tick
                    self.dribble()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.ready.set()
        finally:
            for key in list(self.selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]

    def read(self, key: selectors.SelectorKey) -> None:
        sock, state = key.fileobj, key.data
        try:
            got = sock.recv(65536)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError:
            got = b""
        if got:
            state["got"] += got
            return
        status = state["got"].split(b"\r\n", 1)[0].decode() or "closed silently"
        self.statuses[state["kind"], status] += 1
        self.closed.append((state["kind"], time.monotonic() - state["opened"]))
        self.selector.unregister(sock)
        sock.close()  # type: ignore[union-attr]
        if self.reopen and not self.done.is_set():
            self.open(state["kind"])

    def dribble(self) -> None:
        for key in list(self.selector.get_map().values()):
            state = key.data
            if state["kind"] == "dribble" and state["sent"] < len(SLOW["dribble"]):
                with contextlib.suppress(OSError):
                    key.fileobj.send(SLOW["dribble"][state["sent"]:state["sent"] + 1])  # type: ignore[union-attr]
                    state["sent"] += 1

    def stop(self) -> None:
        self.done.set()
        self.join(30)


def normal_client(url: str, health: int, completions: int, timeout: float = 30) -> tuple[list[float], list[float]]:
    """Seconds each request took, on a new connection each ( /health, then short completions); every one must be
    answered 200."""
    latencies: tuple[list[float], list[float]] = ([], [])
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, headers=AUTH, timeout=timeout, limits=no_reuse) as client:
        for n in range(health + completions):
            started = time.monotonic()
            if n < health:
                reply = client.get("/health")
            else:
                reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "Bonjour", "max_tokens": 4})
            assert reply.status_code == 200, reply.text
            latencies[n >= health].append(time.monotonic() - started)
    return latencies


def figures(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms"


@pytest.mark.slow
def test_normal_clients_are_served_while_2000_idle_connections_are_held(server):
    mark = len(server.output())
    baseline = normal_client(server.url, 20, 5)
    kinds = [kind for kind, _ in zip(list(SLOW) * IDLE, range(IDLE), strict=False)]
    idle = SlowClients(server.port, kinds, reopen=True)
    idle.start()
    try:
        assert idle.ready.wait(120) and idle.error is None, idle.error
        during = normal_client(server.url, 40, 10)
        state = server.health()["connections"]
        assert idle.error is None, idle.error
    finally:
        idle.stop()
    print(f"\nserver file limit {FILE_LIMIT}, cap {state['max']} connections; {IDLE} idle connections held "
          f"(reopened when closed: {len(idle.closed)} closed by the server meanwhile)\n"
          f"  /health: {figures(during[0])} (alone: {figures(baseline[0])})\n"
          f"  4-token completion: {figures(during[1])} (alone: {figures(baseline[1])})\n"
          f"  /health connections: {state}")
    assert state["max"] < FILE_LIMIT and state["open"] <= state["max"], state
    assert state["evicted"] + state["timed_out"] > 0, state  # the idle ones really were over the cap
    assert max(during[0] + during[1]) < 10, during
    assert not [status for _, status in idle.statuses if status.startswith("HTTP/1.1 5")], idle.statuses
    assert_log_clean(server, mark)


slow_mix = st.lists(st.sampled_from(sorted(SLOW)), min_size=1, max_size=120)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=slow_mix, tick=st.sampled_from([0.1, 0.3, 0.7]))
def test_slow_clients_never_starve_normal_ones_and_are_closed_by_their_deadline(server, kinds, tick):
    mark = len(server.output())
    slow = SlowClients(server.port, kinds, tick=tick)
    slow.start()
    try:
        assert slow.ready.wait(60) and slow.error is None, slow.error
        health, completions = normal_client(server.url, 3, 2, timeout=15)
        assert max(health + completions) < 10, (health, completions)
        # every slow client is closed by the server once its deadline passes (dribbling does not extend a head's)
        deadline = time.monotonic() + CLIENT_TIMEOUT + 10
        while len(slow.closed) < len(kinds) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slow.error is None, slow.error
    finally:
        slow.stop()
    assert len(slow.closed) == len(kinds), (Counter(kinds), slow.statuses)
    assert max(seconds for _, seconds in slow.closed) < CLIENT_TIMEOUT + 8, slow.closed
    for (kind, status), _ in slow.statuses.items():
        if kind in PARTIAL:
            assert status.startswith("HTTP/1.1 408"), (kind, status)
        elif kind == "keep-alive":
            assert status.startswith("HTTP/1.1 200"), (kind, status)
        else:
            assert status == "closed silently", (kind, status)
    assert_log_clean(server, mark)
