"""Fine-tuning sweeps as the GPT-1 paper ran them: tasks x seeds x learning rates, one job array, one table.

    cells = grid_cells(["rte", "mrpc"], seeds=[1, 2, 3], lrs=[6.25e-5, 1e-4], out=Path("runs/grid"))
    write_plan(out, cells, ...)          # runs/grid/grid.json: every cell, its run dir and job id
    rows, summary = aggregate(out)       # reads each run's metrics.json; writes results.tsv/json, summary.tsv

`aggregate` only reads files, so `python -m launcher aggregate runs/grid` rebuilds the table at any time
(runs still going or failed show up as such). Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gptscale.files import atomic_write_json
from gptscale.tasks.outputs import read_best
from gptscale.tasks.sweep import cell, summarize, write_table

PLAN = "grid.json"


@dataclass
class GridCell:
    """One fine-tuning run of the sweep."""

    task: str
    seed: int
    lr: float
    run_dir: str
    job_id: str = ""
    log: str = ""

    @property
    def args(self) -> list[str]:
        """What this cell adds to the shared fine-tuning arguments."""
        return ["--task", self.task, f"--finetune.seed={self.seed}", f"--finetune.lr={self.lr!r}",
                f"--train.run_dir={self.run_dir}"]


def _lr_name(lr: float) -> str:
    return f"{lr:g}"


def grid_cells(tasks: list[str], seeds: list[int], lrs: list[float], out: Path) -> list[GridCell]:
    """Every (task, lr, seed), each with its own run directory out/<task>/lr<lr>_seed<seed>."""
    if not (tasks and seeds and lrs):
        raise ValueError("a grid needs at least one task, one seed and one learning rate")
    out = out.resolve()
    return [GridCell(t, s, lr, str(out / t / f"lr{_lr_name(lr)}_seed{s}")) for t in tasks for lr in lrs for s in seeds]


def write_plan(out: Path, cells: list[GridCell], shared_args: list[str], meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / PLAN
    atomic_write_json(path, {"cells": [asdict(c) for c in cells], "args": shared_args, **meta})
    return path


def read_plan(out: Path) -> list[GridCell]:
    f = out / PLAN
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: is {out} the --out folder of a finetune-grid?")
    return [GridCell(**c) for c in json.loads(f.read_text())["cells"]]


def aggregate(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per run, one row per task x lr: mean/std over seeds, best lr per task marked).
    Writes out/results.tsv, out/summary.tsv and out/results.json."""
    rows: list[dict[str, Any]] = []
    for c in read_plan(out):
        best = read_best(c.run_dir)
        row: dict[str, Any] = {"task": c.task, "lr": c.lr, "seed": c.seed, "metric": "", "value": None,
                               "best_epoch": None, "status": "missing", "job_id": c.job_id, "run_dir": c.run_dir}
        if best:
            row.update(metric=best["metric"], value=best["value"], best_epoch=best["best_epoch"], status="done",
                       all={k: v for k, v in best.items() if k not in ("task", "metric", "value", "best_epoch")})
        rows.append(row)
    summary = [dict(s, best_lr=False) for s in summarize(rows, ["task", "lr"])]
    for task in {s["task"] for s in summary}:
        scored = [s for s in summary if s["task"] == task and s["mean"] is not None]
        if scored:
            max(scored, key=lambda s: s["mean"])["best_lr"] = True
    _write_tables(out, rows, summary)
    return rows, summary


RUN_COLS = ["task", "lr", "seed", "metric", "value", "best_epoch", "status", "job_id", "run_dir"]
SUMMARY_COLS = ["task", "lr", "metric", "mean", "std", "n", "of", "best_lr"]


def _write_tables(out: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    lr = {"lr": "{:g}".format}
    write_table(out / "results.tsv", rows, RUN_COLS, missing="-", formats=lr)
    write_table(out / "summary.tsv", summary, SUMMARY_COLS, missing="-", formats=lr)
    atomic_write_json(out / "results.json", {"runs": rows, "summary": summary})


def format_table(summary: list[dict[str, Any]]) -> str:
    """The summary as aligned text: task, lr, metric, mean +- std over seeds (n done of all), best lr starred."""
    lines = [f"{'task':<12} {'lr':>10} {'metric':<12} {'mean':>8} {'std':>8} {'seeds':>7}"]
    for s in sorted(summary, key=lambda s: (s["task"], s["lr"])):
        star = " *" if s["best_lr"] else ""
        lines.append(f"{s['task']:<12} {s['lr']:>10g} {s['metric'] or '-':<12} {cell(s['mean'], '-'):>8} "
                     f"{cell(s['std'], '-'):>8} {s['n']:>3}/{s['of']:<3}{star}")
    return "\n".join(lines) + "\n(* best learning rate per task, by mean over seeds)"
