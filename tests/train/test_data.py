"""The loader: every sample exactly once per epoch, the same order whatever the number of ranks, resumable."""

import numpy as np
import pytest

from fournil.console import UsageError
from fournil.corpus.shards import Shards
from fournil.train.data import Loader


def test_windows_share_one_boundary_token(shards_dir):
    shards = Shards(shards_dir)
    first, second = shards.sample(0), shards.sample(1)
    assert len(first) == shards.seq_len + 1 and first[-1] == second[0]
    assert sum(s["tail_tokens"] for s in shards.index["shards"]) > 0  # counted, not lost silently


def test_every_sample_exactly_once_per_epoch(shards_dir):
    shards = Shards(shards_dir)
    loader = Loader(shards, global_batch=4, seed=7)
    seen = []
    while loader.consumed < 3 * len(shards):
        seen += loader.next_batch()
    n = len(shards)
    seen = seen[: 3 * n]
    for epoch in range(3):
        assert sorted(seen[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert seen[:n] != seen[n : 2 * n]  # a fresh order each epoch


@pytest.mark.parametrize("world_size", [2, 4])
def test_order_does_not_depend_on_world_size(shards_dir, world_size):
    shards = Shards(shards_dir)
    single = Loader(shards, global_batch=8, seed=1)
    ranks = [Loader(shards, global_batch=8, seed=1, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(10):
        assert single.next_batch() == [i for loader in ranks for i in loader.next_batch()]


def test_resume_continues_the_same_sequence(shards_dir):
    shards = Shards(shards_dir)
    a = Loader(shards, global_batch=8, seed=3)
    for _ in range(5):
        a.next_batch()
    b = Loader(shards, global_batch=8, seed=3, rank=1, world_size=2)  # resumed on a different world size
    b.load_state_dict(a.state_dict())
    assert a.next_batch()[4:] == b.next_batch()


def test_state_from_other_data_is_refused(shards_dir):
    a = Loader(Shards(shards_dir), global_batch=8, seed=3)
    with pytest.raises(ValueError, match="other data"):
        Loader(Shards(shards_dir), global_batch=8, seed=4).load_state_dict(a.state_dict())


def test_incomplete_or_truncated_shards_are_refused(tmp_path):
    from tests.train.conftest import write_shards

    directory = write_shards(tmp_path / "s")
    (directory / "train-00000.bin").write_bytes(b"\0" * 10)
    with pytest.raises(UsageError, match="size does not match"):
        Shards(directory)
    (directory / "fournil.json").unlink()
    with pytest.raises(UsageError, match="incomplete"):
        Shards(directory)


def test_token_dtype_is_compact(shards_dir):
    assert Shards(shards_dir).dtype == np.dtype("<u2")
