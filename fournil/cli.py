"""The `fournil` command: one entry point, one verb per stage (`fournil <stage> <action>`).

Each stage's `cli.py` exposes `register(subparsers, common)`, which declares its verbs with `Stage` below; it must
import nothing heavy at module level so that `fournil --help` stays instant. Handlers return an exit code or None (= 0).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import math
import sys

from rich.text import Text

from fournil import __version__
from fournil.console import EXIT_FAILURE, FournilError, setup, stderr

STAGES = ("fournil.corpus.cli", "fournil.tokenizer.cli", "fournil.model.cli", "fournil.train.cli",
          "fournil.eval.cli", "fournil.infer.cli", "fournil.serve.cli", "fournil.bake.pipeline",
          "fournil.bake.scaling")

EPILOG = """\
stages (data flows left to right):
  corpus → tokenizer → model → train → eval → infer → serve

examples:
  fournil model info croissant-1.3b              size, FLOPs and memory of the CroissantLLM recipe
  fournil model init croissant-10m out/tiny      a randomly initialised model directory
  fournil model convert out/tiny out/tiny-bf16 --dtype bfloat16

every verb takes --help; --quiet hides progress, --json prints data for scripts.
exit codes: 0 ok, 1 runtime failure, 2 bad usage or input.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' layout, show defaults and the range of numeric options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action.type, Number | Keyed):
            text += f" [{action.type.describe()}]"
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class Number:
    """The `type=` of every numeric option: parse, then refuse NaN, ±inf and anything outside [low, high] (open
    ends with low_open/high_open). argparse turns the refusal into `error: argument --NAME: …` and exit 2 before
    the verb starts, so a bad value never reaches a loop (`--tokens-per-shard 0`) or a model (`--temperature nan`).
    Tests enumerate the parsers' Number options and draw values at and beyond these bounds."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):  # NaN would pass every comparison below
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{_show(self.low)}, {_show(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '≥'} {_show(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '≤'} {_show(self.high)}"
        return what

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except (ValueError, OverflowError):  # int() also refuses strings of more than 4300 digits
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text[:40]!r}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text[:40]}")
        return value

    def __repr__(self) -> str:
        return f"Number({self.describe()})"


def _show(bound: float) -> str:
    if isinstance(bound, int) and bound >= 2**20 and not (bound + 1) & bound:  # 2^64-1, not 20 digits
        return f"2^{bound.bit_length()}-1"
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def integer(low: int | None = None, high: int | None = None) -> Number:
    return Number(int, low, high)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> Number:
    return Number(float, low, high, low_open=low_open, high_open=high_open)


class Keyed:
    """The `type=` of NAME=NUMBER options (`--weight fr=1`): the number is checked as `number` checks it."""

    def __init__(self, number: Number):
        self.number = number

    def describe(self) -> str:
        return self.number.describe()

    def __call__(self, text: str) -> tuple[str, int | float]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, e.g. fr=1, got {text[:40]!r}")
        try:
            return key, self.number(value)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{key}: {exc}") from None


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
SEED = integer(0, 2**64 - 1)  # what torch's manual_seed and numpy's default_rng both accept


def common_options() -> argparse.ArgumentParser:
    """Flags every verb accepts, so they can follow the verb: `fournil model info X --json`."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    group.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return common


DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("auto", "eager", "fused", "inductor")  # fournil.lm.backends.BACKENDS, named here without torch


