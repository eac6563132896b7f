"""Helpers shared by the infer tests (a uniquely named module: `conftest` names are taken)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Prose in both languages, for teacher-forced comparisons (logits, perplexity) with llama.cpp
TEXT = ("La boulangerie du village ouvre à sept heures. Chaque matin, le boulanger prépare des croissants, des "
        "baguettes et des pains au chocolat ; les habitants font la queue devant la porte avant même l'ouverture. "
        "Le samedi, il y a aussi un marché sur la place de l'église.\n\n"
        "The village bakery opens at seven o'clock. Every morning, the baker makes croissants, baguettes and "
        "chocolate rolls, and people queue at the door before it even opens. On Saturdays there is also a market "
        "on the square in front of the church.")


def llama_cpp_greedy(path: str, ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation (temperature 0, top-k 1) of `ids`, `n` tokens, no early stop."""
    import llama_cpp

    ll = llama_cpp.Llama(path, verbose=False, n_threads=2, n_ctx=128)
    with contextlib.closing(ll):
        out = []
        for token in ll.generate(ids, temp=0.0, top_k=1, reset=True):
            out.append(token)
            if len(out) == n:
                break
        return out


def llama_cpp_logits(path: str, ids: list[int]) -> torch.Tensor:
    """llama.cpp's next-token logits at every position of `ids` (teacher forcing), [len(ids), vocab]."""
    import llama_cpp

    ll = llama_cpp.Llama(path, verbose=False, n_threads=2, n_ctx=max(128, len(ids)), logits_all=True)
    with contextlib.closing(ll):
        ll.eval(ids)
        return torch.tensor(ll.scores[:len(ids)]).float()


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    """exp(mean NLL of ids[1:]) from the logits at every position of ids."""
    return torch.exp(F.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]))).item()
