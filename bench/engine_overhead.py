"""DeepSpeed engine training step vs a plain torch AdamW loop on the same model, one process, on CPU.

The DeepSpeed side is what users get: ``gptscale.runtime.engine.build_engine`` (the run config filled into a
ds_configs file, our torch AdamW handed to DeepSpeed, the LambdaLR schedule) and per step

    loss = engine(x, y)[1]; engine.backward(loss); engine.step()

The torch side is the same GPT, the engine's own optimizer (``make_optimizer(param_groups(model, wd), train)``:
torch AdamW), the same LambdaLR (``lr_multiplier``) and ``clip_grad_norm_``:

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
import logging
import os
import pstats
import statistics
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read once, when deepspeed is first imported (just below)

import deepspeed
import torch
from deepspeed.utils import logger as ds_logger

from gptscale.config import ModelConfig, TrainConfig, model_config
from gptscale.model import GPT
from gptscale.runtime.dist import init_single_process
from gptscale.runtime.engine import build_engine, lr_scheduler, make_optimizer, param_groups

REPO = Path(__file__).resolve().parent.parent
SIDES = ("ds", "torch")


def setup_single_process() -> None:
    """One local process group (rank 0 of 1, a free port), whatever the launching shell exported."""
    init_single_process()
    ds_logger.setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


class Side:
    """One training loop with its own RNG state (dropout masks match across sides)."""

    def __init__(self, name: str, step_fn, seed: int):
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


class TorchLoop:
    """The plain torch loop: the engine's optimizer (torch AdamW on GPT-1's param groups) and schedule by hand."""

    def __init__(self, model: GPT, train: TrainConfig, total_steps: int):
        self.model, self.grad_clip = model, train.grad_clip
        self.opt = make_optimizer(param_groups(model, train.weight_decay), train)
        self.sched = lr_scheduler(self.opt, train, total_steps)  # build_engine's schedule

    def __call__(self, x, y):
        loss = self.model(x, y)[1]
        t_fwd = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach(), t_fwd, t_bwd


class EngineLoop:
    """What users get: build_engine, then engine(x, y) / engine.backward / engine.step."""

    def __init__(self, model: GPT, train: TrainConfig, total_steps: int, no_allreduce: bool):
        self.engine = build_engine(model, train, world_size=1, total_steps=total_steps)
        if no_allreduce:  # experiment: skip the (world-size-1, no-op) data-parallel gradient all-reduce of ZeRO-0
            self.engine.enable_backward_allreduce = False

    def __call__(self, x, y):
        loss = self.engine(x, y)[1]
        t_fwd = time.perf_counter()
        self.engine.backward(loss)
        t_bwd = time.perf_counter()
        self.engine.step()
        return loss.detach(), t_fwd, t_bwd


def configs_for(ds_config: str, args) -> tuple[ModelConfig, TrainConfig, int]:
    """The model, the run config both sides train with, and the schedule length."""
    mcfg = model_config(args.preset, n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
                        d_ff=args.d_ff, n_ctx=args.seq, vocab_size=args.vocab, dropout=args.dropout)
    total_steps = args.warmup + args.iters + 10
    train = TrainConfig(ds_config=ds_config, precision="fp32", micro_batch_size=args.batch, grad_accum_steps=1,
                        lr=args.lr, warmup_steps=args.lr_warmup, max_steps=total_steps, grad_clip=args.grad_clip)
    return mcfg, train, total_steps


def twin_models(mcfg: ModelConfig) -> tuple[GPT, GPT, int]:
    """Two GPTs in train mode with the same initial weights (seed 0), and their parameter count."""
    torch.manual_seed(0)
    init = GPT(mcfg).train()
    state = {k: v.clone() for k, v in init.state_dict().items()}
    models = []
    for _ in range(2):
        m = GPT(mcfg).train()
        m.load_state_dict(state)
        models.append(m)
    return models[0], models[1], init.num_params()


def make_batches(args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g) for _ in range(16)]
    return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches]


def alternate(sides: dict[str, Side], batches, args, deadline: float) -> None:
    """Untimed warm-up, then timed steps with the order of the two sides flipping every iteration."""
    for i in range(args.warmup):
        x, y = batches[i % len(batches)]
        for name in SIDES:
            sides[name].step(x, y, timed=False)
    for i in range(args.iters):
        x, y = batches[(args.warmup + i) % len(batches)]
        for name in (SIDES if i % 2 == 0 else SIDES[::-1]):
            sides[name].step(x, y, timed=True)
        # a loaded machine makes steps many times slower: keep the run within its time budget
        if i + 1 >= args.min_iters and i % 2 == 1 and time.perf_counter() > deadline:
            break


def profile_engine(sides: dict[str, Side], batches, steps: int) -> str:
    """cProfile of the DeepSpeed side's steps (the torch side steps too, unprofiled, to stay in lockstep)."""
    pr = cProfile.Profile()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        pr.enable()
        sides["ds"].step(x, y, timed=False)
        pr.disable()
        sides["torch"].step(x, y, timed=False)
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45)
    return s.getvalue()


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def _ms(xs) -> float:
    return 1000 * statistics.median(xs)


