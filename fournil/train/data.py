"""A deterministic, stateful loader over packed shards.

Epoch e visits every sample exactly once, in the order of a permutation seeded by (seed, e). The global batch of
step s is the next `global_batch` positions of that endless sequence of permutations; rank r of W takes the r-th
contiguous slice of it. The loader's whole state is therefore one integer — samples consumed — which means a run
resumes identically on any number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from fournil.corpus.shards import Shards


class Loader:
    """Over any dataset with `__len__` and `collate(indices) -> (inputs, targets)` (ShardSamples, SFTDataset)."""

    def __init__(self, dataset, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch of {global_batch} sequences is not divisible by {world_size} ranks")
        if len(dataset) == 0:
            raise ValueError(f"{dataset.directory}: no training samples")
        self.dataset, self.global_batch, self.seed = dataset, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.consumed = 0
        self._epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    @property
    def epoch(self) -> float:
        return self.consumed / len(self.dataset)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["samples"] != len(self.dataset) or state["seed"] != self.seed:
            raise ValueError(f"checkpoint was made on other data (samples {state['samples']}, seed {state['seed']}); "
                             f"these shards have {len(self.dataset)} samples with seed {self.seed}")
        self.consumed = state["consumed"]

    def _indices(self, start: int, count: int) -> np.ndarray:
        n = len(self.dataset)
        out = np.empty(count, dtype=np.int64)
        for j, position in enumerate(range(start, start + count)):
            epoch = position // n
            if epoch != self._epoch:
                self._epoch = epoch
                self._order = np.random.default_rng([self.seed, epoch]).permutation(n)
            out[j] = self._order[position % n]
        return out

    def next_batch(self) -> list[int]:
        """This rank's sample indices for the next optimizer step; advances the state by one global batch."""
        per_rank = self.global_batch // self.world_size
        indices = self._indices(self.consumed + self.rank * per_rank, per_rank)
        self.consumed += self.global_batch
        return indices.tolist()

    def tensors(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets of these samples, each (len(indices), T)."""
        return self.dataset.collate(indices)


class ShardSamples:
    """Packed shards as a dataset: sample i is inputs = window[:-1], targets = window[1:]."""

    def __init__(self, shards: Shards):
        self.shards, self.directory = shards, shards.directory

    def __len__(self) -> int:
        return len(self.shards)

    def collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        windows = torch.from_numpy(np.stack([self.shards.sample(i).astype(np.int64) for i in indices]))
        return windows[:, :-1], windows[:, 1:]
