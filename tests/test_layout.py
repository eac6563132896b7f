"""Architecture rules that code review would otherwise have to remember."""

import ast
from pathlib import Path

import fournil

STAGES = ["corpus", "tokenizer", "model", "train", "eval", "infer", "serve"]
ROOT = Path(fournil.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_stages_never_import_a_later_stage():
    violations = []
    for i, stage in enumerate(STAGES):
        for path in (ROOT / stage).rglob("*.py") if (ROOT / stage).is_dir() else []:
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] == "fournil" and len(parts) > 1 and parts[1] in STAGES[i + 1:]:
                    violations.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not violations, "\n".join(violations)


def test_runtime_imports_no_stage():
    """fournil.lm is the runtime below every stage: stages import it, it imports none of them."""
    violations = [f"{path.relative_to(ROOT.parent)} imports {name}"
                  for path in (ROOT / "lm").rglob("*.py") for name in imported_modules(path)
                  if name.split(".")[0] == "fournil" and len(name.split(".")) > 1 and name.split(".")[1] in STAGES]
    assert not violations, "\n".join(violations)


def test_no_pickle_loading_anywhere():
    """Weights are loaded with safetensors or torch.load(weights_only=True), never plain pickle."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "pickle.load" in text or ("torch.load(" in text and "weights_only=True" not in text):
            offenders.append(str(path.relative_to(ROOT.parent)))
    assert not offenders


def test_cli_modules_import_nothing_heavy_at_module_level():
    """`fournil --help` must stay instant: stage CLI modules defer torch/transformers to their handlers."""
    heavy = {"torch", "transformers", "numpy", "datasets", "tokenizers"}
    for path in ROOT.rglob("cli.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {(n.module or "") if isinstance(n, ast.ImportFrom) else n.names[0].name for n in top}
        assert not {name.split(".")[0] for name in names} & heavy, path
