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

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter

from gptscale.tokenizer import HF_TOKENIZER_FILES, META_FILE, MODEL_FILE, Tokenizer, TokenizerError

MODEL_INPUTS = ("input_ids", "attention_mask")
"""What the tokenizer returns: no token_type_ids, which GPT-2 / OpenAI-GPT models would add as embeddings."""


def save_hf(tok: Tokenizer, folder: str | Path, max_length: int, task_template: bool = False) -> None:
    """Write Hugging Face tokenizer files for ``tok`` into ``folder`` (Tokenizer.load and AutoTokenizer read
    them): a Hugging Face tokenizer (task specials included) through save_pretrained, ours as its twin.
    ``task_template``: the post-processor adds GPT-1's task tokens (``task_template_processor``)."""
    if tok.hf is not None:
        hf = copy.deepcopy(tok.hf)
        hf.model_max_length = max_length
    else:
        hf = hf_tokenizer_from_sentencepiece(Path(tok.path) / MODEL_FILE, tok.to_json(), max_length)
    hf.model_input_names = list(MODEL_INPUTS)
    if task_template:
        current = hf.backend_tokenizer.post_processor
        template = task_template_processor(tok)
        hf.backend_tokenizer.post_processor = (
            template if current is None else processors.Sequence([current, template]))
    hf.save_pretrained(str(folder))
    if tok.hf is None:
        shutil.copyfile(Path(tok.path) / MODEL_FILE, Path(folder) / MODEL_FILE)
        (Path(folder) / META_FILE).write_text(json.dumps(tok.to_json(), indent=2) + "\n")


def task_template_processor(tok: Tokenizer) -> Any:
    """GPT-1's input transformation as a ``tokenizers`` post-processor: ``<|start|> $A <|extract|>`` for one
    text, ``<|start|> $A <|delim|> $B <|extract|>`` for a pair (the tokens and ids of ``tok``)."""
    names = ("start", "delim", "extract")
    toks = tok.to_json()["special_tokens"]
    s, d, e = (toks[n] for n in names)
    ids = [(toks[n], getattr(tok, f"{n}_id")) for n in names]
    return processors.TemplateProcessing(single=f"{s} $A {e}", pair=f"{s} $A {d} $B {e}", special_tokens=ids)


def hf_tokenizer_from_sentencepiece(model_file: Path, meta: dict[str, Any], max_length: int | None) -> Any:
    """A transformers fast tokenizer that encodes like our sentencepiece model (see the module docstring);
    ``max_length``: the model's context (``model_max_length``), None for a tokenizer without a model."""
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
        split_special_tokens=True, clean_up_tokenization_spaces=False, model_input_names=list(MODEL_INPUTS),
        **({} if max_length is None else {"model_max_length": max_length}))


def add_hf_twin(folder: Path, meta: dict[str, Any]) -> None:
    """Write the Hugging Face twin (tokenizer.json, tokenizer_config.json, ...) of ``folder/tokenizer.model``
    into ``folder``, each file atomically (built in a temporary subfolder, then renamed into place)."""
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=folder))
    try:
        hf_tokenizer_from_sentencepiece(folder / MODEL_FILE, meta, None).save_pretrained(str(tmp))
        for f in sorted(tmp.iterdir()):
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def copy_hf_tokenizer(tok_dir: Path, out: Path) -> None:
    for name in HF_TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, out / name)
