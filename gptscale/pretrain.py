"""Pre-training entry point: `main(cfg)` trains the GPT decoder on token shards with DeepSpeed.

    deepspeed --num_gpus 8 gptscale/pretrain.py --config run.yaml [--section.key=value ...] [--resume auto]
    torchrun --nproc_per_node 8 gptscale/pretrain.py --config run.yaml
    srun python gptscale/pretrain.py --config run.yaml          (env derived from SLURM_*)
    gptscale pretrain --config run.yaml --train.init=openai-community/gpt2   (continued pre-training; with_init)

One run directory (train.run_dir) holds config.yaml, train.log, metrics.jsonl, tb/ (TensorBoard) and
checkpoints/. What the loop shares with fine-tuning (start-up, engine, checkpoints, monitor, preemption,
the CLI error policy) lives in gptscale/runtime/.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gptscale.config import ModelConfig, RunConfig, from_dict, load_config_and_keys
from gptscale.data import ShardLoader, ShardStream
from gptscale.data.manifest import read_manifest
from gptscale.errors import GptscaleError
from gptscale.init_source import InitError, Source, check_tokenizer, explicit_keys, model_in_effect, open_source
from gptscale.model import GPT
from gptscale.runtime import checkpoint, faults
from gptscale.runtime.dist import device, print0
from gptscale.runtime.engine import build_engine, evaluating, load_ds_config, optimizer_name, step_stats, zero_stage
from gptscale.runtime.monitor import Progress, memory_gb, peak_tflops
from gptscale.runtime.preempt import Preemption
from gptscale.runtime.resume import apply_hparams, header, history
from gptscale.runtime.resume import check as resume_check
from gptscale.runtime.run import Run, run_entry_point, start_run, write_config
from gptscale.tokenizer import Tokenizer


class TrainingError(GptscaleError, RuntimeError):
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


def check_data(cfg: RunConfig, init: Source | None = None) -> tuple[dict[str, float], dict[str, dict]]:
    """Shapes and vocabularies agree before any compute (seq_len, context, tokenizer; with `init`, also with
    the model to start from). Returns the mixing weights and each source's manifest."""
    sources = parse_sources(cfg.data.shards)
    manifests = {uri: read_manifest(uri)[0] for uri in sources}
    if init is not None:
        check_init(init, manifests)
    for uri, m in manifests.items():
        if m["seq_len"] != cfg.data.seq_len:
            raise TrainingError(f"{uri}: shards hold seq_len {m['seq_len']} but data.seq_len={cfg.data.seq_len}; "
                                f"set --data.seq_len={m['seq_len']} or re-shard")
        if m["tokenizer"]["vocab_size"] > cfg.model.vocab_size:
            raise TrainingError(f"{uri}: tokenizer vocab {m['tokenizer']['vocab_size']} > model.vocab_size="
                                f"{cfg.model.vocab_size}; set --model.vocab_size={m['tokenizer']['vocab_size']} or more "
                                f"(on GPUs a multiple of 64, e.g. "
                                f"{-(-m['tokenizer']['vocab_size'] // 64) * 64}, is faster)")
    hashes = {uri: m["tokenizer"].get("hash") for uri, m in manifests.items()}
    if len(set(hashes.values())) > 1:
        raise TrainingError("data.shards mixes shard sets written with different tokenizers (" + ", ".join(
            f"{uri}: {h and h[:12]}" for uri, h in hashes.items()) + "); re-shard them with one tokenizer")
    if cfg.data.seq_len > cfg.model.n_ctx:
        raise TrainingError(f"data.seq_len={cfg.data.seq_len} exceeds the model context model.n_ctx={cfg.model.n_ctx}")
    return sources, manifests


def check_init(source: Source, manifests: dict[str, dict]) -> None:
    """The init fits the shards: they were written with the tokenizer it was trained with (where both record
    its hash), its vocabulary covers that tokenizer's and its context the shards' sequence length."""
    init, mc = f"train.init={source.spec}", source.model
    for uri, m in manifests.items():
        tok = m["tokenizer"]
        what = f"data.shards {uri}: tokenizer {tok.get('path')} (sha256 {str(tok.get('hash'))[:12]}...)"
        check_tokenizer(source, {tok.get("hash")}, what, f"Continue on shards written with the tokenizer of {init} "
                        f"(`gptscale shard --tokenizer <it>`), or pick another --train.init")
        if tok["vocab_size"] > mc.vocab_size:
            raise InitError(f"{what} has {tok['vocab_size']} ids but {init} has model.vocab_size {mc.vocab_size}: "
                            f"ids past its embedding table. Re-shard with its tokenizer, or pick another --train.init")
        if m["seq_len"] > mc.n_ctx:
            raise InitError(f"data.shards {uri}: seq_len {m['seq_len']} exceeds the context of {init} (model.n_ctx "
                            f"{mc.n_ctx}); re-shard with `gptscale shard --seq-len {mc.n_ctx}` (or less)")