class _Gone(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--compile is gone: choose how decoding runs with --backend (auto is fast without a compile, "
                     "inductor compiles with torch.compile)")


def backend_option(parser, choices: tuple[str, ...] = BACKENDS) -> None:
    """--backend: how decode steps run (fournil.lm.backends); the old --compile exits 2 naming it."""
    parser.add_argument("--backend", choices=choices, default="auto",
                        help="auto: fused (one C++ call a step) for a float32 or int8 model where fournil's kernels are "
                        "built (built first for a model of 64 MiB or more), else eager; eager: PyTorch operator by operator; fused; inductor: torch.compile's "
                        "graph, after a one-time compile of a minute or more")
    parser.add_argument("--compile", nargs=0, action=_Gone, help=argparse.SUPPRESS)


FORCE = "replace a finished output of this verb there (nothing else is ever deleted)"


def verb(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser, name: str, handler, *,
         epilog: str, dtype: str | None = None, force: bool | str = False) -> argparse.ArgumentParser:
    """Declare one verb: the common output flags, the stage's examples as epilog, its handler, whose docstring
    gives the help (first line) and the description (the rest, one paragraph). The verb's own arguments go on the
    returned parser; `dtype=HELP` adds the shared --dtype, `force=True` (or HELP) --force."""
    help, _, description = inspect.cleandoc(handler.__doc__).partition("\n")
    parser = subparsers.add_parser(name, parents=[common], formatter_class=HelpFormatter, epilog=epilog, help=help,
                                   description=" ".join(description.split()))
    parser.set_defaults(handler=handler)
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, help=dtype)
    if force:
        parser.add_argument("--force", action="store_true", help=FORCE if force is True else force)
    return parser


class Stage:
    """`fournil <stage> <action>`: a stage's parser and its verbs (`stage.verb(...)`, as `verb` above). A stage may
    name a default action (`fournil train RECIPE` is `fournil train pretrain RECIPE`), nest a group of verbs
    (`fournil infer export gguf`) and lend verbs to the top level as aliases (`fournil generate`)."""

    def __init__(self, subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser, name: str, *,
                 help: str, description: str, epilog: str, default: str | None = None, dest: str = "action"):
        self.common, self.name, self.epilog = common, name, epilog
        self.parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                            formatter_class=HelpFormatter)
        self.parser.default_action = default  # read by with_default_action
        self.actions = self.parser.add_subparsers(dest=dest, metavar=f"<{dest}>", required=True)

    def verb(self, name: str, handler, **kwargs) -> argparse.ArgumentParser:
        return verb(self.actions, self.common, name, handler, epilog=self.epilog, **kwargs)

    def group(self, name: str, *, help: str, dest: str) -> Stage:
        return Stage(self.actions, self.common, name, help=help, description=help[0].upper() + help[1:] + ".",
                     epilog=self.epilog, dest=dest)

    def alias(self, subparsers: argparse._SubParsersAction, *names: str) -> None:
        """`fournil NAME` is `fournil <stage> NAME`: the same parser object, so one definition, one handler."""
        # what add_parser(aliases=...) does, across two levels, which argparse's own aliases cannot reach
        helps = {choice.dest: choice.help for choice in self.actions._choices_actions}
        for name in names:
            subparsers._name_parser_map[name] = self.actions.choices[name]
            subparsers._choices_actions.append(
                subparsers._ChoicesPseudoAction(name, (), f"{helps[name]} (= {self.name} {name})"))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The stages of `fournil`, the actions of a stage; {} for a verb."""
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def with_default_action(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`fournil train RECIPE …` → `fournil train pretrain RECIPE …` for a stage with a default action."""
    stage = subcommands(parser).get(argv[0]) if argv else None
    default = getattr(stage, "default_action", None)
    if default and len(argv) > 1 and argv[1] not in (*subcommands(stage), "-h", "--help"):
        return [argv[0], default, *argv[1:]]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fournil",
        description="Bake truly bilingual French/English language models (CroissantLLM, arXiv 2402.00786).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fournil {__version__}")
    subparsers = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    common = common_options()
    for module in STAGES:
        importlib.import_module(module).register(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = with_default_action(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    setup(quiet=args.quiet, verbose=args.verbose)
    try:
        return args.handler(args) or 0
    except FournilError as exc:
        # soft_wrap: the message stays one line (the terminal wraps it), so a log or a grep sees it whole
        stderr.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130
    except BrokenPipeError:  # `fournil … --json | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except Exception as exc:  # a bug: the traceback with --verbose, one line otherwise
        if args.verbose:
            logging.getLogger("fournil").exception("unexpected failure (please report it)")
        else:
            stderr.print(Text("error: ", style="bold red") + Text(f"unexpected {type(exc).__name__}: {exc} "
                                                                  "(rerun with --verbose for the traceback)"),
                         soft_wrap=True)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
