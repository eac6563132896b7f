"""The tasks: FrenchBench (arXiv 2402.00786 §5), Belebele fra_Latn, an English sanity set and translation.

Prompts, splits, answer extraction and metrics follow lm-eval 0.4.13's `french_bench`, `belebele`, `hellaswag`,
`arc` and `piqa` task definitions, so that scores agree with lm-eval on the same data. The prompt is
description + few-shot examples (text + target delimiter + answer + "\\n\\n" each) + the document's text; the
description is joined with no separator, as lm-eval does.

Each task names the dataset folder it reads (`DATA/<dataset>/<split>.jsonl`), the hub dataset a snapshot comes
from, and the fields every record must carry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fournil.console import UsageError

Doc = dict[str, Any]
LETTERS = ["A", "B", "C", "D"]


@dataclass(frozen=True, kw_only=True)
class Task:
    """One benchmark: where its data lives, how a document becomes a prompt, how it is scored."""

    name: str
    kind: Literal["mc", "gen", "ppl", "translation"]
    language: Literal["fr", "en"]
    dataset: str  # folder under the data directory
    hub: tuple[str, str | None]  # (hub dataset id, config name) for `fournil eval fetch`
    eval_split: str
    fewshot_split: str | None = None
    test_split: str | None = None  # lm-eval's test split (its YAML names it; lm-eval needs the file)
    # lm-eval leaves the document out of its own few-shot examples only when the YAML's fewshot_split equals its
    # test_split (both unset counts): grammar, vocab, reading_comp, trivia, belebele, hellaswag, piqa
    exclude_self: bool = False
    fields: tuple[str, ...] = ()
    sampler: Literal["first_n", "random"] = "first_n"
    description: str = ""
    text: Callable[[Doc], str] = lambda doc: ""
    choices: Callable[[Doc], list[str]] | None = None
    target: Callable[[Doc], Any] = lambda doc: ""
    metrics: tuple[str, ...] = ()
    until: tuple[str, ...] = ("\n",)
    max_tokens: int = 256  # lm-eval's max_gen_toks
    process: Callable[[Doc], Doc] | None = None
    ppl_text: Callable[[Doc], str] | None = None  # perplexity: the text scored
    ppl_counted: Callable[[Doc], str] | None = None  # perplexity: the text whose words/bytes are counted
    primary: str = ""  # the metric reports compare
    default_fewshot: int = 0  # lm-eval's default for every task here; translation uses 5 shots

    @property
    def upstream(self) -> str | None:
        """The lm-eval task of the same name, prompt and metrics (translation has none)."""
        return None if self.kind == "translation" else self.name

    def target_text(self, doc: Doc) -> str:
        target = self.target(doc)
        return self.choices(doc)[target] if self.choices is not None else str(target)


# ---- FrenchBench helpers ----

def _hellaswag_clean(text: str) -> str:
    """WikiHow artifacts removed as lm-eval's hellaswag preprocessing does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_doc(doc: Doc) -> Doc:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {**doc, "query": _hellaswag_clean(doc["activity_label"] + ": " + context),
            "choices": [_hellaswag_clean(e) for e in doc["endings"]], "gold": int(doc["label"])}


def _fill(doc: Doc, append: bool = False) -> list[str]:
    """The question with each answer in place of '<...>' (or after it, for reading comprehension)."""
    q = doc["question"]
    out = []
    for letter in LETTERS:
        answer = doc["answer" + letter]
        out.append(q.replace("<...>", answer) if "<...>" in q or not append else q + " " + answer)
    return out


def _answer_index(doc: Doc) -> int:
    return LETTERS.index(doc["answer"])


def _fquad_answer(doc: Doc) -> str:
    texts = doc["answers"]["text"]
    # upstream's target is the list ['Impossible']: a few-shot answer shows its first item, and scoring compares
    # against its str(), which normalises (punctuation dropped) to the same "impossible"
    return texts[0] if len(texts) > 0 else "Impossible"


