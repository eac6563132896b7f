"""`fournil model …`: inspect, create, convert and verify model directories."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from fournil.artifacts import claim_output, sha256_json
from fournil.console import print_json, print_table, status

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  fournil model info croissant-1.3b --batch-size 8 --seq-len 2048 --dtype bfloat16
  fournil model info recipes/croissant-10m.yaml --json
  fournil model info out/model                   (a fournil or transformers Llama directory)
  fournil model init croissant-10m out/model --seed 0
  fournil model convert out/model out/model-bf16 --dtype bfloat16 --max-shard-size 500MB
  fournil model verify out/model                 (logits vs transformers' LlamaForCausalLM)
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import POSITIVE, SEED, Stage, real

    stage = Stage(subparsers, common, "model", help="model sizes, random init, conversion, transformers parity",
                  description="Inspect, create, convert and verify Llama model directories.", epilog=EPILOG)
    info = stage.verb("info", cmd_info, dtype="weights/activations dtype")
    info.add_argument("source", help="recipe file, preset name (e.g. croissant-1.3b) or model directory")
    info.add_argument("--batch-size", type=POSITIVE, default=1, help="sequences per device for the memory estimate")
    info.add_argument("--seq-len", type=POSITIVE, default=None, help="tokens per sequence (default: the context length)")
    info.add_argument("--checkpointing", action="store_true", help="estimate with activation checkpointing")

    init = stage.verb("init", cmd_init, dtype="dtype to save in", force=True)
    init.add_argument("recipe", help="recipe file or preset name")
    init.add_argument("out", type=Path, help="output model directory")
    init.add_argument("--seed", type=SEED, default=0, help="torch seed for the initial weights")

    convert = stage.verb("convert", cmd_convert, dtype="cast floating weights", force=True)
    convert.add_argument("source", help="model directory (or hub id when online)")
    convert.add_argument("destination", type=Path, help="output directory")
    convert.add_argument("--max-shard-size", default="2GB", help="shard above this size (e.g. 500MB, 2GB, 1GiB)")
    convert.add_argument("--plain", action="store_true", help="plain transformers layout: no fournil.json")

    verify = stage.verb("verify", cmd_verify)
    verify.add_argument("source", help="model directory")
    verify.add_argument("--seq-len", type=POSITIVE, default=32, help="tokens per test sequence")
    verify.add_argument("--tolerance", type=real(0), default=1e-4, help="max |Δlogit| allowed (float32)")


def _load_config(source: str):
    """A model directory, a recipe (file or preset name), or a hub id like croissantllm/CroissantLLMBase."""
    from fournil.lm.hf import read_config, resolve
    from fournil.recipe import load_recipe

    if Path(source).is_dir():
        return read_config(source)
    if not Path(source).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith(".yaml"):
        return read_config(resolve(source, config_only=True))
    return load_recipe(source).model


def cmd_info(args: argparse.Namespace) -> None:
    """parameters, FLOPs per token, training memory of a recipe or model directory

    Parameter count, FLOPs per token and single-device training memory (weights, gradients, AdamW state,
    activations) at a given batch. Nothing is allocated: it is arithmetic on the config."""
    from fournil.lm.info import describe, human

    config = _load_config(args.source)
    report = describe(config, args.batch_size, args.seq_len, args.dtype, args.checkpointing)
    if args.json:
        print_json(report)
        return
    p, f, m = report["parameters"], report["flops_per_token"], report["memory"]
    mem = m["bytes"]
    rows = [
        ("shape", f"{config.n_layers} layers × dim {config.dim}, {config.n_heads} heads "
                  f"({config.kv_heads} kv), ffn {config.ffn_dim}, vocab {config.vocab_size}"),
        ("parameters", f"{p['total']:,} ({human(p['total'])})"),
        ("  non-embedding", f"{p['non_embedding']:,}"),
        ("  embedding / lm_head", f"{p['embedding']:,} / {p['lm_head']:,}" + (" (tied)" if not p["lm_head"] else "")),
        ("  attention / mlp / norms", f"{p['attention']:,} / {p['mlp']:,} / {p['norms']:,}"),
        (f"FLOPs/token @ {m['seq_len']} ctx", f"forward {human(f['forward'])}, training {human(f['training'])}"),
        (f"memory @ batch {m['batch_size']}×{m['seq_len']}, {m['dtype']}", ""),
        ("  weights", human(mem["weights"], "B")),
        ("  gradients", human(mem["gradients"], "B")),
        ("  AdamW state (fp32)", human(mem["optimizer"], "B")),
        ("  activations" + (" (checkpointed)" if m["activation_checkpointing"] else ""), human(mem["activations"], "B")),
        ("  total", human(mem["total"], "B")),
    ]
    print_table(f"model {args.source}", rows)


def cmd_init(args: argparse.Namespace) -> None:
    """write a randomly initialised model directory from a recipe

    Build the recipe's model with N(0, init_std) weights and save it as a transformers directory."""
    import torch

    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama
    from fournil.recipe import load_recipe, to_dict

    recipe = load_recipe(args.recipe)
    claim_output(args.out, "fournil.model", force=args.force, option="OUT",
                 inputs=[Path(args.recipe) if Path(args.recipe).is_file() else None])
    torch.manual_seed(args.seed)
    with status(f"initialising {recipe.name}"):
        model = Llama(recipe.model)
        save_model(model, args.out, dtype=args.dtype,
                   manifest={"recipe": recipe.name, "recipe_sha256": sha256_json(to_dict(recipe)), "seed": args.seed})
    log.info("wrote %s (%s parameters)", args.out, f"{model.num_params():,}")


def cmd_convert(args: argparse.Namespace) -> None:
    """copy a model directory with a dtype cast, resharding, or as plain transformers layout

    Convert between fournil model directories and plain transformers layout (which differ only by the
    fournil.json manifest), cast dtype, and reshard. Only safetensors are read."""
    from fournil.lm.hf import convert, parse_size

    claim_output(args.destination, "fournil.model", inputs=[args.source], force=args.force, option="DESTINATION")
    with status(f"converting {args.source} → {args.destination}"):
        convert(args.source, args.destination, args.dtype, parse_size(args.max_shard_size), args.plain)
    log.info("wrote %s", args.destination)


def cmd_verify(args: argparse.Namespace) -> int:
    """load a directory in fournil and in transformers and compare logits

    Proves a directory is HF-identical: the same random tokens go through fournil's Llama and
    transformers' LlamaForCausalLM (loaded with no remote code); the largest logit difference is reported."""
    from fournil.model.parity import compare_with_transformers

    result = compare_with_transformers(args.source, seq_len=args.seq_len)
    result["tolerance"] = args.tolerance
    result["ok"] = result["max_abs_diff"] <= args.tolerance
    if args.json:
        print_json(result)
    else:
        print_table(f"fournil vs transformers: {args.source}", [(k, str(v)) for k, v in result.items()])
    return 0 if result["ok"] else 1
