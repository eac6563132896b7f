"""Multiple-choice log-likelihood requests/s and greedy generation tokens/s: `fournil eval` vs lm-eval's `hf` model.

Same checkpoint (the croissant-10m recipe, random weights, with a small fournil tokenizer), same local data and
task definitions, same threads, in one process; the model is loaded once per side and each side is timed over
the whole task (prompt building, batching, scoring), alternating for a few rounds; the medians are reported, and
each round's ratio. Data: FrenchBench-schema documents built from the embedded sample corpus: hellaswag-style at
0-shot; at 5-shot arc-style (lm-eval's seeded random sampler: different examples per document) and grammar-style
(FrenchBench's `first_n` sampler, as 14 of its tasks: every document repeats the same examples, a shared prefix);
and fquadv2-style generation capped at 32 tokens (a random model never stops on its own).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

N_DOCS, GEN_DOCS, GEN_TOKENS, SHOTS, ROUNDS = 40, 12, 32, 5, 3


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _data(root: Path) -> None:
    from fournil.corpus import iter_sample

    rng = random.Random(0)
    sentences = [s.strip() + "." for r in iter_sample("fr") for s in r["text"].split(".") if 30 < len(s) < 160]
    sentences = sentences[:5000]
    pick = lambda: rng.choice(sentences)  # noqa: E731
    hs = [{"activity_label": "Texte", "ctx_a": pick(), "ctx_b": "", "endings": [pick() for _ in range(4)],
           "label": str(rng.randrange(4))} for _ in range(N_DOCS)]
    _write(root / "french_bench_hellaswag" / "validation.jsonl", hs)
    arc = [{"question": pick(), "choices": [pick()[:40] for _ in range(4)], "answerKey": rng.choice("ABCD")}
           for _ in range(N_DOCS)]
    for split in ("test", "train", "validation"):
        _write(root / "french_bench_arc_challenge" / f"{split}.jsonl", arc)
    fq = [{"context": " ".join(pick() for _ in range(3)), "question": pick(), "is_impossible": False,
           "answers": {"text": [pick()[:20]], "answer_start": [0]}} for _ in range(GEN_DOCS)]
    for split in ("test", "valid"):
        _write(root / "french_bench_fquadv2" / f"{split}.jsonl", fq)
    grammar = []
    for _ in range(N_DOCS):
        words = pick().rstrip(".").split()
        k = rng.randrange(len(words))
        options = [words[k]] + [rng.choice(pick().split()).strip(".,") for _ in range(3)]
        rng.shuffle(options)
        grammar.append({"question": " ".join([*words[:k], "<...>", *words[k + 1:]]) + ".",
                        **{f"answer{c}": o for c, o in zip("ABCD", options, strict=True)},
                        "answer": "ABCD"[options.index(words[k])]})
    _write(root / "french_bench_grammar_vocab_reading" / "Grammar.jsonl", grammar)


def _model(root: Path) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eval"))
    from eval_fixtures import build_model_dir

    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama
    from fournil.recipe import load_recipe

    directory = build_model_dir(root / "model")  # its tokenizer; the weights are replaced below
    torch.manual_seed(0)
    save_model(Llama(load_recipe("croissant-10m").model), directory)
    return directory


def run() -> list[dict]:
    torch.set_num_threads(int(os.environ.get("FOURNIL_BENCH_THREADS", min(2, os.cpu_count() or 1))))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from fournil.eval import lmeval
    from fournil.eval.engine import Engine
    from fournil.eval.runner import evaluate
    from fournil.eval.tasks import TASKS

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf-datasets")
        data = root / "data"
        _data(data)
        model_dir = _model(root)
        ours = Engine(model_dir, device="cpu")
        theirs = HFLM(pretrained=str(model_dir), device="cpu", batch_size=32, dtype="float32")
        cases = [("french_bench_hellaswag", 0, "MC loglik 0-shot (hellaswag-style)"),
                 ("french_bench_arc_challenge", SHOTS, f"MC loglik {SHOTS}-shot (arc-style, random shots)"),
                 ("french_bench_grammar", SHOTS, f"MC loglik {SHOTS}-shot (grammar-style, first_n)"),
                 ("french_bench_fquadv2", 0, "greedy generation (fquadv2-style)")]
        manager = lmeval.task_manager()
        for name, shots, label in cases:
            task = TASKS[name]
            gen = task.kind == "gen"
            group = {"group": "bench", "task": [lmeval.task_entry(task, data, GEN_TOKENS)]}
            ours_s, theirs_s = [], []
            for i in range(ROUNDS):  # alternate, so that load from other processes hits both alike
                start = time.perf_counter()
                result = evaluate(ours, task, data, root / f"out-{name}-{i}", num_fewshot=shots,
                                  max_gen_tokens=GEN_TOKENS)
                ours_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                simple_evaluate(model=theirs, tasks=[group], num_fewshot=shots, task_manager=manager,
                                log_samples=False, bootstrap_iters=0)
                theirs_s.append(time.perf_counter() - start)
            work = result["n"] * (GEN_TOKENS if gen else 4)  # requests (4 choices each) or generated tokens
            rows.append({"name": f"eval {label}", "ours": work / statistics.median(ours_s),
                         "anchor": work / statistics.median(theirs_s), "unit": "tok/s" if gen else "req/s",
                         "rounds": [round(t / o, 2) for o, t in zip(ours_s, theirs_s, strict=True)]})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<48} ours {row['ours']:>10,.1f}  lm-eval {row['anchor']:>10,.1f} {row['unit']:<6}"
              f" ratio {row['ours'] / row['anchor']:.2f}x  (per round: {row['rounds']})")
