"""Export a pre-training checkpoint as a Hugging Face folder: ``gptscale export RUN_OR_CKPT --out DIR``.

    gptscale export runs/gpt1 --out exports/gpt1-hf                  # newest complete checkpoint of the run
    gptscale export runs/gpt1/checkpoints --tag step_00004000 --out exports/gpt1-4k
    gptscale export runs/gpt1/checkpoints/step_00004000 --out exports/gpt1-4k --overwrite

The folder holds ``config.json`` + ``model.safetensors`` (gptscale.hf.convert.export_hf: OpenAI-GPT for post-LN,
GPT-2 for pre-LN models), ``generation_config.json``, and the tokenizer recorded in the checkpoint's
``gptscale.json``, so ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``
both work offline. Weights are the consolidated fp32 master weights of any ZeRO stage
(gptscale.runtime.safeload.fp32_state_dict: nothing is unpickled beyond an allowlist). The whole folder appears at
once: it is assembled in a temporary sibling and renamed into place.

Tokenizer. A gptscale sentencepiece tokenizer becomes a ``tokenizers`` BPE (``tokenizer.json`` +
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

Special ids in the model config and generation config: ``eos_token_id`` = end-of-document, ``pad_token_id`` =
pad, ``bos_token_id`` = end-of-document (GPT-2's convention: documents are separated by it in the shards).
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptscale.config import ModelConfig, from_dict
from gptscale.files import atomic_dir

if TYPE_CHECKING:
    from gptscale.model import GPT

META_FILE = "gptscale.json"
TOKENIZER_META = "gptscale_tokenizer.json"


class ExportError(ValueError):
    """A checkpoint or output folder that cannot be exported as asked; the message names the path."""


# ------------------------------------------------------------------------------------- checkpoint


def resolve_checkpoint(path: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """(checkpoints folder, tag) for a run folder, a checkpoints folder (its ``latest``) or a tag folder.

    ``tag`` picks a checkpoint other than the latest; with a tag folder it must name that folder.
    """
    p = Path(path)
    if not p.exists():
        raise ExportError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise ExportError(f"{p}: expected a run folder, its checkpoints/ folder or a checkpoint tag folder")
    if _is_tag_dir(p):
        if tag is not None and tag != p.name:
            raise ExportError(f"{p} is checkpoint {p.name!r} but --tag {tag!r} was given")
        return p.parent, p.name
    ckpts = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if not (ckpts / "latest").is_file() and tag is None:
        tags = sorted(d.name for d in ckpts.iterdir() if d.is_dir() and _is_tag_dir(d))
        if ckpts == p and not tags:
            raise ExportError(f"{p}: no checkpoint here (neither checkpoints/, a 'latest' file, nor {META_FILE})")
        raise ExportError(f"{ckpts}: no 'latest' file, so no complete checkpoint is recorded"
                          + (f"; pass --tag (present: {', '.join(tags)})" if tags else ""))
    tag = tag if tag is not None else (ckpts / "latest").read_text().strip()
    if not tag:
        raise ExportError(f"{ckpts / 'latest'} is empty")
    if not _is_tag_dir(ckpts / tag):
        raise ExportError(f"{ckpts / tag}: checkpoint {tag!r} is missing or incomplete (no {META_FILE} or "
                          f"*model_states.pt)")
    return ckpts, tag


def _is_tag_dir(p: Path) -> bool:
    return (p / META_FILE).is_file() and any(p.glob("*model_states.pt"))


def load_trained_model(path: str | Path, tag: str | None = None) -> tuple[GPT, dict[str, Any]]:
    """(GPT in eval mode with the checkpoint's fp32 weights, the checkpoint's gptscale.json + its location)."""
    from gptscale.hf.convert import load_state
    from gptscale.model import GPT
    from gptscale.runtime.safeload import fp32_state_dict

    ckpts, tag = resolve_checkpoint(path, tag)
    meta_file = ckpts / tag / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
        cfg = from_dict(ModelConfig, meta["model"], where=str(meta_file))
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, missing keys, ConfigError
        raise ExportError(f"{meta_file}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None
    model = GPT(cfg)
    load_state(model, fp32_state_dict(ckpts, tag), str(ckpts / tag))
    meta = {**meta, "checkpoint": str(ckpts / tag), "tag": tag}
    return model.eval(), meta


# ------------------------------------------------------------------------------------------ export


def export_checkpoint(path: str | Path, out: str | Path, overwrite: bool = False, tag: str | None = None,
                      tokenizer: str | Path | None = None) -> Path:
    """Write the Hugging Face folder ``out`` for a checkpoint (see the module docstring); returns ``out``.

    ``tokenizer`` overrides the folder recorded in gptscale.json (e.g. after moving a run between machines).
    Nothing appears at ``out`` unless every file was written; an existing ``out`` is only replaced with
    ``overwrite``.
    """
    from gptscale.hf.convert import write_hf

    out = Path(out)
    _check_out(out, overwrite)  # before loading the checkpoint: fail fast
    model, meta = load_trained_model(path, tag)
    tok_dir = _tokenizer_dir(tokenizer, meta, Path(meta["checkpoint"]))
    with atomic_dir(out, overwrite=True) as tmp:
        write_hf(model, tmp)
        specials = write_tokenizer(tok_dir, tmp, model.cfg) if tok_dir is not None else {}
        _write_generation_files(tmp, specials, meta)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")


def _tokenizer_dir(override: str | Path | None, meta: dict[str, Any], tag_dir: Path) -> Path | None:
    """The tokenizer folder to export: the override, else gptscale.json's (as given, else run-relative)."""
    recorded = override if override is not None else meta.get("tokenizer")
    if not recorded:
        return None
    candidates = [Path(recorded)]
    if not Path(recorded).is_absolute():
        candidates.append(tag_dir.parent.parent / recorded)  # relative to the run folder
    for c in candidates:
        if c.is_dir():
            return c
    where = "--tokenizer" if override is not None else f"{tag_dir / META_FILE} records tokenizer"
    raise ExportError(f"{where} {str(recorded)!r}: no such folder (looked at {', '.join(map(str, candidates))}); "
                      f"pass --tokenizer DIR")


