"""Agreement with lm-eval 0.4.13's own task definitions (its `hf` model) on the same model and local files.

The model is a fournil directory, so this also proves lm-eval's `hf` model loads it. Every task lm-eval can run
offline is compared: aggregate scores within 0.5 points, and per-document log-likelihoods and generations.
"""

import json
import os

import pytest
from eval_fixtures import DATA

from fournil.eval.runner import evaluate
from fournil.eval.tasks import TASKS

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

OFFLINE = [t for t in TASKS.values() if t.upstream and "rouge1" not in t.metrics]
FEWSHOT = ["french_bench_arc_challenge", "french_bench_hellaswag", "french_bench_grammar", "french_bench_xnli",
           "belebele_fra_Latn", "piqa", "arc_easy", "french_bench_fquadv2"]


@pytest.fixture(autouse=True)
def _hermetic_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def compare(engine, model_dir, tasks, shots, tmp_path):
    from fournil.eval import lmeval

    theirs_samples: dict[str, list] = {}
    theirs = lmeval.run(model_dir, tasks, DATA, num_fewshot=shots, batch_size=8, max_gen_tokens=8,
                        samples=theirs_samples)
    for task in tasks:
        ours = evaluate(engine, task, DATA, tmp_path, num_fewshot=shots, max_gen_tokens=8)
        for metric, value in ours["metrics"].items():
            assert value == pytest.approx(theirs[task.name][metric], rel=1e-4, abs=0.005), (task.name, metric)
        rows = [json.loads(line) for line in (tmp_path / "samples" / f"{task.name}.jsonl").read_text().splitlines()]
        if task.kind == "mc":
            for row, their in zip(rows, theirs_samples[task.name], strict=True):
                assert row["lls"] == pytest.approx(their, abs=2e-3), task.name
        elif task.kind == "gen":
            assert [r["output"] for r in rows] == theirs_samples[task.name], task.name
        elif task.kind == "ppl":
            assert [r["ll"] for r in rows] == pytest.approx(theirs_samples[task.name], abs=2e-3), task.name


def test_zero_shot_scores_equal_lm_eval(engine, model_dir, tmp_path):
    assert len(OFFLINE) == 16  # 22 lm-eval tasks minus the 6 whose ROUGE needs the hub
    compare(engine, model_dir, OFFLINE, 0, tmp_path)


def test_two_shot_prompts_and_samplers_equal_lm_eval(engine, model_dir, tmp_path):
    compare(engine, model_dir, [TASKS[n] for n in FEWSHOT], 2, tmp_path)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
