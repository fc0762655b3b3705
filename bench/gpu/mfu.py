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
--peak-tflops, by default ``gptscale.runtime.monitor.peak_tflops`` for the GPU model (989: H100/H200 SXM dense
bf16), the MFU rule of the training loops too. The child's side of an attempt is bench/gpu/measure.py.

Output: progress lines, one JSON line per model (its best variant, all attempts inside), and a final JSON
line {"device": ..., "models": {...}, "targets": {...}}.

    python bench/gpu/mfu.py                                             # on the GPU machine (bench/gpu/run.sh)
    python bench/gpu/mfu.py --device cpu --presets gpt2-tiny --steps 2 --variants eager,pad,compile+pad
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # gptscale, for the child (the GPU image has no install of it)
    sys.path.insert(0, str(REPO))

# (micro batch, grad accum) candidates per preset, tried in order without activation checkpointing, then
# the last ones again with it. Tokens per optimizer step stay near 64k (124m) / 32k (1.3b).
CANDIDATES = {
    "gpt2-124m": [(16, 4), (8, 8), (4, 16)],
    "1.3b": [(4, 4), (2, 8), (1, 16)],
}
DEFAULT_CANDIDATES = [(2, 2), (1, 4)]
TARGET_MFU = {"gpt2-124m": 0.40, "1.3b": 0.50}
VARIANTS = {"eager": {"compile": False, "pad": False}, "pad": {"compile": False, "pad": True},
            "compile+pad": {"compile": True, "pad": True}, "compile": {"compile": True, "pad": False},
            "compile+pad+nodrop": {"compile": True, "pad": True, "dropout": 0.0},
            "pad+nodrop": {"compile": False, "pad": True, "dropout": 0.0}}
BRIEF_KEYS = ("variant", "micro_batch", "grad_accum", "activation_checkpointing", "vocab", "tokens_per_s",
              "tflops", "mfu", "hfu_est", "step_ms", "timed_steps", "peak_mem_gib", "sdpa_backend", "compile_s_est",
              "first_step_s", "init_s", "wall_s", "oom", "timeout")
SHORT_KEYS = ("variant", "micro_batch", "grad_accum", "activation_checkpointing", "tokens_per_s", "mfu",
              "peak_mem_gib", "wall_s", "oom", "timeout")
# final line, per model: key -> the attempt's key, of the best attempt and of the best eager one
FINAL_BEST = {"mfu": "mfu", "tokens_per_s": "tokens_per_s", "tflops": "tflops", "variant": "variant",
              "micro_batch": "micro_batch", "ckpt": "activation_checkpointing", "peak_mem_gib": "peak_mem_gib",
              "sdpa": "sdpa_backend"}
FINAL_EAGER = {"eager_mfu": "mfu", "eager_tokens_per_s": "tokens_per_s"}


# =========================================================================================== attempts


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


def print_attempt(tag: str, res: dict) -> None:
    if "error" in res:
        print(f"[{tag}] {'OOM' if res.get('oom') else 'failed'}: {res['error']} ({res['wall_s']} s)", flush=True)
        for line in res.get("log_tail", [])[-6:]:
            print(f"[{tag}]   | {line}", flush=True)
        return
    print(f"[{tag}] {res['tokens_per_s']:.0f} tok/s, {res['tflops']:.1f} TFLOP/s, MFU "
          f"{_pct(res['mfu'])}, step {res['step_ms']:.0f} ms, peak mem {res['peak_mem_gib']} GiB, "
          f"SDPA {res['sdpa_backend']} ({res['wall_s']} s)", flush=True)


# ============================================================================================== sweep


