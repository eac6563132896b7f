"""Hostile model directories: every defect is a UsageError naming the file, found before any allocation, and a
pickle is never opened (a pickle whose __reduce__ would create a marker file proves it)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fournil.console import UsageError
from fournil.lm.config import ModelConfig
from fournil.lm.hf import convert, load_model, save_model
from fournil.lm.llama import Llama
from tests.reliability.conftest import assert_clean_failure, fournil

SMALL = ModelConfig(dim=32, n_layers=1, n_heads=4, ffn_dim=64, vocab_size=64, max_seq_len=64)


class Marker:
    """Unpickling this creates `path`: if the file ever exists, something unpickled our weights."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model") / "base"
    save_model(Llama(SMALL), directory)
    return directory


def variant(base: Path, tmp_path: Path, mutate: Callable[[Path], None]) -> Path:
    directory = tmp_path / "m"
    shutil.copytree(base, directory)
    mutate(directory)
    return directory


def edit_config(**changes) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        config.update(changes)
        (directory / "config.json").write_text(json.dumps(config))
    return mutate


def edit_weights(change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        state = load_file(directory / "model.safetensors")
        save_file(change(state), directory / "model.safetensors", metadata={"format": "pt"})
    return mutate


def poke(value: float) -> Callable[[dict], dict]:
    def change(state: dict) -> dict:
        state["model.layers.0.mlp.up_proj.weight"][3, 5] = value
        return state
    return change


def write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        (directory / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return mutate


CASES = {
    "wrong shape": (edit_weights(lambda s: {**s, "model.norm.weight": torch.ones(31)}), r"(?s)shape mismatches.*model.norm"),
    "missing key": (edit_weights(lambda s: {k: v for k, v in s.items() if "o_proj" not in k}), r"(?s)missing keys.*o_proj"),
    "unexpected key": (edit_weights(lambda s: {**s, "model.extra": torch.ones(2)}), r"(?s)unexpected keys.*model.extra"),
    "integer weights": (edit_weights(lambda s: {k: v.to(torch.int32) for k, v in s.items()}), "not floating point"),
    "NaN weight": (edit_weights(poke(float("nan"))), r"non-finite values.*up_proj"),
    "inf weight": (edit_weights(poke(float("inf"))), r"non-finite values.*up_proj"),
    "garbage safetensors": (write("model.safetensors", b"\x10\0\0\0\0\0\0\0{garbage"), "not a readable safetensors"),
    "truncated safetensors": (lambda d: write("model.safetensors", (d / "model.safetensors").read_bytes()[:300])(d),
                              "not a readable safetensors"),
    "config not JSON": (write("config.json", "{"), "not valid JSON"),
    "config a list": (write("config.json", "[]"), "expected a JSON object"),
    "config deeply nested": (write("config.json", "[" * 100_000), "not valid JSON"),
    "negative dim": (edit_config(hidden_size=-32, head_dim=None), "dim: must be > 0"),
    "dim as a string": (edit_config(hidden_size="32"), "hidden_size: expected an integer"),
    "dim as a float": (edit_config(intermediate_size=64.5), "intermediate_size: expected an integer"),
    "NaN rms eps": (edit_config(rms_norm_eps=float("nan")), "rms_norm_eps: expected a finite number"),
    "rope theta text": (edit_config(rope_theta="abc", rope_parameters=None), "rope_theta: expected a finite number"),
    "rope theta past float range": (edit_config(rope_parameters={"rope_type": "default", "rope_theta": 10**400}),
                                    "rope_theta: expected a finite number"),
    "rope parameters list": (edit_config(rope_parameters=[1]), "rope_parameters: expected an object"),
    "empty eos list": (edit_config(eos_token_id=[]), "eos_token_id"),
    "missing field": (lambda d: edit_config()(d) or (d / "config.json").write_text(
        json.dumps({k: v for k, v in json.loads((d / "config.json").read_text()).items() if k != "vocab_size"})),
        "missing required field 'vocab_size'"),
    "TB vocab": (edit_config(vocab_size=10**12), "describes 64,000,000,010,336 parameters"),
    "billion layers": (edit_config(num_hidden_layers=10**9), "refusing to build a model that size"),
    "index not JSON": (write("model.safetensors.index.json", "{"), "not a valid index"),
    "index weight_map a list": (write("model.safetensors.index.json", '{"weight_map": [1]}'), "weight_map must map"),
    "index ../../etc/passwd": (write("model.safetensors.index.json", '{"weight_map": {"a": "../../etc/passwd"}}'),
                               "refusing shard name '../../etc/passwd'"),
    "index absolute path": (write("model.safetensors.index.json", '{"weight_map": {"a": "/etc/passwd"}}'),
                            "refusing shard name '/etc/passwd'"),
    "index names itself": (write("model.safetensors.index.json",
                                 '{"weight_map": {"a": "model.safetensors.index.json"}}'), "refusing shard name"),
    "index lists a missing shard": (write("model.safetensors.index.json",
                                          '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'),
                                    "shards listed but missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_model_directory_is_a_usage_error(base, tmp_path, case):
    mutate, message = CASES[case]
    directory = variant(base, tmp_path, mutate)
    with pytest.raises(UsageError, match=message):
        load_model(directory)
    with pytest.raises(UsageError, match=message):
        convert(directory, tmp_path / "converted")
    assert not (tmp_path / "converted" / "fournil.json").exists()  # nothing published


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt", "weights.pkl"])
def test_a_pickle_is_refused_and_never_unpickled(base, tmp_path, name):
    marker = tmp_path / "PWNED"
    directory = variant(base, tmp_path, lambda d: (d / "model.safetensors").unlink())
    (directory / name).write_bytes(pickle.dumps(Marker(marker)))
    pickle.loads(pickle.dumps(Marker(tmp_path / "control")))  # the payload works: unpickling makes the file
    assert (tmp_path / "control").exists()
    with pytest.raises(UsageError, match="never unpickles"):
        load_model(directory)
    with pytest.raises(UsageError, match="never unpickles"):
        convert(directory, tmp_path / "out")
    assert not marker.exists()


@pytest.mark.slow
def test_the_cli_refuses_a_pickle_and_a_huge_config_without_a_traceback(base, tmp_path):
    """`fournil model verify` also loads with transformers; ours refuses first, so nothing is unpickled."""
    marker = tmp_path / "PWNED"
    pickled = variant(base, tmp_path, lambda d: (d / "model.safetensors").unlink())
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Marker(marker)))
    assert_clean_failure(fournil("model", "verify", str(pickled)), "never unpickles", code=2)
    assert not marker.exists()
    huge = tmp_path / "huge"
    shutil.copytree(base, huge)
    edit_config(vocab_size=10**12, num_hidden_layers=10**6)(huge)
    result = fournil("model", "convert", str(huge), str(tmp_path / "out"), timeout=120)
    assert_clean_failure(result, "refusing to build a model that size", code=2)
