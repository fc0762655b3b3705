"""ShardLoader: a torch DataLoader over a ShardStream whose state stays exact with worker processes."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from gptscale.data.stream import ShardStream


class ShardLoader:
    """A torch DataLoader over a ShardStream that keeps the stream's state in the main process.

    With worker processes the stream's copies live in the workers; this loader counts the batches it
    hands out, so ``state_dict()`` is exact whatever ``num_workers`` is.
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False):
        self.stream, self.num_workers = stream, num_workers
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory

    def __iter__(self):
        stream = self.stream
        stream._start, stream._steps = stream.position, 0
        # Its own generator: a DataLoader iterator otherwise draws from the global torch RNG, which would
        # shift dropout masks after a resume (the iterator is created at a different point of the run).
        dl = DataLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                        prefetch_factor=self.prefetch_factor if self.num_workers else None,
                        multiprocessing_context="fork" if self.num_workers else None,
                        generator=torch.Generator().manual_seed(0))
        start = stream._start
        for k, batch in enumerate(dl):
            stream._start, stream._steps = start, k + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