def write_tokenizer(tok_dir: Path, out: Path, cfg: ModelConfig) -> dict[str, int]:
    """Write the HF tokenizer files for ``tok_dir`` into ``out``; returns the special ids (pad, eod, ...)."""
    from gptscale.tokenizer import Tokenizer, TokenizerError

    try:
        tok = Tokenizer.load(tok_dir)
    except TokenizerError as e:
        raise ExportError(str(e)) from None
    if tok.vocab_size > cfg.vocab_size:
        raise ExportError(f"tokenizer {tok_dir} has {tok.vocab_size} ids but the model's vocab_size is "
                          f"{cfg.vocab_size}; wrong tokenizer for this checkpoint")
    meta = tok.to_json()
    if meta["type"] == "sentencepiece":
        write_sentencepiece_as_hf(tok_dir, out, meta, cfg.n_ctx)
    else:
        _copy_hf_tokenizer(tok_dir, out)
    return {"pad": tok.pad_id, "eod": tok.eod_id}


def hf_tokenizer_from_sentencepiece(model_file: Path, meta: dict[str, Any], max_length: int) -> Any:
    """A transformers fast tokenizer that encodes like our sentencepiece model (see the module docstring)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = pb.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    spec = proto.normalizer_spec
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces or spec.precompiled_charsmap:
        raise ExportError(f"{model_file}: not a gptscale tokenizer (normalizer adds a dummy prefix, collapses "
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
    from gptscale.tokenizer import MODEL_FILE

    hf = hf_tokenizer_from_sentencepiece(tok_dir / MODEL_FILE, meta, max_length)
    hf.save_pretrained(str(out))
    shutil.copyfile(tok_dir / MODEL_FILE, out / MODEL_FILE)
    (out / TOKENIZER_META).write_text(json.dumps(meta, indent=2) + "\n")


def _copy_hf_tokenizer(tok_dir: Path, out: Path) -> None:
    from gptscale.tokenizer import HF_TOKENIZER_FILES

    for name in HF_TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, out / name)


def _write_generation_files(folder: Path, specials: dict[str, int], meta: dict[str, Any]) -> None:
    """Special ids into config.json and a generation_config.json; provenance into config.json."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(str(folder))
    if specials:
        config.eos_token_id = specials["eod"]
        config.bos_token_id = specials["eod"]
        config.pad_token_id = specials["pad"]
    config.gptscale = {k: meta.get(k) for k in ("tag", "step", "tokens", "world_size", "zero_stage")}
    config.save_pretrained(str(folder))
    GenerationConfig.from_model_config(config).save_pretrained(str(folder))


# --------------------------------------------------------------------------------------------- CLI


def _sample(folder: Path, prompt: str = "It was a dark and stormy night", new_tokens: int = 40) -> str:
    """A short sampled continuation, through transformers alone (AutoTokenizer + AutoModelForCausalLM)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = tok(prompt, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=True, top_k=40, temperature=0.8,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0], skip_special_tokens=True)


def cli_export(argv: list[str]) -> int:
    """Export a pre-training checkpoint (run folder, checkpoints folder or tag folder) as a Hugging Face folder."""
    parser = argparse.ArgumentParser(prog="gptscale export", description=cli_export.__doc__)
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run folder, its checkpoints/ folder, or a tag folder")
    parser.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--tag", default=None, help="checkpoint tag to export instead of the latest")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the one in gptscale.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--verify", action="store_true", help="load the export with transformers.AutoModelForCausalLM "
                        "and compare logits and greedy generation with the checkpoint's model")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite, tag=args.tag,
                                tokenizer=args.tokenizer)
    except (ExportError, OSError, ValueError, pickle.UnpicklingError) as e:  # UnsafeCheckpointError included
        print(f"gptscale export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if args.verify:
        from gptscale.hf.convert import check_hf_folder

        model, _ = load_trained_model(args.checkpoint, tag=args.tag)
        report = check_hf_folder(model, out)
        ok = report["max_abs_diff"] <= 1e-4 and report["generate_equal"]
        print(f"verify: {report['hf_class']} from {out}: max |logits diff| {report['max_abs_diff']:.2e}, greedy "
              f"tokens equal: {report['generate_equal']} -> {'OK' if ok else 'MISMATCH'}")
        if (out / "tokenizer_config.json").is_file():
            print(f"sample (transformers, from {out}): {_sample(out)!r}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli_export(sys.argv[1:]))
