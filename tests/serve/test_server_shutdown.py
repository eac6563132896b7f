"""Graceful shutdown: SIGTERM while a long generation streams stops accepting connections, lets the stream finish
to its last token and [DONE], and the process exits 0."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest

from tests.serve.test_server import ServerProcess


@pytest.mark.slow
def test_sigterm_finishes_the_running_stream_then_exits_0(tiny_dir):
    server = ServerProcess(tiny_dir, "--model-name", "tiny", "--context", "256", "--max-tokens-limit", "250")
    try:
        body = {"model": "tiny", "prompt": "Bonjour", "max_tokens": 250, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        events: list = []
        first = threading.Event()

        def consume():
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        events.append(data if data == "[DONE]" else json.loads(data))
                        first.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(60)
        server.process.send_signal(signal.SIGTERM)
        at_signal = len(events)
        refused = False
        for _ in range(100):  # the listening socket closes while the stream still runs
            try:
                httpx.get(server.url + "/health", timeout=2)
            except httpx.TransportError:
                refused = True
                break
        assert server.process.wait(60) == 0, server.output()
        reader.join(10)
        assert refused
        assert at_signal < 100  # the signal came early in the 250-token stream
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"]["completion_tokens"] == 250  # every token was still delivered
        assert events[-3]["choices"][0]["finish_reason"] == "length"
        assert "Finished server process" in server.output()
    finally:
        server.stop()
