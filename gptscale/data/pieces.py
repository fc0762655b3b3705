"""Tokenizer inputs of the shard writer: documents cut into bounded pieces, batched into worker tasks, and the
tokenizer worker processes themselves (what they import: numpy and the tokenizer, no pyarrow, no torch).

A document longer than PIECE_CHARS is tokenized in pieces (`text_pieces`) so that no tokenizer call, worker
task or result is larger than a fixed size, whatever the longest document; the pieces and batches depend on
the text only, so the output does not depend on the worker count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gptscale.data.corpus import Document
from gptscale.tokenizer import Tokenizer

TASK_CHARS = 1 << 20
"""Characters per worker task: up to this many (at least one piece), fixed."""
PIECE_CHARS = 1 << 18
"""Longest text tokenized in one call: longer documents are cut into pieces (`text_pieces`). 256K characters:
faster than 1M-character pieces (10 MB of text: 3.6 s instead of 4.8 s on one core pair) and less memory."""


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` cut into consecutive pieces of at most `size` characters, each cut right before a space whose
    previous character is not whitespace: a place no token spans (sentencepiece starts a piece at such a space
    and no piece of a gptscale model holds a non-space followed by a space; GPT-2-style pre-tokenizers split
    there too), so the pieces' tokens joined are the whole text's. A stretch of `size` characters without
    such a space is cut at `size` (deterministic, but the tokens there may differ from the whole text's)."""
    a, n = 0, len(text)
    while n - a > size:
        cut = text.rfind(" ", a + 1, a + size + 1)
        while cut > a and text[cut - 1].isspace():
            cut = text.rfind(" ", a + 1, cut)
        cut = cut if cut > a else a + size
        yield text[a:cut]
        a = cut
    yield text[a:]


_TOK: Tokenizer | None = None
_THREADS = 1


def init_worker(tokenizer_dir: str, threads: int = 1) -> None:
    global _TOK, _THREADS
    _TOK, _THREADS = Tokenizer.load(tokenizer_dir), threads


def encode(texts: list[str]) -> list[np.ndarray]:
    assert _TOK is not None
    return [np.asarray(ids, dtype=np.uint32) for ids in _TOK.encode_batch(texts, num_threads=_THREADS)]


@dataclass
class Piece:
    """One tokenizer input: a document, or a piece of a long one."""

    doc: Document
    text: str
    first: bool
    last: bool


def piece_batches(docs: Iterator[Document], skip: int) -> Iterator[list[Piece]]:
    """Worker tasks of up to TASK_CHARS characters, in order; the first `skip` documents are left out."""
    batch, chars = [], 0
    for n, doc in enumerate(docs):
        if n < skip:
            continue
        pieces = text_pieces(doc.text, PIECE_CHARS)
        piece, first = next(pieces), True
        for nxt in _then_none(pieces):
            batch.append(Piece(doc, piece, first, nxt is None))
            chars += len(piece)
            if chars >= TASK_CHARS:
                yield batch
                batch, chars = [], 0
            piece, first = nxt, False
    if batch:
        yield batch


def _then_none(it: Iterator[str]) -> Iterator[str | None]:
    yield from it
    yield None


def encoded(batches: Iterator[list[Piece]], pool, window: int) -> Iterator[tuple[list[Piece], list[np.ndarray]]]:
    """(pieces, token arrays) per batch, in input order, with at most `window` batches in flight."""
    if pool is None:
        for b in batches:
            yield b, encode([x.text for x in b])
        return
    inflight: deque = deque()
    for b in batches:
        inflight.append((b, pool.apply_async(encode, ([x.text for x in b],))))
        if len(inflight) >= window:
            done, res = inflight.popleft()
            yield done, res.get()
    while inflight:
        done, res = inflight.popleft()
        yield done, res.get()
