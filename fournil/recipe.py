"""YAML recipes → typed, validated config objects.

A recipe is a YAML mapping whose sections map onto kw-only dataclasses (one level deep). Validation runs before
any work starts and reports *every* problem at once, each naming the file, line, key and what is allowed:

    recipes/x.yaml:7: model.n_heads: expected int, got str 'sixteen'
    recipes/x.yaml:9: train.schedule: 'cosin' is not allowed; choose one of: cosine, wsd
    recipes/x.yaml:3: model.hidden: unknown key; did you mean 'dim'? (allowed: dim, n_layers, …)

Cross-field rules live in each dataclass's `check()` method, which returns a list of (key, message) pairs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fournil.bake.config import LadderConfig, PlanConfig
from fournil.console import UsageError
from fournil.corpus.config import CorpusConfig
from fournil.eval.config import EvalConfig
from fournil.lm.config import ModelConfig
from fournil.tokenizer.config import TokenizerConfig
from fournil.train.config import TrainConfig

_INVALID = object()  # a value that failed conversion (its problem is already recorded)
RECIPE_DIRS = (
    Path(__file__).resolve().parent / "_recipes",  # installed wheel (force-included)
    Path(__file__).resolve().parent.parent / "recipes",  # source checkout / editable install
)


@dataclass(kw_only=True)
class Recipe:
    """A whole recipe: one section per stage (each stage's config.py is pure data, importable from here)."""

    name: str
    description: str = ""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: TrainConfig | None = None  # supervised fine-tuning: same fields, its own schedule and batch
    eval: EvalConfig = field(default_factory=EvalConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)  # `fournil bake --plan`: GPUs, MFU, unique tokens
    ladder: LadderConfig | None = None  # `fournil scaling run`: the rungs trained on this recipe's data

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.tokenizer.vocab_size != self.model.vocab_size:
            problems.append(("model.vocab_size", f"{self.model.vocab_size} differs from tokenizer.vocab_size="
                                                 f"{self.tokenizer.vocab_size}; they must be equal"))
        if self.sft is not None and self.sft.seq_len > self.model.max_seq_len:
            problems.append(("sft.seq_len", f"{self.sft.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"))
        if self.train.seq_len > self.model.max_seq_len:
            problems.append(
                ("train.seq_len", f"{self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
            )
        return problems


class RecipeError(UsageError):
    """One or more problems in a recipe; the message lists them all."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]):
        self.problems = problems
        lines = [f"{source}:{line}: {key}: {msg}" if line else f"{source}: {key}: {msg}" for line, key, msg in problems]
        super().__init__(f"invalid recipe ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  " + "\n  ".join(lines))


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a path, or a bare preset name like `croissant-10m`, to a recipe file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and path.parent == Path("."):
        for directory in RECIPE_DIRS:
            candidate = directory / f"{path.name}.yaml"
            if candidate.is_file():
                return candidate
    raise UsageError(f"recipe not found: {name_or_path} (known presets: {', '.join(list_presets()) or 'none'})")


def list_presets() -> list[str]:
    for directory in RECIPE_DIRS:
        if directory.is_dir():
            return sorted(p.stem for p in directory.glob("*.yaml"))
    return []


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe file; `overrides` are dotted keys (`{"model.dim": 64}`) applied on top."""
    path = find_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read recipe: {exc}") from exc
    return parse_recipe(text, source=str(path), overrides=overrides)


def parse_recipe(text: str, source: str = "<recipe>", overrides: dict[str, Any] | None = None) -> Recipe:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise UsageError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError as exc:  # PyYAML composes recursively: `[[[[…` thousands deep exhausts the stack
        raise UsageError(f"{source}: not valid YAML: nested too deeply for a recipe") from exc
    lines = _key_lines(node)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [(1, "<top>", f"expected a mapping of sections, got {type(data).__name__}")])
    problems: list[tuple[int | None, str, str]] = []
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):  # `--set model.dim.x=1`: model.dim is a value, not a section
                # each part spelled as problems name keys: a control character would split the message's line
                key, spelled = ".".join(parents[:depth + 1]), ".".join(map(_key_name, parents[:depth + 1]))
                problems.append((lines.get(key), ".".join(map(_key_name, dotted.split("."))),
                                 f"cannot set it: {spelled} is not a mapping"))
                break
        else:
            target[leaf] = value
    recipe = build(Recipe, data, "", lines, problems)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def to_dict(config: Any) -> dict[str, Any]:
    """A config object back to plain YAML-able data (tuples become lists)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def build(cls: type, data: Any, prefix: str, lines: dict[str, int], problems: list) -> Any:
    """Build dataclass `cls` from `data`, appending (line, key, message) for every problem found."""
    where = prefix.rstrip(".") or "<top>"
    if not isinstance(data, dict):
        problems.append((lines.get(where), where, f"expected a mapping, got {_describe(data)}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    n_unknown_before = len(problems)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append((lines.get(prefix + _key_name(key)), prefix + _key_name(key),
                             f"unknown key; {hint}(allowed: {', '.join(fields)})"))
    values, valid = {}, len(problems) == n_unknown_before
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append((lines.get(where), key, "required key is missing"))
                valid = False
            continue
        values[name] = _convert(hints[name], data[name], key, lines, problems)
        valid &= values[name] is not _INVALID and not (values[name] is None and dataclasses.is_dataclass(hints[name]))
    if not valid:
        return None  # cross-field checks would only repeat what is already reported
    obj = cls(**values)
    for name, msg in obj.check() if hasattr(obj, "check") else ():
        problems.append((_nearest_line(lines, prefix + name, where), prefix + name, msg))
    return obj


def _convert(hint: Any, value: Any, key: str, lines: dict[str, int], problems: list) -> Any:
    line = lines.get(key)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        built = build(hint, value, key + ".", lines, problems)
        return _INVALID if built is None else built  # so a list or mapping of them never holds a None
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            problems.append((line, key, f"{value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}"))
            return _INVALID
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(inner[0], value, key, lines, problems)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            problems.append((line, key, f"expected a mapping, got {_describe(value)}"))
            return _INVALID
        items = {k: _convert(value_type, v, f"{key}.{_key_name(k)}", lines, problems) for k, v in value.items()}
        return _INVALID if _INVALID in items.values() else {key_type(k): v for k, v in items.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            problems.append((line, key, f"expected a list, got {_describe(value)}"))
            return _INVALID
        items = [_convert(item_type, v, f"{key}[{i}]", lines, problems) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else items
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or (args[-1] is not Ellipsis and len(value) != len(args)):
            want = f"a list of {len(args)}" if args[-1] is not Ellipsis else "a list"
            problems.append((line, key, f"expected {want}, got {_describe(value)}"))
            return _INVALID
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else args
        items = tuple(_convert(t, v, f"{key}[{i}]", lines, problems) for i, (t, v) in enumerate(zip(item_types, value, strict=True)))
        return _INVALID if _INVALID in items else items
    if hint is float and (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
        # YAML 1.1 reads `3e-4` as a string: accept numeric strings for floats only; an int of 400 digits
        # overflows a float, which is reported below as the string it was
        with contextlib.suppress(ValueError, OverflowError):
            value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        problems.append((line, key, f"expected a finite number, got {value}"))  # NaN passes every `<` check
        return _INVALID
    if hint in (int, float, str, bool) and (type(value) is not hint):
        problems.append((line, key, f"expected {hint.__name__}, got {_describe(value)}"))
        return _INVALID
    return value


def _key_name(key: Any) -> str:
    """A key as written in messages: quoted when it is empty or holds spaces or control characters at its ends."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(key)


def _nearest_line(lines: dict[str, int], key: str, where: str) -> int | None:
    """The line of `key`, else of its closest section written in the file (`sft.seq_len` left at its default)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in lines:
            return lines[".".join(parts[:end])]
    return lines.get(where)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 80 else shown[:77] + '…'}"


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Map dotted keys to 1-based line numbers, so errors can point into the file."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + _key_name(_scalar(key_node))  # spelled as problems name it (an empty key is '')
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix.rstrip('.')}[{i}]"
            lines[key] = item.start_mark.line + 1
    return lines


def _scalar(node: yaml.Node) -> Any:
    """A key as the loader sees it (`null` → None, `0x10` → 16), so its line is found under the same name."""
    if not isinstance(node, yaml.ScalarNode):
        return node.value
    try:
        return yaml.SafeLoader("").construct_object(node)
    except yaml.YAMLError:
        return node.value
