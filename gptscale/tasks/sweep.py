"""Few-shot sweep (the seed's experiment, paper Table 5 in miniature): fine-tune one task on N training
examples for several N and seeds, then one results table.

    gptscale fewshot --task sst2 --train-samples 16,64,256,1024 --seeds 1,2,3 --out runs/fewshot/sst2 \\
        -- --init runs/pretrain --data-dir ../shared/data --finetune.epochs=3

Each run is `gptscale finetune` (or `torchrun --nproc_per_node P gptscale/finetune.py` with --nproc P) in
its own folder OUT/n{N}_s{SEED}; a run whose metrics.json exists is not run again, so an interrupted
sweep picks up where it stopped. OUT/results.tsv and results.json hold every run's best dev metrics and
the mean and standard deviation over seeds for each N. `summarize`, `write_table` and `csv_list` serve the
Slurm grid launcher (launcher/) too, which submits such runs as a job array.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gptscale.files import atomic_write_bytes, atomic_write_json
from gptscale.tasks.outputs import METRICS_FILE, read_best

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def csv_list(cast: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse `type` for comma-separated values: csv_list(int)("16,64,") -> [16, 64]; a bad item is an
    argparse error naming the flag."""
    def parse(text: str) -> list[T]:
        try:
            return [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {cast.__name__}, got {text!r}") \
                from None
    return parse


def collect(run_dirs: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per run name: status done|missing and its best dev metrics."""
    rows = []
    for name, d in run_dirs.items():
        best = read_best(d)
        rows.append({"run": name, "run_dir": str(d), "status": "done" if best else "missing", **(best or {})})
    return rows


def summarize(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each group's primary metric over its finished runs (grouped by
    the values of `keys`, e.g. the seeds of one N, or of one task x lr), with n done of all."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for k, rs in groups.items():
        done = [float(r["value"]) for r in rs if r.get("status") == "done" and r.get("value") is not None]
        out.append({**dict(zip(keys, k)), "metric": next((r["metric"] for r in rs if r.get("metric")), ""),
                    "mean": statistics.fmean(done) if done else None,
                    "std": statistics.stdev(done) if len(done) > 1 else (0.0 if done else None),
                    "n": len(done), "of": len(rs)})
    return out


def cell(v: Any, missing: str = "") -> str:
    """A table cell: floats with 4 decimals, None as `missing`."""
    if v is None:
        return missing
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_table(path: Path, rows: list[dict[str, Any]], cols: list[str], missing: str = "",
                formats: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """A TSV file, atomically: the header `cols`, then one line per row (`formats[col]` turns a value into its
    cell where given, else `cell`); returns the text."""
    formats = formats or {}
    lines = ["\t".join(cols)] + ["\t".join(formats[c](r.get(c)) if c in formats else cell(r.get(c), missing)
                                            for c in cols) for r in rows]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(path, text.encode())
    return text


def fewshot_columns(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """results.tsv's columns: `keys` first, then the status and best metrics of each run, then its folder."""
    fixed = ["status", "metric", "value", "best_epoch"]
    metric_cols = sorted({k for r in rows for k in r} - set(keys) - set(fixed) - {"run", "run_dir", "task"})
    return keys + fixed + metric_cols + ["run_dir"]


def finetune_command(nproc: int) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                str(REPO / "gptscale" / "finetune.py")]
    return [sys.executable, "-m", "gptscale", "finetune"]


def cli(argv: list[str]) -> int:
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    else:
        passthrough = []
    p = argparse.ArgumentParser(prog="gptscale fewshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--train-samples", type=csv_list(int), required=True, help="comma-separated N, e.g. 16,64,256,1024")
    p.add_argument("--seeds", type=csv_list(int), default="1,2,3",
                   help="comma-separated fine-tuning seeds (subset + init + order)")
    p.add_argument("--out", type=Path, help="sweep folder (default runs/fewshot/TASK)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun) (default 1)")
    a = p.parse_args(argv)
    out = a.out or Path("runs/fewshot") / a.task
    sizes, seeds = a.train_samples, a.seeds
    runs: dict[str, Path] = {}
    meta: dict[str, dict[str, int]] = {}
    todo = [(n, s) for n in sizes for s in seeds]
    for k, (n, s) in enumerate(todo, 1):
        name = f"n{n}_s{s}"
        run_dir = out / name
        runs[name], meta[name] = run_dir, {"train_samples": n, "seed": s}
        if (run_dir / METRICS_FILE).is_file():
            print(f"[{k}/{len(todo)}] {name}: done already ({run_dir / METRICS_FILE})", flush=True)
            continue
        cmd = finetune_command(a.nproc) + ["--task", a.task, f"--finetune.train_samples={n}", f"--finetune.seed={s}",
                                           f"--train.run_dir={run_dir}", *passthrough]
        print(f"[{k}/{len(todo)}] {name}: {' '.join(cmd)}", flush=True)
        r = subprocess.run(cmd, env=dict(os.environ), check=False)
        if r.returncode != 0:
            print(f"gptscale fewshot: run {name} failed (exit {r.returncode}); its log is {run_dir / 'train.log'}; "
                  f"fix and rerun the same command to continue", file=sys.stderr)
            return r.returncode
    rows = [dict(meta[r["run"]], **r) for r in collect(runs)]
    out.mkdir(parents=True, exist_ok=True)
    print(write_table(out / "results.tsv", rows, fewshot_columns(rows, ["train_samples", "seed"])), end="")
    atomic_write_json(out / "results.json", rows)
    summary = summarize(rows, ["train_samples"])
    atomic_write_json(out / "summary.json", summary)
    for row in summary:
        print(f"N={row['train_samples']}: {row['metric']} {row['mean']:.4f} +- {row['std']:.4f} over {row['n']} seeds")
    print(f"results: {out / 'results.tsv'}, {out / 'summary.json'}")
    return 0
