"""Text in and out of a model directory: its tokenizer.json, special ids, chat template, streaming detokenisation.

Reads the HF tokenizer files any model directory carries (ours, an imported GGUF's, a transformers one) with the
`tokenizers` library and renders chat templates in a sandboxed Jinja environment, as transformers does, without
importing transformers (it would add seconds to every `fournil generate`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fournil.artifacts import read_json
from fournil.console import UsageError

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class PromptTokenizer:
    """Encode prompts, decode completions, render the chat template, know which ids end a turn."""

    def __init__(self, hf: Any, config: dict[str, Any], eos_ids: Iterable[int] = ()):
        self.hf = hf
        self.config = config
        self.template: str | None = config.get("chat_template") if isinstance(config.get("chat_template"), str) \
            else None
        specials = {name: self._content(config.get(name)) for name in ("bos_token", "eos_token", "pad_token")}
        self.bos_token, self.eos_token, self.pad_token = specials["bos_token"], specials["eos_token"], \
            specials["pad_token"]
        ids = set(eos_ids)
        if self.eos_token is not None and (i := hf.token_to_id(self.eos_token)) is not None:
            ids.add(i)
        self.eos_ids = frozenset(ids)
        pad = hf.token_to_id(self.pad_token) if self.pad_token else None
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self._alone: dict[int, str] = {}  # token id -> its text decoded alone

    @staticmethod
    def _content(token: Any) -> str | None:
        return token.get("content") if isinstance(token, dict) else token

    @classmethod
    def load(cls, directory: str | Path) -> PromptTokenizer:
        """tokenizer.json + tokenizer_config.json (+ chat_template.jinja) + generation_config.json's eos ids."""
        directory = Path(directory)
        hf = read_tokenizer(directory, "copy the tokenizer directory's files into it")
        config = _read_json(directory / "tokenizer_config.json")
        jinja = directory / "chat_template.jinja"
        if jinja.is_file():
            config["chat_template"] = jinja.read_text(encoding="utf-8")
        eos = _read_json(directory / "generation_config.json").get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        return cls(hf, config, eos_ids)

    @functools.cached_property
    def context_tokens(self) -> frozenset[int]:
        """Ids whose text depends on their neighbours: special tokens (skipped when decoding) and byte-fallback
        pieces <0xNN> (a run of them is decoded as one UTF-8 sequence, or all become U+FFFD)."""
        ids = {i for i, token in self.hf.get_added_tokens_decoder().items() if token.special}
        ids |= {i for piece, i in self.hf.get_vocab(with_added_tokens=False).items() if _BYTE_PIECE.fullmatch(piece)}
        return frozenset(ids)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids; `special` adds what the tokenizer's post-processor adds (BOS for Llama-style tokenizers)."""
        return self.hf.encode(text, add_special_tokens=special).ids

    def encode_batch(self, texts: Sequence[str], special: bool = True) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=special)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def alone(self, token: int) -> str:
        """decode([token]), remembered: streaming asks it for every token it prints (a Python call each)."""
        text = self._alone.get(token)
        if text is None:
            text = self._alone[token] = self.decode([token])
        return text

    def chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation rendered with the chat template (which brings its own BOS)."""
        if self.template is None:
            raise UsageError("this model directory has no chat template (tokenizer_config.json chat_template)")
        return self.encode(self.render(messages, add_generation_prompt), special=False)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.template or "").render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except TemplateError as exc:
            raise UsageError(f"chat template failed: {exc}") from exc


class StreamDecoder:
    """Turns a growing list of ids into text deltas; holds back bytes of an unfinished UTF-8 character and any
    tail that may still become a stop string, so what was printed never has to be taken back."""

    def __init__(self, tokenizer: PromptTokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self._stops = StopScanner(self.stop)  # has seen exactly self._done
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (stop string excluded once found)
        self.emitted = 0
        self.stopped = False
        # decoding all ids at every token costs O(length) a token, O(length²) a reply: decode a window that
        # starts at the last plain token instead, and keep what it adds to that token's own text (the same
        # leading-space rule then applies to both; special and byte tokens read differently in context)
        self._done = ""  # the text of ids[:_start + 1]
        self._start = 0
        self._known = ""  # the text of ids[_start] alone

    def push(self, token: int) -> str:
        """Add one token; return the new printable text (possibly empty). Nothing more once a stop string is found."""
        if self.stopped:
            return ""
        self.ids.append(token)
        window = self.tokenizer.decode(self.ids[self._start:])
        if window.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        # only the text after the last plain token is new or may still change: scan it from the state the scanner
        # had there, so a token costs the same whatever the length of the text and of the stop strings
        if window.startswith(self._known):
            text = self._done + window[len(self._known):]
            scan, start = self._stops.copy(), len(self._done)
        else:  # the new token changed how the window's first one reads (not seen): decode everything
            text = self.tokenizer.decode(self.ids)
            scan, start = StopScanner(self.stop), 0
        at = scan.feed(text, start)
        if token not in self.tokenizer.context_tokens:  # a plain token: the next window starts here
            self._done, self._start, self._stops = text, len(self.ids) - 1, scan
            self._known = self.tokenizer.alone(token)
        self.text = text
        if at is not None:
            self.text, self.stopped = text[:at], True
        end = len(self.text) if self.stopped else len(self.text) - scan.held_back()
        delta = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta

    def flush(self) -> str:
        """The held-back rest at the end of generation."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta


