"""Client connections of `fournil serve`: a deadline and a cap, so clients that never finish a request cannot starve
the others.

uvicorn's h11 protocol holds a connection until its client finishes the request, however long that takes (its
keep-alive timeout only runs between two requests, and the first byte stops it), and the event loop accepts sockets
until the process runs out of file descriptors, after which nobody is accepted, /health included. `Connections`
keeps every connection of one server and adds to uvicorn's protocol:

- a deadline: a request's head must arrive within `timeout` seconds of the connection (or of the previous
  response), and its body without a pause longer than that; past it the connection is closed, with a 408 if part
  of a request had come;
- a cap on open connections below the process's file limit: over it, the connection that has been silent longest
  among those waiting on their client (idle keep-alive, half-sent request) is closed to make room, so newcomers
  are served; if every connection is busy with a response, the newcomer gets 503;
- errors in OpenAI's JSON shape for requests h11 refuses before the app runs (uvicorn's own are text/plain);
- a lingering close: a response sent while the client is still sending (a 413, a 400) half-closes the socket and
  discards what still comes for a moment before closing, since closing with unread data sends a reset that can
  destroy the response before the client reads it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
from collections import Counter, OrderedDict
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

ACCEPT_BATCH = 16  # sockets the event loop accepts per pass: the cap closes others before it accepts more
LISTEN_BACKLOG = 2048  # the kernel's queue of connections not yet accepted (uvicorn's default)
RESERVED_FILES = 128  # descriptors kept free of client sockets: files the server opens, a pass of accepted sockets
LINGER_SECONDS, LINGER_BYTES = 2.0, 1 << 20


def connection_cap(requested: int | None) -> int:
    """The most client connections this process can hold: `requested`, or what the file limit (`ulimit -n`) leaves
    after the descriptors already open and a reserve. Raises ValueError when the limit leaves too little room."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 32
    room = 1 << 20 if soft == resource.RLIM_INFINITY else soft - in_use - RESERVED_FILES
    if room < 1:
        raise ValueError(f"the file limit (ulimit -n {soft}) leaves no room for client connections: raise it")
    if requested is not None and requested > room:
        raise ValueError(f"at most {room} with the file limit of this process (ulimit -n {soft}), got {requested}")
    return room if requested is None else requested


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """Every error of the server, in OpenAI's shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Connections:
    """The open connections of one server and their limits, shared by its protocol instances."""

    def __init__(self, cap: int, timeout: float):
        self.cap, self.timeout = cap, timeout
        self.open: set[Protocol] = set()
        self.waiting: OrderedDict[Protocol, None] = OrderedDict()  # waiting on their client, least recently heard first
        self.closed: Counter[str] = Counter()  # connections this server closed early, by reason
        self.late = _raw_error(408, "Request Timeout", f"the request did not arrive in time (timeout {timeout:g} s, or "
                               "the server needed the connection)", "request_timeout")
        self.full = _raw_error(503, "Service Unavailable", "the server is at its connection limit: retry later",
                               "server_overloaded", kind="server_error")

    def stats(self) -> dict[str, int]:
        """For /health."""
        return {"open": len(self.open), "max": self.cap, "waiting_on_client": len(self.waiting),
                "timed_out": self.closed["timed_out"], "evicted": self.closed["evicted"],
                "refused": self.closed["refused"]}

    def protocol(self) -> type[Protocol]:
        """uvicorn's `http` protocol class for this server."""
        return type("FournilProtocol", (Protocol,), {"registry": self})

    def make_room(self) -> bool:
        """Close the connection silent for longest among those waiting on their client; False if there is none."""
        if not self.waiting:
            return False
        victim, _ = self.waiting.popitem(last=False)
        victim.drop("evicted")
        return True


class Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadline, the cap and the JSON errors of `Connections`."""

    registry: Connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _Lingering(transport, self)  # type: ignore[assignment]
        self.gone, self.phase, self.deadline = False, "", 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.lingered = 0
        known = self.registry
        known.open.add(self)
        if len(known.open) > known.cap and not known.make_room():
            log.warning("%d connections, all busy: refusing a new one (--max-connections)", known.cap)
            self.drop("refused")
            return
        self._track(heard=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # type: ignore[attr-defined]  # the answer is sent: discard, then close
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport.abort()
            return
        super().data_received(data)
        self._track(heard=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track(heard=False)

    def send_400_response(self, msg: str) -> None:
        """What h11 refuses (a bad request line, header or Content-Length), in the API's JSON error shape."""
        data = json.dumps(error_body("malformed HTTP request: its request line, a header or its framing "
                                     "(Content-Length, chunks) is invalid")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=data),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    # --- the deadline and the waiting list ------------------------------------------------------------------------

    def _track(self, heard: bool) -> None:
        """After anything that may change what the connection waits for: set its phase, deadline and place."""
        if self.gone or self.transport.lingering:  # type: ignore[attr-defined]
            return
        state, now = self.conn.their_state, self.loop.time()
        if state is h11.IDLE:  # waiting for a request head: its deadline runs from the start of the wait
            if self.phase != "head":
                self.phase, self.deadline = "head", now + self.registry.timeout
        elif state is h11.SEND_BODY:  # waiting for the body: at most `timeout` between two reads
            if self.phase != "body" or heard:
                self.phase, self.deadline = "body", now + self.registry.timeout
        else:  # the request is in: the connection is busy with the response
            self.phase = ""
        waiting = self.registry.waiting
        if not self.phase:
            waiting.pop(self, None)
            return
        if heard or self not in waiting:
            waiting[self] = None
            waiting.move_to_end(self)
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.gone or not self.phase:
            return
        if self.loop.time() < self.deadline:  # the deadline moved since the timer was set
            self.timer = self.loop.call_at(self.deadline, self._expire)
            return
        self.drop("timed_out")

    def drop(self, reason: str) -> None:
        """Close now: 408 if part of a request came and no response has started, 503 if refused, else silently."""
        self.registry.closed[reason] += 1
        partial = self.phase == "body" or bool(self.conn.trailing_data[0])
        self._forget()
        real = self.transport._transport  # type: ignore[attr-defined]
        if self.transport.lingering:  # type: ignore[attr-defined]  # its answer is sent already
            pass
        elif reason == "refused":
            real.write(self.registry.full)
        elif partial and not (self.cycle and self.cycle.response_started):
            real.write(self.registry.late)
        log.debug("closing a connection waiting on its client (%s)", reason)
        real.close()

    def _forget(self) -> None:
        if not self.gone:
            self.gone = True
            self.registry.open.discard(self)
            self.registry.waiting.pop(self, None)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None


def _raw_error(status: int, reason: str, message: str, code: str, kind: str = "invalid_request_error") -> bytes:
    """A complete response written past h11 (the connection closes right after)."""
    data = json.dumps(error_body(message, kind=kind, code=code)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + data


class _Lingering:
    """The connection's transport, whose close() lets the client read the answer while it is still sending."""

    def __init__(self, transport: asyncio.Transport, protocol: Protocol):
        self._transport, self._protocol, self.lingering = transport, protocol, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        if self._protocol.conn.their_state in (h11.SEND_BODY, h11.ERROR) and transport.can_write_eof():
            self.lingering = True
            waiting = self._protocol.registry.waiting  # first to go if the server needs room
            waiting[self._protocol] = None
            waiting.move_to_end(self._protocol, last=False)
            transport.write_eof()  # after the buffered answer
            transport.resume_reading()
            self._protocol.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()
