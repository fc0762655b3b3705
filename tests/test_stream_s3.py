"""Shards served by a real S3-compatible server on localhost (moto's server mode), read via pyarrow's S3FileSystem."""

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
