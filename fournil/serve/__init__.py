"""Serve stage: an OpenAI-compatible HTTP server (server.py) over a continuous-batching scheduler (batching.py),
its connection handling (connections.py) and a web chat page (static/chat.html). It runs an infer `Engine`.

Public API: `Scheduler`, `create_app`, `serve`. Imported lazily so that `fournil --help` does not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "Scheduler": "fournil.serve.batching",
    "create_app": "fournil.serve.server",
    "serve": "fournil.serve.server",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
