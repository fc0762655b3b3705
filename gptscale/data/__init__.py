"""Data path: corpus readers, shard writer, manifest, and the streaming loader.

Names are imported lazily so that tokenizer worker processes (which import gptscale.data.shards) do not
pay for importing torch.
"""

__all__ = ["ShardError", "ShardLoader", "ShardStream", "read_manifest"]


def __getattr__(name: str):
    if name == "ShardStream":
        from gptscale.data import stream

        return stream.ShardStream
    if name == "ShardLoader":
        from gptscale.data import loader

        return loader.ShardLoader
    if name in ("ShardError", "read_manifest"):
        from gptscale.data import manifest

        return getattr(manifest, name)
    raise AttributeError(name)
