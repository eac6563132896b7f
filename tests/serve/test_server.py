"""`fournil serve` as a real uvicorn process on loopback (tiny random model, SmolLM2's tokenizer): OpenAI response
shapes, SSE streaming, 16 concurrent clients whose greedy replies equal the same requests served alone (continuous
batching is exact), auth, 400/404/413 for malformed requests, a client that disconnects frees its slot, and the
`openai` client unchanged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

import httpx
import pytest

from fournil.serve.server import ChatRequest

KEY = "sesame"
MAX_TOKENS_LIMIT = 250


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m fournil serve DIR …` on a free loopback port, waited for until /health answers."""

    def __init__(self, directory: Path, *flags: str, env: dict[str, str] | None = None, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(directory).parent / f"serve-{self.port}.log", "w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fournil", "serve", str(directory), "--port", str(self.port), *flags],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not start in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ServerProcess(tiny_dir, "--api-key", KEY, "--model-name", "tiny", "--context", "256",
                        "--max-tokens-limit", str(MAX_TOKENS_LIMIT), "--max-body-bytes", "65536",
                        "--temperature", "0")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


def chat_body(text: str, **kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **kw}


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, JSON-decoded except the final [DONE]."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_models_and_page_are_served(server, client):
    health = httpx.get(server.url + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["model"] == "tiny" and health["slots"] == 16
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert client.get("/v1/models/other").status_code == 404
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/chat/completions" in \
        page.text


def test_chat_completion_equals_engine(client, tiny_dir):
    from fournil.lm.generate import Engine
    from fournil.lm.sampling import SamplingConfig

    reply = client.post("/v1/chat/completions", json=chat_body("Bonjour !", max_tokens=12)).json()
    engine = Engine.load(tiny_dir)
    expected = engine.complete(["Bonjour !"], SamplingConfig(max_tokens=12), chat=True)[0]
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny" and reply["id"].startswith("chatcmpl-")
    choice = reply["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason
    assert reply["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]


def test_streaming_chunks_add_up_to_the_full_reply(client):
    full = client.post("/v1/completions", json={"model": "tiny", "prompt": "Il était une fois", "max_tokens": 20,
                                                "ignore_eos": True}).json()
    assert full["object"] == "text_completion" and full["usage"]["completion_tokens"] == 20
    body = {"model": "tiny", "prompt": "Il était une fois", "max_tokens": 20, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == full["usage"]
    chunks = events[:-2]
    assert len(chunks) > 5  # really streamed, not one blob
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    with client.stream("POST", "/v1/chat/completions", json=chat_body("Salut", max_tokens=8, stream=True)) as r:
        events = sse_events(r)
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length") and events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert streamed == client.post("/v1/chat/completions", json=chat_body("Salut", max_tokens=8)).json()[
        "choices"][0]["message"]["content"]


PROMPTS = [f"{w} " * (1 + i % 5) + "et puis" for i, w in enumerate(
    ["Bonjour", "Hello", "Paris", "Le chat", "The dog", "Une fois", "Once upon", "Demain", "Tomorrow", "La mer",
     "The sea", "Un deux trois", "One two", "Merci", "Thanks", "Voilà"])]


def test_sixteen_concurrent_clients_get_what_they_get_alone(server, client):
    """Continuous batching is exact: each request's greedy reply inside a busy, changing batch equals its reply
    when served alone. Different lengths make rows join and leave at different steps."""
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 10 + 7 * (i % 6), "ignore_eos": True}
              for i, p in enumerate(PROMPTS)]
    alone = [client.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies]
    before = server.health()["peak_batch"]
    assert before <= 1  # so far requests came one at a time

    def ask(body):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            if body["max_tokens"] % 2:  # half of them stream
                with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    return "".join(e["choices"][0]["text"] for e in sse_events(r) if e != "[DONE]")
            return c.post("/v1/completions", json=body).json()["choices"][0]["text"]

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, bodies))
    assert together == alone
    health = server.health()
    assert health["peak_batch"] >= 8, health  # they really shared decode steps
    assert health["active"] == 0 and health["waiting"] == 0


def test_api_key_is_required(server):
    body = chat_body("hi", max_tokens=2)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_api_key_from_environment(monkeypatch):
    from fournil.cli import build_parser

    monkeypatch.setenv("FOURNIL_API_KEY", "from-env")
    assert build_parser().parse_args(["serve", "dir"]).api_key == "from-env"
    assert build_parser().parse_args(["serve", "dir", "--api-key", "flag"]).api_key == "flag"


