"""ShardStream on real shards: global order, ranks and workers, exact and elastic resume, mixing, bad input."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from gptscale.data import ShardError, ShardLoader, ShardStream
from helpers import read_rows


def rows_of(folder, split="train") -> Counter:
    return Counter(r.tobytes() for r in read_rows(folder, split).astype(np.int64))


def consumed(batches) -> Counter:
    return Counter(r.tobytes() for b in batches for r in b.numpy())


def take(it, n):
    return [next(it) for _ in range(n)]


def stream(shard_dir, **kw) -> ShardStream:
    kw.setdefault("batch_size", 4)
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return ShardStream(shard_dir, seed=11, shuffle_window=3, **kw)


def test_one_epoch_yields_every_row_once_shuffled(shard_dir):
    s = stream(shard_dir, epochs=1, drop_last=False)
    batches = list(s)
    assert consumed(batches) == rows_of(shard_dir)
    assert all(b.dtype == torch.int64 and b.shape[1] == 33 for b in batches)
    _src, ids = s.locate(np.arange(s.total_positions()))
    assert sorted(ids) == list(range(s.total_positions()))  # a permutation ...
    assert (np.diff(ids) != 1).mean() > 0.9  # ... that is shuffled
    assert s.position == s.total_positions()


def test_order_is_independent_of_world_size(shard_dir):
    one = take(iter(stream(shard_dir, batch_size=8)), 20)
    for world in (2, 4):
        per_rank = [take(iter(stream(shard_dir, batch_size=8 // world, rank=r, world_size=world)), 20)
                    for r in range(world)]
        for k in range(20):
            assert torch.equal(torch.cat([per_rank[r][k] for r in range(world)]), one[k])


def test_epochs_differ_and_each_covers_all(shard_dir):
    s = stream(shard_dir, batch_size=1)
    n = s.sources[0].n
    _, e0 = s.locate(np.arange(n))
    _, e1 = s.locate(np.arange(n, 2 * n))
    assert sorted(e0) == sorted(e1) == list(range(n)) and not np.array_equal(e0, e1)
    two = stream(shard_dir, batch_size=5, epochs=2, drop_last=False)
    assert consumed(two) == Counter({k: 2 * v for k, v in rows_of(shard_dir).items()})


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_per_rank(shard_dir, workers):
    for rank in range(2):
        ref = ShardLoader(stream(shard_dir, rank=rank, world_size=2), num_workers=workers)
        it = iter(ref)
        before = take(it, 7)
        state = ref.state_dict()
        after_ref = take(it, 9)
        fresh = ShardLoader(stream(shard_dir, rank=rank, world_size=2), num_workers=workers)
        fresh.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip (checkpoint client state)
        after = take(iter(fresh), 9)
        assert all(torch.equal(a, b) for a, b in zip(after, after_ref))
        assert not torch.equal(before[-1], after[0])


@pytest.mark.parametrize("new_world, new_batch", [(1, 6), (4, 2), (3, 5)])
def test_elastic_resume_covers_the_epoch_exactly_once(shard_dir, new_world, new_batch):
    seen: list[torch.Tensor] = []
    states = []
    for rank in range(2):  # world size 2, batch 3 per rank, 2 DataLoader workers each
        loader = ShardLoader(stream(shard_dir, batch_size=3, rank=rank, world_size=2, epochs=1, drop_last=False),
                             num_workers=2)
        it = iter(loader)
        seen += take(it, 10)
        states.append(loader.state_dict())
    assert states[0] == states[1] and states[0]["position"] == 10 * 3 * 2
    for rank in range(new_world):
        loader = ShardLoader(stream(shard_dir, batch_size=new_batch, rank=rank, world_size=new_world, epochs=1,
                                    drop_last=False), num_workers=2 if rank == 0 else 0)
        loader.load_state_dict(states[0])
        seen += list(loader)
    assert consumed(seen) == rows_of(shard_dir)  # nothing repeated, nothing skipped


def test_weighted_mixing(shard_dir, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(shard_dir, other)  # same tokens, but a distinct shard set: identify by source index
    s = ShardStream({str(shard_dir): 3.0, str(other): 1.0}, batch_size=8, rank=0, world_size=1, seed=1)
    src, _ = s.locate(np.arange(4000))
    assert (src == 0).sum() == 3000 and (src == 1).sum() == 1000
    assert max(np.diff(np.nonzero(src == 1)[0])) <= 5  # interleaved smoothly, not in long runs
    it = iter(s)
    take(it, 13)
    state = s.state_dict()
    nxt = take(it, 5)
    t = ShardStream({str(shard_dir): 3.0, str(other): 1.0}, batch_size=8, rank=0, world_size=1, seed=1)
    t.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(iter(t), 5), nxt))
    with pytest.raises(ValueError, match="weights"):
        ShardStream({str(shard_dir): 1.0, str(other): 1.0}, batch_size=8, rank=0, world_size=1, seed=1).load_state_dict(state)


def test_val_split_and_multiple_epochs_endless(shard_dir):
    val = stream(shard_dir, split="val", shuffle=False, epochs=1, drop_last=False)
    rows = read_rows(shard_dir, "val").astype(np.int64)
    np.testing.assert_array_equal(torch.cat(list(val)).numpy(), rows)  # unshuffled: file order


def test_corrupted_shard_is_named(shard_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    f = bad / "train-00002.arrow"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train-00002.arrow.*sha256"):
        list(stream(bad, epochs=1))
    f.write_bytes(bytes(data[: len(data) // 2]))  # truncated, checks skipped: still named
    with pytest.raises(ShardError, match="train-00002.arrow"):
        list(stream(bad, epochs=1, verify=False))


def test_manifest_and_tokenizer_errors(shard_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    with pytest.raises(ShardError, match="made with tokenizer"):
        stream(bad, tokenizer_hash="0" * 64)
    m["version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="version 99"):
        stream(bad)
    del m["version"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="missing format/version"):
        stream(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest.json"):
        stream(bad)


def test_fast_path_agrees_with_the_order(shard_dir):
    """Batches (fast path inside a shuffle window, general path across windows/epochs) hold the rows that
    locate() names, for many starting points."""
    s = stream(shard_dir, batch_size=8)
    rows = read_rows(shard_dir, "train").astype(np.int64)
    n = s.sources[0].n
    for first in np.random.default_rng(0).integers(0, 3 * n, 300).tolist() + [n - 3, 2 * n - 1]:
        _, ids = s.locate(np.arange(first, first + 8))
        np.testing.assert_array_equal(s.batch_at(first, 8).numpy(), rows[ids])
