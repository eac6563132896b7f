"""The tokenizer itself: one Hugging Face `tokenizers` pipeline, SentencePiece-equivalent by construction.

Pipeline: spaces become "▁" and one "▁" starts the text (SentencePiece's whitespace escaping and dummy prefix),
split before every "▁" (Metaspace), isolate newline runs and each digit, then BPE with byte fallback. Pieces never cross those boundaries, so SentencePiece's score-driven BPE over the whole string lands on
the same pieces — provided the merge table is *complete* (every pair whose concatenation is a piece, ranked by
that piece's id), which is what `complete_merges` builds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from fournil.lm.prompt import read_tokenizer
from fournil.tokenizer.config import CHATML, N_BYTES, SPECIALS

SPACE = "▁"  # U+2581, SentencePiece's visible space
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(N_BYTES))


def set_pipeline(tok: HFTokenizer) -> None:
    """Normalizer, pre-tokenizer and decoder shared by training and encoding (see the module docstring)."""
    # Metaspace only adds the dummy "▁" when the text does not already start with one (after turning spaces into
    # "▁"); doubling a leading space or "▁" gives SentencePiece's unconditional prefix, so " x" keeps its space.
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\A "), "  "),
                                           normalizers.Replace(Regex(f"\\A{SPACE}"), SPACE * 2)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True),
        pre_tokenizers.Split(Regex("\n+"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])


def complete_merges(pieces: Sequence[str]) -> list[tuple[str, str]]:
    """Every split (a, b) of a piece into two pieces, ranked by the piece's position in `pieces`.

    SentencePiece merges any adjacent pair whose concatenation is in the vocabulary, highest score first; a trained
    merge list only holds the pairs the trainer happened to take. Listing them all makes HF BPE take the same steps.
    """
    known = set(pieces)
    merges = []
    for piece in pieces:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in known and right in known:
                merges.append((left, right))
    return merges


def build(specials: Sequence[str], pieces: Sequence[str]) -> HFTokenizer:
    """The final tokenizer: ids are specials, then the 256 byte pieces, then the learned pieces in order."""
    vocab = [*specials, *BYTE_PIECES, *pieces]
    ids = {piece: i for i, piece in enumerate(vocab)}
    if len(ids) != len(vocab):
        raise ValueError("duplicate pieces in the vocabulary")
    model = models.BPE(ids, complete_merges(pieces), unk_token=SPECIALS[0], byte_fallback=True, fuse_unk=True)
    tok = HFTokenizer(model)
    set_pipeline(tok)
    # normalized=True: the text is normalized as a whole before specials are cut out, so the leading-space rule
    # applies once per text, not once per piece between specials.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=True) for s in specials])
    bos = SPECIALS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])])
    return tok


class Tokenizer:
    """Thin, fast wrapper over a `tokenizers.Tokenizer`: ids without BOS unless asked, named special ids."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.unk_id, self.bos_id, self.eos_id, self.pad_id = (hf.token_to_id(s) for s in SPECIALS)
        self.im_start_id, self.im_end_id = (hf.token_to_id(s) for s in CHATML)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A tokenizer directory (with tokenizer.json) or the tokenizer.json file itself."""
        return cls(read_tokenizer(path, "train one with `fournil tokenizer train`"))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Iterable[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Parallel over texts (the Rust thread pool); the fast path for packing a corpus."""
        out = [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]
        if bos or eos:
            head, tail = [self.bos_id] * bos, [self.eos_id] * eos
            out = [head + ids + tail for ids in out]
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def pieces(self, text: str) -> list[str]:
        return self.hf.encode(text, add_special_tokens=False).tokens

    def id_to_piece(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def piece_to_id(self, piece: str) -> int | None:
        return self.hf.token_to_id(piece)

    def vocab(self) -> list[str]:
        """Pieces in id order."""
        by_id = sorted(self.hf.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        return [piece for piece, _ in by_id]

    def specials(self) -> list[str]:
        """Added (special) tokens in id order."""
        return [t.content for _, t in sorted(self.hf.get_added_tokens_decoder().items())]

    def to_json(self) -> str:
        return self.hf.to_str()

    def fingerprint(self) -> str:
        """sha256 of tokenizer.json's canonical text: shards record it so a mismatched tokenizer is caught."""
        return fingerprint(self.to_json())


def fingerprint(tokenizer_json: str) -> str:
    """sha256 of a tokenizer.json's canonical form (sorted keys): equal for equal tokenizers, however written."""
    return hashlib.sha256(json.dumps(json.loads(tokenizer_json), sort_keys=True).encode()).hexdigest()
