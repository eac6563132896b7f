"""`fournil infer …`: generate, chat, translate, quantize, export gguf, import gguf; each verb is also
`fournil VERB` (`fournil generate`, `fournil export gguf`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from fournil.artifacts import claim_output
from fournil.console import UsageError, print_json, print_table, status

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  fournil import gguf SmolLM2-135M-Instruct.Q4_1.gguf out/smol      (dequantised HF directory)
  fournil generate out/smol "The capital of France is" --max-tokens 32
  fournil generate out/smol "Il était une fois" --temperature 0.8 --top-p 0.95 --seed 1
  fournil generate out/smol "Bonjour" "Hello" --no-stream --json   (several prompts: one batch)
  fournil chat out/smol                                              (/reset clears, /exit leaves)
  echo "The weather is nice today." | fournil translate out/smol --from en --to fr
  fournil quantize out/smol out/smol-int8 --bits 8 --report
  fournil export gguf out/smol out/smol-f16.gguf --type f16
"""


def _sampling_flags(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    from fournil.cli import DTYPES, NON_NEGATIVE, POSITIVE, SEED, backend_option, real

    group = parser.add_argument_group("decoding")
    group.add_argument("--max-tokens", type=POSITIVE, default=max_tokens, help="new tokens per prompt")
    group.add_argument("--temperature", type=real(0), default=0.0, help="0 = greedy; higher = more random")
    group.add_argument("--top-k", type=NON_NEGATIVE, default=0, help="sample among the k most likely tokens (0 = off)")
    group.add_argument("--top-p", type=real(0, 1, low_open=True), default=1.0, help="nucleus sampling mass (1 = off)")
    group.add_argument("--min-p", type=real(0, 1, high_open=True), default=0.0,
                       help="drop tokens below min-p × the top probability")
    group.add_argument("--repetition-penalty", type=real(0, low_open=True), default=1.0,
                       help="CTRL penalty on seen tokens (1 = off)")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    group.add_argument("--seed", type=SEED, default=None, help="sampling seed for reproducible output")
    group.add_argument("--dtype", choices=DTYPES, help="compute dtype for the weights")
    backend_option(group)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import DTYPES, POSITIVE, Stage

    stage = Stage(subparsers, common, "infer", epilog=EPILOG,
                  help="generate, chat, translate and quantize models; GGUF export and import",
                  description="Use a model directory: generation, chat, translation, weight quantisation "
                  "and GGUF files. Each verb is also a top-level command: `fournil generate`.")
    gen = stage.verb("generate", cmd_generate)
    gen.add_argument("model", type=Path, help="model directory (fournil, transformers, imported or quantised)")
    gen.add_argument("prompts", nargs="+", metavar="prompt", help="prompt text ('-' reads stdin)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn in the chat template")
    gen.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                     help="print tokens as they come (one prompt, no --json)")
    _sampling_flags(gen, 256)

    chat = stage.verb("chat", cmd_chat)
    chat.add_argument("model", type=Path, help="model directory with a chat template")
    chat.add_argument("--system", help="system message at the start of the conversation")
    _sampling_flags(chat, 512)

    tr = stage.verb("translate", cmd_translate)
    tr.add_argument("model", type=Path, help="model directory")
    tr.add_argument("files", nargs="*", type=Path, help="text files (default: stdin)")
    tr.add_argument("--from", dest="source", required=True, choices=("en", "fr"), help="source language")
    tr.add_argument("--to", dest="target", required=True, choices=("en", "fr"), help="target language")
    tr.add_argument("--chat", action="store_true", help="use the chat template (chat models)")
    tr.add_argument("--batch-size", type=POSITIVE, default=8, help="lines per batch")
    _sampling_flags(tr, 128)

    quant = stage.verb("quantize", cmd_quantize, force=True)
    quant.add_argument("model", type=Path, help="floating-point model directory")
    quant.add_argument("out", type=Path, help="output directory")
    quant.add_argument("--bits", type=int, choices=(8, 4), default=8, help="8: int8 per channel; 4: 4-bit groups")
    quant.add_argument("--group-size", type=POSITIVE, default=32, help="inputs per 4-bit group")
    quant.add_argument("--report", action="store_true", help="perplexity of both models and the change")
    quant.add_argument("--text", type=Path, help="text file for --report")

    exp = stage.group("export", help="write a model as another format (gguf)", dest="format").verb(
        "gguf", cmd_export_gguf, force="replace an existing GGUF file at OUT")
    exp.add_argument("model", type=Path, help="floating-point model directory")
    exp.add_argument("out", type=Path, help="output .gguf file")
    exp.add_argument("--type", dest="qtype", default="f16", choices=("f32", "f16", "q8_0", "q4_0"),
                     help="tensor type of the matrices (norms stay f32)")

    imp = stage.group("import", help="read another format (gguf) into a model directory", dest="format").verb(
        "gguf", cmd_import_gguf, force=True)
    imp.add_argument("file", type=Path, help="GGUF file (architecture llama)")
    imp.add_argument("out", type=Path, help="output model directory")
    imp.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights")

    stage.alias(subparsers, "generate", "chat", "translate", "quantize", "export", "import")


def _sampling(args: argparse.Namespace):
    from fournil.lm.sampling import SamplingConfig

    return SamplingConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          stop=tuple(args.stop), seed=args.seed).validate()


