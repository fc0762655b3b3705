"""Tokenizers: train a sentencepiece BPE on a corpus, or load one (ours, or a local Hugging Face folder).

    tok = train_tokenizer(["data/gutenberg/"], "runs/tok", vocab_size=32000, gutenberg=True)
    tok = Tokenizer.load("runs/tok")                 # or a local HF tokenizer folder (e.g. a GPT-2 export)
    ids = tok.encode(text); assert tok.decode(ids) == text

    gptscale tokenizer train --input data/gutenberg/ --vocab-size 32000 --out runs/tok --gutenberg

A gptscale tokenizer folder holds ``tokenizer.model`` (sentencepiece), ``gptscale_tokenizer.json`` (our
metadata: ``"format": "gptscale-tokenizer"``, special ids, the sha256 ``hash`` of tokenizer.model, the
sources it was trained on) and the model's exact Hugging Face twin (``tokenizer.json`` +
``tokenizer_config.json``, gptscale.tokenizer_hf), so ``transformers.AutoTokenizer.from_pretrained(folder)``
loads it with the same ids. Folders written before gptscale kept its metadata under HF's ``tokenizer.json``
still load here (``LEGACY_META_FILE``). Training settings make encode/decode round-trip any text exactly: identity
normalization, no whitespace collapsing, no dummy-prefix space, byte fallback for unseen characters.

Special tokens are sentencepiece *control symbols* (ids: pad 0, unk 1, eod 2, start 3, delim 4, extract 5):
``encode`` never produces them, not even when the text literally contains ``<|endoftext|>`` (that string is
tokenized as ordinary text and round-trips), so documents cannot forge a boundary. The shard writer and
the fine-tuning formats insert the ids themselves; ``decode`` renders them as their strings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tqdm import tqdm

from gptscale.data.corpus import ERRORS, expand_inputs, read_source
from gptscale.errors import GptscaleError, run_cli
from gptscale.files import atomic_write_bytes

SPECIALS = {"pad": "<pad>", "eod": "<|endoftext|>", "start": "<|start|>", "delim": "<|delim|>",
            "extract": "<|extract|>"}
"""Special tokens by role: padding, end of document, and GPT-1's task-input start / delimiter / extract."""
FORMAT = "gptscale-tokenizer"
VERSION = 1
MODEL_FILE = "tokenizer.model"
META_FILE = "gptscale_tokenizer.json"
"""Our tokenizer metadata, in tokenizer folders and in the Hugging Face folders gptscale writes."""
LEGACY_META_FILE = "tokenizer.json"
"""Where tokenizer folders written before kept the metadata (Hugging Face's name: read, never written)."""
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                      "sentencepiece.bpe.model")
"""Files hashed for a Hugging Face tokenizer folder (those present)."""


class TokenizerError(GptscaleError, ValueError):
    """A tokenizer that cannot be trained or loaded; the message names the path and the fix."""


