"""Hugging Face model directories: config.json ↔ ModelConfig, safetensors weights (sharded above a threshold).

A fournil model directory *is* a plain transformers directory (`AutoModelForCausalLM.from_pretrained(dir)` loads
it with no remote code) plus a `fournil.json` manifest. Only safetensors are read: pickled `.bin`/`.pt` files
can execute code when loaded, so they are refused, never opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fournil import artifacts
from fournil.console import FournilError, UsageError
from fournil.lm.config import ModelConfig
from fournil.lm.llama import Llama

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_FILE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")
# buffers that old transformers versions saved into checkpoints; recomputed, never needed
IGNORED_KEYS = re.compile(r"\.rotary_emb\.inv_freq$")
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json transformers writes for the same LlamaConfig, plus legacy keys older readers look for."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,  # transformers < 5, llama.cpp's converter
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "dtype": config.dtype,
        "torch_dtype": config.dtype,  # transformers < 5
        "use_cache": True,
    }


_INT_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
_OPTIONAL_INT_FIELDS = ("num_key_value_heads", "head_dim", "max_position_embeddings", "bos_token_id", "pad_token_id")
_FLOAT_FIELDS = ("rope_theta", "rms_norm_eps", "initializer_range")


def _check_types(hf: Any, source: str) -> None:
    """config.json is input: wrong types become a UsageError here, not a TypeError deep in a comparison."""
    if not isinstance(hf, dict):
        raise UsageError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    problems = []

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for key in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
        if key in hf and not (is_int(hf[key]) or (key in _OPTIONAL_INT_FIELDS and hf[key] is None)):
            problems.append(f"{key}: expected an integer, got {hf[key]!r:.60}")
    for key in _FLOAT_FIELDS:
        value = hf.get(key)
        if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                      and math.isfinite(value)):
            problems.append(f"{key}: expected a finite number, got {value!r:.60}")
    for key in ("rope_parameters", "rope_scaling"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            problems.append(f"{key}: expected an object, got {hf[key]!r:.60}")
    eos = hf.get("eos_token_id")
    if eos is not None and not (is_int(eos) or (isinstance(eos, list) and eos and all(map(is_int, eos)))):
        problems.append(f"eos_token_id: expected an integer or a non-empty list of them, got {eos!r:.60}")
    if problems:
        raise UsageError(f"{source}: invalid config: {'; '.join(problems)}")


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Read a transformers Llama config.json; anything we cannot run exactly is an error, not a guess."""
    _check_types(hf, source)
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type != "llama" or (archs and archs[0] not in SUPPORTED_ARCHITECTURES):
        raise UsageError(f"{source}: unsupported architecture {archs or model_type!r}; "
                         f"fournil runs {', '.join(SUPPORTED_ARCHITECTURES)} (model_type 'llama')")
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            problems.append(f"{key}=true (fournil's Llama has no biases)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (only 'default' RoPE)")
    n_heads = hf["num_attention_heads"]
    if "head_dim" in hf and hf["head_dim"] is not None and hf["head_dim"] * n_heads != hf["hidden_size"]:
        problems.append(f"head_dim={hf['head_dim']} ≠ hidden_size/num_attention_heads")
    if problems:
        raise UsageError(f"{source}: unsupported Llama variant: {'; '.join(problems)}")
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    eos = hf.get("eos_token_id", 2)
    config = ModelConfig(
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=None if hf.get("num_key_value_heads", n_heads) in (None, n_heads) else hf["num_key_value_heads"],
        ffn_dim=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=_finite(rope.get("rope_theta", hf.get("rope_theta", 10000.0)), "rope_theta", source),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
        bos_token_id=hf.get("bos_token_id", 1),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
        dtype=dtype if dtype in DTYPES else "float32",
    )
    if problems := config.check():
        raise UsageError(f"{source}: " + "; ".join(f"{k}: {m}" for k, m in problems))
    return config


