"""One attempt of bench/gpu/mfu.py, measured in its own child process (``mfu.py --child SPEC``).

Builds the model and the engine as users get them (``build_engine`` with the spec's ds_configs file and a
TrainConfig), warms up, profiles one micro step (SDPA backend, top device kernels), times optimizer steps
until the attempt's own budget, and prints ``RESULT {json}`` for the parent (an OOM is reported, exit 3).
``mfu.py`` imports this module only after it has set the environment torch and deepspeed read at import.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
from deepspeed.utils import logger as ds_logger
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from gptscale.config import ModelConfig, TrainConfig, model_config
from gptscale.model import GPT
from gptscale.runtime.dist import device, init_single_process
from gptscale.runtime.engine import build_engine
from gptscale.runtime.monitor import memory_gb, peak_tflops

REPO = Path(__file__).resolve().parents[2]
OOM_WORDS = ("out of memory", "alloc_failed", "erroralloc", "memoryallocation")


def log(msg: str) -> None:
    print(msg, flush=True)


def classify_sdpa(names: list[str]) -> str:
    """Which SDPA backend ran, from profiler event names (aten ops and device kernels)."""
    low = [n.lower() for n in names]
    if any("_scaled_dot_product_flash_attention" in n for n in low):
        return "flash"
    if any("_scaled_dot_product_cudnn_attention" in n for n in low):
        return "cudnn"
    if any("_scaled_dot_product_efficient_attention" in n for n in low):
        return "efficient"
    if any("flash" in n and ("fwd" in n or "bwd" in n) for n in low):
        return "flash"
    if any("scaled_dot_product" in n or "sdpa" in n for n in low):
        return "math"
    return "not_seen"  # e.g. torch.compile lowered a math attention into its own kernels


def start_single_process() -> torch.device:
    """Rank 0 of a one-process group (nccl on a GPU) on a free port; DeepSpeed's info logging off."""
    init_single_process()
    ds_logger.setLevel(logging.WARNING)
    return device()


@dataclass
class Built:
    """The attempt's model config, its engine, and what building them cost."""

    cfg: ModelConfig
    engine: Any
    flops_per_token: float
    n_params: int
    init_s: float
    init_mem: int


def model_overrides(spec: dict) -> dict[str, Any]:
    """The preset's overrides of this attempt: checkpointing, dropout, and the vocab padded to a multiple of 64."""
    overrides: dict[str, Any] = {"activation_checkpointing": spec["ckpt"]}
    if spec.get("dropout") is not None:
        overrides["dropout"] = spec["dropout"]
    if spec["pad"]:
        overrides["vocab_size"] = (model_config(spec["preset"]).vocab_size + 63) // 64 * 64
    return overrides


def build(spec: dict, dev: torch.device) -> Built:
    """GPT on the device and build_engine (torch.compile in place first when the variant compiles)."""
    overrides = model_overrides(spec)
    cfg = model_config(spec["preset"], **overrides)
    mb, ga = spec["micro_batch"], spec["grad_accum"]
    fake_oom = os.environ.get("MFU_TEST_OOM_ABOVE_MB")  # test hook: exercise the OOM fallback on CPU
    if fake_oom and mb > int(fake_oom) and not spec["ckpt"]:
        raise torch.OutOfMemoryError(f"MFU_TEST_OOM_ABOVE_MB={fake_oom}: fake OOM at micro batch {mb}")
    t0 = time.perf_counter()
    with torch.device(dev):
        model = GPT(cfg)
    model.train()
    # useful FLOPs: the unpadded model's 6N + 12 L d T (padding columns are not useful work)
    with torch.device("meta"):
        ref = GPT(model_config(spec["preset"], **{k: v for k, v in overrides.items() if k != "vocab_size"}))
    total_steps = spec["warmup"] + spec["steps"] + 10
    train = TrainConfig(ds_config=str(REPO / spec["ds_config"]), precision=spec["precision"], micro_batch_size=mb,
                        grad_accum_steps=ga, warmup_steps=10, lr=3e-4, max_steps=total_steps, compile=spec["compile"])
    engine = build_engine(model, train, world_size=1, total_steps=total_steps)
    init_s = time.perf_counter() - t0
    init_mem = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    return Built(cfg, engine, ref.flops_per_token(cfg.n_ctx), ref.num_params(), init_s, init_mem)


