"""The Hugging Face twin of a gptscale tokenizer: the same ids, loadable with ``transformers.AutoTokenizer``.

A gptscale sentencepiece tokenizer becomes a ``tokenizers`` BPE (``tokenizer.json`` +
``tokenizer_config.json``) built by transformers' own ``SpmConverter.build_tokenizer_from_spm_proto`` from
the model protobuf: vocabulary and ids unchanged, merges ranked by piece score over normal pieces only,
``' '`` -> ``'▁'`` as the only normalization (identity rule, no dummy prefix), no pre-tokenizer (sentencepiece
runs BPE over the whole string), byte fallback, and a Replace/ByteFallback/Fuse decoder. The six specials
(pad, unk, eod, start, delim, extract) are special tokens with ``split_special_tokens=True``: like
sentencepiece's control symbols, text that literally contains ``<|endoftext|>`` is tokenized as text, never
as the special id. Checked on the whole Gutenberg corpus (112 books, CRLF and LF) and tinyshakespeare with
2k, 8k and 32k vocabularies: ids identical to ``gptscale.tokenizer.Tokenizer.encode`` on every document,
including digits, accented/curly-quote unicode, emoji and CJK (byte fallback), tabs, runs of spaces and
newlines; decoding matches too. Known gap, shared by sentencepiece itself: ``decode`` turns a literal
``'▁'`` in the text into a space. ``tokenizer.model`` and our metadata (as ``gptscale_tokenizer.json``, since
``tokenizer.json`` is Hugging Face's name) are copied alongside; ``gptscale.tokenizer.Tokenizer.load(out)``
reads the folder as a Hugging Face tokenizer. A tokenizer that is already a local Hugging Face folder has its
files copied as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter

from gptscale.tokenizer import HF_TOKENIZER_FILES, MODEL_FILE, TOKENIZER_META, Tokenizer, TokenizerError


def save_hf(tok: Tokenizer, folder: str | Path, max_length: int) -> None:
    """Write Hugging Face tokenizer files for ``tok`` into ``folder`` (Tokenizer.load and AutoTokenizer read
    them): a Hugging Face tokenizer (task specials included) through save_pretrained, ours as its twin."""
    if tok.hf is not None:
        tok.hf.save_pretrained(str(folder))
        return
    write_sentencepiece_as_hf(Path(tok.path), Path(folder), tok.to_json(), max_length)


def hf_tokenizer_from_sentencepiece(model_file: Path, meta: dict[str, Any], max_length: int) -> Any:
    """A transformers fast tokenizer that encodes like our sentencepiece model (see the module docstring)."""
    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    spec = proto.normalizer_spec
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces or spec.precompiled_charsmap:
        raise TokenizerError(f"{model_file}: not a gptscale tokenizer (normalizer adds a dummy prefix, collapses "
                             f"whitespace or is not the identity)")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    st = meta["special_tokens"]
    extra = [st[name] for name in ("start", "delim", "extract") if name in st]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=proto.trainer_spec.unk_piece, pad_token=st["pad"],
        eos_token=st["eod"], bos_token=st["eod"], additional_special_tokens=extra,
        split_special_tokens=True, clean_up_tokenization_spaces=False, model_max_length=max_length)


def write_sentencepiece_as_hf(tok_dir: Path, out: Path, meta: dict[str, Any], max_length: int) -> None:
    hf = hf_tokenizer_from_sentencepiece(tok_dir / MODEL_FILE, meta, max_length)
    hf.save_pretrained(str(out))
    shutil.copyfile(tok_dir / MODEL_FILE, out / MODEL_FILE)
    (out / TOKENIZER_META).write_text(json.dumps(meta, indent=2) + "\n")


def copy_hf_tokenizer(tok_dir: Path, out: Path) -> None:
    for name in HF_TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, out / name)