# ----------------------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """Encode/decode with a sentencepiece model or a Hugging Face tokenizer, plus special-token ids."""

    vocab_size: int
    pad_id: int
    eod_id: int
    start_id: int | None
    delim_id: int | None
    extract_id: int | None
    hash: str
    path: str

    def __init__(self, path: str, meta: dict[str, Any], *, sp: Any = None, hf: Any = None) -> None:
        self.path, self._meta, self._sp, self._hf = path, meta, sp, hf
        self.vocab_size = int(meta["vocab_size"])
        self.hash = meta["hash"]
        self.hashes = {meta["hash"], *([meta["source_hash"]] if meta.get("source_hash") else [])}
        """This tokenizer's sha256 and, for the exact Hugging Face twin of a gptscale tokenizer, that one's."""
        ids = meta["special_ids"]
        self.pad_id, self.eod_id = ids["pad"], ids["eod"]
        self.start_id, self.delim_id, self.extract_id = ids.get("start"), ids.get("delim"), ids.get("extract")
        self._special_text = {i: meta["special_tokens"][name] for name, i in ids.items() if i is not None}

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, type={self._meta['type']}, vocab_size={self.vocab_size})"

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A gptscale tokenizer folder (its META_FILE, or the LEGACY_META_FILE of an older one, says ``"format":
        "gptscale-tokenizer"``; loaded with sentencepiece) or a local Hugging Face tokenizer folder (loaded with
        ``transformers.AutoTokenizer``, never the hub)."""
        p = Path(path)
        if not p.is_dir():
            raise TokenizerError(f"tokenizer {str(path)!r}: no such directory; pass a folder written by "
                                 f"'gptscale tokenizer train' or a local Hugging Face tokenizer folder")
        meta = _read_meta(p)
        if meta is not None:
            return _load_sentencepiece(p, meta)
        if not any((p / f).is_file() for f in HF_TOKENIZER_FILES):
            raise TokenizerError(f"tokenizer {str(path)!r}: holds neither a gptscale {META_FILE} nor Hugging "
                                 f"Face tokenizer files ({', '.join(HF_TOKENIZER_FILES[:5])}, ...)")
        return _load_hf(p)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS added (and no model-length warning: documents are long)."""
        if self._sp is not None:
            return self._sp.encode(text)
        return self._hf(text, add_special_tokens=False, verbose=False)["input_ids"]

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of each text; sentencepiece encodes the list on num_threads threads (-1: all cores)."""
        if self._sp is not None:
            return self._sp.encode(list(texts), num_threads=num_threads)
        return self._hf(list(texts), add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special ids come out as their strings (``<|endoftext|>``, ...)."""
        ids = [int(i) for i in ids]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._special_text:
                parts += [self._sp.decode(run), self._special_text[i]]
                run = []
            else:
                run.append(i)
        return "".join(parts) + self._sp.decode(run)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        """``decode`` of each id list."""
        return [self.decode(ids) for ids in batch]

    def to_json(self) -> dict[str, Any]:
        """Metadata: format, type, vocab_size, special ids and tokens, hash (+ training provenance)."""
        return dict(self._meta)

    def missing_task_specials(self) -> list[str]:
        """GPT-1 task tokens (start, delim, extract) this vocabulary lacks (a foreign one, e.g. GPT-2's)."""
        return [name for name in ("start", "delim", "extract") if self._meta["special_ids"].get(name) is None]

    def with_task_specials(self) -> Tokenizer:
        """This tokenizer with the missing GPT-1 task tokens appended as new special ids (Hugging Face
        tokenizers only; ours always have them). The model needs as many new embedding rows."""
        missing = self.missing_task_specials()
        if not missing:
            return self
        if self._hf is None:
            raise TokenizerError(f"{self.path}: sentencepiece tokenizer without task specials; retrain it")
        hf = self._hf
        hf.add_tokens([SPECIALS[n] for n in missing], special_tokens=True)
        meta = dict(self._meta, vocab_size=len(hf), special_ids=dict(self._meta["special_ids"]),
                    special_tokens=dict(self._meta["special_tokens"]), added_task_specials=missing)
        for name in missing:
            meta["special_ids"][name] = hf.convert_tokens_to_ids(SPECIALS[name])
            meta["special_tokens"][name] = SPECIALS[name]
        return Tokenizer(self.path, meta, hf=hf)

    @property
    def hf(self) -> Any:
        """The transformers tokenizer behind a Hugging Face folder; None for a sentencepiece model."""
        return self._hf


def _read_meta(folder: Path) -> dict[str, Any] | None:
    """Our sentencepiece metadata from ``folder/META_FILE`` (when the model is there too) or from an older
    folder's LEGACY_META_FILE; None for a Hugging Face folder."""
    meta = _meta_from(folder / META_FILE)
    if meta is not None and meta.get("type") == "sentencepiece" and (
            (folder / MODEL_FILE).is_file() or not (folder / LEGACY_META_FILE).is_file()):
        return meta  # (a missing model without a Hugging Face twin to fall back on is an error below)
    return _meta_from(folder / LEGACY_META_FILE)


def _meta_from(f: Path) -> dict[str, Any] | None:
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{f}: not valid JSON ({e}); retrain with 'gptscale tokenizer train'") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None  # a Hugging Face tokenizer.json
    if meta.get("version") != VERSION:
        raise TokenizerError(f"{f}: format version {meta.get('version')!r}, this gptscale reads {VERSION}")
    return meta


def _load_sentencepiece(folder: Path, meta: dict[str, Any]) -> Tokenizer:
    model = folder / MODEL_FILE
    if not model.is_file():
        raise TokenizerError(f"{folder}: its tokenizer metadata is there but {MODEL_FILE} is missing; copy the "
                             f"whole folder")
    data = model.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("hash"):
        raise TokenizerError(f"{model}: sha256 {digest[:12]}... does not match the hash {str(meta.get('hash'))[:12]}"
                             f"... in its {META_FILE}; the folder was edited or mixed, retrain it")
    sp = spm.SentencePieceProcessor(model_proto=data)
    for name, i in meta["special_ids"].items():
        if sp.id_to_piece(i) != SPECIALS[name]:
            raise TokenizerError(f"{folder}: special {name!r} should be id {i} ({SPECIALS[name]!r}) but the model "
                                 f"has {sp.id_to_piece(i)!r} there; retrain it")
    return Tokenizer(str(folder), meta, sp=sp)