class Sweep:
    """Variants in priority order, each for every preset, under one global deadline: every attempt kept, the
    fastest per preset, and the fastest (micro batch, accumulation, checkpointing) found so far per preset, where
    later variants start (compiled graphs need no more memory than eager), so only the first variant searches
    and grows."""

    def __init__(self, args: argparse.Namespace, presets: list[str], deadline: float):
        self.args, self.presets, self.deadline = args, presets, deadline
        self.attempts: dict[str, list[dict]] = {pr: [] for pr in presets}
        self.best: dict[str, dict] = {}
        self.setting: dict[str, tuple[int, int, bool]] = {}
        self.grown: set[str] = set()

    def spec(self, preset: str, variant: str, mb: int, ga: int, ckpt: bool, budget: float) -> dict:
        a, v = self.args, VARIANTS[variant]
        return {"device": a.device, "preset": preset, "variant": variant, "micro_batch": mb, "grad_accum": ga,
                "ckpt": ckpt, "compile": v["compile"], "pad": v["pad"], "precision": a.precision,
                "ds_config": a.ds_config, "steps": a.steps, "warmup": a.warmup, "dropout": v.get("dropout", a.dropout),
                "peak_tflops": a.peak_tflops, "profile": not a.no_profile, "budget_s": budget}

    def attempt(self, preset: str, variant: str, mb: int, ga: int, ckpt: bool) -> dict | None:
        """One child within what is left of the budget (None: not started, too little left)."""
        left = self.deadline - time.perf_counter()
        compiled = VARIANTS[variant]["compile"]
        limit = min(self.args.compile_attempt_s if compiled else self.args.attempt_s, left)
        if limit < (60 if compiled else 20):
            print(f"[{preset} {variant}] skipped: {left:.0f} s left of the budget", flush=True)
            return None
        tag = f"{preset} {variant} mb{mb}x{ga}{' ckpt' if ckpt else ''}"
        print(f"[{tag}] start (limit {limit:.0f} s, {left:.0f} s left)", flush=True)
        # the child stops timing ~15 s before its hard limit
        res = run_attempt(self.spec(preset, variant, mb, ga, ckpt, max(10.0, limit - 15)), limit, tag)
        res.setdefault("variant", variant)
        res.setdefault("micro_batch", mb)
        res.setdefault("activation_checkpointing", ckpt)
        self.attempts[preset].append(res)
        print_attempt(tag, res)
        if "error" not in res and (preset not in self.best
                                   or res["tokens_per_s"] > self.best[preset]["tokens_per_s"]):
            self.best[preset] = res
        return res

    def order(self, preset: str) -> list[tuple[int, int, bool]]:
        """(micro batch, accumulation, checkpointing) to try: without checkpointing first, then with it (largest
        micro batch first); from the setting found by an earlier variant on, if any."""
        if self.args.micro_batch:
            cands = [(self.args.micro_batch, self.args.grad_accum or 1)]
        else:
            cands = CANDIDATES.get(preset, DEFAULT_CANDIDATES)
        order = [(mb, ga, ckpt) for ckpt in (False, True) for mb, ga in cands]
        if preset in self.setting:
            known = self.setting[preset]
            order = [known] + [c for c in order if c[2] > known[2] or (c[2] == known[2] and c[0] < known[0])]
        return order

    def search(self, preset: str, variant: str) -> dict | None:
        """The first setting that runs (each OOM retried with the next); None if none does."""
        for mb, ga, ckpt in self.order(preset):
            res = self.attempt(preset, variant, mb, ga, ckpt)
            if res is None:
                return None
            if "error" not in res:
                return res
            if not res.get("oom"):
                return None  # a non-memory failure: another micro batch will not fix it
        return None

    def may_grow(self, ok: dict) -> bool:
        """Twice the micro batch, same tokens per step, when the measured memory says it fits."""
        a = self.args
        return ((a.device == "cuda" or bool(os.environ.get("MFU_TEST_GROW"))) and not a.no_grow
                and not a.micro_batch and ok["grad_accum"] % 2 == 0
                and predicted_peak(ok, 2) < 0.90 * ok["device_mem_gib"])

    def grow(self, preset: str, variant: str, ok: dict) -> None:
        """First variant that fits only: try twice the micro batch once; keep it as the setting if faster."""
        if preset not in self.grown and self.may_grow(ok):
            self.grown.add(preset)
            big = self.attempt(preset, variant, ok["micro_batch"] * 2, ok["grad_accum"] // 2,
                               ok["activation_checkpointing"])
            if big and "error" not in big and big["tokens_per_s"] > ok["tokens_per_s"]:
                self.setting[preset] = (big["micro_batch"], big["grad_accum"], big["activation_checkpointing"])
        self.grown.add(preset)

    def run(self, variants: list[str]) -> None:
        for variant in variants:
            for preset in self.presets:
                ok = self.search(preset, variant)
                if ok is None:
                    continue
                self.setting.setdefault(preset, (ok["micro_batch"], ok["grad_accum"], ok["activation_checkpointing"]))
                self.grow(preset, variant, ok)