class Steps:
    """Optimizer steps of grad_accum micro-batches, cycling through four fixed batches of random tokens
    (drawn below the unpadded vocab: padded rows are never targets)."""

    def __init__(self, spec: dict, built: Built, dev: torch.device):
        self.engine, self.ga, self.cuda = built.engine, spec["grad_accum"], dev.type == "cuda"
        g = torch.Generator(device=dev).manual_seed(0)
        vocab, seq = model_config(spec["preset"]).vocab_size, built.cfg.n_ctx
        self.batches = []
        for _ in range(4):
            b = torch.randint(0, vocab, (spec["micro_batch"], seq + 1), device=dev, generator=g)
            self.batches.append((b[:, :-1].contiguous(), b[:, 1:].contiguous()))

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def micro(self, i: int) -> torch.Tensor:
        x, y = self.batches[i % len(self.batches)]
        loss = self.engine(x, y)[1]
        self.engine.backward(loss)
        self.engine.step()
        return loss

    def timed(self, k: int) -> tuple[float, float]:
        """Optimizer step k between device synchronisations: (seconds, loss)."""
        self.sync()
        t = time.perf_counter()
        loss = None
        for j in range(self.ga):
            loss = self.micro(k * self.ga + j)
        value = float(loss.detach())  # syncs
        self.sync()
        return time.perf_counter() - t, value


def warm_up(steps: Steps, n: int) -> list[float]:
    """Untimed optimizer steps (the first includes torch.compile's compile time); their seconds."""
    warm_times = []
    for k in range(n):
        dt, loss = steps.timed(k)
        warm_times.append(dt)
        log(f"  warm-up step {k}: {dt * 1000:.0f} ms, loss {loss:.3f}")
    return warm_times


def _device_time(e) -> float:
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)


def top_kernels(ka) -> tuple[list[tuple[str, float, float]], float, list[str]]:
    """The 15 largest device-side events (name, ms, % of the step), the total device time (us), attention kernels."""
    # device-side events only (kernels, memcpy/memset): aten ops carry their kernels' time too
    kern = [e for e in ka if getattr(e, "device_type", None) == DeviceType.CUDA and _device_time(e) > 0]
    kern = sorted(kern or [e for e in ka if _device_time(e) > 0], key=_device_time, reverse=True)
    tot = sum(_device_time(e) for e in kern) or 1
    top = [(e.key[:100], round(_device_time(e) / 1000, 2), round(100 * _device_time(e) / tot, 1)) for e in kern[:15]]
    attn = [e.key[:90] for e in kern if "flash" in e.key.lower() or "fmha" in e.key.lower()
            or "attention" in e.key.lower()]
    return top, tot, attn


def profile_micro(steps: Steps) -> tuple[str, list]:
    """Profile one micro step (not timed): the SDPA backend and, on a GPU, the top kernels."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if steps.cuda else [])
    with profile(activities=acts) as prof:
        steps.micro(0)
        steps.sync()
    ka = prof.key_averages()
    names = [e.key for e in ka]
    sdpa = classify_sdpa(names)
    sdpa_ops = sorted({n for n in names if "scaled_dot_product" in n or "flash" in n.lower()})[:6]
    if not steps.cuda:
        log(f"  SDPA backend: {sdpa} (ops {sdpa_ops})")
        return sdpa, []
    top, tot, attn = top_kernels(ka)
    log(f"  SDPA backend: {sdpa} (ops {sdpa_ops}); attention kernels: {attn[:4]}")
    log(f"  device time of one micro step {tot / 1000:.1f} ms; top kernels: "
        + "; ".join(f"{n[:60]} {p}%" for n, ms, p in top[:8]))
    return sdpa, top


def timed_steps(steps: Steps, spec: dict, deadline: float) -> tuple[list[float], list[float]]:
    """Up to spec["steps"] timed optimizer steps, stopped by the attempt's own deadline (at least 2)."""
    if steps.cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for k in range(spec["steps"]):
        dt, loss = steps.timed(spec["warmup"] + k)
        times.append(dt)
        losses.append(loss)
        if len(times) >= 2 and time.perf_counter() + times[-1] > deadline:
            log(f"  time budget: stopping after {len(times)} timed steps")
            break
    return times, losses


def hardware_flops_per_token(built: Built, ckpt: bool) -> float:
    """Useful FLOPs per token plus, with activation checkpointing, each block's recomputed forward
    (2 N_blocks + 4 L d T), which MFU does not count."""
    c = built.cfg
    if not ckpt:
        return built.flops_per_token
    block_weights = c.n_layer * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_ff)  # attention + MLP matrices
    return built.flops_per_token + (2 * block_weights + 4 * c.n_layer * c.d_model * c.n_ctx)


