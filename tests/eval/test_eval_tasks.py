"""Prompts, answer extraction, metrics and data errors, pinned on the fixtures in data/."""

import json
import math
import random

import pytest
from eval_fixtures import DATA

from fournil.console import UsageError
from fournil.eval import metrics
from fournil.eval.data import read_split
from fournil.eval.runner import build_context, fewshot_pool, load_documents, pick_shots
from fournil.eval.tasks import GROUPS, TASKS, resolve_tasks


def test_every_task_reads_its_fixture_and_builds_prompts():
    for task in TASKS.values():
        docs = load_documents(task, DATA, None)
        assert 4 <= len(docs) <= 20, task.name
        for doc in docs:
            context = build_context(task, doc, [])
            if task.kind == "mc":
                assert 0 <= task.target(doc) < len(task.choices(doc))
            elif task.kind == "gen":
                assert context.strip() and task.target_text(doc).strip()
            elif task.kind == "translation":
                assert context.endswith(("\nFrench:", "\nEnglish:"))


def test_grammar_prompt_one_shot_is_lm_evals():
    task = TASKS["french_bench_grammar"]
    docs = load_documents(task, DATA, None)
    shots = pick_shots(task, docs[1], fewshot_pool(task, DATA), 1, random.Random(0))
    assert shots == [docs[0]]  # first_n, the document itself left out
    assert build_context(task, docs[1], shots) == (
        "Répond au mieux en complétant la question avec une des réponses proposées."
        "La phrase suivante est correcte grammaticalement:\n Les enfants jouent dans le jardin.\n\n"
        "La phrase suivante est correcte grammaticalement:\n")
    assert task.choices(docs[1])[task.target(docs[1])] == "Hier, nous sommes allés au cinéma."


def test_fquad_no_answer_target_and_hellaswag_preprocessing():
    fquad = TASKS["french_bench_fquadv2"]
    docs = load_documents(fquad, DATA, None)
    assert [fquad.target_text(d) for d in docs if d["is_impossible"]] == ["Impossible"] * 2
    assert metrics.exact("impossible.", "['Impossible']") == metrics.exact("impossible.", "Impossible") == 1.0
    hs = TASKS["french_bench_hellaswag"]
    first = load_documents(hs, DATA, 1)
    assert first[0]["query"] == "Cuisine: Une femme casse des œufs dans un bol. Elle"
    assert first[0]["choices"][3] == "chante une chanson. au micro."  # " [title]" → ". " as upstream


def test_wikitext_detokenised_but_counted_on_the_original():
    task = TASKS["french_bench_wikitext_fr"]
    docs = load_documents(task, DATA, None)
    assert task.ppl_text(docs[1]).startswith("Lyon est une ville") is False  # the leading space stays
    assert "522,000 habitants (2020)." in task.ppl_text(docs[1])
    # 25 words plus the empty pieces before the leading space and after "\n": upstream's re.split count
    assert metrics.count_words(task.ppl_counted(docs[1])) == 27


def test_squad_style_french_metrics():
    assert metrics.normalize_answer("  La Seine, le fleuve!") == "seine fleuve"
    assert metrics.exact("la Seine", "Seine") == 1.0
    # "le" is an article, "du" is not: 4 predicted tokens, 5 gold, 4 shared
    assert metrics.f1("le pain et du café", "du pain et du café") == pytest.approx(2 * 1 * 0.8 / 1.8)
    assert metrics.f1("", "") == 1.0 and metrics.f1("x", "") == 0.0
    assert metrics.is_included("je pense que c'est Paris.", "Paris") == 1.0
    assert metrics.rouge1(["le chat dort"], ["le chat mange"]) == pytest.approx(2 / 3)


def test_accuracy_and_length_normalised_accuracy():
    scores = metrics.multiple_choice([-4.0, -6.0], ["ab", "abcdef"], gold=1)
    assert scores == {"acc": 0.0, "acc_norm": 1.0}  # -6/6 = -1 beats -4/2 = -2
    assert metrics.multiple_choice([-1.0, -1.0], ["a", "a"], gold=0)["acc"] == 1.0  # ties: the first, as argmax


def test_perplexities_weighted_as_lm_eval():
    p = metrics.perplexities([-10.0, -20.0], [5, 10], [20, 40])
    assert p["word_perplexity"] == pytest.approx(math.exp(30 / 15))
    assert p["byte_perplexity"] == pytest.approx(math.exp(30 / 60))
    assert p["bits_per_byte"] == pytest.approx(0.5 / math.log(2))


def test_translation_scores_and_signatures():
    refs = ["Le chat dort sur le canapé.", "Il pleut depuis ce matin."]
    perfect = metrics.translation_scores(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    partial = metrics.translation_scores(["Le chat dort.", "Il pleut."], refs)
    assert 0 < partial["chrf"] < 100
    assert partial["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert partial["signature"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")


def test_random_sampler_follows_lm_evals_generator():
    """n + 1 drawn, the document dropped (piqa: fewshot and test splits both unset upstream)."""
    task = TASKS["piqa"]
    docs = load_documents(task, DATA, None)
    pool = fewshot_pool(task, DATA)
    rng = random.Random(1234)
    goals = [[s["goal"] for s in pick_shots(task, d, pool, 2, rng)] for d in docs]
    assert goals[2] == ["How do you water a plant?", "How do you boil an egg?"]
    assert all(d["goal"] not in g for d, g in zip(docs, goals, strict=True))


def test_groups_and_unknown_names():
    assert [t.name for t in resolve_tasks("french_bench_mc")] == GROUPS["french_bench_mc"]
    assert len(resolve_tasks("all")) == len(TASKS) == 24
    with pytest.raises(UsageError, match="did you mean 'french_bench_vocab'"):
        resolve_tasks("french_bench_vocabb")


def test_missing_field_empty_file_and_missing_file_are_clear(tmp_path):
    (tmp_path / "french_bench_trivia").mkdir()
    path = tmp_path / "french_bench_trivia" / "train.jsonl"
    path.write_text(json.dumps({"Question": "Capitale ?", "Answer": "Paris"}) + "\n" + json.dumps({"Question": "x"}))
    with pytest.raises(UsageError, match=r"train.jsonl: record 2 lacks field\(s\) Answer"):
        read_split(tmp_path, "french_bench_trivia", "train", ("Question", "Answer"))
    path.write_text("\n")
    with pytest.raises(UsageError, match="no records"):
        read_split(tmp_path, "french_bench_trivia", "train", ("Question",))
    path.write_text('{"Question": \n')
    with pytest.raises(UsageError, match=r"train\.jsonl:1: not valid JSON"):
        read_split(tmp_path, "french_bench_trivia", "train")
    with pytest.raises(UsageError, match="fournil eval fetch"):
        read_split(tmp_path, "french_bench_xnli", "test")


def test_eval_config_names_every_bad_field():
    from fournil.eval.config import EvalConfig

    assert EvalConfig().check() == []
    problems = dict(EvalConfig(tasks=["french_bench_mcq"], limit=0, num_fewshot=-1, batch_tokens=0).check())
    assert set(problems) == {"tasks", "limit", "num_fewshot", "batch_tokens"}
    assert "french_bench_mcq" in problems["tasks"]
