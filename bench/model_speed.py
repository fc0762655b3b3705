"""Forward+backward training throughput of gptscale's GPT vs transformers' GPT2LMHeadModel on CPU.

Same config, same weights, same batch; the two models alternate in one process after warm-up (the order
flips every iteration so neither always runs on a warmer cache). One line per config, then a JSON line:

    {"ours_tok_s": ..., "hf_tok_s": ..., "ratio": ..., "runs": [...]}

where the top-level figures are the headline (first) config and "ratio" is the minimum over all configs.

    python bench/model_speed.py                       # 124M-shaped and tiny configs
    python bench/model_speed.py --preset gpt2-tiny --batch 16 --seq 64 --iters 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gptscale.config import model_config
from gptscale.hf.convert import to_hf_model
from gptscale.model import GPT

DEFAULT_RUNS = [("gpt2-124m", 2, 256, 8), ("gpt2-tiny", 16, 64, 40)]  # (preset, batch, seq_len, iters)


def step_ours(model: GPT, idx: torch.Tensor) -> None:
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    model.zero_grad(set_to_none=True)


def step_hf(model, idx: torch.Tensor) -> None:
    # HF shifts labels internally: same tokens predicted from the same context as ours.
    model(idx, labels=idx).loss.backward()
    model.zero_grad(set_to_none=True)


def bench(preset: str, batch: int, seq: int, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base = model_config(preset)
    cfg = model_config(preset, n_ctx=max(base.n_ctx, seq + 1))  # room for seq + 1 tokens in HF's input
    ours = GPT(cfg).train()
    hf = to_hf_model(ours).train()
    # seq + 1 tokens give seq predictions to both models
    idx = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    steps = {"ours": lambda: step_ours(ours, idx), "hf": lambda: step_hf(hf, idx)}
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {"ours": [], "hf": []}
    for i in range(iters):
        for name in (("ours", "hf") if i % 2 == 0 else ("hf", "ours")):
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    tokens = batch * seq
    ours_tok_s = tokens / statistics.median(times["ours"])
    hf_tok_s = tokens / statistics.median(times["hf"])
    return {"preset": preset, "batch": batch, "seq": seq, "params_m": round(ours.num_params() / 1e6, 2),
            "ours_tok_s": round(ours_tok_s, 1), "hf_tok_s": round(hf_tok_s, 1), "ratio": round(ours_tok_s / hf_tok_s, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="one preset instead of the default pair")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per model (with --preset)")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    runs = [(args.preset, args.batch, args.seq, args.iters)] if args.preset else DEFAULT_RUNS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, train mode (dropout on)")
    results = []
    for preset, batch, seq, iters in runs:
        r = bench(preset, batch, seq, iters, args.warmup)
        results.append(r)
        print(f"{preset:<10} B={batch} T={seq} {r['params_m']}M params: ours {r['ours_tok_s']:.0f} tok/s, "
              f"HF {r['hf_tok_s']:.0f} tok/s, ratio {r['ratio']:.3f}", flush=True)
    head = results[0]
    print(json.dumps({"ours_tok_s": head["ours_tok_s"], "hf_tok_s": head["hf_tok_s"],
                      "ratio": min(r["ratio"] for r in results), "runs": results}))


if __name__ == "__main__":
    main()
