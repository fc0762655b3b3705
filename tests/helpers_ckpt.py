"""Write a small DeepSpeed checkpoint the way the pre-training loop lays it out (a helper for the tests).

Run it as one process (plain ``python``, env vars set by gptscale.runtime.dist) or as several
(``torchrun --standalone --nproc_per_node 2 tests/helpers_ckpt.py ...``):

    RUN_DIR/config.yaml
    RUN_DIR/checkpoints/latest                      the tag, written by rank 0 after every rank saved
    RUN_DIR/checkpoints/<tag>/...                   engine.save_checkpoint(..., save_latest=False)
    RUN_DIR/checkpoints/<tag>/gptscale.json         model config, tokenizer, step, tokens, world size, stage
    RUN_DIR/checkpoints/<tag>/rng_rank<r>.pt        per-rank RNG states
    RUN_DIR/expected.pt                             test oracle (rank 0): the trained parameters gathered to
                                                    full fp32 tensors, a fixed input and the trained model's
                                                    eval-mode logits on it

With ``--verify-load`` every rank then builds a fresh engine, applies ``gptscale.runtime.safeload.install``, loads the
checkpoint with ``engine.load_checkpoint`` and checks that one more optimizer step on the loaded engine gives
bit-identical parameters to one more step on the engine that wrote it (so model, optimizer and LR scheduler
states were all restored), and that every checkpoint file was read through the safe checkpoint engine. At
ZeRO-3 it also loads with ``load_module_only=True`` (DeepSpeed then rebuilds the weights with zero_to_fp32,
outside the checkpoint engine) and checks the weights against the saved ones.
Results go to ``RUN_DIR/verify_rank<r>.json``; a mismatch exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptscale.config import DataConfig, RunConfig, TrainConfig, dump_yaml, model_config
from gptscale.model import GPT
from gptscale.runtime import checkpoint
from gptscale.runtime.dist import init_distributed
from gptscale.runtime.engine import build_engine, full_state_dict, load_ds_config, zero_stage
from gptscale.tokenizer import Tokenizer

SEQ = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--preset", default="gpt2-tiny")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--ds-config", default="ds_configs/zero2.json")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify-load", action="store_true")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p.parse_args(argv)


def batch(step: int, rank: int, vocab: int, micro: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(0, vocab, (micro, SEQ + 1), generator=g)


def train_step(engine, step: int, rank: int, vocab: int, micro: int) -> float:
    x = batch(step, rank, vocab, micro)
    _, loss = engine(x[:, :-1], x[:, 1:])
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def build(args: argparse.Namespace, world: int, seed: int):
    cfg = model_config(args.preset, **({"vocab_size": args.vocab_size} if args.vocab_size else {}))
    train = TrainConfig(ds_config=str(REPO / args.ds_config), precision=args.precision, micro_batch_size=2,
                        lr=1e-2, warmup_steps=1, max_steps=args.steps + 2, seed=seed)
    torch.manual_seed(seed)
    model = GPT(cfg)
    return cfg, train, build_engine(model, train, world, total_steps=train.max_steps)


def save(engine, args, cfg, train, rank: int, world: int) -> tuple[Path, str]:
    """The checkpoint as the pre-training loop writes it (gptscale.runtime.checkpoint.save) + config.yaml."""
    run = Path(args.run_dir)
    run_cfg = RunConfig(model=cfg, train=train, data=DataConfig(tokenizer=args.tokenizer or ""))
    client = {"gptscale_step": args.steps, "tokens": args.steps * train.micro_batch_size * world * SEQ}
    meta = {"tokenizer_hash": Tokenizer.load(args.tokenizer).hash} if args.tokenizer else {}
    checkpoint.save(engine, run, run_cfg, args.steps, client, zero_stage(load_ds_config(train.ds_config)), meta)
    if rank == 0:
        (run / "config.yaml").write_text(dump_yaml(run_cfg))
    return run / checkpoint.CHECKPOINTS, checkpoint.tag_for(args.steps)


def write_expected(engine, cfg, run: Path, rank: int) -> dict[str, torch.Tensor]:
    params = full_state_dict(engine)
    if rank != 0:
        return params
    plain = GPT(cfg)
    plain.load_state_dict(params)
    idx = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = plain.eval()(idx)[0]
    torch.save({"params": params, "idx": idx, "logits": logits}, run / "expected.pt")
    return params


def verify_load(engine, args, ckpts: Path, tag: str, rank: int, world: int, saved: dict) -> dict:
    from gptscale.runtime.safeload import SafeCheckpointEngine, install

    module_only = None
    if zero_stage(engine.config) == 3:  # DeepSpeed rebuilds the weights with zero_to_fp32 on this path
        _, _, light = build(args, world, seed=args.seed + 98)
        install(light)
        try:  # a non-latest tag: DeepSpeed would load 'latest' instead; install() refuses
            light.load_checkpoint(str(ckpts), tag="step_00000000", load_optimizer_states=False)
            refused = False
        except ValueError as e:
            refused = "ignoring the tag" in str(e)
        light.load_checkpoint(str(ckpts), tag=tag, load_optimizer_states=False, load_lr_scheduler_states=False,
                              load_module_only=True)
        got = full_state_dict(light)
        module_only = refused and all(torch.equal(got[k], saved[k]) for k in saved)
    _, _, fresh = build(args, world, seed=args.seed + 99)
    safe = install(fresh)
    path, client = fresh.load_checkpoint(str(ckpts), tag=tag)
    vocab, micro = fresh.module.cfg.vocab_size, 2
    torch.manual_seed(1234 + rank)  # same dropout masks for both engines
    loss_a = train_step(engine, args.steps, rank, vocab, micro)
    torch.manual_seed(1234 + rank)
    loss_b = train_step(fresh, args.steps, rank, vocab, micro)
    a, b = full_state_dict(engine), full_state_dict(fresh)
    files = sorted(Path(p).name for p in safe.loaded)
    return {"loaded_path": path, "client_step": client.get("gptscale_step"), "loss_a": loss_a, "loss_b": loss_b,
            "params_equal": all(torch.equal(a[k], b[k]) for k in a), "files": files,
            "is_safe_engine": isinstance(fresh.checkpoint_engine, SafeCheckpointEngine),
            "module_only_equal": module_only}


def main() -> int:
    args = parse_args()
    rank, world, _ = init_distributed()
    cfg, train, engine = build(args, world, args.seed)
    for step in range(args.steps):
        train_step(engine, step, rank, cfg.vocab_size, train.micro_batch_size)
    ckpts, tag = save(engine, args, cfg, train, rank, world)
    saved = write_expected(engine, cfg, Path(args.run_dir), rank)
    ok = True
    if args.verify_load:
        result = verify_load(engine, args, ckpts, tag, rank, world, saved)
        (Path(args.run_dir) / f"verify_rank{rank}.json").write_text(json.dumps(result, indent=1))
        ok = (result["params_equal"] and result["loss_a"] == result["loss_b"] and result["is_safe_engine"]
              and result["module_only_equal"] is not False)
    torch.distributed.barrier()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
