"""`fournil serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching scheduler.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /health, and a small web chat page at /. The `openai` client works against it unchanged.

Why this shape:
- the event loop never touches torch: handlers validate and tokenise, then hand a `batching.Request` to the
  scheduler thread, whose events come back through `loop.call_soon_threadsafe` into a per-request asyncio queue;
- every client error is a 4xx in OpenAI's error shape ({"error": {message, type, param, code}}), never a 500:
  FastAPI's 422 for invalid bodies becomes 400, unknown models are 404 `model_not_found` as on api.openai.com;
- an ASGI guard in front of the app checks the API key and the body size before the body is read (413 from the
  Content-Length header, or as soon as a chunked body passes the limit, and the connection closes); HEAD is GET
  without the body, for every GET route;
- clients that never finish a request are closed after a deadline, and open connections are capped below the
  file limit (fournil.serve.connections), so idle sockets cannot starve the others; /health counts them;
- SIGTERM stops accepting connections, lets running generations finish, then exits 0 (uvicorn would re-raise
  the signal after its graceful shutdown, which turns a clean exit into "killed by SIGTERM").
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from fournil.console import UsageError
from fournil.lm.prompt import PromptTokenizer
from fournil.lm.sampling import SamplingConfig
from fournil.serve import batching
from fournil.serve.connections import ACCEPT_BATCH, LISTEN_BACKLOG, Connections, connection_cap, error_body

log = logging.getLogger(__name__)

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
MAX_STOP = 4, 1000  # stop strings per request, characters per stop string


@dataclass(kw_only=True)
class ServerSettings:
    """Limits and defaults of one server; the CLI fills it from flags."""

    model_name: str
    api_key: str | None = None
    max_tokens: int = 1024  # the most a request may ask for; also the default when it asks nothing
    max_body_bytes: int = 1 << 20
    temperature: float = 1.0  # OpenAI's default when a request does not say


# --- request bodies (strict types: "5" is not an int; unknown fields are ignored, as OpenAI clients send some) ---

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)  # NaN: "not finite", not "≤ 2"


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="extension: sample among the k most likely tokens (0 = off)")
    min_p: float | None = Field(None, ge=0, lt=1, description="extension")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="extension: CTRL penalty (1 = off)")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="accepted, ignored")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="accepted, ignored")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = Field(False, description="extension: keep generating past end of sequence")
    logprobs: bool | None = None
    user: str | None = None


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] = Field(description="text, a list of one text, or token ids")
    logprobs: int | None = None  # type: ignore[assignment]  # completions take a count, not a flag
    echo: bool | None = False


class ApiError(Exception):
    """A client error with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def _error_response(status: int, message: str, **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(message, **kw), status_code=status)


# --- the app ------------------------------------------------------------------------------------------------------

