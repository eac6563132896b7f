"""`corpus pack` streams (two passes over a temporary token file) and still writes, byte for byte, the shards the
in-memory implementation wrote (golden/pack.json, recorded before the rewrite)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pack_golden


@pytest.fixture(scope="module")
def golden_corpus(tmp_path_factory) -> Path:
    return pack_golden.build_corpus(tmp_path_factory.mktemp("golden") / "corpus")


@pytest.mark.parametrize("seed", pack_golden.SEEDS)
def test_pack_matches_the_golden_shards(golden_corpus, tmp_path, seed):
    from fournil.corpus.pack import pack

    golden = json.loads(pack_golden.GOLDEN.read_text(encoding="utf-8"))[str(seed)]
    out = tmp_path / "shards"
    index = pack(golden_corpus, pack_golden.TOKENIZER, out, seed=seed, **pack_golden.PACK_ARGS)
    assert (out / "index.json").read_text(encoding="utf-8") == golden["index"]
    assert pack_golden.shard_digests(out) == golden["sha256"]
    assert pack_golden.manifest_fields(out) == golden["manifest"]
    assert json.loads(json.dumps(index)) == golden["returned"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*golden["sha256"], "index.json", "fournil.json"])


def test_temporary_files_are_removed_on_error(golden_corpus, tmp_path, monkeypatch):
    """A failure in pass 2 (here: the shard writer) leaves no temporary token file behind."""
    from fournil.corpus import pack as pack_module
    from fournil.corpus.shards import ShardWriter

    seen = []

    def boom(self, *args, **kwargs):
        seen.extend(p for p in (tmp_path / "shards").glob(".pack.*/tokens.bin") if p.stat().st_size)
        raise OSError("simulated")

    monkeypatch.setattr(ShardWriter, "add_many", boom)
    with pytest.raises(OSError, match="simulated"):
        pack_module.pack(golden_corpus, pack_golden.TOKENIZER, tmp_path / "shards", **pack_golden.PACK_ARGS)
    assert seen, "the token file was not where it should be"
    # nothing left but the manifest saying the shards are unfinished (what lets a rerun take the directory over)
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["fournil.json"]
    assert not json.loads((tmp_path / "shards" / "fournil.json").read_text())["complete"]


def test_batches_do_not_change_the_output(golden_corpus, tmp_path, monkeypatch):
    """Tiny batches and chunks (pass 1 and pass 2 boundaries everywhere) give the same bytes."""
    from fournil.corpus import pack as pack_module

    monkeypatch.setattr(pack_module, "BATCH_DOCS", 3)
    monkeypatch.setattr(pack_module, "BATCH_BYTES", 2000)
    monkeypatch.setattr(pack_module, "CHUNK_TOKENS", 700)
    golden = json.loads(pack_golden.GOLDEN.read_text(encoding="utf-8"))["None"]
    pack_module.pack(golden_corpus, pack_golden.TOKENIZER, tmp_path / "s", **pack_golden.PACK_ARGS)
    assert pack_golden.shard_digests(tmp_path / "s") == golden["sha256"]


def test_add_many_equals_add_per_document(tmp_path):
    from fournil.corpus.shards import ShardWriter

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, size=int(n)) for n in rng.integers(0, 40, size=200)]
    cats = ("fr", "en", "code")
    codes = rng.integers(0, 3, size=len(docs))
    a = ShardWriter(tmp_path / "a", seq_len=8, vocab_size=60, eos_id=59, tokens_per_shard=100)
    for d, c in zip(docs, codes, strict=True):
        a.add(d, cats[c], n_bytes=len(d) * 2)
    b = ShardWriter(tmp_path / "b", seq_len=8, vocab_size=60, eos_id=59, tokens_per_shard=100)
    stream = np.concatenate([np.append(d, 59) for d in docs])
    sizes = np.array([len(d) + 1 for d in docs])
    cut = int(np.searchsorted(np.cumsum(sizes), 1000, "right"))  # two calls, split at a document boundary
    end = int(np.cumsum(sizes)[cut - 1])
    b.add_many(stream[:end], sizes[:cut], codes[:cut], cats, (sizes[:cut] - 1) * 2)
    b.add_many(stream[end:], sizes[cut:], codes[cut:], cats, (sizes[cut:] - 1) * 2)
    assert a.close() == b.close()
    assert pack_golden.shard_digests(tmp_path / "a") == pack_golden.shard_digests(tmp_path / "b")
    with pytest.raises(ValueError, match="out of range"):
        b.add_many(np.array([60]), np.array([1]), np.array([0]), cats, np.array([1]))
