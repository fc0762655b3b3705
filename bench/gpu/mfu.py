"""Training throughput and MFU of gptscale's GPT under DeepSpeed (ZeRO-2, bf16) on one GPU.

The training step is what users get: ``gptscale.runtime.engine.build_engine`` with ds_configs/zero2.json and a
TrainConfig(precision="bf16", micro_batch_size=..., grad_accum_steps=...), then per micro-batch

    loss = engine(x, y)[1]; engine.backward(loss); engine.step()

on synthetic random tokens at seq_len = the model's n_ctx (1024 for gpt2-124m, 2048 for 1.3b). One process,
world size 1 (RANK/WORLD_SIZE/... set here, nccl through gptscale.runtime.dist.init_distributed).

Each attempt (preset, micro batch, accumulation, activation checkpointing, torch.compile, vocab) runs in
its own child process with a hard time limit, so an OOM or a hang costs one attempt, not the run. The
parent works through a priority list of variants under a global time budget:

    eager        the preset as is (vocab 50257): the headline, what users get today
    pad          vocab padded to a multiple of 64 (50257 -> 50304; the extra rows are never targets)
    compile+pad  torch.compile (nn.Module.compile before build_engine) + the padded vocab
    compile+pad+nodrop  the same with dropout 0 (the presets have GPT-2's 0.1; many pre-training runs use 0)

For each, the first micro batch that fits (without activation checkpointing first; with it only if none
fits), then, where time allows and the measured memory says it fits, twice that micro batch. FLOPs are
``model.flops_per_token(seq_len)`` of the *unpadded* model (6N + 12 L d T; padded rows and activation-
checkpointing recompute are work the hardware does but are not counted: MFU, not HFU), MFU against
--peak-tflops (989: H100/H200 SXM dense bf16).

Output: progress lines, one JSON line per model (its best variant, all attempts inside), and a final JSON
line {"device": ..., "models": {...}, "targets": {...}}.

    python bench/gpu/mfu.py                                             # on the GPU machine (bench/gpu/run.sh)
    python bench/gpu/mfu.py --device cpu --presets gpt2-tiny --steps 2 --variants eager,pad,compile+pad
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gptscale.runtime.dist import free_port  # noqa: E402 (after the checkout is on sys.path)

# (micro batch, grad accum) candidates per preset, tried in order without activation checkpointing, then
# the last ones again with it. Tokens per optimizer step stay near 64k (124m) / 32k (1.3b).
CANDIDATES = {
    "gpt2-124m": [(16, 4), (8, 8), (4, 16)],
    "1.3b": [(4, 4), (2, 8), (1, 16)],
}
DEFAULT_CANDIDATES = [(2, 2), (1, 4)]
TARGET_MFU = {"gpt2-124m": 0.40, "1.3b": 0.50}
VARIANTS = {"eager": dict(compile=False, pad=False), "pad": dict(compile=False, pad=True),
            "compile+pad": dict(compile=True, pad=True), "compile": dict(compile=True, pad=False),
            "compile+pad+nodrop": dict(compile=True, pad=True, dropout=0.0),
            "pad+nodrop": dict(compile=False, pad=True, dropout=0.0)}


# ============================================================================================ child


def _log(msg: str) -> None:
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


def run_child(spec: dict) -> dict:
    """One attempt; returns a result dict (raises torch.OutOfMemoryError on OOM)."""
    t_start = time.perf_counter()
    dev_kind = spec["device"]
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ[k] = v
    os.environ["MASTER_PORT"] = str(free_port())
    if dev_kind == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import logging

    import torch

    from gptscale.config import TrainConfig, model_config
    from gptscale.model import GPT
    from gptscale.runtime.dist import device, init_distributed
    from gptscale.runtime.engine import build_engine

    init_distributed()
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    dev = device()
    cuda = dev.type == "cuda"
    torch.manual_seed(1234)

    base = model_config(spec["preset"])
    overrides = dict(activation_checkpointing=spec["ckpt"])
    if spec.get("dropout") is not None:
        overrides["dropout"] = spec["dropout"]
    vocab = base.vocab_size
    if spec["pad"]:
        vocab = (base.vocab_size + 63) // 64 * 64
        overrides["vocab_size"] = vocab
    cfg = model_config(spec["preset"], **overrides)
    seq = cfg.n_ctx
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
    flops_per_token = ref.flops_per_token(seq)
    n_params = ref.num_params()
    del ref
    if spec["compile"]:
        model.compile()  # in place: the engine keeps our module class, names and parameters
    total_steps = spec["warmup"] + spec["steps"] + 10
    train = TrainConfig(ds_config=str(REPO / spec["ds_config"]), precision=spec["precision"], micro_batch_size=mb,
                        grad_accum_steps=ga, warmup_steps=10, lr=3e-4, max_steps=total_steps)
    engine = build_engine(model, train, world_size=1, total_steps=total_steps)
    t_init = time.perf_counter() - t0
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    init_mem = torch.cuda.memory_allocated() if cuda else 0
    import deepspeed

    _log(f"  torch {torch.__version__}, deepspeed {deepspeed.__version__}, device {dev}"
         + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ""))
    _log(f"  init {t_init:.1f} s ({n_params / 1e6:.1f}M params, vocab {vocab}, seq {seq}, mb {mb} x ga {ga}, "
         f"ckpt {spec['ckpt']}, compile {spec['compile']}, mem after init {init_mem / 2**30:.2f} GiB)")

    g = torch.Generator(device=dev).manual_seed(0)
    batches = []
    for _ in range(4):
        b = torch.randint(0, base.vocab_size, (mb, seq + 1), device=dev, generator=g)
        batches.append((b[:, :-1].contiguous(), b[:, 1:].contiguous()))

    def micro(i: int) -> torch.Tensor:
        x, y = batches[i % len(batches)]
        loss = engine(x, y)[1]
        engine.backward(loss)
        engine.step()
        return loss

    def opt_step(k: int) -> float:
        loss = None
        for j in range(ga):
            loss = micro(k * ga + j)
        return float(loss.detach())  # syncs

    # warm-up (the first step includes torch.compile's compile time)
    warm_times = []
    for k in range(spec["warmup"]):
        sync()
        t = time.perf_counter()
        loss = opt_step(k)
        sync()
        warm_times.append(time.perf_counter() - t)
        _log(f"  warm-up step {k}: {warm_times[-1] * 1000:.0f} ms, loss {loss:.3f}")
    # between optimizer steps: weights, fp32 master, Adam state (lazily made at the first step), ZeRO buffers;
    # no activations. The part of the peak above this scales with the micro batch.
    static_mem = torch.cuda.memory_allocated() if cuda else 0

    # SDPA backend and top kernels: profile one micro step (not timed)
    sdpa, top = "n/a", []
    if spec["profile"]:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            micro(0)
            sync()
        ka = prof.key_averages()
        names = [e.key for e in ka]
        sdpa = classify_sdpa(names)
        sdpa_ops = sorted({n for n in names if "scaled_dot_product" in n or "flash" in n.lower()})[:6]
        if cuda:
            def dev_time(e):
                return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            from torch.autograd import DeviceType

            # device-side events only (kernels, memcpy/memset): aten ops carry their kernels' time too
            kern = [e for e in ka if getattr(e, "device_type", None) == DeviceType.CUDA and dev_time(e) > 0]
            kern = sorted(kern or [e for e in ka if dev_time(e) > 0], key=dev_time, reverse=True)
            tot = sum(dev_time(e) for e in kern) or 1
            top = [(e.key[:100], round(dev_time(e) / 1000, 2), round(100 * dev_time(e) / tot, 1)) for e in kern[:15]]
            attn_k = [e.key[:90] for e in kern if "flash" in e.key.lower() or "fmha" in e.key.lower()
                      or "attention" in e.key.lower()]
            _log(f"  SDPA backend: {sdpa} (ops {sdpa_ops}); attention kernels: {attn_k[:4]}")
            _log(f"  device time of one micro step {tot / 1000:.1f} ms; top kernels: "
                 + "; ".join(f"{n[:60]} {p}%" for n, ms, p in top[:8]))
        else:
            _log(f"  SDPA backend: {sdpa} (ops {sdpa_ops})")

    # timed steps, stopped by the child's own budget (at least 2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    deadline = t_start + spec["budget_s"]
    for k in range(spec["steps"]):
        sync()
        t = time.perf_counter()
        losses.append(opt_step(spec["warmup"] + k))
        sync()
        times.append(time.perf_counter() - t)
        if len(times) >= 2 and time.perf_counter() + times[-1] > deadline:
            _log(f"  time budget: stopping after {len(times)} timed steps")
            break
    step_s = statistics.median(times)
    tokens = mb * ga * seq
    tok_s = tokens / step_s
    tflops = flops_per_token * tok_s / 1e12
    peak = spec["peak_tflops"]
    hw_flops_per_token = flops_per_token
    if spec["ckpt"]:  # recompute of each block's forward: + (2N_blocks + 4 L d T) not counted in MFU
        c = cfg
        block_weights = c.n_layer * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_ff)  # attention + MLP matrices
        hw_flops_per_token += 2 * block_weights + 4 * c.n_layer * c.d_model * seq
    res = {
        "preset": spec["preset"], "variant": spec["variant"], "params_m": round(n_params / 1e6, 1), "vocab": vocab,
        "seq_len": seq, "micro_batch": mb, "grad_accum": ga, "tokens_per_step": tokens,
        "activation_checkpointing": spec["ckpt"], "compile": spec["compile"], "precision": spec["precision"],
        "ds_config": spec["ds_config"], "dropout": cfg.dropout,
        "step_ms": round(step_s * 1000, 1), "step_ms_min": round(min(times) * 1000, 1), "timed_steps": len(times),
        "tokens_per_s": round(tok_s, 1), "tflops": round(tflops, 2 if cuda else 5),
        "mfu": round(tflops / peak, 4) if peak else None,
        "hfu_est": round(tflops * hw_flops_per_token / flops_per_token / peak, 4) if (peak and spec["ckpt"]) else None,
        "flops_per_token": flops_per_token, "sdpa_backend": sdpa,
        "flash_sdp_enabled": bool(torch.backends.cuda.flash_sdp_enabled()) if cuda else None,
        "init_s": round(t_init, 1), "first_step_s": round(warm_times[0], 1) if warm_times else None,
        "compile_s_est": (round(warm_times[0] - step_s, 1) if (spec["compile"] and warm_times) else None),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "static_mem_gib": round(static_mem / 2**30, 2) if cuda else None,
        "init_mem_gib": round(init_mem / 2**30, 2) if cuda else None,
        "device_mem_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1) if cuda else None,
        "last_loss": round(losses[-1], 4), "top_kernels": top, "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
    }
    if not cuda and os.environ.get("MFU_TEST_GROW"):  # test hook: fake memory figures to exercise the grow path
        res.update(static_mem_gib=1.0, peak_mem_gib=1.0 + mb, device_mem_gib=100.0)
    return res


def child_main(spec: dict) -> int:
    try:
        res = run_child(spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        import torch

        msg = str(e).lower()
        oom = isinstance(e, torch.OutOfMemoryError) or any(
            k in msg for k in ("out of memory", "alloc_failed", "erroralloc", "memoryallocation"))
        print("RESULT " + json.dumps({"error": f"{type(e).__name__}: {str(e)[:300]}", "oom": oom}), flush=True)
        if not oom:
            import traceback

            traceback.print_exc()
        sys.stdout.flush()
        os._exit(3 if oom else 4)  # skip teardown of a possibly broken process group
    print("RESULT " + json.dumps(res), flush=True)
    sys.stdout.flush()
    os._exit(0)


# =========================================================================================== parent


_CURRENT: list = [None]  # the running child, killed with its group if the parent is stopped


def _on_term(signum, frame):
    proc = _CURRENT[0]
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"mfu.py: stopped by signal {signum}", flush=True)
    os._exit(128 + signum)


def run_attempt(spec: dict, timeout_s: float, tag: str) -> dict:
    """Run one child; stream its output with a tag; return its RESULT (or an error dict)."""
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    # own process group (not a new session: the device tool ends leftover processes of the command's session)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            process_group=0, cwd=str(REPO))
    _CURRENT[0] = proc
    result: dict = {}
    tail: list[str] = []

    def reader():
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            if line.startswith("RESULT "):
                result.update(json.loads(line[7:]))
                continue
            tail.append(line)
            del tail[:-30]
            if line.startswith("  ") or "Error" in line or "error" in line:
                print(f"[{tag}] {line.strip()}", flush=True)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        proc.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
        proc.wait()
        result.setdefault("error", f"timed out after {timeout_s:.0f} s")
        result["timeout"] = True
    _CURRENT[0] = None
    th.join(timeout=5)
    if not result:
        result = {"error": f"exit code {proc.returncode}", "log_tail": tail[-12:]}
    elif "error" in result and not result.get("oom"):
        result["log_tail"] = tail[-12:]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def predicted_peak(res: dict, factor: float) -> float:
    """Peak memory at `factor` x the micro batch: the activation part scales, the static part does not."""
    return res["static_mem_gib"] + (res["peak_mem_gib"] - res["static_mem_gib"]) * factor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--presets", default="gpt2-124m,1.3b")
    p.add_argument("--variants", default="eager,pad,compile+pad,compile+pad+nodrop",
                   help=f"comma list in priority order, from {list(VARIANTS)}")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--ds-config", default="ds_configs/zero2.json")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per attempt")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per attempt")
    p.add_argument("--micro-batch", type=int, help="one micro batch for every preset (with --grad-accum)")
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout (0.1)")
    p.add_argument("--budget-s", type=float, default=400, help="global time budget of all attempts")
    p.add_argument("--attempt-s", type=float, default=110, help="hard limit of one eager attempt")
    p.add_argument("--compile-attempt-s", type=float, default=170, help="hard limit of one compiled attempt")
    p.add_argument("--no-grow", action="store_true", help="do not try twice the micro batch that fitted")
    p.add_argument("--peak-tflops", type=float, default=None, help="989 on cuda (H100/H200 SXM dense bf16)")
    p.add_argument("--no-profile", action="store_true", help="skip the SDPA/kernel profile step")
    p.add_argument("--out", help="also write the final JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    t_global = time.perf_counter()
    deadline = t_global + args.budget_s
    peak = args.peak_tflops if args.peak_tflops is not None else (989.0 if args.device == "cuda" else None)
    presets = [s for s in args.presets.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    device_info = _device_info(args.device)
    print(f"mfu.py: {device_info}; presets {presets}; variants {variants}; budget {args.budget_s:.0f} s; "
          f"peak {peak} TFLOP/s", flush=True)

    attempts: dict[str, list[dict]] = {pr: [] for pr in presets}
    best: dict[str, dict] = {}

    def spec_for(preset, variant, mb, ga, ckpt, budget):
        return dict(device=args.device, preset=preset, variant=variant, micro_batch=mb, grad_accum=ga, ckpt=ckpt,
                    compile=VARIANTS[variant]["compile"], pad=VARIANTS[variant]["pad"], precision=args.precision,
                    ds_config=args.ds_config, steps=args.steps, warmup=args.warmup,
                    dropout=VARIANTS[variant].get("dropout", args.dropout),
                    peak_tflops=peak, profile=not args.no_profile, budget_s=budget)

    def attempt(preset, variant, mb, ga, ckpt) -> dict | None:
        left = deadline - time.perf_counter()
        cap = args.compile_attempt_s if VARIANTS[variant]["compile"] else args.attempt_s
        limit = min(cap, left)
        if limit < (60 if VARIANTS[variant]["compile"] else 20):
            print(f"[{preset} {variant}] skipped: {left:.0f} s left of the budget", flush=True)
            return None
        tag = f"{preset} {variant} mb{mb}x{ga}{' ckpt' if ckpt else ''}"
        print(f"[{tag}] start (limit {limit:.0f} s, {left:.0f} s left)", flush=True)
        # the child stops timing ~15 s before its hard limit
        res = run_attempt(spec_for(preset, variant, mb, ga, ckpt, max(10.0, limit - 15)), limit, tag)
        res.setdefault("variant", variant)
        res.setdefault("micro_batch", mb)
        res.setdefault("activation_checkpointing", ckpt)
        attempts[preset].append(res)
        if "error" in res:
            print(f"[{tag}] {'OOM' if res.get('oom') else 'failed'}: {res['error']} ({res['wall_s']} s)", flush=True)
            for line in res.get("log_tail", [])[-6:]:
                print(f"[{tag}]   | {line}", flush=True)
            return res
        print(f"[{tag}] {res['tokens_per_s']:.0f} tok/s, {res['tflops']:.1f} TFLOP/s, MFU "
              f"{_pct(res['mfu'])}, step {res['step_ms']:.0f} ms, peak mem {res['peak_mem_gib']} GiB, "
              f"SDPA {res['sdpa_backend']} ({res['wall_s']} s)", flush=True)
        if preset not in best or res["tokens_per_s"] > best[preset]["tokens_per_s"]:
            best[preset] = res
        return res

    # the fastest (micro batch, accumulation, checkpointing) found so far per preset: later variants start there
    # (compiled graphs need no more memory than eager), so only the first variant searches and grows
    setting: dict[str, tuple[int, int, bool]] = {}
    grown: set[str] = set()
    for vi, variant in enumerate(variants):
        for preset in presets:
            if args.micro_batch:
                cands = [(args.micro_batch, args.grad_accum or 1)]
            else:
                cands = CANDIDATES.get(preset, DEFAULT_CANDIDATES)
            order = [(mb, ga, ckpt) for ckpt in (False, True) for mb, ga in cands]
            if preset in setting:
                known = setting[preset]
                order = [known] + [c for c in order if c[2] > known[2] or (c[2] == known[2] and c[0] < known[0])]
            ok = None
            # without activation checkpointing first, then with it (largest micro batch first)
            for mb, ga, ckpt in order:
                res = attempt(preset, variant, mb, ga, ckpt)
                if res is None:
                    break
                if "error" not in res:
                    ok = res
                    break
                if not res.get("oom"):
                    break  # a non-memory failure: another micro batch will not fix it
            if ok is None:
                continue
            setting.setdefault(preset, (ok["micro_batch"], ok["grad_accum"], ok["activation_checkpointing"]))
            # grow (first variant that fits only): twice the micro batch, same tokens per step, when the
            # measured memory says it fits
            if (preset not in grown and (args.device == "cuda" or os.environ.get("MFU_TEST_GROW"))
                    and not args.no_grow and not args.micro_batch
                    and ok["grad_accum"] % 2 == 0 and predicted_peak(ok, 2) < 0.90 * ok["device_mem_gib"]):
                grown.add(preset)
                big = attempt(preset, variant, ok["micro_batch"] * 2, ok["grad_accum"] // 2,
                              ok["activation_checkpointing"])
                if big and "error" not in big and big["tokens_per_s"] > ok["tokens_per_s"]:
                    setting[preset] = (big["micro_batch"], big["grad_accum"], big["activation_checkpointing"])
            grown.add(preset)

    summary = {}
    for preset in presets:
        b = best.get(preset)
        eager = [a for a in attempts[preset] if a.get("variant") == "eager" and "error" not in a]
        eager_b = max(eager, key=lambda a: a["tokens_per_s"]) if eager else None
        line = {"model": preset, "best": _brief(b) if b else None, "eager_best": _brief(eager_b) if eager_b else None,
                "target_mfu": TARGET_MFU.get(preset),
                "meets_target": (b["mfu"] >= TARGET_MFU[preset]) if (b and b.get("mfu") is not None
                                                                     and preset in TARGET_MFU) else None,
                "attempts": [_brief(a, short=True) for a in attempts[preset]]}
        summary[preset] = line
        print(json.dumps(line), flush=True)
    final = {"device": device_info, "peak_tflops": peak, "elapsed_s": round(time.perf_counter() - t_global, 1),
             "models": {pr: {"mfu": _g(summary[pr]["best"], "mfu"), "tokens_per_s": _g(summary[pr]["best"], "tokens_per_s"),
                             "tflops": _g(summary[pr]["best"], "tflops"), "variant": _g(summary[pr]["best"], "variant"),
                             "micro_batch": _g(summary[pr]["best"], "micro_batch"),
                             "ckpt": _g(summary[pr]["best"], "activation_checkpointing"),
                             "peak_mem_gib": _g(summary[pr]["best"], "peak_mem_gib"),
                             "sdpa": _g(summary[pr]["best"], "sdpa_backend"),
                             "eager_mfu": _g(summary[pr]["eager_best"], "mfu"),
                             "eager_tokens_per_s": _g(summary[pr]["eager_best"], "tokens_per_s"),
                             "target_mfu": summary[pr]["target_mfu"], "meets_target": summary[pr]["meets_target"]}
                        for pr in presets}}
    if args.out:
        Path(args.out).write_text(json.dumps({"final": final, "attempts": attempts}, indent=1))
    print(json.dumps(final), flush=True)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _g(d: dict | None, k: str):
    return None if d is None else d.get(k)


def _brief(a: dict, short: bool = False) -> dict:
    keys = ("variant", "micro_batch", "grad_accum", "activation_checkpointing", "vocab", "tokens_per_s",
            "tflops", "mfu", "hfu_est", "step_ms", "timed_steps", "peak_mem_gib", "sdpa_backend", "compile_s_est",
            "first_step_s", "init_s", "wall_s", "oom", "timeout")
    if short:
        keys = ("variant", "micro_batch", "grad_accum", "activation_checkpointing", "tokens_per_s", "mfu",
                "peak_mem_gib", "wall_s", "oom", "timeout")
    out = {k: a[k] for k in keys if k in a and a[k] is not None}
    if "error" in a:
        out["error"] = a["error"][:120]
    return out


def _device_info(kind: str) -> str:
    import platform

    if kind == "cuda":
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = "nvidia-smi unavailable"
        return f"{out}; python {platform.python_version()}"
    return f"cpu ({os.cpu_count()} cores); python {platform.python_version()}"


if __name__ == "__main__":
    main()
