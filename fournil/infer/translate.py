"""Translation prompts: few-shot for a base model (as CroissantLLM's evaluation prompts a base model with example
pairs, arXiv 2402.00786 §5), or one user turn through the chat template for a chat model.

Every source line becomes one prompt; generation stops at the end of the line, so one output line per input line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fournil.console import UsageError
from fournil.lm.generate import Engine
from fournil.lm.sampling import SamplingConfig

LANGUAGES = {"en": "English", "fr": "French"}
# Short, self-written example pairs (same meaning both ways), so the base model sees the expected format.
EXAMPLES = (
    ("The bakery opens at seven in the morning.", "La boulangerie ouvre à sept heures du matin."),
    ("Can you tell me where the station is?", "Pouvez-vous me dire où se trouve la gare ?"),
    ("We stayed home because it was raining.", "Nous sommes restés à la maison parce qu'il pleuvait."),
)


def check_pair(source: str, target: str) -> None:
    for flag, lang in (("--from", source), ("--to", target)):
        if lang not in LANGUAGES:
            raise UsageError(f"{flag} {lang!r}: choose one of {', '.join(LANGUAGES)}")
    if source == target:
        raise UsageError(f"--from and --to are both {source!r}")


def few_shot_prompt(text: str, source: str, target: str) -> str:
    """'English: …\\nFrench: …' pairs, then the line to translate and the target label."""
    src, tgt = LANGUAGES[source], LANGUAGES[target]
    shots = []
    for en, fr in EXAMPLES:
        pair = {"en": en, "fr": fr}
        shots.append(f"{src}: {pair[source]}\n{tgt}: {pair[target]}\n\n")
    return "".join(shots) + f"{src}: {text}\n{tgt}:"


def chat_messages(text: str, source: str, target: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Translate this {LANGUAGES[source]} text into {LANGUAGES[target]}. "
                                        f"Answer with the translation only.\n\n{text}"}]


def translate_lines(engine: Engine, lines: Sequence[str], source: str, target: str, sampling: SamplingConfig,
                    chat: bool = False, batch_size: int = 8) -> Iterator[str]:
    """One translation per input line, in order; blank lines stay blank. Batches of `batch_size` lines."""
    check_pair(source, target)
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be > 0, got {batch_size}")
    stop = tuple(dict.fromkeys((*sampling.stop, "\n")))
    sampling = SamplingConfig(**{**vars(sampling), "stop": stop})
    for start in range(0, len(lines), batch_size):
        batch = [line.strip() for line in lines[start:start + batch_size]]
        todo = [i for i, line in enumerate(batch) if line]
        if chat:
            prompts = [engine.tokenizer.chat(chat_messages(batch[i], source, target)) for i in todo]
        else:
            prompts = [few_shot_prompt(batch[i], source, target) for i in todo]
        results = dict(zip(todo, engine.complete(prompts, sampling), strict=True)) if todo else {}
        for i in range(len(batch)):
            yield results[i].text.strip() if i in results else ""
