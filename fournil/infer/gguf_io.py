"""GGUF ↔ model directory: the tensor-name map, the q/k row permutation, and the tokenizer keys.

llama.cpp stores q/k rows in Meta's interleaved RoPE layout (pairs (2i, 2i+1) rotate together) while transformers
uses "rotate half" (pairs (i, i+D/2)); per head, GGUF row 2i+j holds HF row j·D/2+i. Import undoes that
permutation, export applies it. Quantised tensors are dequantised with `gguf.quants` (numpy, exact formulas).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fournil import artifacts
from fournil.console import UsageError
from fournil.lm.config import ModelConfig
from fournil.lm.hf import DTYPES, check_weights, save_state_dict

log = logging.getLogger(__name__)

# GGUF name (per block: "blk.{i}.") → HF name
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
# llama.cpp's pre-tokenizer names we can rebuild exactly for a "gpt2" (byte-level BPE) vocabulary:
# "smollm" splits every digit before the GPT-2 regex; "gpt2" is the GPT-2 regex alone
BYTE_LEVEL_PRE = {"smollm": True, "gpt2": False, "gpt-2": False, "default": False}
CONTROL, USER_DEFINED = 3, 4  # gguf.TokenType


def to_hf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF (interleaved RoPE) q/k rows → transformers' rotate-half rows."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def to_gguf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """transformers' rotate-half q/k rows → GGUF's interleaved rows (the inverse of `to_hf_rows`)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader: Any, key: str, default: Any = None, required: bool = False, path: str = "") -> Any:
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise UsageError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def read_gguf_config(reader: Any, path: str) -> ModelConfig:
    """The model shape from `llama.*` metadata; anything fournil's Llama cannot run exactly is an error."""
    arch = _field(reader, "general.architecture", required=True, path=path)
    if arch != "llama":
        raise UsageError(f"{path}: general.architecture is {arch!r}; only 'llama' GGUF files can be imported")
    scaling = _field(reader, "llama.rope.scaling.type", "none")
    if scaling not in (None, "none"):
        raise UsageError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported (only plain RoPE)")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise UsageError(f"{path}: rope_freqs.weight (Llama-3 style RoPE scaling) is not supported")
    n_heads = int(_field(reader, "llama.attention.head_count", required=True, path=path))
    dim = int(_field(reader, "llama.embedding_length", required=True, path=path))
    rope_dims = _field(reader, "llama.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != dim // n_heads:
        raise UsageError(f"{path}: llama.rope.dimension_count={rope_dims} ≠ head dim {dim // n_heads} (partial RoPE)")
    tokens = _field(reader, "tokenizer.ggml.tokens", required=True, path=path)
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_heads))
    names = {t.name for t in reader.tensors}
    config = ModelConfig(
        dim=dim,
        n_layers=int(_field(reader, "llama.block_count", required=True, path=path)),
        n_heads=n_heads,
        n_kv_heads=None if n_kv == n_heads else n_kv,
        ffn_dim=int(_field(reader, "llama.feed_forward_length", required=True, path=path)),
        vocab_size=int(_field(reader, "llama.vocab_size", len(tokens))),
        max_seq_len=int(_field(reader, "llama.context_length", 2048)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    if problems := config.check():
        raise UsageError(f"{path}: " + "; ".join(f"{k}: {m}" for k, m in problems))
    return config


def read_gguf_state(reader: Any, config: ModelConfig, path: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor dequantised, renamed to HF keys, q/k rows put back in rotate-half order."""
    from gguf import GGMLQuantizationType, quants

    state = {}
    for t in reader.tensors:
        if t.name in GLOBAL_NAMES:
            name = GLOBAL_NAMES[t.name]
        elif (m := BLOCK.match(t.name)) and m.group(2) in BLOCK_NAMES:
            name = f"model.layers.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}"
        else:
            raise UsageError(f"{path}: unexpected tensor {t.name!r} for a Llama")
        kind = GGMLQuantizationType(t.tensor_type)
        try:
            array = quants.dequantize(np.asarray(t.data), kind) if kind not in (
                GGMLQuantizationType.F32, GGMLQuantizationType.F16) else np.asarray(t.data, dtype=np.float32)
        except NotImplementedError as exc:
            raise UsageError(f"{path}: {t.name}: cannot dequantise {kind.name} ({exc})") from exc
        array = array.reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims fastest-first
        if name.endswith("q_proj.weight"):
            array = to_hf_rows(array, config.n_heads)
        elif name.endswith("k_proj.weight"):
            array = to_hf_rows(array, config.kv_heads)
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C")).to(dtype)
    return state


def gguf_tokenizer(reader: Any, path: str) -> tuple[Any, dict[str, Any]]:
    """A `tokenizers.Tokenizer` and transformers' tokenizer_config.json rebuilt from the GGUF vocabulary."""
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in BYTE_LEVEL_PRE:
        raise UsageError(f"{path}: tokenizer.ggml.model={kind!r}, pre={pre!r}: import supports byte-level BPE "
                         f"('gpt2') with pre-tokenizer {', '.join(sorted(BYTE_LEVEL_PRE))}")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", required=True, path=path)]
    tok = HFTokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if BYTE_LEVEL_PRE[pre] else byte_level)
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=ty == CONTROL, normalized=False)
               for t, ty in zip(tokens, types, strict=True) if ty in (CONTROL, USER_DEFINED)]
    tok.add_tokens(special)

    def token(key: str) -> str | None:
        i = _field(reader, key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos,
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": add_bos, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(reader, "llama.context_length", 2048)),
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": ty == CONTROL}
                                 for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
                                 if ty in (CONTROL, USER_DEFINED)},
    }
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tok, config