def read_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UsageError(f"{directory}: not a model directory (no config.json)")
    try:
        return from_hf_config(artifacts.read_json(path), str(path))
    except KeyError as exc:
        raise UsageError(f"{path}: missing required field {exc.args[0]!r}") from exc


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a model directory, in index order; refuses pickle-only directories."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (ValueError, RecursionError, AttributeError) as exc:
            raise UsageError(f"{index}: not a valid index (a JSON object with a weight_map): {exc}") from exc
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise UsageError(f"{index}: weight_map must map tensor names to shard file names")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name or not WEIGHT_FILE.match(name) or name == INDEX_FILE:
                raise UsageError(f"{index}: refusing shard name {name!r} (must be a plain model-*.safetensors name)")
        files = [directory / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UsageError(f"{index}: shards listed but missing: {', '.join(missing)}")
        return files
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES) if directory.is_dir() else []
    if pickles:
        raise UsageError(f"{directory}: only pickled weights found ({', '.join(pickles)}); fournil never unpickles "
                         "files (they can run code). Convert them to safetensors with a tool you trust.")
    raise UsageError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_state_dict(directory: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensor = f.get_tensor(key)
                    state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        except (SafetensorError, OSError, ValueError, TypeError) as exc:  # a truncated or foreign file
            raise UsageError(f"{path}: not a readable safetensors file: {exc}") from exc
    return state


def check_size(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a config.json that asks for far more parameters than the weights hold, before building anything.

    Even on the meta device, a config with a billion layers would build a billion modules; this costs nothing.
    """
    from fournil.lm.info import param_counts

    wanted = param_counts(config).total
    held = sum(t.numel() for k, t in state.items() if not IGNORED_KEYS.search(k))
    if not config.tie_embeddings and "lm_head.weight" not in state:
        held += config.vocab_size * config.dim  # an untied head left out of the file is reported by name later
    if wanted > 2 * held + 1_000_000:
        raise UsageError(f"{source}: config.json describes {wanted:,} parameters but the weights hold {held:,}; "
                         "refusing to build a model that size (a wrong or hostile config.json?)")


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Meta tensors (a quantised directory's float view) hold no values to check."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.is_meta and not torch.isfinite(v).all()]
    if bad:
        raise UsageError(f"{source}: non-finite values (NaN/inf) in {len(bad)} tensors: {', '.join(bad[:10])}")


def check_state_dict(model: Llama, state: dict[str, torch.Tensor], source: str) -> None:
    """Compare checkpoint keys and shapes with the model's; list every difference by name."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    given = {k: tuple(v.shape) for k, v in state.items() if not IGNORED_KEYS.search(k)}
    not_float = sorted(f"{k}: {state[k].dtype}" for k in set(expected) & set(given) if not state[k].is_floating_point())
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(f"{k}: checkpoint {list(given[k])} vs model {list(expected[k])}"
                        for k in set(expected) & set(given) if given[k] != expected[k])
    if missing or unexpected or mismatched or not_float:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
                             ("not floating point", not_float)):
            if items:
                shown = items[:20] + ([f"… and {len(items) - 20} more"] if len(items) > 20 else [])
                parts.append(f"{title} ({len(items)}):\n    " + "\n    ".join(shown))
        raise UsageError(f"{source}: weights do not match config.json:\n  " + "\n  ".join(parts))


def check_weights(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> Llama:
    """What `load_model` checks before it loads, also for code that reads a directory's tensors without building
    the model (convert, quantize, GGUF export and import): size first, so nothing huge is built, then names and
    shapes against a model on the meta device (returned: `load_model` loads into it), then finite values."""
    check_size(config, state, source)
    with torch.device("meta"):
        skeleton = Llama(config)
    check_state_dict(skeleton, state, source)
    check_finite(state, source)
    return skeleton


def load_model(source: str | Path, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu") -> Llama:
    """Load a fournil or transformers Llama directory (or a hub id when online) into our `Llama`."""
    directory = resolve(source)
    config = read_config(directory)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    state = read_state_dict(directory, torch_dtype)
    model = check_weights(config, state, str(directory))
    state = {k: v for k, v in state.items() if not IGNORED_KEYS.search(k)}
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device)


def resolve(source: str | Path, config_only: bool = False) -> Path:
    """A local directory as is; `org/name` from the Hugging Face hub (weights as safetensors only)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{source}: expected a model directory, got a file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        try:
            from huggingface_hub import snapshot_download

            patterns = ["config.json"] if config_only else ["*.json", "*.safetensors", "tokenizer*"]
            return Path(snapshot_download(str(source), allow_patterns=patterns))
        except Exception as exc:  # network, auth, offline mode: all end the same way for the user
            raise FournilError(f"cannot fetch {source} from the Hugging Face hub: {exc}") from exc
    raise UsageError(f"{source}: no such model directory")


def save_model(model: Llama, directory: str | Path, dtype: str | None = None,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
               manifest: dict[str, Any] | None = None) -> Path:
    """Write config.json, generation_config.json and safetensors weights (sharded above `max_shard_bytes`)."""
    config = model.config
    if dtype is not None:
        config = _with_dtype(config, dtype)
    state = {k: v.detach().to(DTYPES[config.dtype]).contiguous() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors stores no aliases; transformers re-ties on load
    return save_state_dict(state, config, directory, max_shard_bytes, manifest)


def save_state_dict(state: dict[str, torch.Tensor], config: ModelConfig, directory: str | Path,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    manifest: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():  # a re-save must not leave stale shards that an index could pick up
        if WEIGHT_FILE.match(old.name):
            old.unlink()
    artifacts.mark_incomplete(directory, "fournil.model")
    shards = _split(state, max_shard_bytes)
    if len(shards) == 1:
        with artifacts.atomic_path(directory / SINGLE_FILE) as tmp:
            save_file(shards[0], str(tmp), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            with artifacts.atomic_path(directory / name) as tmp:
                save_file(shard, str(tmp), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        artifacts.write_json(directory / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    artifacts.write_json(directory / "config.json", to_hf_config(config))
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    if config.pad_token_id is not None:
        generation["pad_token_id"] = config.pad_token_id
    artifacts.write_json(directory / "generation_config.json", generation)
    summary = {"parameters": sum(t.numel() for t in state.values()), "dtype": config.dtype}
    artifacts.write_manifest(directory, producer="fournil.model", model=summary, **(manifest or {}))
    return directory


def convert(source: str | Path, destination: str | Path, dtype: str | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, plain: bool = False) -> Path:
    """Copy a model directory, optionally casting dtype and (re)sharding; `plain` leaves out fournil.json.

    Tensors are checked against the config (names and shapes) before anything is written. Tokenizer and other
    non-weight files are copied as they are.
    """
    src = resolve(source)
    dst = Path(destination)
    if dst.resolve() == src.resolve():
        raise UsageError("source and destination are the same directory")
    config = read_config(src)
    if dtype is not None:
        config = _with_dtype(config, dtype)
    state = read_state_dict(src, DTYPES[config.dtype])
    check_weights(config, state, str(src))  # a NaN copied into a new directory would only surface at inference
    state = {k: v.contiguous() for k, v in state.items() if not IGNORED_KEYS.search(k)}
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    dst.mkdir(parents=True, exist_ok=True)
    for extra in src.iterdir():
        if extra.is_file() and not WEIGHT_FILE.match(extra.name) and extra.suffix not in PICKLE_SUFFIXES and \
                extra.name not in ("config.json", "generation_config.json", artifacts.MANIFEST):
            with artifacts.atomic_path(dst / extra.name) as tmp:
                shutil.copyfile(extra, tmp)
    save_state_dict(state, config, dst, max_shard_bytes, manifest={"converted_from": str(source)})
    if plain:
        (dst / artifacts.MANIFEST).unlink()
    return dst


def _finite(value: Any, key: str, source: str) -> float:
    with contextlib.suppress(TypeError, ValueError, OverflowError):  # an int past float range
        if math.isfinite(number := float(value)):
            return number
    raise UsageError(f"{source}: invalid config: {key}: expected a finite number, got {value!r:.60}")


def _with_dtype(config: ModelConfig, dtype: str) -> ModelConfig:
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is not supported; choose one of: {', '.join(DTYPES)}")
    return replace(config, dtype=dtype)


def _split(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy shards in key order, each under `max_bytes` unless one tensor alone is larger."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1GiB', '123' → bytes (decimal units as transformers uses them, binary with 'i')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"cannot read size {text!r}; write e.g. 2GB, 500MB or 1GiB")
    number, unit, binary = match.groups()
    power = "KMGT".index(unit.upper()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)