def with_init(cfg: RunConfig, given: set[str], resume: str) -> tuple[RunConfig, Source | None]:
    """`cfg` with the model config in effect under train.init, and the source to take the weights from (None:
    a random init). A resume keeps its checkpoint's model config and weights: the init is not read (None).
    `given`: the dotted keys the command line set (explicit model.* keys are checked against the source)."""
    if cfg.train.init in ("", "none"):
        return cfg, None
    explicit = explicit_keys(given, cfg.model.preset)
    resumed = resume_model(cfg, resume)
    if resumed is not None:  # an explicit key that differs is resume.check's error (a fixed key)
        return dataclasses.replace(cfg, model=dataclasses.replace(
            resumed, **{k: getattr(cfg.model, k) for k in explicit})), None
    source = open_source(cfg.train.init, "train.init")
    model = model_in_effect(source.model, cfg.model, explicit, f"train.init={cfg.train.init}")
    return dataclasses.replace(cfg, model=model), source


def resume_model(cfg: RunConfig, resume: str) -> ModelConfig | None:
    """The model config of the checkpoint `resume` will take (None: a fresh start), read before the run starts
    (checkpoint.find, later, verifies it and falls back over corrupt ones: same run, same model config)."""
    if resume == "none":
        return None
    if resume == "auto":
        ckdir = Path(cfg.train.run_dir) / checkpoint.CHECKPOINTS
        tags = checkpoint.complete_tags(ckdir)[::-1]
    else:
        try:
            ckdir, tag = checkpoint.resolve(resume)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"--resume {resume}: {e}") from None
        tags = [tag]
    for tag in tags:
        try:
            return from_dict(ModelConfig, checkpoint.read_meta(ckdir, tag)["model"], where=str(ckdir / tag))
        except (GptscaleError, KeyError, TypeError, ValueError):
            continue  # unreadable metadata: find() moves it aside and takes the previous one
    return None


def total_steps(cfg: RunConfig, world: int) -> int:
    t = cfg.train
    steps = t.max_steps
    if t.max_tokens is not None:
        per_step = t.micro_batch_size * t.grad_accum_steps * world * cfg.data.seq_len
        steps = min(steps, math.ceil(t.max_tokens / per_step))
    return steps


def make_streams(cfg: RunConfig, sources: dict[str, float], manifests: dict[str, dict], rank: int, world: int):
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


def val_loss(engine, val, steps: int) -> float:
    """Mean next-token loss over `steps` validation batches per rank (the same batches every time)."""
    val.load_state_dict({**val.state_dict(), "position": 0})
    total = torch.zeros(2, dtype=torch.float64)
    it = iter(val)
    with evaluating(engine):
        for _ in range(steps):
            batch = next(it).to(device())
            _, loss = engine(batch[:, :-1], batch[:, 1:])
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    dist.all_reduce(total)
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


STEP_SCALARS = {"loss": "train/loss", "lr": "lr", "grad_norm": "grad_norm", "tokens_per_sec": "tokens_per_sec",
                "tflops": "tflops", "mfu": "mfu", "loss_scale": "loss_scale", "memory_gb": "memory_gb",
                "skipped": "train/skipped_steps"}
"""Step metric -> its TensorBoard tag (written at log steps)."""


def step_line(step: int, total: int, m: dict[str, Any], eta: str) -> str:
    """The llm.c-style console line of one step: loss, lr, grad norm, tok/s, TFLOP/s, MFU, memory, ETA."""
    parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.3e}"]
    if m.get("grad_norm") is not None:
        parts.append(f"gnorm {m['grad_norm']:.3f}")
    parts.append(f"{m['tokens_per_sec']:,.0f} tok/s")
    if m.get("tflops") is not None:
        parts.append(f"{m['tflops']:.3g} TFLOP/s")
    if m.get("mfu") is not None:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    if m.get("loss_scale") is not None:
        parts.append(f"scale {m['loss_scale']:g}")
    parts.append(f"mem {m['memory_gb']:.2f} GB")
    if m.get("skipped"):
        parts.append(f"skipped {m['skipped']}")
    return " | ".join(parts + [f"eta {eta}"])