LONG = "mot " * 400  # over the 256-token context

MALFORMED = {
    "max_tokens as string": (chat_body("hi", max_tokens="5"), 400, "max_tokens"),
    "temperature as string": (chat_body("hi", temperature="hot"), 400, "temperature"),
    "messages not a list": ({"model": "tiny", "messages": "hi"}, 400, "messages"),
    "content a number": ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400, None),
    "stream not a bool": (chat_body("hi", stream="yes"), 400, "stream"),
    "unknown role": ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, None),
    "unknown model": ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    "missing model": ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    "negative max_tokens": (chat_body("hi", max_tokens=-1), 400, "max_tokens"),
    "max_tokens over the limit": (chat_body("hi", max_tokens=MAX_TOKENS_LIMIT + 1), 400, "max_tokens"),
    "temperature too high": (chat_body("hi", temperature=2.5), 400, "temperature"),
    "negative temperature": (chat_body("hi", temperature=-0.1), 400, "temperature"),
    "top_p zero": (chat_body("hi", top_p=0), 400, "top_p"),
    "seed too large": (chat_body("hi", seed=2**70), 400, "seed"),
    "empty messages": ({"model": "tiny", "messages": []}, 400, "messages"),
    "n = 2": (chat_body("hi", n=2), 400, "n"),
    "five stop strings": (chat_body("hi", stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    "empty stop string": (chat_body("hi", stop=""), 400, "stop"),
    "body a list": ([1, 2], 400, None),
    "prompt too long": (chat_body(LONG), 400, "messages"),
}


@pytest.mark.parametrize("body, status, param", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chat_requests_are_client_errors(client, body, status, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


@pytest.mark.parametrize("body", [
    {"model": "tiny", "prompt": ""},
    {"model": "tiny", "prompt": ["a", "b"]},
    {"model": "tiny", "prompt": [1, 10**9]},
    {"model": "tiny", "prompt": "hi", "echo": True},
    {"model": "tiny", "prompt": LONG},
    {"model": "tiny", "prompt": None},
])
def test_malformed_completion_requests_are_400(client, body):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", [name for name, f in ChatRequest.model_fields.items() if float in get_args(f.annotation)])
def test_non_finite_knobs_are_400(client, field, value):
    """Python's JSON reader takes NaN and Infinity; every float knob refuses them, naming itself."""
    body = json.dumps(chat_body("hi"))[:-1] + f', "{field}": {value}}}'
    r = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and "finite" in r.json()["error"]["message"]


def test_bad_json_and_oversized_bodies(server, client):
    r = client.post("/v1/chat/completions", content=b'{"model": "tiny",', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", content=b"\xff\xfe", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    big = json.dumps(chat_body("x" * 70_000)).encode()
    r = client.post("/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunked():  # no Content-Length: the limit applies while reading
        for _ in range(20):
            yield b" " * 5000

    r = client.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # a huge declared body is refused from its headers alone, before any of it is sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    assert server.health()["status"] == "ok"


def test_client_disconnect_frees_its_slot(server, client):
    before = server.health()["cancelled"]
    body = {"model": "tiny", "prompt": "Bonjour", "max_tokens": MAX_TOKENS_LIMIT, "ignore_eos": True, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        received = [line for line, _ in zip(lines, range(3), strict=False)]
        assert received[0].startswith("data: ")
    # the response is closed after a few tokens of 250: the server notices, drops the request, frees the slot
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = server.health()
        if health["cancelled"] > before and health["active"] == 0:
            break
        time.sleep(0.05)
    assert health["cancelled"] == before + 1 and health["active"] == 0, health
    assert client.post("/v1/completions", json={"model": "tiny", "prompt": "ok", "max_tokens": 2}).status_code == 200


def test_openai_client_unchanged(server):
    import openai

    api = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in api.models.list()] == ["tiny"]
    chat = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Bonjour"}],
                                       max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 6
    stream = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Bonjour"}],
                                         max_tokens=6, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens
    done = api.completions.create(model="tiny", prompt="The capital of France is", max_tokens=5, seed=1,
                                  temperature=0.8, extra_body={"ignore_eos": True})
    again = api.completions.create(model="tiny", prompt="The capital of France is", max_tokens=5, seed=1,
                                   temperature=0.8, extra_body={"ignore_eos": True})
    assert done.choices[0].text == again.choices[0].text and done.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model="tiny", prompt="The capital of France is", max_tokens=5, seed=1, temperature=0.8, stream=True,
        extra_body={"ignore_eos": True}))
    assert streamed == done.choices[0].text
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], temperature=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