# ============================================================================================= report


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _brief(a: dict, short: bool = False) -> dict:
    out = {k: a[k] for k in (SHORT_KEYS if short else BRIEF_KEYS) if k in a and a[k] is not None}
    if "error" in a:
        out["error"] = a["error"][:120]
    return out


def _pick(brief: dict | None, keys: dict[str, str]) -> dict:
    return {out: None if brief is None else brief.get(key) for out, key in keys.items()}


def model_line(preset: str, attempts: list[dict], b: dict | None) -> dict:
    """One model's JSON line: its best variant, its best eager attempt, the target, every attempt."""
    eager = [a for a in attempts if a.get("variant") == "eager" and "error" not in a]
    eager_b = max(eager, key=lambda a: a["tokens_per_s"]) if eager else None
    return {"model": preset, "best": _brief(b) if b else None, "eager_best": _brief(eager_b) if eager_b else None,
            "target_mfu": TARGET_MFU.get(preset),
            "meets_target": (b["mfu"] >= TARGET_MFU[preset]) if (b and b.get("mfu") is not None
                                                                 and preset in TARGET_MFU) else None,
            "attempts": [_brief(a, short=True) for a in attempts]}


def report(sweep: Sweep, device_info: str, t_global: float) -> dict:
    """Print one JSON line per model; return the final line's object."""
    lines = {}
    for preset in sweep.presets:
        lines[preset] = model_line(preset, sweep.attempts[preset], sweep.best.get(preset))
        print(json.dumps(lines[preset]), flush=True)
    done = [a for runs in sweep.attempts.values() for a in runs if a.get("peak_tflops") is not None]
    peak = done[0]["peak_tflops"] if done else sweep.args.peak_tflops
    return {"device": device_info, "peak_tflops": peak, "elapsed_s": round(time.perf_counter() - t_global, 1),
            "models": {pr: {**_pick(line["best"], FINAL_BEST), **_pick(line["eager_best"], FINAL_EAGER),
                            "target_mfu": line["target_mfu"], "meets_target": line["meets_target"]}
                       for pr, line in lines.items()}}


def _device_info(kind: str) -> str:
    if kind == "cuda":
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                                 check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = "nvidia-smi unavailable"
        return f"{out}; python {platform.python_version()}"
    return f"cpu ({os.cpu_count()} cores); python {platform.python_version()}"


# =============================================================================================== main


def parse_args() -> argparse.Namespace:
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
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="default: gptscale.runtime.monitor.PEAK_TFLOPS for this GPU model and precision "
                        "(H100/H200 SXM dense bf16: 989); none on cpu")
    p.add_argument("--no-profile", action="store_true", help="skip the SDPA/kernel profile step")
    p.add_argument("--out", help="also write the final JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    for v in (v for v in args.variants.split(",") if v):
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    return args


def child(spec: dict) -> None:
    """`--child SPEC`: one attempt in this process."""
    if spec["device"] == "cpu":  # read once, when torch and deepspeed are imported (just below)
        os.environ["DS_ACCELERATOR"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from measure import child_main  # lazy: after the lines above, and the parent never loads torch

    child_main(spec)


def main() -> None:
    args = parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    t_global = time.perf_counter()
    presets = [s for s in args.presets.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    device_info = _device_info(args.device)
    peak = f"{args.peak_tflops} TFLOP/s" if args.peak_tflops is not None else "TFLOP/s of this GPU model"
    print(f"mfu.py: {device_info}; presets {presets}; variants {variants}; budget {args.budget_s:.0f} s; "
          f"peak {peak}", flush=True)
    sweep = Sweep(args, presets, t_global + args.budget_s)
    sweep.run(variants)
    final = report(sweep, device_info, t_global)
    if args.out:
        Path(args.out).write_text(json.dumps({"final": final, "attempts": sweep.attempts}, indent=1))
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
