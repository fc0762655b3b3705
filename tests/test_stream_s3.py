"""Shards served by a real S3-compatible server on localhost (moto's server mode), read via pyarrow's S3FileSystem."""

import json
import warnings

import pyarrow.fs as pafs
import pytest
import torch

from gptscale.data import ShardStream
from helpers import free_port


@pytest.fixture
def s3(tmp_path):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    fs = pafs.S3FileSystem(access_key="test", secret_key="test", endpoint_override=f"127.0.0.1:{port}",
                           scheme="http", region="us-east-1", allow_bucket_creation=True)
    try:
        yield fs
    finally:
        server.stop()


def test_stream_from_s3_matches_local(s3, shard_dir, tmp_path):
    s3.create_dir("corpus")
    pafs.copy_files(str(shard_dir), "corpus/shards", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    assert {f.base_name for f in s3.get_file_info(pafs.FileSelector("corpus/shards"))} >= {"manifest.json", "train-00000.arrow"}
    remote = ShardStream("s3://corpus/shards", filesystem=s3, batch_size=4, rank=1, world_size=2, seed=3,
                         epochs=1, cache_dir=tmp_path / "cache")
    local = ShardStream(shard_dir, batch_size=4, rank=1, world_size=2, seed=3, epochs=1)
    got, want = list(remote), list(local)
    assert len(got) == len(want) > 10 and all(torch.equal(a, b) for a, b in zip(got, want))
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == len(remote.sources[0].shards) and all(n.endswith(".arrow") for n in cached)
    # a shard corrupted on the server is caught when downloaded (sha256 against the manifest)
    with s3.open_output_stream("corpus/shards/train-00001.arrow") as f:
        f.write(b"not an arrow file")
    fresh = ShardStream("s3://corpus/shards", filesystem=s3, batch_size=4, rank=0, world_size=1, seed=3,
                        epochs=1, cache_dir=tmp_path / "cache2")
    with pytest.raises(Exception, match="train-00001.arrow.*sha256"):
        list(fresh)


def test_cache_defaults_to_the_users_cache_folder(shard_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ShardStream(shard_dir, batch_size=4).cache_dir == tmp_path / "xdg" / "gptscale" / "shards"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ShardStream(shard_dir, batch_size=4).cache_dir == tmp_path / "home" / ".cache" / "gptscale" / "shards"


def test_planted_cache_file_is_discarded_and_downloaded_again(s3, shard_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache folder, not a shared /tmp one
    cache = tmp_path / "xdg" / "gptscale" / "shards"
    s3.create_dir("corpus")
    pafs.copy_files(str(shard_dir), "corpus/shards", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    shards = json.loads((shard_dir / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert shards[0]["sequences"] == shards[1]["sequences"]
    # under shard 0's cache name: a valid shard of the same shape with other tokens (what the old cache used
    # unchecked), and a truncated copy of shard 2
    cache.mkdir(parents=True)
    planted = cache / f"{shards[0]['sha256']}.arrow"
    planted.write_bytes((shard_dir / shards[1]["file"]).read_bytes())
    truncated = cache / f"{shards[2]['sha256']}.arrow"
    truncated.write_bytes((shard_dir / shards[2]["file"]).read_bytes()[:1000])
    remote = ShardStream("s3://corpus/shards", filesystem=s3, batch_size=4, seed=3, epochs=1, rank=0, world_size=1)
    assert remote.cache_dir == cache
    with pytest.warns(RuntimeWarning, match="planted or corrupted") as caught:
        got = list(remote)
    want = list(ShardStream(shard_dir, batch_size=4, seed=3, epochs=1, rank=0, world_size=1))
    assert len(got) == len(want) > 10 and all(torch.equal(a, b) for a, b in zip(got, want))
    assert sorted(str(w.message).split(":")[0] for w in caught) == sorted([str(planted), str(truncated)])
    for sh in shards[:3]:  # replaced by the real downloads
        assert (cache / f"{sh['sha256']}.arrow").read_bytes() == (shard_dir / sh["file"]).read_bytes()
    # a good cached file is used as is (hashed once in this process: no warning, not downloaded again)
    inodes = {p.name: p.stat().st_ino for p in cache.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = list(ShardStream("s3://corpus/shards", filesystem=s3, batch_size=4, seed=3, epochs=1, rank=0,
                                 world_size=1))
    assert all(torch.equal(a, b) for a, b in zip(again, want))
    assert {p.name: p.stat().st_ino for p in cache.iterdir()} == inodes