class StopScanner:
    """Finds stop strings in a text read once, left to right, in time linear in the text whatever their length.

    For each stop string it keeps how many of its first characters end the text read so far (the longest such
    prefix: Knuth-Morris-Pratt), so a character costs amortised O(1) per string. The failure table is built only
    as far as a match has reached, so a long stop string costs nothing until the text actually follows it.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.matched = [0] * len(self.stops)
        self._fail: list[list[int]] = [[0] for _ in self.stops]  # fail[i][k]: KMP prefix function of stop i at k

    def copy(self) -> StopScanner:
        new = StopScanner.__new__(StopScanner)
        new.stops, new.matched, new._fail = self.stops, list(self.matched), self._fail  # the tables only grow
        return new

    def feed(self, text: str, start: int = 0) -> int | None:
        """Read text[start:]; the index where the first stop string found begins (the one that ends first; of
        those, the longest), or None."""
        if not self.stops:
            return None
        for end in range(start, len(text)):
            char, found = text[end], None
            for i, stop in enumerate(self.stops):
                m, fail = self.matched[i], self._fail[i]
                while m and stop[m] != char:
                    m = fail[m - 1]
                if stop[m] == char:
                    m += 1
                    if m > len(fail):  # the next mismatch may need fail[m - 1]
                        _extend(stop, fail)
                    if m == len(stop):
                        if found is None or m > len(found):
                            found = stop
                        m = fail[m - 1]
                self.matched[i] = m
            if found is not None:
                return end + 1 - len(found)
        return None

    def held_back(self) -> int:
        """Length of the longest tail of the text read that may still become a stop string."""
        return max(self.matched, default=0)


def _extend(stop: str, fail: list[int]) -> None:
    """One more entry of the prefix function: fail[k] = the longest proper prefix of stop[:k+1] that ends it."""
    k, j = len(fail), fail[-1]
    while j and stop[j] != stop[k]:
        j = fail[j - 1]
    fail.append(j + 1 if stop[j] == stop[k] else 0)


def read_tokenizer(path: str | Path, hint: str) -> Any:
    """The `tokenizers.Tokenizer` of a directory holding tokenizer.json, or of the file itself; a UsageError naming
    the path, with `hint` on what to do, when there is none or it is not one."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path}: no tokenizer.json ({hint})")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON or an unknown model
        raise UsageError(f"{file}: not a valid tokenizer.json: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data
