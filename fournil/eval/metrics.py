"""Metrics as FrenchBench defines them (lm-eval 0.4.13): SQuAD-style exact/F1 with French articles, ROUGE-1,
accuracy and length-normalised accuracy, word/byte perplexity, and sacrebleu BLEU/chrF for translation.

Scores are fractions in [0, 1] like lm-eval's, except BLEU and chrF (0–100, sacrebleu's scale).
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(un|une|des|le|la|les)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation and French articles, collapse whitespace (FrenchBench's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(prediction: str, reference: str) -> float:
    return float(normalize_answer(reference) == normalize_answer(prediction))


def f1(prediction: str, reference: str) -> float:
    gold = normalize_answer(reference).split() if reference else []
    pred = normalize_answer(prediction).split() if prediction else []
    if not gold or not pred:
        return float(gold == pred)
    same = sum((collections.Counter(gold) & collections.Counter(pred)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def is_included(prediction: str, reference: str) -> float:
    return float(reference in prediction)


def rouge1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-1 F-measure with rouge_score's default tokenizer, computed locally.

    lm-eval gets the same per-example scores through `evaluate.load("rouge")` (which needs the hub) and reports
    the median of a bootstrap over their mean; the plain mean is its deterministic centre.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"])
    scores = [scorer.score(ref, pred)["rouge1"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def multiple_choice(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """acc: the most likely choice is the gold one; acc_norm: the same after dividing by each choice's length."""
    best = max(range(len(lls)), key=lambda i: (lls[i], -i))
    normed = [ll / max(len(c), 1) for ll, c in zip(lls, choices, strict=True)]
    best_norm = max(range(len(normed)), key=lambda i: (normed[i], -i))
    return {"acc": float(best == gold), "acc_norm": float(best_norm == gold)}


def perplexities(loglikelihoods: Sequence[float], words: Sequence[int], nbytes: Sequence[int]) -> dict[str, float]:
    """Corpus-level word and byte perplexity and bits per byte (weighted by words/bytes, as lm-eval)."""
    total = sum(loglikelihoods)
    return {
        "word_perplexity": math.exp(-total / sum(words)),
        "byte_perplexity": math.exp(-total / sum(nbytes)),
        "bits_per_byte": -total / sum(nbytes) / math.log(2),
    }


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, object]:
    """Corpus BLEU and chrF with sacrebleu's defaults, and the signatures that make them reproducible."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    refs = [list(references)]
    return {
        "bleu": bleu.corpus_score(list(hypotheses), refs).score,
        "chrf": chrf.corpus_score(list(hypotheses), refs).score,
        "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }
