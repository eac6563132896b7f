"""Agreement with lm-eval 0.4.13's own task definitions (its `hf` model) on the same model and local files.

The model is a fournil directory, so this also proves lm-eval's `hf` model loads it. Every task is compared:
aggregate scores within 0.5 points, and per-document log-likelihoods and generations. The six ROUGE tasks run
with `lmeval.LocalRouge` standing in for `evaluate.load("rouge")`, which needs the hub.
"""

import json
import os

import pytest
from eval_fixtures import DATA

from fournil.eval.runner import evaluate
from fournil.eval.tasks import TASKS

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

OFFLINE = [t for t in TASKS.values() if t.upstream]
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
    assert len(OFFLINE) == 22 and sum("rouge1" in t.metrics for t in OFFLINE) == 6
    compare(engine, model_dir, OFFLINE, 0, tmp_path)


def test_two_shot_prompts_and_samplers_equal_lm_eval(engine, model_dir, tmp_path):
    compare(engine, model_dir, [TASKS[n] for n in FEWSHOT], 2, tmp_path)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


@pytest.mark.parametrize("name", ["french_bench_orangesum_abstract", "french_bench_orangesum_title"])
def test_rouge_equals_lm_evals_aggregation_on_real_summaries(name):
    """The tiny model's summaries share no word with the references (ROUGE 0 on both sides above), so the ROUGE
    path is also checked on a lead-sentence baseline, through lm-eval's own `rouge1_agg` and the stand-in."""
    import numpy as np
    from lm_eval.tasks.french_bench import utils
    from rouge_score import rouge_scorer

    from fournil.eval import lmeval, metrics

    docs = [json.loads(line) for line in (DATA / name / "test.jsonl").read_text().splitlines()]
    preds, refs = [d["text"].split(".")[0] + "." for d in docs], [d["summary"] for d in docs]
    ours = metrics.rouge1(preds, refs)
    assert 0.2 < ours < 0.8
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    per_example = lmeval.LocalRouge().compute(predictions=preds, references=refs, use_aggregator=False)
    assert per_example["rouge2"] == [scorer.score(r, p)["rouge2"].fmeasure for p, r in zip(preds, refs, strict=True)]
    assert sum(per_example["rouge1"]) / len(docs) == pytest.approx(ours, abs=1e-12)
    np.random.seed(1234)  # lm-eval's default seed; the aggregation is a bootstrap median
    with lmeval.local_hub_metrics():
        theirs = utils.rouge1_agg(list(zip(refs, preds, strict=True)))  # lm-eval's items are (reference, prediction)
    assert theirs == pytest.approx(ours, abs=0.005)
