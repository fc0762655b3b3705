"""Tokenizer inputs of the shard writer: documents cut into bounded pieces, batched into worker tasks, and the
tokenizer worker processes themselves (what they import: numpy and the tokenizer, no pyarrow, no torch).

A document longer than PIECE_CHARS is tokenized in pieces (`text_pieces`, cut while its text streams in:
`stream_pieces`) so that no tokenizer call, worker task or result is larger than a fixed size, whatever the
longest document; the pieces and batches depend on the text only, so the output does not depend on the worker
count.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptscale.data.corpus import ERRORS, CorpusError, clean_chunks, expand_inputs, read_source, txt_chunks
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
    return stream_pieces((text,), size)


def stream_pieces(chunks: Iterable[str], size: int = PIECE_CHARS) -> Iterator[str]:
    """`text_pieces` of the text the `chunks` make up (cut anywhere), holding at most `size` characters more
    than one chunk: a cut depends only on the `size` + 1 characters from the piece's start."""
    buf, a = "", 0
    for chunk in chunks:
        buf, a = buf[a:] + chunk, 0
        while len(buf) - a > size:
            cut = _cut(buf, a, size)
            yield buf[a:cut]
            a = cut
    yield buf[a:]


def _cut(text: str, a: int, size: int) -> int:
    """Where the piece starting at `a` ends (see `text_pieces`); needs text[a:a + size + 1] only."""
    cut = text.rfind(" ", a + 1, a + size + 1)
    while cut > a and text[cut - 1].isspace():
        cut = text.rfind(" ", a + 1, cut)
    return cut if cut > a else a + size


@dataclass(frozen=True)
class TextStream:
    """One document of the corpus as consecutive pieces of its text (`text_streams`): a `.txt` file is read
    anew, in corpus.READ_BYTES pieces, by every call of `chunks`, so no one holds the whole text."""

    source: str
    index: int
    chunks: Callable[[], Iterator[str]]
    """A new iterator over the cleaned text (``Document.text``), cut anywhere; joined, the whole text."""


def text_streams(inputs: list[str], *, text_field: str = "text", gutenberg: bool = False,
                 errors: str = "strict") -> Iterator[TextStream]:
    """corpus.iter_documents as TextStreams: a `.txt` file is streamed from the file (not with `gutenberg`:
    cutting the boilerplate takes the whole text), every other document wraps its `Document.text`."""
    if errors not in ERRORS:
        raise CorpusError(f"errors={errors!r}: choose one of {', '.join(ERRORS)}")
    for source in expand_inputs(inputs):
        path = Path(source)
        if not gutenberg and path.suffix.lower() == ".txt" and path.is_file():
            yield TextStream(source, 0, lambda s=source: clean_chunks(txt_chunks(s, errors)))
            continue
        for doc in read_source(source, text_field=text_field, gutenberg=gutenberg, errors=errors):
            yield TextStream(doc.source, doc.index, lambda t=doc.text: iter((t,)))


_TOK: Tokenizer | None = None
_THREADS = 1


def init_worker(tokenizer_dir: str, threads: int = 1) -> None:
    global _TOK, _THREADS
    _TOK, _THREADS = Tokenizer.load(tokenizer_dir), threads


def encode(texts: list[str]) -> list[np.ndarray]:
    """Token arrays of `texts`, encoded as many at a time as there are threads: the tokenizer's Python lists of
    ids (~36 bytes a token) are held for that many pieces only, not for the whole task."""
    assert _TOK is not None
    group = (os.cpu_count() or 1) if _THREADS < 0 else max(1, _THREADS)
    out: list[np.ndarray] = []
    for i in range(0, len(texts), group):
        out += [np.asarray(ids, dtype=np.uint32) for ids in _TOK.encode_batch(texts[i:i + group],
                                                                              num_threads=_THREADS)]
    return out


@dataclass
class Piece:
    """One tokenizer input: a document, or a piece of a long one."""

    doc: TextStream
    text: str
    first: bool
    last: bool
    split: str | None
    """The document's split (`split_of`), None for a blank document."""


def piece_batches(docs: Iterator[TextStream], skip: int,
                  split_of: Callable[[TextStream], str | None]) -> Iterator[list[Piece]]:
    """Worker tasks of up to TASK_CHARS characters, in order; the first `skip` documents are left out (not
    read). `split_of(doc)` reads the document once before its pieces are cut (a second pass over it)."""
    batch, chars = [], 0
    for n, doc in enumerate(docs):
        if n < skip:
            continue
        split = split_of(doc)
        pieces = stream_pieces(doc.chunks(), PIECE_CHARS)
        piece, first = next(pieces), True
        for nxt in _then_none(pieces):
            batch.append(Piece(doc, piece, first, nxt is None, split))
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