def _wikitext_detokenize(text: str) -> str:
    """Undo wikitext's tokenisation (same rules as lm-eval's french_bench wikitext task)."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        text = text.replace(a, b)
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" ° ", "°"), (" \n", "\n"), ("\n ", "\n"),
                 (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(a, b)
    return text


FQUAD_FIELDS = ("context", "question", "answers", "is_impossible")
GVR = "french_bench_grammar_vocab_reading"
ANSWER_FR = "D'après l'information dans le contexte donné, donne la réponse à la question en citant quelques mots " \
            "du contexte. Si il est impossible de répondre avec les informations du contexte, répond 'Impossible'."
MC = ("acc", "acc_norm")


def _fquad_gen(name: str, test: str, valid: str, metrics: tuple[str, ...]) -> Task:
    return Task(
        name=name, kind="gen", language="fr", dataset="french_bench_fquadv2", hub=("manu/fquad2_test", None),
        eval_split=test, fewshot_split=valid, test_split=test, fields=FQUAD_FIELDS, description=ANSWER_FR,
        text=lambda d: f"\nContexte: {d['context']}\n\nQuestion: {d['question']}\n\nRéponse:",
        target=_fquad_answer, metrics=metrics, primary="f1")


TASKS: dict[str, Task] = {t.name: t for t in [
    Task(name="french_bench_arc_challenge", kind="mc", language="fr", dataset="french_bench_arc_challenge",
         hub=("manu/french_bench_arc_challenge", None), eval_split="test", fewshot_split="train", test_split="test",
         sampler="random", fields=("question", "choices", "answerKey"),
         text=lambda d: f"Question: {d['question']}\nRéponse:", choices=lambda d: list(d["choices"]),
         target=lambda d: LETTERS.index(d["answerKey"]), metrics=MC, primary="acc_norm"),
    Task(name="french_bench_hellaswag", exclude_self=True, kind="mc", language="fr", dataset="french_bench_hellaswag",
         hub=("manu/french_bench_hellaswag", None), eval_split="validation", fewshot_split="validation",
         sampler="random", fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"), process=_hellaswag_doc,
         text=lambda d: d["query"], choices=lambda d: d["choices"], target=lambda d: d["gold"], metrics=MC,
         primary="acc_norm"),
    Task(name="french_bench_grammar", exclude_self=True, kind="mc", language="fr", dataset=GVR,
         hub=("manu/french-bench-grammar-vocab-reading", None), eval_split="Grammar", fewshot_split="Grammar",
         test_split="Grammar", fields=("question", "answerA", "answerB", "answerC", "answerD", "answer"),
         description="Répond au mieux en complétant la question avec une des réponses proposées.",
         text=lambda d: "La phrase suivante est correcte grammaticalement:\n", choices=_fill, target=_answer_index,
         metrics=("acc",), primary="acc"),
    Task(name="french_bench_vocab", exclude_self=True, kind="mc", language="fr", dataset=GVR,
         hub=("manu/french-bench-grammar-vocab-reading", None), eval_split="Vocabulary",
         fewshot_split="Vocabulary", test_split="Vocabulary",
         fields=("question", "answerA", "answerB", "answerC", "answerD", "answer"),
         text=lambda d: "La phrase suivante est logique sémantiquement:\n", choices=_fill, target=_answer_index,
         metrics=("acc",), primary="acc"),
    Task(name="french_bench_reading_comp", exclude_self=True, kind="mc", language="fr", dataset=GVR,
         hub=("manu/french-bench-grammar-vocab-reading", None), eval_split="Reading", fewshot_split="Reading",
         test_split="Reading", fields=("context", "question", "answerA", "answerB", "answerC", "answerD", "answer"),
         text=lambda d: f"Context: {d['context']}\n\n", choices=lambda d: _fill(d, append=True),
         target=_answer_index, metrics=("acc",), primary="acc"),
    Task(name="french_bench_topic_based_nli", kind="mc", language="fr", dataset="french_bench_topic_based_nli",
         hub=("manu/topic_based_nli_test", None), eval_split="test", fewshot_split="valid", test_split="test",
         fields=("text", "topic", "polarity"),
         description="A propos du thème spécifié, l'avis client est il positif, négatif, ou neutre ?",
         text=lambda d: f"\nAvis Client: {d['text']}\n\nA propos du thème \"{d['topic']}\", l'avis client est",
         choices=lambda d: ["positif", "négatif", "neutre"],
         target=lambda d: ["positif", "negatif", "neutre"].index(d["polarity"]), metrics=MC, primary="acc"),
    Task(name="french_bench_xnli", kind="mc", language="fr", dataset="french_bench_xnli", hub=("facebook/xnli", "fr"),
         eval_split="test", fewshot_split="validation", test_split="test", fields=("premise", "hypothesis", "label"),
         description="La prémisse et l'hypothèse sont elles en accord, neutres en elles, ou en contradiction ?",
         text=lambda d: f"\nPrémisse: {d['premise']}\n\nHypothèse: {d['hypothesis']}\n\n"
                        "La prémisse et l'hypothèse sont",
         choices=lambda d: ["en accord", "neutres entre elles", "en contradiction"], target=lambda d: int(d["label"]),
         metrics=("acc",), primary="acc"),
    Task(name="french_bench_boolqa", kind="mc", language="fr", dataset="french_bench_boolqa",
         hub=("manu/french_boolq", None), eval_split="test", fewshot_split="valid", test_split="test",
         fields=("passage", "question", "label"),
         description="D'après l'information dans le contexte donné, quelle est la réponse à la question ?",
         text=lambda d: f"\nContexte: {d['passage']}\n\nQuestion: {d['question']}\n",
         choices=lambda d: ["Oui", "Non"], target=lambda d: [1, 0].index(d["label"]), metrics=MC, primary="acc"),
    Task(name="french_bench_fquadv2_bool", kind="mc", language="fr", dataset="french_bench_fquadv2",
         hub=("manu/fquad2_test", None), eval_split="test", fewshot_split="valid", test_split="test",
         fields=FQUAD_FIELDS,
         description="D'après l'information présente dans le contexte, est il possible de répondre à la question ?",
         text=lambda d: f"\nContexte: {d['context']}\n\nQuestion: {d['question']}\n\nD'après l'information présente "
                        "dans le contexte, répondre à la question est:\nA. Possible \nB. Impossible\n\nRéponse:",
         choices=lambda d: ["A", "B"], target=lambda d: [False, True].index(d["is_impossible"]), metrics=MC,
         primary="acc"),
    _fquad_gen("french_bench_fquadv2", "test", "valid", ("exact", "f1")),
    _fquad_gen("french_bench_fquadv2_hasAns", "test_hasAns", "valid_hasAns", ("exact", "f1", "rouge1")),
    Task(name="french_bench_fquadv2_genq", kind="gen", language="fr", dataset="french_bench_fquadv2",
         hub=("manu/fquad2_test", None), eval_split="test_hasAns", fewshot_split="valid_hasAns",
         test_split="test_hasAns", fields=FQUAD_FIELDS,
         description="D'après l'information dans le contexte donné, quelle question a été posée pour obtenir la "
                     "réponse donnée ?",
         text=lambda d: f"\nContexte: {d['context']}\n\nRéponse: {_fquad_answer(d)}\n\nQuestion:",
         target=lambda d: d["question"], metrics=("rouge1", "f1"), primary="f1"),
    Task(name="french_bench_multifquad", kind="gen", language="fr", dataset="french_bench_multifquad",
         hub=("manu/multifquad_test", None), eval_split="test", fewshot_split="valid", test_split="test",
         fields=("context", "question", "answers"),
         description="D'après l'information dans le contexte donné, donne la réponse à la question en citant "
                     "quelques extraits du contexte.",
         text=lambda d: f"\nContexte: {d['context']}\n\nQuestion: {d['question']}\n\nRéponse:",
         target=lambda d: ", ".join(d["answers"]["text"]), metrics=("exact", "f1", "rouge1"), primary="f1"),
    Task(name="french_bench_trivia", exclude_self=True, kind="gen", language="fr", dataset="french_bench_trivia",
         hub=("manu/french-trivia", None), eval_split="train", fewshot_split="train", test_split="train",
         fields=("Question", "Answer"), text=lambda d: f"{d['Question']}\nAnswer:", target=lambda d: d["Answer"],
         metrics=("exact", "f1", "rouge1", "is_included"), primary="f1"),
    Task(name="french_bench_orangesum_abstract", kind="gen", language="fr", dataset="french_bench_orangesum_abstract",
         hub=("orange_sum", "abstract"), eval_split="test", fewshot_split="validation", test_split="test",
         fields=("text", "summary"), description="Résume l'article en une phrase.",
         text=lambda d: f"\nArticle: {d['text']}\n\nRésumé:", target=lambda d: d["summary"], metrics=("rouge1",),
         primary="rouge1"),
    Task(name="french_bench_orangesum_title", kind="gen", language="fr", dataset="french_bench_orangesum_title",
         hub=("orange_sum", "title"), eval_split="test", fewshot_split="validation", test_split="test",
         fields=("text", "summary"), description="Trouve le titre de l'article.",
         text=lambda d: f"\nArticle: {d['text']}\n\nTitre:", target=lambda d: d["summary"], metrics=("rouge1",),
         primary="rouge1"),
    Task(name="french_bench_opus_perplexity", kind="ppl", language="fr", dataset="french_bench_opus_perplexity",
         hub=("manu/opus100-en-fr", None), eval_split="test", fields=("text",), ppl_text=lambda d: d["text"],
         ppl_counted=lambda d: d["text"], metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"),
         primary="bits_per_byte"),
    Task(name="french_bench_wikitext_fr", kind="ppl", language="fr", dataset="french_bench_wikitext_fr",
         hub=("asi/wikitext_fr", "wikitext-35"), eval_split="test", fields=("paragraph",),
         ppl_text=lambda d: _wikitext_detokenize(d["paragraph"]), ppl_counted=lambda d: d["paragraph"],
         metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"), primary="bits_per_byte"),
    Task(name="belebele_fra_Latn", exclude_self=True, kind="mc", language="fr", dataset="belebele_fra_Latn",
         hub=("facebook/belebele", "fra_Latn"), eval_split="test", fewshot_split="test", test_split="test",
         fields=("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
                 "correct_answer_num"),
         text=lambda d: f"P: {d['flores_passage']}\nQ: {d['question'].strip()}\nA: {d['mc_answer1']}\n"
                        f"B: {d['mc_answer2']}\nC: {d['mc_answer3']}\nD: {d['mc_answer4']}\nAnswer:",
         choices=lambda d: list(LETTERS), target=lambda d: ["1", "2", "3", "4"].index(str(d["correct_answer_num"])),
         metrics=MC, primary="acc"),
    # English sanity set: the same prompts as lm-eval's English tasks
    Task(name="hellaswag", exclude_self=True, kind="mc", language="en", dataset="hellaswag", hub=("Rowan/hellaswag", None),
         eval_split="validation", fewshot_split="train", sampler="random",
         fields=("activity_label", "ctx_a", "ctx_b", "endings", "label"), process=_hellaswag_doc,
         text=lambda d: d["query"], choices=lambda d: d["choices"], target=lambda d: d["gold"], metrics=MC,
         primary="acc_norm"),
    Task(name="arc_easy", kind="mc", language="en", dataset="arc_easy", hub=("allenai/ai2_arc", "ARC-Easy"),
         eval_split="test", fewshot_split="train", test_split="test", sampler="random",
         fields=("question", "choices", "answerKey"), text=lambda d: f"Question: {d['question']}\nAnswer:",
         choices=lambda d: list(d["choices"]["text"]), target=lambda d: d["choices"]["label"].index(d["answerKey"]),
         metrics=MC, primary="acc_norm"),
    Task(name="piqa", exclude_self=True, kind="mc", language="en", dataset="piqa", hub=("baber/piqa", None), eval_split="validation",
         fewshot_split="train", sampler="random", fields=("goal", "sol1", "sol2", "label"),
         text=lambda d: f"Question: {d['goal']}\nAnswer:", choices=lambda d: [d["sol1"], d["sol2"]],
         target=lambda d: int(d["label"]), metrics=MC, primary="acc_norm"),
    # translation (CroissantLLM §5.3): few-shot "Language: sentence" pairs, greedy, BLEU and chrF
    Task(name="translation_en_fr", exclude_self=True, kind="translation", language="fr", dataset="translation", hub=("", None),
         eval_split="test", fewshot_split="dev", metrics=("bleu", "chrf"), primary="chrf", max_tokens=256, default_fewshot=5),
    Task(name="translation_fr_en", exclude_self=True, kind="translation", language="en", dataset="translation", hub=("", None),
         eval_split="test", fewshot_split="dev", metrics=("bleu", "chrf"), primary="chrf", max_tokens=256, default_fewshot=5),
]}
GROUPS: dict[str, list[str]] = {
    "french_bench_mc": ["french_bench_arc_challenge", "french_bench_hellaswag", "french_bench_grammar",
                        "french_bench_vocab"],
    "french_bench_extra": ["french_bench_reading_comp", "french_bench_topic_based_nli", "french_bench_xnli",
                           "french_bench_boolqa", "french_bench_fquadv2", "french_bench_fquadv2_bool",
                           "french_bench_orangesum_title"],
    "french_bench_gen": ["french_bench_fquadv2_genq", "french_bench_fquadv2_hasAns", "french_bench_multifquad",
                         "french_bench_trivia", "french_bench_orangesum_abstract"],
    "french_bench_perplexity": ["french_bench_opus_perplexity", "french_bench_wikitext_fr"],
    "english": ["hellaswag", "arc_easy", "piqa"],
    "translation": ["translation_en_fr", "translation_fr_en"],
}
GROUPS["french_bench"] = GROUPS["french_bench_mc"] + GROUPS["french_bench_extra"] + GROUPS["french_bench_gen"]
GROUPS["all"] = [*TASKS]


def resolve_tasks(spec: str | list[str]) -> list[Task]:
    """Task and group names (comma-separated or a list) → tasks in order, without duplicates."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise UsageError("no tasks given; e.g. --tasks french_bench_mc,translation")
    out: list[str] = []
    for name in names:
        if name in GROUPS:
            out += GROUPS[name]
        elif name in TASKS:
            out.append(name)
        else:
            import difflib

            close = difflib.get_close_matches(name, [*TASKS, *GROUPS], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown task {name!r}{hint} (groups: {', '.join(GROUPS)}; "
                             "`fournil eval list` shows every task)")
    return [TASKS[n] for n in dict.fromkeys(out)]

