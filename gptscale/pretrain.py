"""Pre-training entry point: `main(cfg)` trains the GPT decoder on token shards with DeepSpeed.

    deepspeed --num_gpus 8 gptscale/pretrain.py --config run.yaml [--section.key=value ...] [--resume auto]
    torchrun --nproc_per_node 8 gptscale/pretrain.py --config run.yaml
    srun python gptscale/pretrain.py --config run.yaml          (env derived from SLURM_*)
    gptscale pretrain --config run.yaml

One run directory (train.run_dir) holds config.yaml, metrics.jsonl, tb/ (TensorBoard) and checkpoints/.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptscale.config import RunConfig, dump_yaml, load_config
from gptscale.data.manifest import ShardError, read_manifest
from gptscale.files import atomic_write_bytes
from gptscale.model import GPT
from gptscale.runtime import checkpoint, faults
from gptscale.runtime.dist import device, init_distributed, print0, shutdown
from gptscale.runtime.engine import DSConfigError, build_engine, load_ds_config, zero_stage
from gptscale.runtime.monitor import Monitor, memory_gb, peak_tflops
from gptscale.runtime.preempt import Preemption


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to change."""


def parse_sources(spec: str) -> dict[str, float]:
    """'uri' or 'uri=weight,uri=weight' -> {uri: weight}."""
    if not spec:
        raise TrainingError("data.shards is empty: pass --data.shards=<folder written by `gptscale shard`>")
    out = {}
    for part in spec.split(","):
        uri, _, w = part.rpartition("=") if "=" in part else (part, "", "1")
        out[uri] = float(w)
    return out


def check_data(cfg: RunConfig) -> tuple[dict[str, float], dict[str, dict]]:
    """Shapes and vocabularies agree before any compute (seq_len, context, tokenizer).
    Returns the mixing weights and each source's manifest."""
    sources = parse_sources(cfg.data.shards)
    manifests = {uri: read_manifest(uri)[0] for uri in sources}
    for uri, m in manifests.items():
        if m["seq_len"] != cfg.data.seq_len:
            raise TrainingError(f"{uri}: shards hold seq_len {m['seq_len']} but data.seq_len={cfg.data.seq_len}; "
                                f"set --data.seq_len={m['seq_len']} or re-shard")
        if m["tokenizer"]["vocab_size"] > cfg.model.vocab_size:
            raise TrainingError(f"{uri}: tokenizer vocab {m['tokenizer']['vocab_size']} > model.vocab_size="
                                f"{cfg.model.vocab_size}; set --model.vocab_size={m['tokenizer']['vocab_size']} or more "
                                f"(on GPUs a multiple of 64, e.g. "
                                f"{-(-m['tokenizer']['vocab_size'] // 64) * 64}, is faster)")
    if cfg.data.seq_len > cfg.model.n_ctx:
        raise TrainingError(f"data.seq_len={cfg.data.seq_len} exceeds the model context model.n_ctx={cfg.model.n_ctx}")
    return sources, manifests


def total_steps(cfg: RunConfig, world: int) -> int:
    t = cfg.train
    steps = t.max_steps
    if t.max_tokens is not None:
        per_step = t.micro_batch_size * t.grad_accum_steps * world * cfg.data.seq_len
        steps = min(steps, math.ceil(t.max_tokens / per_step))
    return steps


def make_streams(cfg: RunConfig, sources: dict[str, float], manifests: dict[str, dict], rank: int, world: int):
    from gptscale.data import ShardLoader, ShardStream
    from gptscale.tokenizer import Tokenizer

    tok_hash = Tokenizer.load(cfg.data.tokenizer).hash if cfg.data.tokenizer else None
    common = dict(seed=cfg.data.seed, rank=rank, world_size=world, verify=cfg.data.verify_shards,
                  tokenizer_hash=tok_hash)
    train = ShardStream(sources, batch_size=cfg.train.micro_batch_size, shuffle_window=cfg.data.shuffle_window,
                        **common)
    val = None
    if cfg.train.eval_interval > 0:
        first = next(iter(sources))
        if manifests[first]["splits"].get("val", {}).get("shards"):
            val = ShardStream(first, split="val", batch_size=cfg.train.micro_batch_size, shuffle=False, epochs=None,
                              **common)
    return ShardLoader(train, num_workers=cfg.data.num_workers), val


@torch.no_grad()
def evaluate(engine, val, steps: int) -> float:
    """Mean next-token loss over `steps` validation batches per rank (the same batches every time)."""
    engine.eval()
    val.load_state_dict({**val.state_dict(), "position": 0})
    total = torch.zeros(2, dtype=torch.float64)
    it = iter(val)
    for _ in range(steps):
        batch = next(it).to(device())
        _, loss = engine(batch[:, :-1], batch[:, 1:])
        total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    dist.all_reduce(total)
    engine.train()
    return (total[0] / total[1]).item()


def train_step(engine, it, accum: int, state: dict) -> float:
    """One optimizer step of `accum` finite micro-batches; a non-finite loss on any rank skips that
    micro-batch on every rank (it is consumed, not retried). Returns the mean loss over ranks."""
    losses = []
    inject = state["inject_nan"]
    while len(losses) < accum:
        batch = next(it).to(device())
        _, loss = engine(batch[:, :-1], batch[:, 1:])
        state["micro"] += 1
        if state["micro"] in inject:
            loss = loss * float("nan")
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            state["skipped"] += 1
            state["bad_in_row"] += 1
            if state["bad_in_row"] >= state["max_bad"]:
                raise TrainingError(f"{state['bad_in_row']} non-finite losses in a row (micro-step {state['micro']}); "
                                    f"stopping. Lower train.lr, raise train.warmup_steps, or use bf16 instead of fp16")
            continue
        state["bad_in_row"] = 0
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach().float())
    mean = torch.stack(losses).mean().reshape(1)
    dist.all_reduce(mean)
    return mean.item() / dist.get_world_size()