def import_gguf(file: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """A GGUF Llama → a model directory (config, dequantised safetensors, tokenizer.json, chat template)."""
    from gguf import GGUFReader

    file, out = Path(file), Path(out)
    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    try:
        reader = GGUFReader(str(file))
    except Exception as exc:  # gguf raises ValueError/struct errors on anything that is not GGUF
        raise UsageError(f"{file}: not a readable GGUF file: {exc}") from exc
    config = read_gguf_config(reader, str(file))
    config.dtype = dtype
    tok, tok_config = gguf_tokenizer(reader, str(file))
    state = read_gguf_state(reader, config, str(file), DTYPES[dtype])
    check_weights(config, state, str(file))  # the header's shape against its tensors, before anything is written
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.mark_incomplete(out, "fournil.model")
    artifacts.write_text(out / "tokenizer.json", tok.to_str())
    artifacts.write_json(out / "tokenizer_config.json", tok_config)
    if "chat_template" in tok_config:
        artifacts.write_text(out / "chat_template.jinja", tok_config["chat_template"])
    quant = sorted({reader.tensors[i].tensor_type.name for i in range(len(reader.tensors))})
    save_state_dict(state, config, out, manifest={
        "imported_from": file.name, "gguf_sha256": artifacts.sha256_file(file), "gguf_tensor_types": quant,
        "gguf_name": _field(reader, "general.name"),
    })
    log.info("imported %s (%s) → %s", file.name, "/".join(quant), out)
    return out


EXPORT_TYPES = ("f32", "f16", "q8_0", "q4_0")
HF_TO_GGUF = {hf: gg for gg, hf in GLOBAL_NAMES.items()}
BLOCK_TO_GGUF = {hf: gg for gg, hf in BLOCK_NAMES.items()}
HF_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    if (m := HF_BLOCK.match(hf_name)) and m.group(2) in BLOCK_TO_GGUF:
        return f"blk.{m.group(1)}.{BLOCK_TO_GGUF[m.group(2)]}"
    raise UsageError(f"tensor {hf_name!r} has no GGUF name (not a Llama weight)")


def _write_byte_level_tokenizer(writer: Any, tok_json: dict[str, Any], tok_config: dict[str, Any],
                                source: Path) -> None:
    """A byte-level BPE (GPT-2 family, e.g. an imported SmolLM2): vocabulary, merges, specials, template."""
    model = tok_json.get("model") or {}
    vocab = model.get("vocab") or {}
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    size = max([*vocab.values(), *added], default=-1) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [1] * size
    for piece, i in vocab.items():
        tokens[i] = piece
    for i, t in added.items():
        tokens[i], types[i] = t["content"], CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = json.dumps(tok_json.get("pre_tokenizer"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if '"Digits"' in pre else "gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {piece: i for i, piece in enumerate(tokens)}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        value = tok_config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in ids:
            add(ids[value])
    writer.add_add_bos_token(bool(tok_config.get("add_bos_token", False)))
    template = tok_config.get("chat_template")
    jinja = source / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, str):
        writer.add_chat_template(template)


def export_gguf(directory: str | Path, out: str | Path, qtype: str = "f16") -> Path:
    """A model directory → one GGUF file llama.cpp runs: weights (f32/f16/q8_0/q4_0), shape, tokenizer, template."""
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quants

    from fournil.lm.hf import read_config, read_state_dict

    directory, out = Path(directory), Path(out)
    if qtype not in EXPORT_TYPES:
        raise UsageError(f"--type {qtype!r}: choose one of {', '.join(EXPORT_TYPES)}")
    config = read_config(directory)
    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if hf_config.get("quantization_config"):
        raise UsageError(f"{directory}: already quantised; export the floating-point model (GGUF quantises itself)")
    tok_file = directory / "tokenizer.json"
    if not tok_file.is_file():
        raise UsageError(f"{directory}: no tokenizer.json; a GGUF file must carry its tokenizer")
    tok_json = artifacts.read_json(tok_file)
    tok_config_file = directory / "tokenizer_config.json"
    tok_config = artifacts.read_json(tok_config_file) if tok_config_file.is_file() else {}
    state = read_state_dict(directory, torch.float32)
    check_weights(config, state, str(directory))
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    kind, file_type = {"f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
                       "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
                       "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
                       "q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0)}[qtype]

    with artifacts.atomic_path(out) as tmp:
        writer = GGUFWriter(str(tmp), "llama")
        writer.add_name(directory.resolve().name)
        writer.add_context_length(config.max_seq_len)
        writer.add_embedding_length(config.dim)
        writer.add_block_count(config.n_layers)
        writer.add_feed_forward_length(config.ffn_dim)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.kv_heads)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        pre = json.dumps(tok_json.get("pre_tokenizer"))
        if (tok_json.get("model") or {}).get("byte_fallback") and "Metaspace" in pre:
            from fournil.tokenizer.bpe import Tokenizer
            from fournil.tokenizer.gguf import write_tokenizer

            write_tokenizer(writer, Tokenizer.load(directory))
        elif "ByteLevel" in pre:
            _write_byte_level_tokenizer(writer, tok_json, tok_config, directory)
        else:
            raise UsageError(f"{tok_file}: tokenizer is neither fournil's (Metaspace + byte fallback) nor byte-level "
                             "BPE; cannot describe it to llama.cpp")
        for name, tensor in state.items():
            array = tensor.numpy()
            if name.endswith("q_proj.weight"):
                array = to_gguf_rows(array, config.n_heads)
            elif name.endswith("k_proj.weight"):
                array = to_gguf_rows(array, config.kv_heads)
            array = np.ascontiguousarray(array, dtype=np.float32)
            if array.ndim == 1 or kind == GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name(name), array)  # norms stay f32, as llama.cpp expects
            elif kind == GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name(name), array.astype(np.float16))
            else:
                try:
                    data = quants.quantize(array, kind)
                except quants.QuantError as exc:
                    raise UsageError(f"{name}: cannot quantise to {qtype}: {exc}") from exc
                writer.add_tensor(gguf_name(name), data, raw_shape=data.shape, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("wrote %s (%s)", out, qtype)
    return out
