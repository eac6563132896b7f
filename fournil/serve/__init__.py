"""Serve stage: an OpenAI-compatible HTTP server (server.py) over a continuous-batching scheduler (batching.py),
its connection handling (connections.py) and a web chat page (static/chat.html), running a runtime `Engine`
(fournil.lm). Imported lazily so that `fournil --help` does not pay for torch."""

from fournil.lazy import lazy_api

__all__, __getattr__ = lazy_api(__name__, {".batching": "Scheduler", ".server": "create_app serve"})
