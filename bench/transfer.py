"""Does generative pre-training help? GPT-1's Table 5 claim (pre-trained vs no pre-training) in miniature, on CPU.

Drives the real command-line tools as subprocesses, the path users take:

1. `gptscale tokenizer train` (BPE on the Gutenberg corpus; or --tok DIR) and `gptscale shard`;
2. `deepspeed --num_gpus N gptscale/pretrain.py --config OUT/pretrain.yaml`: a small pre-LN GPT pre-trained for
   a fixed TOKEN budget (--pretrain-tokens; default 4.1M tokens: 9 min with 2 ranks on 2 idle cores, 22 min
   measured with the 2 cores shared, load average ~4-5);
3. `deepspeed --num_gpus N gptscale/finetune.py --task T --init OUT/pretrain` and the same with `--init none`
   (same model shape, tokenizer, lr, batch, epochs, train subset and seeds) for SST-2 (a seeded subset of
   --sst2-train examples, full 872 dev) and RTE (2490 train, 277 dev); --ft-seeds repeats each pair.

Figures are dev accuracy after the last fine-tuning epoch (no selection on dev; the best epoch is reported
too), averaged over --ft-seeds. `*_gain` = pre-trained - scratch, `*_gain_se` its unpaired binomial standard
error on the one dev set, `*_gain_per_seed` the spread. Outputs go under --out (default runs/bench_transfer);
the result is written atomically to OUT/result.json and printed as the LAST stdout line (one JSON object):

    {"sst2_pretrained": ..., "sst2_scratch": ..., "sst2_gain": ..., "rte_pretrained": ..., "rte_scratch": ...,
     "rte_gain": ..., "budgets": {...}, "durations_s": {...}, ...}

    python bench/transfer.py                         # whole pipeline, ~17 min on 2 idle cores (37 min shared)
    python bench/transfer.py --reuse-pretrain        # keep OUT/pretrain if its config is unchanged
    python bench/transfer.py --reuse-pretrain --tasks sst2 --ft-seeds 42 43 44      # seed spread of the gain
    python bench/transfer.py --pretrain-tokens 1e6 --sst2-train 2000 --tasks sst2   # quicker, weaker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptscale.files import atomic_write_json
from gptscale.runtime.dist import drop_stale, free_port
from gptscale.tasks.outputs import METRICS_FILE, PREDICTIONS_FILE, read_best
from gptscale.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GPTSCALE = [sys.executable, "-m", "gptscale"]
LOAD: dict[str, float] = {}
WARNINGS: list[str] = []
PROGRESS = re.compile(r"^(step \d|epoch \d|gptscale |best |done:|wrote |.*error|Traceback)", re.IGNORECASE)
ARMS = ("pretrained", "scratch")


def child_env() -> dict[str, str]:
    """This environment without process-group variables (the launcher sets them), CPU DeepSpeed, 1 thread/rank."""
    env = dict(os.environ)
    drop_stale(env)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")  # the venv's ninja/deepspeed first
    return env


def run(cmd: list[str], log: Path, stage: str, finished: Callable[[], bool] = lambda: False) -> float:
    """Run one stage, its full output to `log`, progress lines echoed; exit loudly on failure. Returns seconds.
    A non-zero exit after the stage wrote all its results (`finished()`) is a warning, kept in the JSON."""
    print(f"[{stage}] $ {' '.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        assert p.stdout is not None
        for line in p.stdout:
            f.write(line)
            text = re.sub(r"^\[rank\d+\]:?\s*", "", line.strip())
            if PROGRESS.match(text) and "Warning" not in text:
                print(f"[{stage}]   {text[:200]}", flush=True)
        rc = p.wait()
    dt = time.perf_counter() - t0
    if rc != 0 and finished():
        crash = next((x for x in log.read_text().splitlines() if "terminate called" in x), "")
        WARNINGS.append(f"{stage}: exit {rc} after writing all results ({crash or 'see ' + str(log)})")
        print(f"[{stage}] WARNING: {WARNINGS[-1]}", flush=True)
    elif rc != 0:
        tail = log.read_text()[-4000:]
        sys.exit(f"bench/transfer.py: stage {stage} failed (exit {rc}) after {dt:.0f}s; log {log}\n{tail}")
    LOAD[stage] = round(os.getloadavg()[1], 2)  # 5-min load average at the end: how shared the CPU was
    print(f"[{stage}] done in {dt:.0f}s (load average {os.getloadavg()[0]:.1f})", flush=True)
    return dt


def deepspeed_cmd(nproc: int, script: str, *args: str) -> list[str]:
    """`deepspeed --num_gpus N SCRIPT ARGS` on a free rendezvous port."""
    return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), script, *args]


def model_overrides(a: argparse.Namespace) -> dict[str, Any]:
    return {"preset": "gpt2-tiny", "vocab_size": a.vocab, "n_ctx": a.seq_len, "n_layer": a.n_layer,
            "n_head": a.n_head, "d_model": a.d_model, "d_ff": 4 * a.d_model, "dropout": a.dropout}


def pretrain_config(a: argparse.Namespace, out: Path, tok: Path) -> dict[str, Any]:
    per_step = a.pretrain_batch * a.seq_len
    steps = math.ceil(a.pretrain_tokens / per_step)
    return {
        "model": model_overrides(a),
        "data": {"shards": str(out / "shards"), "tokenizer": str(tok), "seq_len": a.seq_len},
        "train": {"run_dir": str(out / "pretrain"), "ds_config": a.ds_config, "precision": a.precision,
                  "micro_batch_size": a.pretrain_batch // a.nproc, "grad_accum_steps": 1, "max_steps": steps,
                  "max_tokens": int(a.pretrain_tokens), "warmup_steps": max(1, steps // 20), "lr": a.pretrain_lr,
                  "min_lr": a.pretrain_lr / 10, "weight_decay": 0.01, "log_interval": 50,
                  "eval_interval": max(1, steps // 4), "eval_steps": 16, "checkpoint_interval": steps,
                  "keep_last": 1, "seed": a.seed}}


def finetune_recipe(a: argparse.Namespace, tok: Path) -> list[str]:
    """The fine-tuning overrides both arms share: model shape, tokenizer, run-wide train.* keys, the finetune.*
    recipe (fine-tuning refuses train.* recipe keys)."""
    return [f"--model.{k}={v}" for k, v in model_overrides(a).items()] + [
        f"--data.tokenizer={tok}", f"--train.precision={a.precision}", f"--train.ds_config={a.ds_config}",
        "--train.log_interval=50", f"--finetune.lr={a.ft_lr}", f"--finetune.epochs={a.ft_epochs}",
        f"--finetune.batch_size={a.ft_batch}", f"--finetune.micro_batch_size={a.ft_batch // a.nproc}",
        f"--finetune.lm_coef={a.ft_lm_coef}"]


def last_val_loss(run_dir: Path) -> float | None:
    vals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in x]
    return round(vals[-1]["val_loss"], 4) if vals else None


def epochs_written(run_dir: Path) -> list[dict[str, Any]]:
    """Every epoch's dev metrics of a fine-tuning run so far (RUN_DIR/metrics.json)."""
    f = run_dir / METRICS_FILE
    return json.loads(f.read_text())["epochs"] if f.is_file() else []