def timing_figures(ds: Side, tc: Side) -> dict:
    """Median step times, their ratios (plain, paired, min/min, CPU time), per-phase medians and quartiles."""
    def phase_ms(side):
        return [round(_ms(ph[j] for ph in side.phases), 1) for j in range(3)]

    # paired: each iteration runs both sides back to back, so their ratio cancels slow load changes
    paired = [a / b for a, b in zip(ds.times, tc.times)]
    ds_ms, t_ms, ds_cpu, t_cpu = _ms(ds.times), _ms(tc.times), _ms(ds.cpu_times), _ms(tc.cpu_times)
    return {
        "iters": len(ds.times), "ds_ms": round(ds_ms, 1), "torch_ms": round(t_ms, 1), "ratio": round(ds_ms / t_ms, 3),
        "paired_ratio_median": round(statistics.median(paired), 3),
        "min_ratio": round(min(ds.times) / min(tc.times), 3),
        "ds_cpu_ms": round(ds_cpu, 1), "torch_cpu_ms": round(t_cpu, 1), "cpu_ratio": round(ds_cpu / t_cpu, 3),
        "ds_phases_ms_fwd_bwd_step": phase_ms(ds), "torch_phases_ms_fwd_bwd_step": phase_ms(tc),
        "ds_ms_p25_p75": [round(1000 * q, 1) for q in _quartiles(ds.times)],
        "torch_ms_p25_p75": [round(1000 * q, 1) for q in _quartiles(tc.times)],
    }


def agreement_figures(ds: Side, tc: Side, ds_model, torch_model, compare_steps: int) -> dict:
    """How far the two sides' losses (first steps, all steps) and final parameters are apart."""
    k = min(compare_steps, len(ds.losses))
    diffs = [abs(a - b) for a, b in zip(ds.losses, tc.losses)]
    # parameters after the whole run (both sides took the same number of steps)
    pdiff = max(float((a.detach() - b.detach()).abs().max())
                for a, b in zip(ds_model.parameters(), torch_model.parameters()))
    return {
        "compare_steps": k, "loss_max_abs_diff_first": max(diffs[:k]), "loss_max_abs_diff_all": max(diffs),
        "param_max_abs_diff_end": pdiff,
        "loss_abs_diff_at_step": {str(i): diffs[i - 1] for i in (1, 5, 10, 20, 40, 80, 160) if i <= len(diffs)},
        "first_losses": [round(v, 6) for v in ds.losses[:3]],
    }


