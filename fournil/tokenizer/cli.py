"""`fournil tokenizer …`: train, measure (fertility), encode and decode with a bilingual tokenizer."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from fournil.artifacts import claim_output, sha256_file
from fournil.console import UsageError, print_json, print_table

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  fournil tokenizer train out/tok --text fr=corpus/fr.jsonl.gz en=corpus/en.jsonl.gz code=src/ \\
      --weight fr=1 en=1 code=0.2 --vocab-size 32000 --eval fr=held/fr.txt en=held/en.txt --compare mistral:v1
  fournil tokenizer train out/tok --recipe croissant-1.3b --text fr=fr/ en=en/
  fournil tokenizer train out/demo --sample-corpus --weight fr=1 en=1 code=0.1 parallel=0.2
  fournil tokenizer report out/tok --compare mistral:v1 smollm2 --text fr=held/fr.txt en=held/en.txt --png fert.png
  fournil tokenizer encode out/tok "Le cœur du métier, c’est la patience." --pieces
  echo "Bonjour" | fournil tokenizer encode out/tok - --bos --json
  fournil tokenizer decode out/tok 1 410 2043
  fournil tokenizer verify out/tok --text fr=held/fr.txt en=held/en.txt   (HF = transformers = SentencePiece ids)

inputs: a .txt file (documents are blank-line separated paragraphs), a .jsonl or .jsonl.gz file with a "text"
field (or "fr" and "en" fields for parallel pairs), or a folder of those.
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import NON_NEGATIVE, POSITIVE, SEED, Keyed, Stage, real

    stage = Stage(subparsers, common, "tokenizer", epilog=EPILOG,
                  help="train, measure and use a bilingual FR/EN tokenizer",
                  description="A byte-fallback BPE tokenizer trained on a weighted French/English/code mix, exported "
                  "as a Hugging Face directory and an equivalent SentencePiece model.")
    train = stage.verb("train", cmd_train, force=True)
    train.add_argument("out", type=Path, help="output tokenizer directory")
    train.add_argument("--text", nargs="+", action="extend", default=[], metavar="CATEGORY=PATH",
                       help="training text per category (repeatable)")
    train.add_argument("--sample-corpus", action="store_true",
                       help="also train on the embedded sample corpus: its fr, en, code, parallel files, for each "
                       "category that has a weight > 0 (test-split rows are left out)")
    train.add_argument("--weight", nargs="+", action="extend", metavar="CATEGORY=W", type=Keyed(real(0)),
                       help="sampling weight per category (default: fr=1 en=1)")
    train.add_argument("--eval", nargs="+", action="extend", default=[], metavar="LANG=PATH",
                       help="held-out text: write fertility.json and fertility.png into the directory")
    train.add_argument("--compare", nargs="+", action="extend", default=[], metavar="OTHER",
                       help="with --eval: tokenizers to put beside ours (as in `report`)")
    train.add_argument("--recipe", help="recipe file or preset whose `tokenizer:` section gives the defaults")
    train.add_argument("--vocab-size", type=POSITIVE, help="total ids, specials and bytes included (default 32000)")
    train.add_argument("--n-reserved", type=NON_NEGATIVE, help="reserved special ids after the ChatML tokens (default 10)")
    train.add_argument("--max-chars", type=POSITIVE, help="cap on the characters sampled across categories")
    train.add_argument("--min-frequency", type=POSITIVE, help="never merge a pair seen fewer times (default 2)")
    train.add_argument("--seed", type=SEED, help="document sampling seed (default 0)")
    train.add_argument("--no-sentencepiece", action="store_true", help="do not write tokenizer.model")

    report = stage.verb("report", cmd_report)
    report.add_argument("tokenizer", help="our tokenizer directory (or any tokenizer spec)")
    report.add_argument("--compare", nargs="+", action="extend", default=[], metavar="OTHER",
                        help="tokenizers to compare with")
    report.add_argument("--text", nargs="+", action="extend", required=True, metavar="LANG=PATH",
                        help="evaluation text per language; use text not seen in training")
    report.add_argument("--png", type=Path, help="write a bar chart of tokens per word here")

    encode = stage.verb("encode", cmd_encode)
    encode.add_argument("tokenizer", help="tokenizer directory or tokenizer.json")
    encode.add_argument("texts", nargs="+", metavar="TEXT", help="text to encode; '-' reads stdin")
    encode.add_argument("--pieces", action="store_true", help="print pieces instead of ids")
    encode.add_argument("--bos", action="store_true", help="prepend <s>")
    encode.add_argument("--eos", action="store_true", help="append </s>")

    decode = stage.verb("decode", cmd_decode)
    decode.add_argument("tokenizer", help="tokenizer directory or tokenizer.json")
    decode.add_argument("ids", nargs="+", type=NON_NEGATIVE, metavar="ID", help="token ids")
    decode.add_argument("--skip-special", action="store_true", help="drop special tokens")

    verify = stage.verb("verify", cmd_verify)
    verify.add_argument("tokenizer", type=Path, help="tokenizer directory")
    verify.add_argument("--text", nargs="+", action="extend", required=True, metavar="LANG=PATH")


def cmd_train(args: argparse.Namespace) -> None:
    """learn a tokenizer from text per category and write a tokenizer directory

    Sample documents per category to the given weights (by characters), learn BPE pieces and write
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja, tokenizer.model
    (SentencePiece) and fournil.json."""
    from fournil.tokenizer.config import TokenizerConfig
    from fournil.tokenizer.export import save
    from fournil.tokenizer.train import parse_inputs, train

    config = TokenizerConfig()
    if args.recipe:
        from fournil.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        if getattr(recipe, "tokenizer", None) is None:
            raise UsageError(f"{args.recipe}: the recipe has no tokenizer section")
        config = recipe.tokenizer
    overrides = {name: getattr(args, name) for name in ("vocab_size", "n_reserved", "max_chars", "min_frequency", "seed")
                 if getattr(args, name) is not None}
    if args.weight:
        overrides["weights"] = dict(args.weight)
    config = dataclasses.replace(config, **overrides)
    specs = list(args.text)
    if args.sample_corpus:
        from fournil.corpus import CATEGORIES, SAMPLE_DIR

        specs += [f"{c}={SAMPLE_DIR / f'{c}.jsonl.gz'}" for c in CATEGORIES if config.weights.get(c, 0) > 0]
    if not specs:
        raise UsageError("no training text: give --text CATEGORY=PATH … or --sample-corpus")
    inputs = parse_inputs(specs)
    given = [spec.partition("=")[2] for spec in [*specs, *args.eval]]  # folders as given, and their files
    claim_output(args.out, "fournil.tokenizer", force=args.force, option="OUT",
                 inputs=[*given, *(p for files in inputs.values() for p in files)])
    tok, stats = train(config, inputs)
    fertility = None
    if args.eval:
        from fournil.tokenizer.report import fertility as measure
        from fournil.tokenizer.report import from_tokenizer, read_texts, report

        texts = read_texts(args.eval)
        fertility = [measure(from_tokenizer(tok, str(args.out)), texts), *report(args.compare, texts)]
    inputs_meta = {c: [{"path": str(p), "sha256": sha256_file(p)} for p in files] for c, files in inputs.items()}
    save(tok, args.out, manifest={"config": dataclasses.asdict(config), "sampled": stats, "inputs": inputs_meta},
         sentencepiece=not args.no_sentencepiece, fertility=fertility)
    log.info("wrote %s (%d ids)", args.out, tok.vocab_size)
    if args.json:
        print_json({"out": str(args.out), "vocab_size": tok.vocab_size, "sampled": stats, "fertility": fertility})


def cmd_report(args: argparse.Namespace) -> None:
    """fertility (tokens/word, bytes/token, FR/EN ratio) of tokenizers on the same text

    Tokens per whitespace-separated word and bytes per token per language, and the FR/EN parity ratio, for
    a tokenizer and any comparison tokenizers: a tokenizer folder, tokenizer.json, SentencePiece .model,
    .gguf, mistral:NAME (models in the mistral-common wheel) or smollm2."""
    from fournil.tokenizer.report import plot, read_texts, report, table_rows

    if args.png:  # a chart replaces a chart, never another file
        claim_output(args.png, "PNG", force=True, option="--png", magic=b"\x89PNG\r\n\x1a\n")
    texts = read_texts(args.text)
    results = report([args.tokenizer, *args.compare], texts)
    if args.png:
        plot(results, args.png)
        log.info("wrote %s", args.png)
    if args.json:
        print_json(results)
        return
    header, rows = table_rows(results)
    print_table("fertility (tokens per word: lower is better; FR/EN: 1.0 is parity)", rows, header)


def cmd_encode(args: argparse.Namespace) -> None:
    """print the ids (or pieces) of some text

    Encode each TEXT argument ('-' reads stdin) and print its ids, one line per text."""
    from fournil.tokenizer.bpe import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    texts = [sys.stdin.read() if t == "-" else t for t in args.texts]
    out = []
    for text in texts:
        ids = tok.encode(text, bos=args.bos, eos=args.eos)
        out.append([tok.id_to_piece(i) for i in ids] if args.pieces else ids)
    if args.json:
        print_json(out if len(out) > 1 else out[0])
        return
    for item in out:
        print(" ".join(map(str, item)))


def cmd_decode(args: argparse.Namespace) -> None:
    """print the text of some ids

    Decode ids back to text."""
    from fournil.tokenizer.bpe import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    bad = [i for i in args.ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise UsageError(f"ids out of range [0, {tok.vocab_size}): {', '.join(map(str, bad))}")
    text = tok.decode(args.ids, skip_special=args.skip_special)
    if args.json:
        print_json({"text": text})
    else:
        print(text)


def cmd_verify(args: argparse.Namespace) -> int:
    """check that transformers and SentencePiece give our ids, and that text round-trips

    Encode every document with our tokenizer, transformers' AutoTokenizer (offline) and the SentencePiece
    model; count documents whose ids differ and documents that do not decode back."""
    from fournil.tokenizer.report import read_texts
    from fournil.tokenizer.verify import compare

    texts = [doc for docs in read_texts(args.text).values() for doc in docs]
    result = compare(args.tokenizer, texts)
    if args.json:
        print_json(result)
    else:
        print_table(f"equivalence: {args.tokenizer}", [(k, str(v)) for k, v in result.items() if k != "examples"])
        for example in result["examples"]:
            log.warning("differs: %r", example)
    return 0 if result["ok"] else 1
