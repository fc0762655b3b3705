"""Export a pre-training checkpoint as a Hugging Face folder: ``gptscale export RUN_OR_CKPT --out DIR``.

    gptscale export runs/gpt1 --out exports/gpt1-hf                  # newest complete checkpoint of the run
    gptscale export runs/gpt1/checkpoints --tag step_00004000 --out exports/gpt1-4k
    gptscale export runs/gpt1/checkpoints/step_00004000 --out exports/gpt1-4k --overwrite

The folder holds ``config.json`` + ``model.safetensors`` (gptscale.hf.convert.write_hf: OpenAI-GPT for post-LN,
GPT-2 for pre-LN models), ``generation_config.json``, and the tokenizer recorded in the checkpoint's
``gptscale.json``, so ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``
both work offline. Weights are the consolidated fp32 master weights of any ZeRO stage
(gptscale.runtime.safeload.fp32_state_dict: nothing is unpickled beyond an allowlist). The whole folder appears at
once: it is assembled in a temporary sibling and renamed into place.

Tokenizer: ``gptscale.tokenizer_hf`` (the exact Hugging Face twin of a gptscale sentencepiece tokenizer); a
tokenizer that is already a local Hugging Face folder has its files copied as they are.

Special ids in the model config and generation config: ``eos_token_id`` = end-of-document, ``pad_token_id`` =
pad, ``bos_token_id`` = end-of-document (GPT-2's convention: documents are separated by it in the shards).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from gptscale.config import ModelConfig, load_config
from gptscale.errors import GptscaleError, run_cli
from gptscale.files import atomic_dir, check_output
from gptscale.hf.convert import check_hf_folder, export_hf, write_hf
from gptscale.model import GPT
from gptscale.runtime.checkpoint import META_FILE, load_model, resolve
from gptscale.tokenizer import Tokenizer, TokenizerError
from gptscale.tokenizer_hf import copy_hf_tokenizer, save_hf


class ExportError(GptscaleError, ValueError):
    """A checkpoint or output folder that cannot be exported as asked; the message names the path."""


# ------------------------------------------------------------------------------------------ export


def export_checkpoint(path: str | Path, out: str | Path, overwrite: bool = False, tag: str | None = None,
                      tokenizer: str | Path | None = None) -> Path:
    """Write the Hugging Face folder ``out`` for a checkpoint (see the module docstring); returns ``out``.

    ``tokenizer`` overrides the folder recorded in gptscale.json (e.g. after moving a run between machines).
    Nothing appears at ``out`` unless every file was written; an existing ``out`` is only replaced with
    ``overwrite``.
    """
    out = Path(out)
    ckpts, tag = resolve(path, tag)
    source = (ckpts / tag,)
    check_output(out, overwrite, "hf-model", source)  # before loading the checkpoint: fail fast
    model, meta = load_model(ckpts, tag)
    tok_dir = _tokenizer_dir(tokenizer, meta, Path(meta["checkpoint"]))
    with atomic_dir(out, overwrite, "hf-model", source) as tmp:
        write_hf(model, tmp)
        specials = write_tokenizer(tok_dir, tmp, model.cfg, meta.get("tokenizer_hash")) if tok_dir else {}
        _write_generation_files(tmp, specials, meta)
    return out


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


def write_tokenizer(tok_dir: Path, out: Path, cfg: ModelConfig, trained_hash: str | None = None) -> dict[str, Any]:
    """Write the HF tokenizer files for ``tok_dir`` into ``out``; returns the special ids (pad, eod) and the
    hashes of the tokenizer (``tokenizer_hash``) and of its exported twin. ``trained_hash``: the sha256 of the
    tokenizer the checkpoint was trained with; another tokenizer is an error."""
    try:
        tok = Tokenizer.load(tok_dir)
    except TokenizerError as e:
        raise ExportError(str(e)) from None
    if trained_hash and trained_hash not in tok.hashes:
        raise ExportError(f"tokenizer {tok_dir} (sha256 {tok.hash[:12]}...) is not the one this checkpoint was "
                          f"trained with (sha256 {trained_hash[:12]}...); pass --tokenizer <that folder>")
    if tok.vocab_size > cfg.vocab_size:
        raise ExportError(f"tokenizer {tok_dir} has {tok.vocab_size} ids but the model's vocab_size is "
                          f"{cfg.vocab_size}; wrong tokenizer for this checkpoint")
    meta = tok.to_json()
    if meta["type"] == "sentencepiece":
        save_hf(tok, out, cfg.n_ctx)
    else:
        copy_hf_tokenizer(tok_dir, out)
    return {"pad": tok.pad_id, "eod": tok.eod_id, "tokenizer_hash": tok.hash,
            "export_tokenizer_hash": Tokenizer.load(out).hash}


def _write_generation_files(folder: Path, specials: dict[str, int], meta: dict[str, Any]) -> None:
    """Special ids into config.json and a generation_config.json; provenance into config.json."""
    config = AutoConfig.from_pretrained(str(folder))
    if specials:
        config.eos_token_id = specials["eod"]
        config.bos_token_id = specials["eod"]
        config.pad_token_id = specials["pad"]
    config.gptscale = {**{k: meta.get(k) for k in ("tag", "step", "tokens", "world_size", "zero_stage")},
                       **{k: specials.get(k) for k in ("tokenizer_hash", "export_tokenizer_hash")}}
    config.save_pretrained(str(folder))
    GenerationConfig.from_model_config(config).save_pretrained(str(folder))


# --------------------------------------------------------------------------------------------- CLI


def _sample(folder: Path, prompt: str = "It was a dark and stormy night", new_tokens: int = 40) -> str:
    """A short sampled continuation, through transformers alone (AutoTokenizer + AutoModelForCausalLM)."""
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
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an HF folder gptscale "
                        "wrote (never any other folder, never the checkpoint's own)")
    parser.add_argument("--verify", action="store_true", help="load the export with transformers.AutoModelForCausalLM "
                        "and compare logits and greedy generation with the checkpoint's model")
    args = parser.parse_args(argv)
    return run_cli("gptscale export", _export, args)


def _export(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite, tag=args.tag,
                            tokenizer=args.tokenizer)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if not args.verify:
        return 0
    model, _ = load_model(args.checkpoint, tag=args.tag)
    report = check_hf_folder(model, out)
    ok = report["max_abs_diff"] <= 1e-4 and report["generate_equal"]
    print(f"verify: {report['hf_class']} from {out}: max |logits diff| {report['max_abs_diff']:.2e}, greedy "
          f"tokens equal: {report['generate_equal']} -> {'OK' if ok else 'MISMATCH'}")
    if (out / "tokenizer_config.json").is_file():
        print(f"sample (transformers, from {out}): {_sample(out)!r}")
    return 0 if ok else 1


def cli_hf_check(argv: list[str]) -> int:
    """Build the configured model (seeded random init), export it as a Hugging Face folder, load that with
    transformers.AutoModelForCausalLM and compare logits and greedy generation with ours."""
    parser = argparse.ArgumentParser(prog="gptscale hf-check", description=cli_hf_check.__doc__)
    parser.add_argument("--out", required=True, help="folder to write the HF export to (replaced if it is one "
                        "gptscale wrote; any other non-empty folder is refused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4, help="max-abs logit difference allowed")
    cfg, rest = load_config(argv)
    args = parser.parse_args(rest)
    torch.manual_seed(args.seed)
    model = GPT(cfg.model).eval()
    out = export_hf(model, args.out, overwrite=True)  # replaces only an HF folder gptscale wrote
    report = check_hf_folder(model, out)
    print(f"{cfg.model.preset}: {model.num_params() / 1e6:.1f}M params -> {out} ({report['hf_class']}); "
          f"max |logits diff| {report['max_abs_diff']:.2e}; greedy tokens equal: {report['generate_equal']}")
    return 0 if report["max_abs_diff"] <= args.tol and report["generate_equal"] else 1


if __name__ == "__main__":
    sys.exit(cli_export(sys.argv[1:]))
