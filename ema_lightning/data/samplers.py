"""Samplers and loaders: strided eval shards, resumable seeded training order, RNG state in checkpoints."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def strided_shard(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """Rank `rank`'s strided share of `range(n)` (`rank, rank + world, ...`) and how many padding
    items it needs so that every rank's share is `ceil(n / world)` long.

    A strided share of a sorted order stays sorted, and the ranks' rows interleave back in order.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"strided_shard: need 0 <= rank < world, got rank {rank}, world {world}")
    indices = list(range(rank, n, world))
    return indices, math.ceil(n / world) - len(indices)


class ExampleDataset(Dataset):
    """Encoded examples; index -(i+1) returns example i marked `valid=False` (a padding copy of a shard)."""

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            return {**self.examples[-i - 1], "valid": False}
        return self.examples[i]


class ShardedEvalSampler(DistributedSampler):
    """Each rank gets a strided shard of the dataset's order (so length buckets stay sorted); shards are
    padded to equal length with copies of the last item, yielded as -(i+1) so they come back `valid=False`.

    Every rank runs the same number of batches (FSDP needs that) and no prompt is counted twice.
    Being a DistributedSampler, Lightning keeps it instead of injecting its own.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = math.ceil(len(dataset) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        n = len(self.dataset)
        indices, padding = strided_shard(n, self.rank, self.num_replicas)
        return iter(indices + [-n] * padding)  # -n is the padding copy of item n-1

    def __len__(self) -> int:
        return self.num_samples


class ResumableTrainSampler(DistributedSampler):
    """Seeded shuffling that gives the same global batches on any number of ranks, and resumes mid-epoch.

    Pass `c` of epoch `e` is a permutation seeded by (seed, e, c). It is cut into global batches of
    `batch_size * num_replicas` examples; rank r takes the r-th slice of `batch_size` of each. So a
    2-rank run with batch_size B sees the global batches of a 1-rank run with batch_size 2B. On one
    rank the last batch may be partial; on several ranks the pass wraps around to fill the last global
    batch (every rank needs the same number of batches).

    `consumed` counts batches delivered to training steps in this epoch (the datamodule increments it);
    `state_dict()` saves it and `load_state_dict()` makes the next pass skip what was already trained on.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, batch_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        n, size = len(dataset), batch_size * num_replicas
        self.batches_per_pass = math.ceil(n / size)
        self.num_samples = n if num_replicas == 1 else self.batches_per_pass * batch_size
        self.total_size = self.num_samples * num_replicas
        self.consumed = 0
        self._next_pass = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed, self._next_pass, self._skip = epoch, 0, 0, 0

    def pass_order(self, epoch: int, index: int) -> list[int]:
        """This rank's dataset indices for pass `index` of `epoch` (pure function of seed, epoch, pass)."""
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch + 7_919 * index)
        order = torch.randperm(n, generator=generator).tolist()
        if self.num_replicas == 1:
            return order
        size = self.batch_size * self.num_replicas
        order = (order * math.ceil(self.batches_per_pass * size / n))[: self.batches_per_pass * size]
        start = self.rank * self.batch_size
        return [i for b in range(0, len(order), size) for i in order[b + start : b + start + self.batch_size]]

    def __iter__(self):
        order = self.pass_order(self.epoch, self._next_pass)[self._skip * self.batch_size :]
        self._next_pass += 1
        self._skip = 0
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._next_pass, self._skip = divmod(self.consumed, self.batches_per_pass)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position (and the process RNG state) is saved in Lightning checkpoints.

    Lightning stores `state_dict()` of every loader it trains on and calls `load_state_dict()` when it
    resumes, before the first batch. The RNG states (Python, NumPy, torch, CUDA) are the saving rank's.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if "rng" in state:
            set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain Python values only, so a
    checkpoint holding them still loads with `torch.load(weights_only=True)` (Lightning's CLI does)."""
    import numpy as np

    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    import numpy as np

    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