def huge_pages() -> None:
    """Ask torch to back its large tensors with 2 MiB pages (THP_MEM_ALLOC_ENABLE, read once, at torch's first
    allocation; a user's own setting wins). Why: decoding streams every weight each token, and with 4 KiB pages
    that is a TLB walk per page (the fused step asks for huge pages on its own). Only the decoding verbs: training
    keeps the allocator as is."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _engine(args: argparse.Namespace):
    huge_pages()
    from fournil.lm.generate import Engine

    with status(f"loading {args.model}"):
        return Engine.load(args.model, dtype=args.dtype, backend=args.backend)


def cmd_generate(args: argparse.Namespace) -> None:
    """continue a prompt (streamed), or a batch of prompts

    Greedy or sampled continuation with a KV cache. One prompt streams token by token; several prompts run
    as one left-padded batch."""
    sampling = _sampling(args)
    prompts = [sys.stdin.read() if p == "-" else p for p in args.prompts]
    engine = _engine(args)
    if len(prompts) == 1 and args.stream and not args.json:
        for delta in engine.stream(prompts[0], sampling, chat=args.chat):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    results = engine.complete(prompts, sampling, chat=args.chat)
    if args.json:
        print_json([{"prompt": p, **asdict(r)} for p, r in zip(prompts, results, strict=True)])
        return
    for r in results:
        sys.stdout.write(r.text + "\n")


def cmd_chat(args: argparse.Namespace) -> None:
    """interactive chat with the model's chat template

    A terminal chat: the history is rendered with the model's chat template (ChatML for fournil models)
    every turn and replies stream. /reset clears the history, /exit or end of input leaves."""
    from fournil.infer.chat import HELP, chat_loop

    sampling = _sampling(args)
    engine = _engine(args)
    if sys.stdin.isatty():
        log.info(HELP)
    chat_loop(engine, sampling, sys.stdin, sys.stdout, system=args.system)


def cmd_translate(args: argparse.Namespace) -> None:
    """translate files or stdin line by line (en↔fr)

    One output line per input line, batched. A base model gets a few-shot prompt ('English: …' / 'French:
    …' pairs); --chat sends each line as a user turn through the chat template instead."""
    from fournil.infer.translate import check_pair, translate_lines

    check_pair(args.source, args.target)
    sampling = _sampling(args)
    lines: list[str] = []
    for file in args.files:
        try:
            lines += file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file}: cannot read as UTF-8 text: {exc}") from exc
    if not args.files:
        lines = sys.stdin.read().splitlines()
    engine = _engine(args)
    failed = 0  # lines with text whose output is empty or the source copied: the model did not translate them
    outputs = translate_lines(engine, lines, args.source, args.target, sampling, chat=args.chat,
                              batch_size=args.batch_size)
    for number, (source, line) in enumerate(zip(lines, outputs, strict=True), 1):
        if source.strip() and (not line or line == source.strip()):
            failed += 1
            log.warning("line %d: %s", number, "no translation (empty output)" if not line else "output copies the source")
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    if failed:
        given = sum(1 for source in lines if source.strip())
        log.warning("%d of %d lines were not translated: this model does not translate %s→%s reliably%s", failed,
                    given, args.source, args.target,
                    "" if args.chat else " (a chat model translates better with --chat)")


def cmd_quantize(args: argparse.Namespace) -> None:
    """weight-only int8 (per channel) or 4-bit (group-wise) model directory

    Quantise the blocks' linear weights; our engine runs the result directly. --report measures perplexity
    before and after on a text (default: the embedded EN+FR sample corpus)."""
    from fournil.infer.quantize import quantize, report, sample_text

    claim_output(args.out, "fournil.infer.quantize", inputs=[args.model, args.text], force=args.force, option="OUT")
    with status(f"quantising {args.model} to {args.bits} bits"):
        quantize(args.model, args.out, args.bits, args.group_size)
    log.info("wrote %s", args.out)
    if not args.report:
        return
    try:
        text = args.text.read_text(encoding="utf-8") if args.text else sample_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{args.text}: cannot read as UTF-8 text: {exc}") from exc
    with status("measuring perplexity (floating point and quantised)"):
        result = report(args.model, args.out, text)
    if args.json:
        print_json(result)
    else:
        print_table(f"perplexity, {args.bits}-bit vs float32", [
            ("tokens", f"{result['tokens']:,}"), ("float32", f"{result['perplexity_fp32']:.4f}"),
            (f"{args.bits}-bit", f"{result['perplexity_quantized']:.4f}"),
            ("change", f"{result['change_percent']:+.3f} %")])


def cmd_export_gguf(args: argparse.Namespace) -> None:
    """a model directory → one GGUF file for llama.cpp

    Weights (f32, f16, q8_0 or q4_0 through gguf.quants), shape, tokenizer and chat template in one GGUF
    file that llama.cpp loads."""
    from fournil.infer.gguf_io import export_gguf

    claim_output(args.out, "GGUF", inputs=[args.model], force=args.force, option="OUT", magic=b"GGUF")
    with status(f"writing {args.out}"):
        export_gguf(args.model, args.out, args.qtype)
    log.info("wrote %s", args.out)


def cmd_import_gguf(args: argparse.Namespace) -> None:
    """a GGUF Llama → a model directory transformers and fournil load

    Dequantise every tensor, undo llama.cpp's q/k row permutation, rebuild tokenizer.json from the GGUF
    vocabulary and merges, keep the chat template."""
    from fournil.infer.gguf_io import import_gguf

    claim_output(args.out, "fournil.model", inputs=[args.file], force=args.force, option="OUT")
    with status(f"importing {args.file}"):
        import_gguf(args.file, args.out, args.dtype)
    log.info("wrote %s", args.out)
