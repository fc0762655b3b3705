"""The `gptscale` console script: one command, one subcommand per stage.

    gptscale config  [--config FILE] [--section.key=value ...]   resolve and print a run config
    gptscale presets                                           list model presets with sizes
    gptscale hf-check [--out DIR] [--model.key=value ...]      export a model to a Hugging Face folder and
                                                               check it against transformers' own model
    gptscale tokenizer train --input ... --vocab-size N --out DIR   train a sentencepiece BPE tokenizer
    gptscale shard --input ... --tokenizer DIR --out DIR        tokenize a corpus into Arrow token shards
    gptscale pretrain --config FILE [--section.key=value ...]   pre-train with DeepSpeed (also: deepspeed
                                                               gptscale/pretrain.py, torchrun, srun)
    gptscale finetune --task rte [--init CKPT_OR_DIR] [...]     GPT-1 fine-tuning (also: deepspeed
                                                               gptscale/finetune.py --task rte)
    gptscale export RUN_OR_CKPT --out DIR                       checkpoint -> Hugging Face folder
    gptscale predict --model DIR --text "..." [--text-pair ..]  label + confidence from a fine-tuned model
    gptscale fewshot --task sst2 --train-samples 16,64 -- ...   few-shot sweep -> one results table
    gptscale launch pretrain|finetune|finetune-grid ...         submit to Slurm with submitit (= python -m
                                                               gptscale.launcher; python -m launcher in a checkout)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gptscale.config import PRESETS, SECTIONS, dump_yaml, field_docs, load_config, model_config
from gptscale.errors import run_cli


def cmd_config(argv: list[str]) -> int:
    """Resolve defaults < preset < file < CLI and print the result as YAML (or the keys' docs)."""
    parser = argparse.ArgumentParser(prog="gptscale config", description=cmd_config.__doc__)
    parser.add_argument("--keys", action="store_true", help="list every key with its docstring")
    cfg, rest = load_config(argv)
    args = parser.parse_args(rest)
    if args.keys:
        for section, cls in SECTIONS.items():
            for key, doc in field_docs(cls).items():
                print(f"{section}.{key}: {doc}")
        return 0
    print(dump_yaml(cfg), end="")
    return 0


def cmd_presets(argv: list[str]) -> int:
    """List the named model presets with parameter count and training FLOPs per token."""
    import torch  # here, not at the top: `gptscale shard` / `config` need not pay for torch

    from gptscale.model import GPT

    argparse.ArgumentParser(prog="gptscale presets", description=cmd_presets.__doc__).parse_args(argv)
    print(f"{'preset':<10} {'block':<5} {'layers':>6} {'d_model':>7} {'heads':>5} {'ctx':>5} {'params':>10} {'GFLOP/tok':>10}")
    for name in PRESETS:
        cfg = model_config(name)
        with torch.device("meta"):  # shapes only, no memory
            model = GPT(cfg)
        print(f"{name:<10} {cfg.ln_position:<5} {cfg.n_layer:>6} {cfg.d_model:>7} {cfg.n_head:>5} {cfg.n_ctx:>5} "
              f"{model.num_params() / 1e6:>9.1f}M {model.flops_per_token(cfg.n_ctx) / 1e9:>10.2f}")
    return 0


COMMANDS: dict[str, str] = {
    "config": "gptscale.__main__:cmd_config",
    "presets": "gptscale.__main__:cmd_presets",
    "hf-check": "gptscale.hf.export:cli_hf_check",
    "tokenizer": "gptscale.tokenizer:cli",
    "shard": "gptscale.data.shards:cli_shard",
    "pretrain": "gptscale.pretrain:cli",
    "finetune": "gptscale.finetune:cli",
    "export": "gptscale.hf.export:cli_export",
    "predict": "gptscale.tasks.predict:cli",
    "fewshot": "gptscale.tasks.sweep:cli",
    "launch": "gptscale.launcher.cli:main",
}
"""Subcommand -> 'module:function(argv) -> exit status'. Imported on use: `gptscale config` need not pay for
torch and DeepSpeed."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ngptscale: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    module, _, func = COMMANDS[argv[0]].partition(":")
    try:
        return run_cli(f"gptscale {argv[0]}", getattr(importlib.import_module(module), func), argv[1:])
    except BrokenPipeError:  # `gptscale presets | head`: the reader left; no traceback (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a SIGPIPE'd command


if __name__ == "__main__":
    sys.exit(main())
