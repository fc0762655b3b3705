"""DeepSpeed engine training step vs a plain torch AdamW loop on the same model, one process, on CPU.

The DeepSpeed side is what users get: ``gptscale.runtime.engine.build_engine`` (the run config filled into a
ds_configs file, our torch AdamW handed to DeepSpeed, the LambdaLR schedule) and per step

    loss = engine(x, y)[1]; engine.backward(loss); engine.step()

The torch side is the same GPT, ``torch.optim.AdamW(param_groups(model, wd))``, the same LambdaLR
(``lr_multiplier``) and ``clip_grad_norm_``:

    loss.backward(); clip_grad_norm_; opt.step(); sched.step(); opt.zero_grad(set_to_none=True)

Both start from the same weights and see the same batches; each side keeps its own RNG state so dropout
draws the same masks on both. After warm-up the two alternate, the order flipping every iteration (as in
bench/model_speed.py). Per config a line with the median ms/step of each side, their ratio, and the max
abs loss difference over the first steps; the LAST line is JSON:

    {"ds_ms": ..., "torch_ms": ..., "ratio": ..., "paired_ratio_median": ..., "headline": "zero2",
     "target_ratio": 1.15, "configs": [...]}

where the top-level figures are the headline config's (ZeRO-2 unless --headline says otherwise). "ratio" is
median DeepSpeed ms / median torch ms; on a shared, noisy machine also read "paired_ratio_median" (median of
per-iteration ratios of back-to-back steps), "min_ratio" and "cpu_ratio" (process CPU time), and the load
average recorded per config. Per-phase medians (forward, backward, optimizer step) show where the time goes.

Losses: fp32 with no clipping (--grad-clip 0) is bit-identical to the torch loop at ZeRO-0 and ZeRO-2 (same
dropout masks). With clipping the global norm is summed in another order (DeepSpeed's clip_grad_norm_ /
ZeRO's norm vs torch's), so losses differ by ~1 ulp (9.5e-7 at loss 9) in the first steps; Adam then
amplifies last-bit gradient differences of near-zero-gradient elements into ~lr-sized weight differences,
so later steps can drift further (seen: up to 1e-2 in the loss after 65 ZeRO-2 steps in one run).

    python bench/engine_overhead.py                                  # zero0 + zero2, ~8M params, 8x128
    python bench/engine_overhead.py --configs ds_configs/zero2.json --iters 20
    python bench/engine_overhead.py --profile zero2                  # + cProfile of the DeepSpeed step
    python bench/engine_overhead.py --configs ds_configs/zero0.json+noallreduce   # experiment: skip ZeRO-0's all-reduce
    python bench/engine_overhead.py --configs ds_configs/zero2.json bench/ds_configs/zero2_nocontig.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

from gptscale.runtime.dist import free_port

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def setup_single_process() -> None:
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ[k] = v
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    from gptscale.runtime.dist import init_distributed

    init_distributed()


def _silence_deepspeed() -> None:
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


class Side:
    """One training loop with its own RNG state (dropout masks match across sides)."""

    def __init__(self, name: str, step_fn, seed: int):
        import torch

        self.name = name
        self.step_fn = step_fn
        g = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.rng = torch.random.get_rng_state()
        torch.random.set_rng_state(g)
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.phases: list[tuple[float, float, float]] = []  # forward, backward, optimizer step (s)
        self.losses: list[float] = []

    def step(self, x, y, timed: bool) -> None:
        import torch

        torch.random.set_rng_state(self.rng)
        c0 = time.process_time()
        t0 = time.perf_counter()
        loss, t_fwd, t_bwd = self.step_fn(x, y)
        t1 = time.perf_counter()
        c1 = time.process_time()
        self.rng = torch.random.get_rng_state()
        self.losses.append(float(loss))
        if timed:
            self.times.append(t1 - t0)
            self.cpu_times.append(c1 - c0)
            self.phases.append((t_fwd - t0, t_bwd - t_fwd, t1 - t_bwd))


def bench_config(ds_config: str, args, profile: bool, no_allreduce: bool = False, label: str | None = None,
                 deadline: float = float("inf")) -> dict:
    import torch

    from gptscale.config import TrainConfig, model_config
    from gptscale.model import GPT
    from gptscale.runtime.engine import build_engine, lr_multiplier, param_groups

    mcfg = model_config(args.preset, n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
                        d_ff=args.d_ff, n_ctx=args.seq, vocab_size=args.vocab, dropout=args.dropout)
    total_steps = args.warmup + args.iters + 10
    train = TrainConfig(ds_config=ds_config, precision="fp32", micro_batch_size=args.batch, grad_accum_steps=1,
                        lr=args.lr, warmup_steps=args.lr_warmup, max_steps=total_steps, grad_clip=args.grad_clip)

    torch.manual_seed(0)
    init = GPT(mcfg).train()
    state = {k: v.clone() for k, v in init.state_dict().items()}
    n_params = init.num_params()
    del init

    # torch side
    tm = GPT(mcfg).train()
    tm.load_state_dict(state)
    opt = torch.optim.AdamW(param_groups(tm, train.weight_decay), lr=train.lr, betas=(train.beta1, train.beta2),
                            eps=train.eps, weight_decay=train.weight_decay)
    min_ratio = train.min_lr / train.lr if train.lr > 0 else 0.0
    sched_kind = [train.lr_schedule] if hasattr(train, "lr_schedule") else []  # same schedule as build_engine's
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, train.warmup_steps, total_steps, min_ratio, *sched_kind))

    def torch_step(x, y):
        loss = tm(x, y)[1]
        t_fwd = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(tm.parameters(), train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), t_fwd, t_bwd

    # DeepSpeed side
    dm = GPT(mcfg).train()
    dm.load_state_dict(state)
    engine = build_engine(dm, train, world_size=1, total_steps=total_steps)
    if no_allreduce:  # experiment: skip the (world-size-1, no-op) data-parallel gradient all-reduce of ZeRO-0
        engine.enable_backward_allreduce = False

    def ds_step(x, y):
        loss = engine(x, y)[1]
        t_fwd = time.perf_counter()
        engine.backward(loss)
        t_bwd = time.perf_counter()
        engine.step()
        return loss.detach(), t_fwd, t_bwd

    load0 = os.getloadavg()[0]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g) for _ in range(16)]
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches]
    sides = {"ds": Side("ds", ds_step, 1234), "torch": Side("torch", torch_step, 1234)}

    for i in range(args.warmup):
        x, y = batches[i % len(batches)]
        for name in ("ds", "torch"):
            sides[name].step(x, y, timed=False)
    for i in range(args.iters):
        x, y = batches[(args.warmup + i) % len(batches)]
        for name in (("ds", "torch") if i % 2 == 0 else ("torch", "ds")):
            sides[name].step(x, y, timed=True)
        # a loaded machine makes steps many times slower: keep the run within its time budget
        if i + 1 >= args.min_iters and i % 2 == 1 and time.perf_counter() > deadline:
            break

    prof_text = None
    if profile:
        pr = cProfile.Profile()
        for i in range(args.profile_steps):
            x, y = batches[i % len(batches)]
            pr.enable()
            sides["ds"].step(x, y, timed=False)
            pr.disable()
            sides["torch"].step(x, y, timed=False)
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45)
        prof_text = s.getvalue()

    ds_l, t_l = sides["ds"].losses, sides["torch"].losses
    k = min(args.compare_steps, len(ds_l))
    diffs = [abs(a - b) for a, b in zip(ds_l, t_l)]
    # parameters after the whole run (both sides took the same number of steps)
    pdiff = max(float((a.detach() - b.detach()).abs().max())
                for a, b in zip(engine.module.parameters(), tm.parameters()))
    # paired: each iteration runs both sides back to back, so their ratio cancels slow load changes
    paired = [a / b for a, b in zip(sides["ds"].times, sides["torch"].times)]
    ds_ms = 1000 * statistics.median(sides["ds"].times)
    t_ms = 1000 * statistics.median(sides["torch"].times)
    ds_cpu = 1000 * statistics.median(sides["ds"].cpu_times)
    t_cpu = 1000 * statistics.median(sides["torch"].cpu_times)

    def phase_ms(side):
        return [round(1000 * statistics.median(ph[j] for ph in side.phases), 1) for j in range(3)]
    res = {
        "config": label or Path(ds_config).stem, "params_m": round(n_params / 1e6, 2), "batch": args.batch, "seq": args.seq,
        "iters": len(sides["ds"].times), "ds_ms": round(ds_ms, 1), "torch_ms": round(t_ms, 1), "ratio": round(ds_ms / t_ms, 3),
        "paired_ratio_median": round(statistics.median(paired), 3),
        "min_ratio": round(min(sides["ds"].times) / min(sides["torch"].times), 3),
        "ds_cpu_ms": round(ds_cpu, 1), "torch_cpu_ms": round(t_cpu, 1), "cpu_ratio": round(ds_cpu / t_cpu, 3),
        "ds_phases_ms_fwd_bwd_step": phase_ms(sides["ds"]), "torch_phases_ms_fwd_bwd_step": phase_ms(sides["torch"]),
        "ds_ms_p25_p75": [round(1000 * q, 1) for q in _quartiles(sides["ds"].times)],
        "torch_ms_p25_p75": [round(1000 * q, 1) for q in _quartiles(sides["torch"].times)],
        "compare_steps": k, "loss_max_abs_diff_first": max(diffs[:k]), "loss_max_abs_diff_all": max(diffs),
        "param_max_abs_diff_end": pdiff,
        "loss_abs_diff_at_step": {str(i): diffs[i - 1] for i in (1, 5, 10, 20, 40, 80, 160) if i <= len(diffs)}, "first_losses": [round(v, 6) for v in ds_l[:3]],
        "ds_optimizer": type(engine.optimizer).__name__,
    }
    res["loadavg_1min_start_end"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if prof_text:
        res["_profile"] = prof_text
    del engine, dm, tm, opt
    return res


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["ds_configs/zero0.json", "ds_configs/zero2.json"],
                   help="ds_configs files (relative to the repo root or absolute)")
    p.add_argument("--headline", default="zero2", help="config stem whose figures go to the top level")
    p.add_argument("--preset", default="gpt2-tiny")
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--lr-warmup", type=int, default=5, help="schedule warm-up steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side before timing")
    p.add_argument("--iters", type=int, default=40, help="timed steps per side per config")
    p.add_argument("--min-iters", type=int, default=12, help="timed steps per side kept even over the time budget")
    p.add_argument("--time-budget-s", type=float, default=150,
                   help="stop timing a config early (after --min-iters) when its share of this budget is spent")
    p.add_argument("--compare-steps", type=int, default=10, help="first steps whose losses are compared")
    p.add_argument("--profile", nargs="*", default=[], help="config stems to cProfile (DeepSpeed step)")
    p.add_argument("--profile-steps", type=int, default=10)
    args = p.parse_args()

    import torch

    setup_single_process()
    _silence_deepspeed()
    import deepspeed

    print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"train mode (dropout {args.dropout})", flush=True)
    results = []
    t_start = time.perf_counter()
    for cfg in args.configs:
        # "FILE+noallreduce": experiment, engine.enable_backward_allreduce = False after build_engine (stage 0 only)
        file, _, mod = cfg.partition("+")
        if mod not in ("", "noallreduce"):
            p.error(f"unknown config modifier +{mod} (only +noallreduce)")
        path = file if os.path.isabs(file) else str(REPO / file)
        label = Path(file).stem + (f"+{mod}" if mod else "")
        left = args.time_budget_s - (time.perf_counter() - t_start)
        deadline = time.perf_counter() + left / (len(args.configs) - len(results))
        r = bench_config(path, args, profile=label in args.profile, no_allreduce=mod == "noallreduce", label=label,
                         deadline=deadline)
        prof = r.pop("_profile", None)
        results.append(r)
        k = r["compare_steps"]
        print(f"{r['config']:<14} {r['params_m']}M params B={args.batch} T={args.seq}: DeepSpeed {r['ds_ms']:.1f} ms "
              f"(IQR {r['ds_ms_p25_p75']}), torch {r['torch_ms']:.1f} ms (IQR {r['torch_ms_p25_p75']}), "
              f"ratio {r['ratio']:.3f} (paired median {r['paired_ratio_median']:.3f}, min/min {r['min_ratio']:.3f}, "
              f"process CPU time {r['cpu_ratio']:.3f}; load avg {r['loadavg_1min_start_end']}); fwd/bwd/step ms DeepSpeed "
              f"{r['ds_phases_ms_fwd_bwd_step']} torch {r['torch_phases_ms_fwd_bwd_step']}; loss max|diff| first {k} steps {r['loss_max_abs_diff_first']:.2e}, "
              f"all {r['loss_max_abs_diff_all']:.2e}; params max|diff| at end {r['param_max_abs_diff_end']:.2e}",
              flush=True)
        if prof:
            print(f"--- cProfile, DeepSpeed step, {r['config']}, {args.profile_steps} steps ---\n{prof}", flush=True)
    head = next((r for r in results if r["config"] == args.headline), results[-1])
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    print(json.dumps({"ds_ms": head["ds_ms"], "torch_ms": head["torch_ms"], "ratio": head["ratio"],
                      "paired_ratio_median": head["paired_ratio_median"], "headline": head["config"],
                      "target_ratio": 1.15, "configs": results}))


if __name__ == "__main__":
    main()