@dataclass
class Loop:
    """What the step loop reads and updates."""

    cfg: RunConfig
    run: Run
    engine: Any
    loader: ShardLoader
    val: ShardStream | None
    steps_total: int
    tokens_per_step: int
    flops_per_token: int
    n_params: int
    step: int = 0
    tokens: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra gptscale.json keys of every checkpoint (tokenizer hash, resume history)."""


def main(cfg: RunConfig, resume: str = "auto", given: set[str] | None = None) -> dict[str, Any]:
    """Train per `cfg`; returns the final step's metrics (on every rank). `given`: the dotted keys set by the
    command line or config file (with train.init, explicit model.* keys must agree with the init)."""
    preempt = Preemption()  # first: a USR2 during setup (engine build, checkpoint load) is acted on after step 1
    cfg, init = with_init(cfg, given or set(), resume)
    sources, manifests = check_data(cfg, init)
    ds = load_ds_config(cfg.train.ds_config, cfg.train)  # every conflict with the run config, before the run folder
    run = start_run(cfg)
    try:
        loop = setup(cfg, run, resume, sources, manifests, zero_stage(ds), init)
        run.monitor.log(f"gptscale pretrain: {loop.n_params / 1e6:.2f}M params, ZeRO-{zero_stage(ds)}, "
                        f"{cfg.train.precision}, optimizer {optimizer_name(loop.engine)}, world {run.world}, global "
                        f"batch {loop.tokens_per_step // cfg.data.seq_len} x {cfg.data.seq_len} tokens, "
                        f"{loop.steps_total} steps -> {run.run_dir}")
        metrics = train(loop, preempt, zero_stage(ds))
        run.monitor.log(f"done: step {loop.step}, {loop.tokens:,} tokens; TensorBoard: tensorboard --logdir "
                        f"{run.run_dir / 'tb'}")
    finally:
        preempt.restore()
        run.close()
    return {"step": loop.step, **metrics}


def setup(cfg: RunConfig, run: Run, resume: str, sources: dict[str, float], manifests: dict[str, dict],
          stage: int, init: Source | None = None) -> Loop:
    """Model, engine and streams, resumed from `resume`'s checkpoint when there is one (see resume_point), else
    from `init`'s weights when given (see with_init), else a random init."""
    steps_total = total_steps(cfg, run.world)
    torch.manual_seed(cfg.train.seed)
    found, meta = resume_point(cfg, run, resume, stage)
    model = initial_model(cfg, run, init if not found else None, found)
    n_params, flops_tok = model.num_params(), model.flops_per_token(cfg.data.seq_len)  # before ZeRO-3 partitions
    elastic = bool(found) and meta["world_size"] != run.world
    if elastic:  # written by another world size: through DeepSpeed's universal checkpoint
        checkpoint.to_universal(*found)
        run.monitor.log(f"elastic resume: {found[0] / found[1]} was written by {meta['world_size']} ranks, "
                        f"continuing on {run.world}")
    engine = build_engine(model, cfg.train, run.world, steps_total, load_universal=elastic)
    loader, val = make_streams(cfg, sources, manifests, run.rank, run.world)
    tokens_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * run.world * cfg.data.seq_len
    loop = Loop(cfg, run, engine, loader, val, steps_total, tokens_per_step, flops_tok, n_params,
                state={"micro": 0, "skipped": 0, "bad_in_row": 0, "max_bad": cfg.train.max_bad_steps,
                       "inject_nan": faults.nan_micro_steps()},
                meta={"tokenizer_hash": tokenizer_hash(manifests), "resumes": meta.get("resumes", [])})
    if found:
        client = checkpoint.load(engine, *found)
        apply_hparams(engine, cfg, steps_total)
        loop.step, loop.tokens = client["step"], client["tokens"]
        loader.load_state_dict(client["data"])
        run.monitor.log(f"resumed from {found[0] / found[1]} at step {loop.step} ({loop.tokens:,} tokens)")
    return loop


def initial_model(cfg: RunConfig, run: Run, init: Source | None, found: tuple[Path, str] | None) -> GPT:
    """The GPT to build the engine on: `init`'s weights, or a random init (a resume loads over it)."""
    if found and cfg.train.init not in ("", "none"):
        run.monitor.log(f"train.init={cfg.train.init} not read: resuming from {found[0] / found[1]} (its weights "
                        f"and model config)")
    if init is None:
        return GPT(cfg.model)
    model = init.load(cfg.model, verify=cfg.train.verify_checkpoint).train()
    unchecked = "" if init.trained else " (it records no tokenizer: only the vocabulary size was checked)"
    run.monitor.log(f"initialised from {init.describe()}{unchecked}")
    return model