def bench_config(ds_config: str, args, profile: bool, no_allreduce: bool = False, label: str | None = None,
                 deadline: float = float("inf")) -> dict:
    """Both loops on one ds_configs file: timings, loss/parameter agreement, optionally a cProfile."""
    mcfg, train, total_steps = configs_for(ds_config, args)
    tm, dm, n_params = twin_models(mcfg)
    torch_loop = TorchLoop(tm, train, total_steps)
    ds_loop = EngineLoop(dm, train, total_steps, no_allreduce)
    load0 = os.getloadavg()[0]
    batches = make_batches(args)
    sides = {"ds": Side("ds", ds_loop, 1234), "torch": Side("torch", torch_loop, 1234)}
    alternate(sides, batches, args, deadline)
    prof_text = profile_engine(sides, batches, args.profile_steps) if profile else None
    res = {"config": label or Path(ds_config).stem, "params_m": round(n_params / 1e6, 2), "batch": args.batch,
           "seq": args.seq, **timing_figures(sides["ds"], sides["torch"]),
           **agreement_figures(sides["ds"], sides["torch"], ds_loop.engine.module, tm, args.compare_steps),
           "ds_optimizer": type(ds_loop.engine.optimizer).__name__,
           "loadavg_1min_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    if prof_text:
        res["_profile"] = prof_text
    return res


def parse_args() -> argparse.Namespace:
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
    for cfg in args.configs:
        # "FILE+noallreduce": experiment, engine.enable_backward_allreduce = False after build_engine (stage 0 only)
        mod = cfg.partition("+")[2]
        if mod not in ("", "noallreduce"):
            p.error(f"unknown config modifier +{mod} (only +noallreduce)")
    return args


def config_line(r: dict, args) -> str:
    k = r["compare_steps"]
    return (f"{r['config']:<14} {r['params_m']}M params B={args.batch} T={args.seq}: DeepSpeed {r['ds_ms']:.1f} ms "
            f"(IQR {r['ds_ms_p25_p75']}), torch {r['torch_ms']:.1f} ms (IQR {r['torch_ms_p25_p75']}), "
            f"ratio {r['ratio']:.3f} (paired median {r['paired_ratio_median']:.3f}, min/min {r['min_ratio']:.3f}, "
            f"process CPU time {r['cpu_ratio']:.3f}; load avg {r['loadavg_1min_start_end']}); fwd/bwd/step ms "
            f"DeepSpeed {r['ds_phases_ms_fwd_bwd_step']} torch {r['torch_phases_ms_fwd_bwd_step']}; loss max|diff| "
            f"first {k} steps {r['loss_max_abs_diff_first']:.2e}, all {r['loss_max_abs_diff_all']:.2e}; params "
            f"max|diff| at end {r['param_max_abs_diff_end']:.2e}")


def main() -> None:
    args = parse_args()
    setup_single_process()
    print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"train mode (dropout {args.dropout})", flush=True)
    results: list[dict] = []
    t_start = time.perf_counter()
    for cfg in args.configs:
        file, _, mod = cfg.partition("+")
        label = Path(file).stem + (f"+{mod}" if mod else "")
        left = args.time_budget_s - (time.perf_counter() - t_start)
        deadline = time.perf_counter() + left / (len(args.configs) - len(results))
        r = bench_config(file if os.path.isabs(file) else str(REPO / file), args, profile=label in args.profile,
                         no_allreduce=mod == "noallreduce", label=label, deadline=deadline)
        prof = r.pop("_profile", None)
        results.append(r)
        print(config_line(r, args), flush=True)
        if prof:
            print(f"--- cProfile, DeepSpeed step, {r['config']}, {args.profile_steps} steps ---\n{prof}", flush=True)
    head = next((r for r in results if r["config"] == args.headline), results[-1])
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    print(json.dumps({"ds_ms": head["ds_ms"], "torch_ms": head["torch_ms"], "ratio": head["ratio"],
                      "paired_ratio_median": head["paired_ratio_median"], "headline": head["config"],
                      "target_ratio": 1.15, "configs": results}))


if __name__ == "__main__":
    main()
