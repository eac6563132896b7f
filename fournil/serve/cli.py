"""`fournil serve MODEL`: the OpenAI-compatible HTTP server. A stage that is its own verb, as `fournil bake` is."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EPILOG = """\
examples:
  fournil serve out/smol                          (OpenAI API on 127.0.0.1:8000, web chat at /)
  fournil serve out/smol-int8 --host 0.0.0.0 --port 8080 --api-key secret --slots 32
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smol", "messages": [{"role": "user", "content": "Bonjour"}]}'
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import BACKENDS, POSITIVE, backend_option, integer, real, verb

    srv = verb(subparsers, common, "serve", cmd_serve, epilog=EPILOG, dtype="compute dtype for the weights")
    srv.add_argument("model", type=Path, help="model directory (fournil, transformers, imported or quantised)")
    backend_option(srv, tuple(b for b in BACKENDS if b != "inductor"))  # inductor's graphs take no slot rows
    srv.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 = all)")
    srv.add_argument("--port", type=integer(0, 65535), default=8000, help="TCP port")
    srv.add_argument("--api-key", default=os.environ.get("FOURNIL_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on /v1/* (default: $FOURNIL_API_KEY; none = open)")
    srv.add_argument("--model-name", help="model id clients send (default: the directory name)")
    srv.add_argument("--slots", type=POSITIVE, default=16, help="requests decoded together at most (others queue)")
    srv.add_argument("--context", type=POSITIVE, default=1024,
                     help="tokens per slot, prompt + reply (capped by the model's context length)")
    srv.add_argument("--max-tokens-limit", type=POSITIVE, default=1024,
                     help="largest max_tokens a request may ask (and the default when it asks nothing)")
    srv.add_argument("--max-body-bytes", type=POSITIVE, default=1 << 20, help="larger request bodies get 413")
    srv.add_argument("--temperature", type=real(0, 2), default=1.0, help="default temperature (OpenAI's is 1)")
    srv.add_argument("--shutdown-timeout", type=real(0), default=None,
                     help="seconds to wait for running requests on SIGTERM (default: until they finish)")
    srv.add_argument("--threads", type=integer(1, 1024), default=None, help="torch CPU threads (default: torch's choice)")
    srv.add_argument("--max-connections", type=integer(1, 1 << 20), default=None,
                     help="open client connections at most; over it the longest-silent idle one is closed "
                          "(default: what the file limit, ulimit -n, allows)")
    srv.add_argument("--client-timeout", type=real(0, 3600, low_open=True), default=10.0,
                     help="seconds a client has to send a request's headers, and at most between two reads of its "
                          "body; then 408 and the connection closes")


def cmd_serve(args: argparse.Namespace) -> None:
    """OpenAI-compatible HTTP server (continuous batching) with a web chat page

    FastAPI + uvicorn: /v1/chat/completions, /v1/completions (SSE streaming), /v1/models, /health and a
    chat page at /. Concurrent requests share one decode batch (they join and leave it between steps).
    SIGTERM stops accepting, finishes running generations and exits 0."""
    from fournil.infer.cli import huge_pages

    huge_pages()
    from fournil.serve.server import serve

    serve(args.model, host=args.host, port=args.port, model_name=args.model_name, api_key=args.api_key or None,
          slots=args.slots, context=args.context, max_tokens=args.max_tokens_limit,
          max_body_bytes=args.max_body_bytes, temperature=args.temperature, dtype=args.dtype,
          shutdown_timeout=args.shutdown_timeout, threads=args.threads, max_connections=args.max_connections,
          client_timeout=args.client_timeout, backend=args.backend, log_level="warning" if args.quiet else "debug" if args.verbose else "info")
