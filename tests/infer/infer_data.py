"""Helpers shared by the infer tests (a uniquely named module: `conftest` names are taken)."""

from __future__ import annotations


def llama_cpp_greedy(path: str, ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation (temperature 0, top-k 1) of `ids`, `n` tokens, no early stop."""
    import llama_cpp

    ll = llama_cpp.Llama(path, verbose=False, n_threads=2, n_ctx=128)
    out = []
    for token in ll.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out