def create_app(scheduler: batching.Scheduler, tokenizer: PromptTokenizer, settings: ServerSettings,
               connections: Connections | None = None) -> FastAPI:
    """The FastAPI app; the lifespan starts the scheduler thread and, on shutdown, lets it finish and stop.
    `connections`, when given, is reported by /health."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="fournil", version="1", lifespan=lifespan,
                  description="OpenAI-compatible completions and chat completions with continuous batching.")
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, kind=exc.kind, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            param = None
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        else:
            message = f"{param or 'body'}: {first.get('msg', 'invalid request')}"
        return _error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8)
            return _error_response(400, f"unreadable body: {exc.detail}")
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "body_too_large" if exc.status_code == 413 else None
        response = _error_response(exc.status_code, str(exc.detail), kind=kind, code=code)
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # a bug: say so in OpenAI's shape
        log.exception("unexpected error")
        return _error_response(500, f"internal error: {type(exc).__name__}", kind="server_error")

    def model_card() -> dict[str, Any]:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "fournil"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        state = {"status": "ok", "model": settings.model_name, **scheduler.load()}
        return state if connections is None else {**state, "connections": connections.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict[str, Any]:
        _check_model(model, settings)
        return model_card()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("fournil.serve").joinpath("static/chat.html").read_text("utf-8"))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        sampling = _sampling(body, settings)
        messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
        ids = await asyncio.to_thread(_encode_chat, tokenizer, messages)
        return await _respond(scheduler, settings, body, ids, sampling, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        sampling = _sampling(body, settings)
        if body.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        if body.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "one prompt per request (send several requests: they are batched)",
                               param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = await asyncio.to_thread(_encode_text, tokenizer, prompt)
        else:
            ids = list(prompt)  # token ids
            if any(not 0 <= i < scheduler.model.config.vocab_size for i in ids):
                raise ApiError(400, "prompt: token id out of the vocabulary", param="prompt")
        return await _respond(scheduler, settings, body, ids, sampling, chat=False)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, corrected: errors are 400/401/404/413 in OpenAI's shape, not 422; `model` shows the
        one id this server accepts (fuzzers and docs then reach the generation path, not only 404s)."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "properties": {k: {"type": ["string", "null"]}
                                                 for k in ("message", "type", "param", "code")}}}}
            for name in ("ChatRequest", "CompletionRequest"):
                components[name]["properties"]["model"]["examples"] = [settings.model_name]
            error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    if path.startswith("/v1"):
                        responses["401"] = {"description": "missing or wrong API key", **error}
                    if path.startswith("/v1/models/") or operation.get("requestBody"):
                        responses["404"] = {"description": "unknown model", **error}
                    if operation.get("requestBody"):
                        responses["400"] = {"description": "invalid request", **error}
                        responses["413"] = {"description": "body too large", **error}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _check_model(name: str, settings: ServerSettings) -> None:
    if name != settings.model_name:
        raise ApiError(404, f"the model '{name}' does not exist (this server has '{settings.model_name}')",
                       param="model", code="model_not_found")


def _sampling(body: _Generation, settings: ServerSettings) -> SamplingConfig:
    """The request's knobs → SamplingConfig, or a 400 naming the field."""
    _check_model(body.model, settings)
    if body.n not in (None, 1):
        raise ApiError(400, "n > 1 is not supported: send several requests (they are batched)", param="n")
    if body.logprobs is True:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:
        max_tokens = settings.max_tokens
    elif max_tokens > settings.max_tokens:
        raise ApiError(400, f"max_tokens: at most {settings.max_tokens} on this server, got {max_tokens}",
                       param="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP[0]:
        raise ApiError(400, f"stop: at most {MAX_STOP[0]} stop strings", param="stop")
    if any(len(s) > MAX_STOP[1] for s in stop):
        raise ApiError(400, f"stop: at most {MAX_STOP[1]} characters per stop string", param="stop")
    sampling = SamplingConfig(
        max_tokens=max_tokens,
        temperature=settings.temperature if body.temperature is None else body.temperature,
        top_k=body.top_k or 0, top_p=1.0 if body.top_p is None else body.top_p, min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        stop=tuple(stop), seed=body.seed, ignore_eos=bool(body.ignore_eos))
    if problems := sampling.check():
        field, message = problems[0]
        raise ApiError(400, f"{field}: {message}", param=field)
    return sampling


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


def _encode_chat(tokenizer: PromptTokenizer, messages: list[dict[str, str]]) -> list[int]:
    if tokenizer.template is None:
        raise ApiError(400, "this model has no chat template: use /v1/completions", param="messages")
    try:
        return tokenizer.chat(messages)
    except UsageError as exc:  # the template refused the conversation (raise_exception)
        raise ApiError(400, str(exc), param="messages") from exc
    except (UnicodeError, ValueError, TypeError) as exc:  # e.g. lone surrogates the tokenizer cannot encode
        raise ApiError(400, f"messages: cannot tokenise: {exc}", param="messages") from exc


def _encode_text(tokenizer: PromptTokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except (UnicodeError, ValueError, TypeError) as exc:
        raise ApiError(400, f"prompt: cannot tokenise: {exc}", param="prompt") from exc


async def _respond(scheduler: batching.Scheduler, settings: ServerSettings, body: _Generation, ids: list[int],
                   sampling: SamplingConfig, chat: bool) -> Any:
    """Submit to the scheduler; a JSON body when it is done, or an SSE stream of chunks as tokens come."""
    if not ids:
        raise ApiError(400, "the prompt is empty", param="messages" if chat else "prompt")
    if len(ids) >= scheduler.context:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; this server's context is {scheduler.context}",
                       param="messages" if chat else "prompt", code="context_length_exceeded")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[batching.Event] = asyncio.Queue()

    def emit(event: batching.Event) -> None:  # scheduler thread → event loop
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(events.put_nowait, event)

    request = batching.Request(ids, sampling, emit)
    scheduler.submit(request)
    ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    head = {"id": ident, "created": created, "model": settings.model_name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(request, events, head, chat, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, finished = "", None
    try:
        while finished is None:
            event = await events.get()
            if event[0] == "delta":
                text += event[1]
            elif event[0] == "done":
                finished = event
            else:
                raise ApiError(500, event[1], kind="server_error")
    finally:
        if finished is None:
            request.cancelled = True
    reason, usage = finished[1], _usage(*finished[2:])
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": reason}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return {**head, "object": "text_completion", "choices": [choice], "usage": usage}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(request: batching.Request, events: asyncio.Queue[batching.Event], head: dict[str, Any],
                  chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks in OpenAI's format; a client that goes away cancels the request (its slot frees next step)."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                {} if delta is None else {"content": delta}
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        return {**head, "object": obj, "choices": [choice]}

    finished = False
    try:
        if chat:
            yield _sse(chunk(None, None, role=True))
        while True:
            event = await events.get()
            if event[0] == "delta":
                yield _sse(chunk(event[1], None))
                continue
            finished = True
            if event[0] == "error":
                yield _sse(error_body(event[1], kind="server_error"))
            else:
                yield _sse(chunk(None, event[1]))
                if include_usage:
                    yield _sse({**head, "object": obj, "choices": [], "usage": _usage(*event[2:])})
            yield "data: [DONE]\n\n"
            return
    finally:
        if not finished:
            request.cancelled = True


# --- ASGI guard: API key and body size, before anything reads the body ------------------------------------------

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Guard:
    """401 without the API key on /v1/*, 413 for bodies over the limit (from Content-Length, or while reading);
    HEAD reaches the app as GET (uvicorn drops the body of a response to HEAD)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app, self.settings = app, settings
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _unless_answered(send)
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}  # a copy: uvicorn's own scope still says HEAD
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope["path"].startswith("/v1"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _send_json(send, 401, error_body("missing or wrong API key (Authorization: Bearer …)",
                                                       code="invalid_api_key"))
                return
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, error_body("invalid Content-Length header"))
                return
            if int(declared) > limit:
                await _send_json(send, 413, error_body(f"request body over {limit} bytes", code="body_too_large"))
                return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body: FastAPI turns this into our 413, then the connection closes
                    raise HTTPException(413, f"request body over {limit} bytes", headers={"Connection": "close"})
            return message

        await self.app(scope, limited, send)


def _unless_answered(send: Callable[[dict], Awaitable[None]]) -> Callable[[dict], Awaitable[None]]:
    """`send`, but a response the server protocol already answered is dropped, as for a client that went away.

    uvicorn's h11 protocol starts the app as soon as the headers are in, and when the body that follows is malformed
    (a bad chunk size) it answers 400 itself and closes; the app's own response then fails in h11 with
    LocalProtocolError, logged as "Exception in ASGI application" with a traceback for every such request. Only the
    response start is guarded: an error there can only mean the exchange is over; errors in body messages (an app
    sending more than its Content-Length) still surface.
    """
    answered = False

    async def guarded(message: dict) -> None:
        nonlocal answered
        if answered:
            return
        try:
            await send(message)
        except h11.LocalProtocolError:
            if message["type"] != "http.response.start":
                raise
            answered = True
            log.debug("the server already answered this malformed request; dropping the app's response")

    return guarded


async def _send_json(send: Callable[[dict], Awaitable[None]], status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class _Server(uvicorn.Server):
    """uvicorn's server minus re-raising the signal after the graceful shutdown (so SIGTERM exits 0), with a deep
    listen queue although the event loop accepts few sockets per pass (uvicorn sets both from `backlog`)."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                with sock.dup() as listening:  # listen() again on the same socket only resizes its queue
                    listening.listen(LISTEN_BACKLOG)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for running requests
        else:
            self.should_exit = True


def serve(directory: str | Path, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          api_key: str | None = None, slots: int = 16, context: int | None = 1024, max_tokens: int = 1024,
          max_body_bytes: int = 1 << 20, temperature: float = 1.0, dtype: str | None = None,
          shutdown_timeout: float | None = None, threads: int | None = None, log_level: str = "info",
          max_connections: int | None = None, client_timeout: float = 10.0, backend: str = "auto") -> None:
    """Load the model, start the scheduler, serve until SIGTERM/SIGINT, finish running requests, return."""
    import torch

    from fournil.lm.generate import Engine
    from fournil.lm.hf import DTYPES, read_config

    try:
        connections = Connections(connection_cap(max_connections), client_timeout)
    except ValueError as exc:
        raise UsageError(f"--max-connections: {exc}") from exc

    if threads:
        torch.set_num_threads(threads)
    # before loading anything, in the dtype the weights will have; the cache checks again once they are loaded
    config = read_config(directory)
    batching.check_cache(config, slots, min(context or config.max_seq_len, config.max_seq_len),
                         DTYPES[dtype or config.dtype].itemsize)
    engine = Engine.load(directory, dtype=dtype, backend=backend)
    scheduler = batching.Scheduler(engine.model, engine.tokenizer, slots=slots, context=context, backend=backend)
    settings = ServerSettings(model_name=model_name or Path(directory).name, api_key=api_key,
                              max_tokens=max_tokens, max_body_bytes=max_body_bytes, temperature=temperature)
    app = Guard(create_app(scheduler, engine.tokenizer, settings, connections), settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout,
                            lifespan="on", access_log=log_level == "debug", http=connections.protocol(),
                            backlog=ACCEPT_BATCH)
    log.info("serving %s on http://%s:%d (%d slots, context %d, %d connections)%s", settings.model_name, host, port,
             slots, scheduler.context, connections.cap, ", API key required" if api_key else "")
    _Server(config).run()
