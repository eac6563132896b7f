"""The tokenizer's training knobs: a flat, kw-only dataclass (pure data, no heavy imports).

Defaults follow CroissantLLM (arXiv 2402.00786, §3.2): a 32 000-piece BPE vocabulary trained on a balanced
French/English mix, with byte fallback and digits split one by one, Llama-style special ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3: unk, bos, eos, pad (the model config's bos=1, eos=2)
CHATML = ("<|im_start|>", "<|im_end|>")  # ids 4, 5: chat fine-tuning turns
N_BYTES = 256  # byte-fallback pieces <0x00>…<0xFF>: every string is encodable, no <unk> ever


@dataclass(kw_only=True)
class TokenizerConfig:
    """A bilingual byte-fallback BPE tokenizer and the mix of text it is trained on."""

    vocab_size: int = 32000  # every id: specials + reserved + 256 bytes + learned pieces
    weights: dict[str, float] = field(default_factory=lambda: {"fr": 1.0, "en": 1.0})  # share of training text per category; 1:1 FR:EN as the paper
    n_reserved: int = 10  # <|reserved_0|>… after the ChatML tokens: ids kept free for later fine-tuning formats
    min_frequency: int = 2  # a pair seen fewer times is never merged
    max_piece_length: int = 16  # characters; SentencePiece's default max_sentencepiece_length
    limit_alphabet: int = 1000  # most frequent characters kept as pieces; rarer ones fall back to bytes
    max_chars: int | None = None  # total training characters sampled across categories; None = all the weights allow
    seed: int = 0  # document sampling; the same seed and input give byte-identical tokenizer.json

    @property
    def specials(self) -> list[str]:
        """Special tokens in id order."""
        return [*SPECIALS, *CHATML, *(f"<|reserved_{i}|>" for i in range(self.n_reserved))]

    @property
    def min_vocab_size(self) -> int:
        """Specials + reserved + the byte alphabet + at least one learned piece (▁)."""
        return len(SPECIALS) + len(CHATML) + max(self.n_reserved, 0) + N_BYTES + 1

    def check(self) -> list[tuple[str, str]]:
        """Cross-field rules; each problem names the field to fix."""
        problems = []
        if self.n_reserved < 0:
            problems.append(("n_reserved", f"must be >= 0, got {self.n_reserved}"))
        if self.vocab_size < self.min_vocab_size:
            problems.append(("vocab_size", f"{self.vocab_size} is smaller than the {N_BYTES} byte pieces + "
                             f"{self.min_vocab_size - N_BYTES - 1} special tokens + 1; use at least {self.min_vocab_size}"))
        if not isinstance(self.weights, dict) or not self.weights:
            problems.append(("weights", "expected a non-empty mapping category → weight, e.g. {fr: 1, en: 1}"))
        else:
            for name, weight in self.weights.items():
                if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                    problems.append((f"weights.{name}", f"must be a number >= 0, got {weight!r}"))
            if not any(isinstance(w, int | float) and w > 0 for w in self.weights.values()):
                problems.append(("weights", "at least one category needs a weight > 0"))
        for name in ("min_frequency", "max_piece_length", "limit_alphabet"):
            if getattr(self, name) < 1:
                problems.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if self.max_chars is not None and self.max_chars < 1:
            problems.append(("max_chars", f"must be >= 1 or null, got {self.max_chars}"))
        if not 0 <= self.seed < 2**64:
            problems.append(("seed", f"must be in [0, 2^64), got {self.seed}"))
        return problems
