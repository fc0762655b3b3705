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
"""

from __future__ import annotations

import argparse
import sys

from gptscale.config import PRESETS, SECTIONS, ConfigError, dump_yaml, field_docs, load_config, model_config


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
    import torch

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


def cmd_hf_check(argv: list[str]) -> int:
    """Build the configured model (seeded random init), export it as a Hugging Face folder, load that with
    transformers.AutoModelForCausalLM and compare logits and greedy generation with ours."""
    import torch

    from gptscale.hf.convert import check_hf_folder, export_hf
    from gptscale.model import GPT

    parser = argparse.ArgumentParser(prog="gptscale hf-check", description=cmd_hf_check.__doc__)
    parser.add_argument("--out", required=True, help="folder to write the HF export to (replaced if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4, help="max-abs logit difference allowed")
    cfg, rest = load_config(argv)
    args = parser.parse_args(rest)
    torch.manual_seed(args.seed)
    model = GPT(cfg.model).eval()
    out = export_hf(model, args.out, overwrite=True)
    report = check_hf_folder(model, out)
    print(f"{cfg.model.preset}: {model.num_params() / 1e6:.1f}M params -> {out} ({report['hf_class']}); "
          f"max |logits diff| {report['max_abs_diff']:.2e}; greedy tokens equal: {report['generate_equal']}")
    return 0 if report["max_abs_diff"] <= args.tol and report["generate_equal"] else 1


def cmd_tokenizer(argv: list[str]) -> int:
    """Tokenizer tools: `gptscale tokenizer train ...`."""
    from gptscale.tokenizer import cli_train

    if not argv or argv[0] != "train":
        print("usage: gptscale tokenizer train --input FILES... --vocab-size N --out DIR  (train --help for more)",
              file=sys.stderr)
        return 2
    return cli_train(argv[1:])


def cmd_shard(argv: list[str]) -> int:
    from gptscale.data.shards import cli_shard

    return cli_shard(argv)


def cmd_pretrain(argv: list[str]) -> int:
    from gptscale.pretrain import cli

    return cli(argv)


def cmd_finetune(argv: list[str]) -> int:
    from gptscale.finetune import cli

    return cli(argv)


def cmd_predict(argv: list[str]) -> int:
    from gptscale.tasks.predict import cli

    return cli(argv)


def cmd_fewshot(argv: list[str]) -> int:
    from gptscale.tasks.sweep import cli

    return cli(argv)


def cmd_export(argv: list[str]) -> int:
    from gptscale.hf.export import cli_export

    return cli_export(argv)


COMMANDS = {"config": cmd_config, "presets": cmd_presets, "hf-check": cmd_hf_check, "tokenizer": cmd_tokenizer,
            "shard": cmd_shard, "pretrain": cmd_pretrain, "finetune": cmd_finetune, "export": cmd_export,
            "predict": cmd_predict, "fewshot": cmd_fewshot}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ngptscale: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as e:
        print(f"gptscale {argv[0]}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