def accuracies(run_dir: Path) -> dict[str, Any]:
    """Dev accuracy of a finished fine-tuning run: after the last epoch, at the best one, and per epoch."""
    epochs, best = epochs_written(run_dir), read_best(run_dir)
    return {"last": epochs[-1]["accuracy"], "best": best["accuracy"], "best_epoch": best["best_epoch"],
            "per_epoch": [e["accuracy"] for e in epochs]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("GPTSCALE_DATA", str(REPO.parent / "shared" / "data")),
                   help="shared data root with corpus/gutenberg and glue/ (default $GPTSCALE_DATA or ../shared/data)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_transfer"), help="folder for every output")
    p.add_argument("--tok", help="existing tokenizer folder (skips tokenizer training; its vocab must be <= --vocab)")
    p.add_argument("--reuse-pretrain", action="store_true", help="keep OUT/pretrain if it finished with this config")
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte"], choices=["sst2", "rte"])
    p.add_argument("--nproc", type=int, default=2, help="ranks for pre-training and fine-tuning (deepspeed launcher)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="both stages (bf16: ~2x fp32 on CPU)")
    p.add_argument("--ds-config", default="ds_configs/zero0.json", help="both stages (ZeRO-0: ~20%% faster than 2 here)")
    p.add_argument("--seed", type=int, default=1234, help="pre-training seed (fine-tuning: --ft-seeds)")
    g = p.add_argument_group("model (the same shape in both arms)")
    g.add_argument("--vocab", type=int, default=8000)
    g.add_argument("--seq-len", type=int, default=128, help="pre-training seq_len = n_ctx (fine-tuning max length)")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--d-model", type=int, default=256)
    g.add_argument("--dropout", type=float, default=0.1)
    g = p.add_argument_group("pre-training budget")
    g.add_argument("--pretrain-tokens", type=float, default=4_096_000, help="fixed token budget")
    g.add_argument("--pretrain-batch", type=int, default=32, help="global batch in sequences")
    g.add_argument("--pretrain-lr", type=float, default=1e-3)
    g = p.add_argument_group("fine-tuning budget (identical in both arms)")
    g.add_argument("--sst2-train", type=int, default=4000, help="seeded SST-2 training subset (dev: all 872)")
    g.add_argument("--rte-train", type=int, default=None, help="RTE training subset (default: all 2490)")
    g.add_argument("--ft-lr", type=float, default=2.5e-4)
    g.add_argument("--ft-epochs", type=int, default=3)
    g.add_argument("--ft-batch", type=int, default=32)
    g.add_argument("--ft-lm-coef", type=float, default=0.5)
    g.add_argument("--ft-seeds", type=int, nargs="+", default=[42],
                   help="fine-tuning seeds (head init, dropout, order, train subset); figures are means over them")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    a = p.parse_args()
    if a.pretrain_batch % a.nproc or a.ft_batch % a.nproc:
        p.error("--pretrain-batch and --ft-batch must be multiples of --nproc")
    return a


@dataclass
class Pipeline:
    """One bench run: its arguments, the resolved data and output folders, and each stage's seconds."""

    a: argparse.Namespace
    data: Path
    out: Path
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def corpus(self) -> str:
        return str(self.data / "corpus" / "gutenberg")

    def stage(self, name: str, cmd: list[str], finished: Callable[[], bool] = lambda: False) -> None:
        """Run one stage (log OUT/logs/NAME.log) and keep its seconds."""
        self.durations[name] = run(cmd, self.out / "logs" / f"{name}.log", name, finished)

    def check_data(self) -> None:
        for need in ("corpus/gutenberg", *(f"glue/{t}/{s}.tsv" for t in ("SST-2", "RTE") for s in ("train", "dev"))):
            if not (self.data / need).exists():
                sys.exit(f"bench/transfer.py: {self.data / need} not found; pass --data <shared data root> or set "
                         f"GPTSCALE_DATA")

    def tokenizer(self) -> Path:
        """--tok, else OUT/tokVOCAB, trained unless already there (it is deterministic)."""
        a = self.a
        tok = Path(a.tok).resolve() if a.tok else self.out / f"tok{a.vocab}"
        if not (tok / "tokenizer.model").is_file():
            if a.tok:
                sys.exit(f"bench/transfer.py: --tok {tok}: no tokenizer.model there")
            self.stage("tokenizer", GPTSCALE + ["tokenizer", "train", "--input", self.corpus, "--vocab-size",
                                                str(a.vocab), "--out", str(tok), "--gutenberg"])
        return tok

    def shards(self, tok: Path) -> None:
        """OUT/shards, rebuilt unless stamped with this tokenizer, seq_len and corpus (they are deterministic)."""
        tok_hash = Tokenizer.load(tok).hash
        shards = self.out / "shards"
        stamp = {"tokenizer": str(tok), "tok_hash": tok_hash, "seq_len": self.a.seq_len, "corpus": self.corpus}
        stamp_file = shards / "bench_stamp.json"
        if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
            return
        shutil.rmtree(shards, ignore_errors=True)
        self.stage("shard", GPTSCALE + ["shard", "--input", self.corpus, "--tokenizer", str(tok), "--out", str(shards),
                                        "--seq-len", str(self.a.seq_len), "--val-fraction", "0.01", "--gutenberg"])
        atomic_write_json(stamp_file, stamp, sort_keys=False)

    def pretrain(self, tok: Path) -> tuple[int, bool]:
        """Pre-training for a fixed token budget (kept with --reuse-pretrain if its config is unchanged);
        returns its steps and whether it was reused."""
        cfg = pretrain_config(self.a, self.out, tok)
        cfg_text = yaml.safe_dump(cfg, sort_keys=True)
        cfg_file, pre_dir, done_file = self.out / "pretrain.yaml", self.out / "pretrain", self.out / "pretrain_done.json"
        steps, latest = cfg["train"]["max_steps"], pre_dir / "checkpoints" / "latest"
        if (self.a.reuse_pretrain and cfg_file.is_file() and cfg_file.read_text() == cfg_text and done_file.is_file()
                and latest.is_file()):
            print(f"[pretrain] reusing {pre_dir} (same config)", flush=True)
            self.durations["pretrain"] = json.loads(done_file.read_text())["seconds"]
            return steps, True
        shutil.rmtree(pre_dir, ignore_errors=True)
        done_file.unlink(missing_ok=True)
        cfg_file.write_text(cfg_text)
        self.stage("pretrain", deepspeed_cmd(self.a.nproc, "gptscale/pretrain.py", "--config", str(cfg_file),
                                             "--resume", "none"),
                   finished=lambda: latest.is_file() and latest.read_text().strip() == f"step_{steps:08d}")
        atomic_write_json(done_file, {"seconds": self.durations["pretrain"], "loadavg_5min": LOAD.get("pretrain")},
                          sort_keys=False)
        return steps, False

    def finetune(self, task: str, arm: str, seed: int, recipe: list[str]) -> dict[str, Any]:
        """One fine-tuning run (from OUT/pretrain or from scratch); returns its dev accuracies."""
        a, name = self.a, f"{task}_{arm}_seed{seed}"
        run_dir = self.out / "finetune" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        init = str(self.out / "pretrain") if arm == "pretrained" else "none"
        cmd = deepspeed_cmd(a.nproc, "gptscale/finetune.py", "--task", task, "--init", init, "--data-dir",
                            str(self.data), f"--train.run_dir={run_dir}", *recipe, f"--finetune.seed={seed}")
        subset = a.sst2_train if task == "sst2" else a.rte_train
        if subset is not None:  # the subset is drawn with the fine-tuning seed: the same in both arms
            cmd.append(f"--finetune.train_samples={subset}")
        self.stage(name, cmd, finished=lambda: len(epochs_written(run_dir)) == a.ft_epochs)
        return accuracies(run_dir)


def task_figures(task: str, runs: dict[str, Any], seeds: list[int], n_dev: int) -> dict[str, Any]:
    """Means over seeds of each arm (last and best epoch), the gain, its unpaired binomial s.e., per-seed gains."""
    result: dict[str, Any] = {}
    for arm in ARMS:
        for key, pick in ((f"{task}_{arm}", "last"), (f"{task}_{arm}_best_epoch", "best")):
            result[key] = round(statistics.mean(runs[f"{task}_{arm}_seed{s}"][pick] for s in seeds), 4)
    result[f"{task}_gain"] = round(result[f"{task}_pretrained"] - result[f"{task}_scratch"], 4)
    pa, sa = result[f"{task}_pretrained"], result[f"{task}_scratch"]  # unpaired binomial s.e. on one dev set
    result[f"{task}_gain_se"] = round(math.sqrt((pa * (1 - pa) + sa * (1 - sa)) / n_dev), 4)
    result[f"{task}_gain_per_seed"] = [round(runs[f"{task}_pretrained_seed{s}"]["last"]
                                             - runs[f"{task}_scratch_seed{s}"]["last"], 4) for s in seeds]
    result[f"{task}_dev_examples"] = n_dev
    return result


def finetune_all(pipe: Pipeline, tok: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pre-trained vs scratch for every task and seed, identical recipe, seeds and model shape."""
    a, recipe = pipe.a, finetune_recipe(pipe.a, tok)
    result: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for task in a.tasks:
        for seed in a.ft_seeds:
            for arm in ARMS:
                runs[f"{task}_{arm}_seed{seed}"] = pipe.finetune(task, arm, seed, recipe)
        last = pipe.out / "finetune" / f"{task}_{ARMS[-1]}_seed{a.ft_seeds[-1]}"
        n_dev = len((last / PREDICTIONS_FILE).read_text().splitlines()) - 1
        result.update(task_figures(task, runs, a.ft_seeds, n_dev))
    return result, runs


def summarize(pipe: Pipeline, result: dict[str, Any], runs: dict[str, Any], steps: int, reused: bool,
              t_all: float) -> dict[str, Any]:
    """The result.json object (also the last stdout line)."""
    a, logs = pipe.a, pipe.out / "logs"
    durations = {k: round(v, 1) for k, v in pipe.durations.items()}
    durations["total"] = round(time.perf_counter() - t_all, 1)
    if reused:  # what the whole pipeline took: this invocation + the reused pre-training
        durations["total_with_reused_pretrain"] = round(durations["total"] + durations["pretrain"], 1)
    mm = re.search(r"([\d.]+)M params", (logs / "pretrain.log").read_text() if (logs / "pretrain.log").is_file() else "")
    return {
        **result,
        "metric": f"dev accuracy after the last fine-tuning epoch (mean over seeds {a.ft_seeds}); *_best_epoch: "
                  "best epoch on dev",
        "pretrained_beats_scratch_sst2": result["sst2_gain"] > 0 if "sst2_gain" in result else None,
        "budgets": {"pretrain_tokens": steps * a.pretrain_batch * a.seq_len, "pretrain_steps": steps,
                    "pretrain_lr": a.pretrain_lr, "pretrain_global_batch": f"{a.pretrain_batch}x{a.seq_len}",
                    "sst2_train": a.sst2_train, "rte_train": a.rte_train or "all", "ft_epochs": a.ft_epochs,
                    "ft_lr": a.ft_lr, "ft_batch": a.ft_batch, "ft_lm_coef": a.ft_lm_coef, "ft_seeds": a.ft_seeds,
                    "nproc": a.nproc, "precision": a.precision, "ds_config": a.ds_config},
        "model": {**model_overrides(a), "params_m": float(mm.group(1)) if mm else None},
        "pretrain_val_loss": last_val_loss(pipe.out / "pretrain"),
        "pretrain_reused": reused, "durations_s": durations, "loadavg_5min": LOAD, "cpus": os.cpu_count(),
        "warnings": WARNINGS, "runs": runs, "out": str(pipe.out),
    }


def main() -> None:
    a = parse_args()
    pipe = Pipeline(a, Path(a.data).resolve(), Path(a.out).resolve())
    pipe.check_data()
    pipe.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    tok = pipe.tokenizer()
    pipe.shards(tok)
    steps, reused = pipe.pretrain(tok)
    result, runs = finetune_all(pipe, tok)
    summary = summarize(pipe, result, runs, steps, reused, t_all)
    atomic_write_json(pipe.out / "result.json", summary, sort_keys=False)
    for task in a.tasks:
        print(f"{task}: pre-trained {result[f'{task}_pretrained']:.4f} vs scratch {result[f'{task}_scratch']:.4f} "
              f"(gain {result[f'{task}_gain']:+.4f} +- {result[f'{task}_gain_se']:.4f}; best epochs "
              f"{result[f'{task}_pretrained_best_epoch']:.4f} vs {result[f'{task}_scratch_best_epoch']:.4f})", flush=True)
    print(f"result: {pipe.out / 'result.json'}; total {summary['durations_s']['total']:.0f}s", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
