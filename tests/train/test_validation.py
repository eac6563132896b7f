"""Validation bits per byte: the held-out stream's next-token loss in windows of seq_len, per byte of its text."""

import math

import pytest
import torch
import torch.nn.functional as F

from fournil.corpus.shards import Shards
from fournil.lm.llama import Llama
from fournil.recipe import load_recipe
from fournil.train.loop import validation_bpb


def test_validation_bits_per_byte_by_hand(shards_dir):
    model = Llama(load_recipe("croissant-1m").model).eval()
    shards = Shards(shards_dir)
    got = validation_bpb(model, shards, max_tokens=100, seq_len=32, batch_size=2)
    assert set(got) == {"fr", "en"}
    for language, bpb in got.items():
        stream, n_bytes = shards.validation(language)
        tokens = torch.from_numpy(stream[:101].astype("int64"))
        nats = 0.0
        for start in range(0, 100, 32):  # windows of 32 predicted tokens, then the 4 left
            window = tokens[start:start + 33]
            with torch.no_grad():
                nats += F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="sum").item()
        assert bpb == pytest.approx(nats / 100 * len(stream) / n_bytes / math.log(2), rel=1e-5)
