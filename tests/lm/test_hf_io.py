"""Model directories: sharding, conversion, and explicit errors for everything that does not fit."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from fournil.console import UsageError
from fournil.lm.config import ModelConfig
from fournil.lm.hf import INDEX_FILE, convert, load_model, parse_size, read_state_dict, save_model
from fournil.lm.llama import Llama

CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=97, max_seq_len=64)


@pytest.fixture
def saved(tmp_path):
    model = Llama(CONFIG).eval()
    save_model(model, tmp_path / "m")
    return model, tmp_path / "m"


def same_weights(a: Llama, b: Llama) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_directory_layout_and_manifest(saved):
    _, directory = saved
    names = {p.name for p in directory.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "fournil.json"}
    manifest = json.loads((directory / "fournil.json").read_text())
    assert manifest["complete"] is True and manifest["model"]["parameters"] == Llama(CONFIG).num_params()
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temp files left


def test_sharded_save_round_trip(tmp_path):
    model = Llama(CONFIG)
    save_model(model, tmp_path, max_shard_bytes=30_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    assert same_weights(load_model(tmp_path), model)


def test_resave_unsharded_removes_stale_shards(tmp_path):
    model = Llama(CONFIG)
    save_model(model, tmp_path, max_shard_bytes=30_000)
    save_model(model, tmp_path)
    assert not (tmp_path / INDEX_FILE).exists()
    assert [p.name for p in tmp_path.glob("*.safetensors")] == ["model.safetensors"]


def test_convert_dtype_and_plain(saved, tmp_path):
    model, directory = saved
    (directory / "tokenizer.json").write_text("{}")
    out = convert(directory, tmp_path / "bf16", dtype="bfloat16", plain=True)
    assert not (out / "fournil.json").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    state = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    torch.testing.assert_close(state["lm_head.weight"], model.lm_head.weight.detach().bfloat16())
    back = convert(out, tmp_path / "fp32", dtype="float32", max_shard_bytes=20_000)
    assert (back / "fournil.json").exists() and (back / INDEX_FILE).exists()
    assert load_model(back).config.dtype == "float32"


def test_convert_refuses_same_directory(saved):
    with pytest.raises(UsageError, match="same directory"):
        convert(saved[1], saved[1])


def test_missing_unexpected_and_mismatched_keys_are_listed_by_name(saved):
    _, directory = saved
    state = load_file(directory / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    state["model.norm.weight"] = torch.ones(65)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(UsageError) as err:
        load_model(directory)
    text = str(err.value)
    assert "missing keys (1):" in text and "model.layers.1.mlp.up_proj.weight" in text
    assert "unexpected keys (1):" in text and "model.layers.9.extra.weight" in text
    assert "model.norm.weight: checkpoint [65] vs model [64]" in text


def test_old_checkpoints_with_rotary_buffers_load(saved):
    model, directory = saved
    state = load_file(directory / "model.safetensors")
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(state, directory / "model.safetensors")
    assert same_weights(load_model(directory), model)


def test_non_llama_architecture_is_refused(saved):
    _, directory = saved
    config = json.loads((directory / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"unsupported architecture.*LlamaForCausalLM"):
        load_model(directory)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("attention_bias", True, "attention_bias=true"),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5e5}, "rope type 'llama3'"),
])
def test_unsupported_llama_variants_are_refused(saved, key, value, message):
    _, directory = saved
    config = json.loads((directory / "config.json").read_text())
    config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=message):
        load_model(directory)


def test_pickled_weights_are_refused_never_opened(tmp_path, saved):
    _, directory = saved
    (directory / "model.safetensors").unlink()
    # a file whose unpickling would run code: if it were ever loaded, the marker file would appear
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (directory / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UsageError, match="never unpickles"):
        load_model(directory)
    assert not marker.exists()


def test_path_traversal_in_shard_index_is_refused(saved):
    _, directory = saved
    (directory / INDEX_FILE).write_text(json.dumps({"weight_map": {"lm_head.weight": "../../etc/passwd"}}))
    with pytest.raises(UsageError, match="refusing shard name"):
        read_state_dict(directory)


def test_nan_weights_are_refused(saved):
    _, directory = saved
    state = load_file(directory / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, directory / "model.safetensors")
    with pytest.raises(UsageError, match=r"non-finite.*model.layers.0.mlp.down_proj.weight"):
        load_model(directory)


@pytest.mark.parametrize("broken", ["", "{not json", json.dumps({"model_type": "llama"})])
def test_broken_config_json_is_a_usage_error(saved, broken):
    _, directory = saved
    (directory / "config.json").write_text(broken)
    with pytest.raises(UsageError, match=r"config.json"):
        load_model(directory)


def test_not_a_directory(tmp_path):
    with pytest.raises(UsageError, match="no such model directory"):
        load_model(tmp_path / "nope")


def test_tied_embeddings_stay_tied_after_load(tmp_path):
    save_model(Llama(replace(CONFIG, tie_embeddings=True)), tmp_path)
    model = load_model(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")


@pytest.mark.parametrize(("text", "expected"), [("2GB", 2_000_000_000), ("500MB", 500_000_000),
                                                ("1GiB", 1024**3), ("123", 123), ("1.5kB", 1500)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(UsageError, match="cannot read size"):
        parse_size("lots")
