"""Samplers: strided shards (eval loaders and concept capture), padded to equal length on every rank."""

import math

import pytest
from torch.utils.data import DistributedSampler

from ema_lightning.data.samplers import ExampleDataset, ShardedEvalSampler, strided_shard


@pytest.mark.parametrize("n, world", [(0, 2), (1, 3), (7, 1), (7, 2), (7, 3), (9, 3), (10, 4)])
def test_strided_shard_equal_lengths_each_index_once(n, world):
    shards = [strided_shard(n, rank, world) for rank in range(world)]
    assert all(indices == list(range(rank, n, world)) for rank, (indices, _) in enumerate(shards))
    assert {len(indices) + padding for indices, padding in shards} == {math.ceil(n / world)}
    assert sorted(i for indices, _ in shards for i in indices) == list(range(n))


def test_strided_shard_rejects_bad_rank():
    with pytest.raises(ValueError, match="need 0 <= rank < world"):
        strided_shard(5, 2, 2)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_eval_sampler_equal_shards_each_item_once(world_size):
    dataset = ExampleDataset([{"input_ids": [i], "index": i, "domain_id": 0, "harmful": True, "prompt": str(i)} for i in range(7)])
    shards = [list(ShardedEvalSampler(dataset, num_replicas=world_size, rank=r)) for r in range(world_size)]
    assert isinstance(ShardedEvalSampler(dataset, world_size, 0), DistributedSampler)
    assert len({len(s) for s in shards}) == 1 and all(len(ShardedEvalSampler(dataset, world_size, r)) == len(shards[0]) for r in range(world_size))
    items = [dataset[i] for shard in shards for i in shard]
    valid = [item["index"] for item in items if item.get("valid", True)]
    assert sorted(valid) == list(range(7))
    assert all(dataset[i].get("valid", True) == (i >= 0) for shard in shards for i in shard)
    assert shards[-1][-1] == -7  # padding: the copy of the last item, marked invalid