def _optimizer_name(engine) -> str:
    """The innermost optimizer class (e.g. AdamW, DeepSpeedCPUAdam) under DeepSpeed's ZeRO wrappers."""
    opt = engine.optimizer
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    return type(opt).__name__


def _grad_norm(engine) -> float | None:
    g = engine.get_global_grad_norm()
    return None if g is None else float(g)


def _loss_scale(engine, precision: str) -> float | None:
    if precision != "fp16":
        return None
    opt = engine.optimizer
    return float(getattr(opt, "cur_scale", getattr(opt, "loss_scale", float("nan"))))


def main(cfg: RunConfig, resume: str = "auto") -> dict[str, Any]:
    """Train per `cfg`; returns the final step's metrics (on every rank)."""
    preempt = Preemption()  # first: a USR2 during setup (engine build, checkpoint load) is acted on after step 1
    rank, world, _ = init_distributed()
    run_dir = Path(cfg.train.run_dir)
    sources, manifests = check_data(cfg)
    ds = load_ds_config(cfg.train.ds_config)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())
    dist.barrier()
    steps_total = total_steps(cfg, world)
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    n_params, flops_tok = model.num_params(), model.flops_per_token(cfg.data.seq_len)  # before ZeRO-3 partitions
    found = checkpoint.find(run_dir, resume)
    elastic = bool(found) and checkpoint.saved_world_size(*found) != world
    if elastic:  # written by another world size: through DeepSpeed's universal checkpoint
        checkpoint.to_universal(*found)
        print0(f"elastic resume: {found[0] / found[1]} was written by {checkpoint.saved_world_size(*found)} ranks, "
               f"continuing on {world}")
    engine = build_engine(model, cfg.train, world, steps_total, load_universal=elastic)
    loader, val = make_streams(cfg, sources, manifests, rank, world)
    step, tokens, resumed_msg = 0, 0, ""
    if found:
        client = checkpoint.load(engine, *found)
        step, tokens = client["step"], client["tokens"]
        loader.load_state_dict(client["data"])
        resumed_msg = f"resumed from {found[0] / found[1]} at step {step} ({tokens:,} tokens)"
    tokens_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world * cfg.data.seq_len
    peak = peak_tflops(cfg.train.precision, cfg.train.peak_tflops)
    mon = Monitor(run_dir, rank, steps_total)
    if resumed_msg:
        mon.log(resumed_msg)
    mon.log(f"gptscale pretrain: {n_params / 1e6:.2f}M params, ZeRO-{zero_stage(ds)}, {cfg.train.precision}, "
           f"optimizer {_optimizer_name(engine)}, "
           f"world {world}, global batch {tokens_per_step // cfg.data.seq_len} x {cfg.data.seq_len} tokens, "
           f"{steps_total} steps -> {run_dir}")
    state = {"micro": 0, "skipped": 0, "bad_in_row": 0, "max_bad": cfg.train.max_bad_steps,
             "inject_nan": faults.nan_micro_steps()}
    it = iter(loader)
    metrics: dict[str, Any] = {}
    t_last, steps_since = time.perf_counter(), 0
    try:
        while step < steps_total:
            loss = train_step(engine, it, cfg.train.grad_accum_steps, state)
            step += 1
            tokens += tokens_per_step
            steps_since += 1
            log_now = step % cfg.train.log_interval == 0 or step == steps_total
            dt = time.perf_counter() - t_last
            tok_s = tokens_per_step * steps_since / max(dt, 1e-9)
            tflops = flops_tok * tok_s / world / 1e12
            metrics = {"loss": loss, "lr": engine.get_lr()[0], "grad_norm": _grad_norm(engine), "tokens": tokens,
                       "tokens_per_sec": tok_s, "tflops": tflops, "mfu": tflops / peak if peak else None,
                       "loss_scale": _loss_scale(engine, cfg.train.precision), "memory_gb": memory_gb(),
                       "skipped": state["skipped"]}
            mon.step(step, metrics, console=log_now)
            if log_now:
                t_last, steps_since = time.perf_counter(), 0
            if val is not None and (step % cfg.train.eval_interval == 0 or step == steps_total):
                metrics["val_loss"] = evaluate(engine, val, cfg.train.eval_steps)
                mon.eval(step, metrics["val_loss"])
            stop = preempt.should_stop(step, device()) and step < steps_total
            if stop or step % cfg.train.checkpoint_interval == 0 or step == steps_total:
                checkpoint.save(engine, run_dir, cfg, step,
                                {"step": step, "tokens": tokens, "data": loader.state_dict()}, zero_stage(ds))
                faults.after_checkpoint(step, rank)
            if stop:
                mon.log(f"preempted at step {step}: checkpoint {run_dir / 'checkpoints' / checkpoint.tag_for(step)}")
                mon.close()
                preempt.requeue_and_exit(print0)
        mon.log(f"done: step {step}, {tokens:,} tokens; TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    finally:
        preempt.restore()
        mon.close()
    return {"step": step, **metrics}


def cli(argv: list[str]) -> int:
    cfg, rest = load_config(argv)
    p = argparse.ArgumentParser(prog="gptscale pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", default="auto", help="'auto' (the run dir's latest checkpoint, if any), 'none', "
                   "or a run/checkpoint path")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = p.parse_args(rest)
    try:
        main(cfg, resume=args.resume)
    except (TrainingError, DSConfigError, ShardError, FileNotFoundError) as e:
        print(f"gptscale pretrain: error: {e}", file=sys.stderr, flush=True)
        return 2
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
