"""The interactive chat loop: history rendered with the model's chat template every turn, replies streamed.

Reads lines from any text stream (a terminal or a pipe, which is how the tests drive it); `/reset` clears the
history, `/exit` (or end of input) leaves.
"""

from __future__ import annotations

from typing import TextIO

from fournil.lm.generate import Engine
from fournil.lm.sampling import SamplingConfig

HELP = "type a message; /reset clears the conversation, /exit leaves"


def chat_loop(engine: Engine, sampling: SamplingConfig, stdin: TextIO, stdout: TextIO,
              system: str | None = None, prompt: str = "> ") -> list[dict[str, str]]:
    """Run until /exit or end of input; return the final history (for tests and transcripts)."""
    engine.tokenizer.chat([{"role": "user", "content": ""}])  # no template: fail before the first question
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write(prompt)
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = history[:1] if system else []
            stdout.write("(conversation cleared)\n")
            stdout.flush()
            continue
        history.append({"role": "user", "content": text})
        ids = engine.tokenizer.chat(history)
        reply = []
        for delta in engine.stream(ids, sampling):
            reply.append(delta)
            stdout.write(delta)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply).strip()})
    return history