def _hash_hf_folder(folder: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(n for n in HF_TOKENIZER_FILES if (folder / n).is_file()):
        h.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return h.hexdigest()


def _twin_of(folder: Path) -> str | None:
    """The hash of the gptscale tokenizer an HF folder is the twin of (its META_FILE), if any."""
    try:
        return json.loads((folder / META_FILE).read_text()).get("hash")
    except (OSError, ValueError, AttributeError):
        return None


def _load_hf(folder: Path) -> Tokenizer:
    from transformers import AutoTokenizer  # lazy: shard tokenizer workers load sentencepiece models only

    try:
        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/... for unreadable folders
        raise TokenizerError(f"{folder}: transformers.AutoTokenizer could not load it: {type(e).__name__}: {e}") from e
    if hf.eos_token_id is None:
        raise TokenizerError(f"{folder}: the Hugging Face tokenizer has no eos_token; gptscale needs one as the "
                             f"end-of-document token (set eos_token in tokenizer_config.json)")
    vocab = hf.get_vocab()
    ids: dict[str, int | None] = {"pad": hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id,
                                  "eod": hf.eos_token_id}
    ids.update({name: vocab.get(SPECIALS[name]) for name in ("start", "delim", "extract")})
    tokens = {"pad": hf.convert_ids_to_tokens(ids["pad"]), "eod": hf.eos_token}
    tokens.update({name: SPECIALS[name] for name in ("start", "delim", "extract") if ids[name] is not None})
    meta = {"format": FORMAT, "version": VERSION, "type": "huggingface", "vocab_size": len(hf),
            "special_ids": ids, "special_tokens": tokens, "hash": _hash_hf_folder(folder),
            "source_hash": _twin_of(folder), "hf_class": type(hf).__name__}
    return Tokenizer(str(folder), meta, hf=hf)


# ------------------------------------------------------------------------------------------ training


def corpus_lines(sources: Iterable[str], *, max_len: int, **read_kw: Any) -> Iterator[str]:
    """Every non-blank line of every document, lines over ``max_len`` characters cut into chunks."""
    for source in sources:
        for doc in read_source(source, **read_kw):
            for line in doc.text.split("\n"):
                if not line.strip():
                    continue
                for i in range(0, len(line), max_len):
                    yield line[i:i + max_len]


def reservoir_sample(items: Iterable[str], k: int, seed: int) -> tuple[list[str], int]:
    """Uniform sample of at most ``k`` items (Algorithm R) in bounded memory, and the number seen.
    Fewer than ``k`` items: all of them, in order."""
    rng = random.Random(seed)
    sample: list[str] = []
    n = 0
    for n, item in enumerate(items, start=1):
        if n <= k:
            sample.append(item)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = item
    return sample, n


def _special_ids(model: bytes) -> dict[str, int]:
    """Id of each SPECIALS piece in a trained model (pad 0, eod 2, start 3, delim 4, extract 5)."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    return {name: sp.piece_to_id(piece) for name, piece in SPECIALS.items()}


def _canonical_model(data: bytes) -> bytes:
    """Drop ``num_threads`` from the model's recorded trainer_spec: the pieces do not depend on it, so the
    bytes (and the hash) should not either. Unchanged if sentencepiece's protobuf module is unavailable."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf, an optional dependency
    except ImportError:  # protobuf missing: same bytes for the same --threads only
        return data
    proto = pb.ModelProto()
    proto.ParseFromString(data)
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString(deterministic=True)


def _train_spm(sentences: list[str], vocab_size: int, num_threads: int, max_sentence_length: int) -> bytes:
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=writer, model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, character_coverage=0.9995, split_digits=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, add_dummy_prefix=False,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=SPECIALS["pad"],
            control_symbols=[SPECIALS[n] for n in ("eod", "start", "delim", "extract")],
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=num_threads,
            max_sentence_length=4 * max_sentence_length, minloglevel=2)  # bytes; a char is <= 4 UTF-8 bytes
    except RuntimeError as e:
        raise TokenizerError(f"sentencepiece training failed: {e}; for a small corpus lower --vocab-size") from e
    return _canonical_model(writer.getvalue())