def memory_figures(dev: torch.device, built: Built, static_mem: int) -> dict[str, float | None]:
    """Peak, reserved, between-steps and after-init memory, and the card's size (GiB; None on CPU)."""
    if dev.type != "cuda":
        return dict.fromkeys(("peak_mem_gib", "peak_reserved_gib", "static_mem_gib", "init_mem_gib",
                              "device_mem_gib"))
    return {"peak_mem_gib": round(memory_gb(), 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "static_mem_gib": round(static_mem / 2**30, 2), "init_mem_gib": round(built.init_mem / 2**30, 2),
            "device_mem_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)}


def result(spec: dict, built: Built, dev: torch.device, measured: dict[str, Any]) -> dict[str, Any]:
    """The attempt's RESULT: throughput, TFLOP/s, MFU (and HFU with checkpointing), memory, timings."""
    cuda, peak, times, warm = dev.type == "cuda", measured["peak"], measured["times"], measured["warm_times"]
    step_s = statistics.median(times)
    tokens = spec["micro_batch"] * spec["grad_accum"] * built.cfg.n_ctx
    tok_s = tokens / step_s
    tflops = built.flops_per_token * tok_s / 1e12
    hw_flops = hardware_flops_per_token(built, spec["ckpt"])
    mem = memory_figures(dev, built, measured["static_mem"])
    res = {
        "preset": spec["preset"], "variant": spec["variant"], "params_m": round(built.n_params / 1e6, 1),
        "vocab": built.cfg.vocab_size, "seq_len": built.cfg.n_ctx, "micro_batch": spec["micro_batch"],
        "grad_accum": spec["grad_accum"], "tokens_per_step": tokens, "activation_checkpointing": spec["ckpt"],
        "compile": spec["compile"], "precision": spec["precision"], "ds_config": spec["ds_config"],
        "dropout": built.cfg.dropout, "step_ms": round(step_s * 1000, 1), "step_ms_min": round(min(times) * 1000, 1),
        "timed_steps": len(times), "tokens_per_s": round(tok_s, 1), "tflops": round(tflops, 2 if cuda else 5),
        "mfu": round(tflops / peak, 4) if peak else None,
        "hfu_est": round(tflops * hw_flops / built.flops_per_token / peak, 4) if (peak and spec["ckpt"]) else None,
        "flops_per_token": built.flops_per_token, "sdpa_backend": measured["sdpa"],
        "flash_sdp_enabled": bool(torch.backends.cuda.flash_sdp_enabled()) if cuda else None,
        "init_s": round(built.init_s, 1), "first_step_s": round(warm[0], 1) if warm else None,
        "compile_s_est": (round(warm[0] - step_s, 1) if (spec["compile"] and warm) else None),
        **mem, "last_loss": round(measured["losses"][-1], 4), "top_kernels": measured["top"],
        "torch": torch.__version__, "deepspeed": deepspeed.__version__, "peak_tflops": peak,
    }
    if not cuda and os.environ.get("MFU_TEST_GROW"):  # test hook: fake memory figures to exercise the grow path
        res.update(static_mem_gib=1.0, peak_mem_gib=1.0 + spec["micro_batch"], device_mem_gib=100.0)
    return res


def run_child(spec: dict) -> dict[str, Any]:
    """One attempt; returns a result dict (raises torch.OutOfMemoryError on OOM)."""
    t_start = time.perf_counter()
    dev = start_single_process()
    torch.manual_seed(1234)
    built = build(spec, dev)
    peak = peak_tflops(spec["precision"], spec["peak_tflops"])  # the flag's value, else this GPU model's
    c = built.cfg
    log(f"  torch {torch.__version__}, deepspeed {deepspeed.__version__}, device {dev}"
        + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    log(f"  init {built.init_s:.1f} s ({built.n_params / 1e6:.1f}M params, vocab {c.vocab_size}, seq {c.n_ctx}, "
        f"mb {spec['micro_batch']} x ga {spec['grad_accum']}, ckpt {spec['ckpt']}, compile {spec['compile']}, "
        f"mem after init {built.init_mem / 2**30:.2f} GiB, peak {peak} TFLOP/s)")
    steps = Steps(spec, built, dev)
    warm_times = warm_up(steps, spec["warmup"])
    # between optimizer steps: weights, fp32 master, Adam state (lazily made at the first step), ZeRO buffers;
    # no activations. The part of the peak above this scales with the micro batch.
    static_mem = torch.cuda.memory_allocated() if steps.cuda else 0
    sdpa, top = profile_micro(steps) if spec["profile"] else ("n/a", [])
    times, losses = timed_steps(steps, spec, t_start + spec["budget_s"])
    return result(spec, built, dev, {"peak": peak, "times": times, "losses": losses, "warm_times": warm_times,
                                     "static_mem": static_mem, "sdpa": sdpa, "top": top})


def child_main(spec: dict) -> None:
    """Run the attempt, print its RESULT line, and exit without tearing down the process group
    (0 done, 3 out of memory, 4 another error)."""
    try:
        res = run_child(spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        msg = str(e).lower()
        oom = isinstance(e, torch.OutOfMemoryError) or any(k in msg for k in OOM_WORDS)
        print("RESULT " + json.dumps({"error": f"{type(e).__name__}: {str(e)[:300]}", "oom": oom}), flush=True)
        if not oom:
            traceback.print_exc()
        sys.stdout.flush()
        os._exit(3 if oom else 4)  # skip teardown of a possibly broken process group
    print("RESULT " + json.dumps(res), flush=True)
    sys.stdout.flush()
    os._exit(0)