def resume_point(cfg: RunConfig, run: Run, resume: str, stage: int) -> tuple[tuple[Path, str] | None, dict]:
    """The verified checkpoint to resume from (None: a fresh start) and its gptscale.json with this resume
    added to its history ({} on a fresh start); config.yaml is rewritten with that history. A changed key
    that cannot take effect, or newer checkpoints that a start here would overwrite, are errors."""
    found = checkpoint.find(run.run_dir, resume, cfg.train.verify_checkpoint, run.monitor.log)
    meta = checkpoint.read_meta(*found) if found else {}
    checkpoint.guard_newer(run.run_dir, meta.get("step", 0), cfg.train.allow_step_back, run.monitor.log)
    if found:
        where = str(found[0] / found[1])
        diff = resume_check(meta, cfg, stage, where)
        if diff:
            run.monitor.log("resume: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
        meta["resumes"] = history(meta, where, meta["step"], diff)
        if run.rank == 0:
            write_config(run.run_dir, cfg, header(meta["resumes"]))
    return found, meta


def tokenizer_hash(manifests: dict[str, dict]) -> str | None:
    """The sha256 of the tokenizer every shard set was written with (check_data made sure it is one)."""
    hashes = {m["tokenizer"].get("hash") for m in manifests.values()}
    return hashes.pop() if len(hashes) == 1 else None


def train(loop: Loop, preempt: Preemption, stage: int) -> dict[str, Any]:
    """Steps until steps_total: log, evaluate, checkpoint, and stop at a step boundary when preempted."""
    cfg, run, mon = loop.cfg, loop.run, loop.run.monitor
    peak = peak_tflops(cfg.train.precision, cfg.train.peak_tflops)
    progress, it, metrics = Progress(loop.steps_total, loop.step), iter(loop.loader), {}
    t_last, steps_since = time.perf_counter(), 0
    while loop.step < loop.steps_total:
        loss = train_step(loop.engine, it, cfg.train.grad_accum_steps, loop.state)
        loop.step, loop.tokens, steps_since = loop.step + 1, loop.tokens + loop.tokens_per_step, steps_since + 1
        last = loop.step == loop.steps_total
        tok_s = loop.tokens_per_step * steps_since / max(time.perf_counter() - t_last, 1e-9)
        tflops = loop.flops_per_token * tok_s / run.world / 1e12
        metrics = {"loss": loss, **step_stats(loop.engine, cfg.train.precision), "tokens": loop.tokens,
                   "tokens_per_sec": tok_s, "tflops": tflops, "mfu": tflops / peak if peak else None,
                   "memory_gb": memory_gb(), "skipped": loop.state["skipped"]}
        mon.record(loop.step, metrics)
        if loop.step % cfg.train.log_interval == 0 or last:
            mon.scalars(loop.step, {tag: metrics[k] for k, tag in STEP_SCALARS.items()})
            mon.log(step_line(loop.step, loop.steps_total, metrics, progress.eta(loop.step)))
            t_last, steps_since = time.perf_counter(), 0
        if loop.val is not None and (loop.step % cfg.train.eval_interval == 0 or last):
            metrics["val_loss"] = val_loss(loop.engine, loop.val, cfg.train.eval_steps)
            log_val(mon, loop.step, metrics["val_loss"])
        stop = preempt.should_stop(loop.step, device()) and not last
        if stop or loop.step % cfg.train.checkpoint_interval == 0 or last:
            faults.poison_weights(loop.engine.module, loop.step, run.rank)
            checkpoint.save(loop.engine, run.run_dir, cfg, loop.step, {"step": loop.step, "tokens": loop.tokens,
                                                                       "data": loop.loader.state_dict()}, stage,
                            loop.meta)
            faults.after_checkpoint(loop.step, run.rank)
        if stop:
            mon.log(f"preempted at step {loop.step}: checkpoint "
                    f"{run.run_dir / checkpoint.CHECKPOINTS / checkpoint.tag_for(loop.step)}")
            run.close()
            preempt.requeue_and_exit(print0)
    return metrics


def log_val(mon, step: int, loss: float) -> None:
    ppl = math.exp(min(loss, 50.0))
    mon.scalars(step, {"val/loss": loss, "val/ppl": ppl})
    mon.record(step, {"val_loss": loss, "val_ppl": ppl})
    mon.log(f"step {step} | val loss {loss:.4f} | val ppl {ppl:.2f}")


def cli(argv: list[str]) -> int:
    def parse() -> tuple[RunConfig, str, set[str]]:
        cfg, rest, given = load_config_and_keys(argv)
        p = argparse.ArgumentParser(prog="gptscale pretrain", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--resume", default="auto", help="'auto' (the run dir's latest checkpoint, if any), 'none', "
                       "or a run/checkpoint path")
        p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
        return cfg, p.parse_args(rest).resume, given

    return run_entry_point("gptscale pretrain", lambda: main(*parse()))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