def train_tokenizer(inputs: list[str], out_dir: str | Path, vocab_size: int, *, text_field: str = "text",
                    gutenberg: bool = False, errors: str = "strict", sample_sentences: int = 2_000_000,
                    seed: int = 0, num_threads: int = 2, max_sentence_length: int = 8192) -> Tokenizer:
    """Train a sentencepiece BPE tokenizer on ``inputs`` and write it to ``out_dir``.

    The corpus streams line by line (each non-blank line is one sentence, lines over
    ``max_sentence_length`` characters are chunked) through a seeded reservoir of ``sample_sentences``
    lines, so memory is bounded by the sample, not the corpus. Same inputs, settings and ``seed`` give a
    byte-identical ``tokenizer.model`` (whatever ``num_threads``). Files are written atomically.
    """
    if vocab_size < 300:
        raise TokenizerError(f"vocab_size={vocab_size} is too small: 6 specials + 256 byte pieces need >= 300")
    if sample_sentences <= 0 or max_sentence_length <= 0:
        raise TokenizerError("sample_sentences and max_sentence_length must be > 0")
    sources = expand_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences, seen = _sample_corpus(sources, sample_sentences, seed, max_sentence_length,
                                     text_field=text_field, gutenberg=gutenberg, errors=errors)
    if not sentences:
        raise TokenizerError(f"no text found in {len(sources)} source(s) ({sources[0]}, ...); check --input, "
                             f"--text-field and --gutenberg")
    t0 = time.perf_counter()
    model = _train_spm(sentences, vocab_size, num_threads, max_sentence_length)
    _log(f"trained BPE vocab {vocab_size} on {len(sentences):,} of {seen:,} lines in {time.perf_counter() - t0:.1f}s")
    meta = {"format": FORMAT, "version": VERSION, "type": "sentencepiece", "vocab_size": vocab_size,
            "special_ids": _special_ids(model),
            "special_tokens": dict(SPECIALS), "hash": hashlib.sha256(model).hexdigest(), "trained_on": sources,
            "sample_sentences": sample_sentences, "seed": seed}
    from gptscale.tokenizer_hf import add_hf_twin  # lazy: it imports transformers

    atomic_write_bytes(out / MODEL_FILE, model)
    add_hf_twin(out, meta)
    atomic_write_bytes(out / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())  # last: the folder is whole
    return Tokenizer.load(out)


def _sample_corpus(sources: list[str], k: int, seed: int, max_len: int, **read_kw: Any) -> tuple[list[str], int]:
    """Reservoir sample of the corpus lines, with a progress bar over sources and a lines/s log line."""
    t0 = time.perf_counter()
    bar = tqdm(sources, desc="tokenizer: reading", unit="source", disable=None, file=sys.stderr)
    sample, seen = reservoir_sample(corpus_lines(bar, max_len=max_len, **read_kw), k, seed)
    dt = max(time.perf_counter() - t0, 1e-9)
    _log(f"read {seen:,} lines from {len(sources)} source(s) in {dt:.1f}s ({seen / dt:,.0f} lines/s), "
         f"sampled {len(sample):,}")
    return sample, seen


def _log(msg: str) -> None:
    print(f"gptscale tokenizer: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- CLI


def cli_train(argv: list[str]) -> int:
    """Train a sentencepiece BPE tokenizer on raw text and write it to a folder."""
    parser = argparse.ArgumentParser(prog="gptscale tokenizer train", description=cli_train.__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="files, globs, directories or hf:NAME specs")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size (specials included)")
    parser.add_argument("--out", required=True, help="output folder (tokenizer.model, "
                        "gptscale_tokenizer.json, and tokenizer.json + tokenizer_config.json for AutoTokenizer)")
    parser.add_argument("--text-field", default="text", help="JSON field / column holding the text")
    parser.add_argument("--gutenberg", action="store_true", help="strip Project Gutenberg header and footer")
    parser.add_argument("--errors", choices=ERRORS, default="strict", help="what to do with non-UTF-8 bytes")
    parser.add_argument("--sample-sentences", type=int, default=2_000_000, help="lines kept for training")
    parser.add_argument("--seed", type=int, default=0, help="seed of the line sample")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="sentencepiece threads")
    return run_cli("gptscale tokenizer train", _train, parser.parse_args(argv))


def _train(args: argparse.Namespace) -> None:
    tok = train_tokenizer(args.input, args.out, args.vocab_size, text_field=args.text_field,
                          gutenberg=args.gutenberg, errors=args.errors, sample_sentences=args.sample_sentences,
                          seed=args.seed, num_threads=args.threads)
    print(f"wrote {tok.path}: vocab {tok.vocab_size}, sha256 {tok.hash[:16]}, specials {tok.to_json()['special_ids']}")


def cli(argv: list[str]) -> int:
    """Tokenizer tools: `gptscale tokenizer train ...`."""
    if not argv or argv[0] != "train":
        print("usage: gptscale tokenizer train --input FILES... --vocab-size N --out DIR  (train --help for more)",
              file=sys.stderr)
        return 2
    return cli_train(argv[1:])
