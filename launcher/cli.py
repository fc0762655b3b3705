"""`python -m launcher`: submit gptscale pre-training and fine-tuning to Slurm (or run them here) with submitit.

    python -m launcher pretrain --nodes 4 --gpus-per-node 8 --partition gpu --time 48:00:00 -- run.yaml [--train.x=y]
    python -m launcher finetune --gpus-per-node 1 --wait -- --task rte --init runs/my-run [--finetune.epochs=3]
    python -m launcher finetune-grid --tasks rte,mrpc --seeds 1,2,3 --lrs 6.25e-5,1e-4 --out runs/grid -- --init runs/x
    python -m launcher aggregate runs/grid                  # rebuild a grid's results table from its run dirs
    python -m launcher pretrain --executor local --gpus-per-node 2 -- run.yaml   # this machine, no Slurm

Everything after `--` goes to `python -m gptscale pretrain|finetune` unchanged (an optional config file
first, then `--section.key=value` overrides). Jobs requeue themselves on SIGUSR2 (time limit, preemption) and
pre-training resumes exactly from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths

from gptscale.config import field_docs
from gptscale.tasks.sweep import csv_list

from .executor import (
    ExecutorOptions,
    LauncherError,
    check_request,
    explain_submit_error,
    make_executor,
    options_from,
    refuse_never_starting,
    submit,
)
from .grid import GridCell, aggregate, format_table, grid_cells, write_plan
from .jobs import GptscaleJob, resolve_run

COMMANDS = ("pretrain", "finetune", "finetune-grid", "aggregate")


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    docs = field_docs(ExecutorOptions)
    for f in dataclasses.fields(ExecutorOptions):
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.default is None else f" (default: {f.default})"
        helptext = f"{docs.get(f.name, '')}{default}".replace("%", "%%")
        kw: dict[str, Any] = {"default": f.default, "help": helptext}
        if f.name == "executor":
            kw["choices"] = ["slurm", "local"]
        elif f.name in ("nodes", "gpus_per_node", "cpus_per_task", "signal_delay_s", "max_timeouts",
                        "array_parallelism", "tasks_per_node"):
            kw["type"] = int
        p.add_argument(flag, dest=f.name, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launcher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("pretrain", "submit a pre-training run"), ("finetune", "submit one fine-tuning run")):
        s = sub.add_parser(name, help=helptext)
        _add_executor_args(s)
        s.add_argument("--wait", action="store_true", help="wait for the job and print its result (always with "
                       "--executor local)")
    g = sub.add_parser("finetune-grid", help="tasks x seeds x learning rates as one job array, then one table")
    _add_executor_args(g)
    g.add_argument("--tasks", type=csv_list(str), required=True, help="comma-separated task names, e.g. rte,mrpc")
    g.add_argument("--seeds", type=csv_list(int), default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    g.add_argument("--lrs", type=csv_list(float), default=[6.25e-5], help="comma-separated learning rates "
                   "(default 6.25e-5, GPT-1's)")
    g.add_argument("--out", type=Path, required=True, help="folder for the runs, grid.json and the results table")
    g.add_argument("--no-wait", action="store_true", help="submit and return; later: python -m launcher aggregate OUT")
    a = sub.add_parser("aggregate", help="rebuild a grid's results table from its run directories")
    a.add_argument("out", type=Path)
    return p


def _entry_args(kind: str, args: list[str]) -> list[str]:
    """`[CONFIG] [--k=v ...]` -> `[--config CONFIG] [--k=v ...]` (the sbatch scripts take the same form)."""
    if args and not args[0].startswith("-"):
        return ["--config", args[0], *args[1:]]
    return list(args)


def _print_submitted(kind: str, job: Any, opts: ExecutorOptions, run_dir: Path) -> None:
    paths = JobPaths(str(Path(opts.folder) / "%j"), job_id=str(job.job_id), task_id=0)
    ranks = opts.nodes * opts.ntasks_per_node
    print(f"launcher: submitted {kind} job {job.job_id} ({opts.executor}: {opts.nodes} node(s) x "
          f"{opts.gpus_per_node} GPU(s), {ranks} rank(s))", flush=True)
    print(f"  run dir:     {run_dir}\n  logs:        {paths.stdout}\n               {paths.stderr}  "
          f"(one pair per task: _0_, _1_, ...)\n  TensorBoard: tensorboard --logdir {run_dir / 'tb'}", flush=True)
    if opts.executor == "slurm":
        print(f"  watch:       squeue -j {job.job_id}; sacct -j {job.job_id}; cancel: scancel {job.job_id}", flush=True)


def _wait(job: Any) -> Any:
    """Rank 0's result (job.results()[0]), with a failure turned into a LauncherError naming the log files."""
    try:
        return job.results()[0]
    except Exception as e:  # submitit: FailedJobError (traceback inside), UncompletedJobError (killed, no output)
        paths = job.paths
        raise LauncherError(f"job {job.job_id} did not finish: {str(e).strip()[-3000:]}\n"
                            f"logs: {paths.stdout} {paths.stderr}") from e


def cmd_run(kind: str, ns: argparse.Namespace, rest: list[str]) -> int:
    opts = options_from(ns)
    argv, run_dir = resolve_run(kind, _entry_args(kind, rest))
    executor = make_executor(opts, name=f"gptscale-{kind}")
    job = submit(executor, opts, GptscaleJob(kind, argv, run_dir))
    _print_submitted(kind, job, opts, run_dir)
    if not (ns.wait or opts.executor == "local"):
        return 0
    result = _wait(job)
    print(f"launcher: job {job.job_id} finished; result {json.dumps(result, sort_keys=True)}", flush=True)
    return 0


def _grid_args(rest: list[str]) -> list[str]:
    """The fine-tuning arguments every cell shares; a flag the grid itself sets is refused."""
    shared = _entry_args("finetune", rest)
    for flag, grid_flag in (("--task", "--tasks"), ("--finetune.task", "--tasks"), ("--lr", "--lrs"),
                            ("--finetune.lr", "--lrs"), ("--seed", "--seeds"), ("--finetune.seed", "--seeds")):
        if any(a == flag or a.startswith(flag + "=") for a in shared):
            raise LauncherError(f"finetune-grid takes {flag} from {grid_flag}; drop {flag} after `--`")
    return shared


def _submit_array(executor: Any, opts: ExecutorOptions, cells: list[GridCell], jobs_argv: list[list[str]]) -> list[Any]:
    """Every cell as one task of one job array (one sbatch); records the job ids in the cells."""
    check_request(opts)
    try:
        with executor.batch():  # one sbatch: a job array of len(cells) tasks
            jobs = [executor.submit(GptscaleJob("finetune", a, c.run_dir)) for a, c in zip(jobs_argv, cells)]
    except Exception as e:
        raise explain_submit_error(e, opts) from e
    refuse_never_starting(jobs, opts)
    for c, j in zip(cells, jobs):
        c.job_id, c.log = str(j.job_id), str(j.paths.stdout).replace("%t", "0")
    return jobs


def _print_array(jobs: list[Any], opts: ExecutorOptions, ns: argparse.Namespace) -> None:
    array = str(jobs[0].job_id).split("_")[0]
    print(f"launcher: submitted {len(jobs)} fine-tuning runs as job array {array} "
          f"({len(ns.tasks)} task(s) x {len(ns.lrs)} lr(s) x {len(ns.seeds)} seed(s))\n"
          f"  logs:  {Path(opts.folder).resolve()}/{array}_<i>/\n"
          f"  runs:  {ns.out.resolve()}/<task>/lr<lr>_seed<seed>\n"
          f"  table: python -m launcher aggregate {ns.out}  (squeue -j {array}; scancel {array})", flush=True)


def cmd_grid(ns: argparse.Namespace, rest: list[str]) -> int:
    opts = options_from(ns)
    shared = _grid_args(rest)
    cells = grid_cells(ns.tasks, ns.seeds, ns.lrs, ns.out)
    jobs_argv = [resolve_run("finetune", [*shared, *c.args])[0] for c in cells]  # every cell's config checked here
    executor = make_executor(opts, name="gptscale-ft-grid")
    meta = {"tasks": ns.tasks, "seeds": ns.seeds, "lrs": ns.lrs, "executor": opts.executor}
    jobs = []
    if opts.executor == "slurm":
        jobs = _submit_array(executor, opts, cells, jobs_argv)
        write_plan(ns.out, cells, shared, meta)
        _print_array(jobs, opts, ns)
        if ns.no_wait:
            return 0
    failed = []
    for i, (a, c) in enumerate(zip(jobs_argv, cells)):
        if opts.executor == "local":  # one at a time on this machine
            job = submit(executor, opts, GptscaleJob("finetune", a, c.run_dir))
            c.job_id, c.log = str(job.job_id), str(job.paths.stdout)
            write_plan(ns.out, cells, shared, meta)
            print(f"launcher: run {i + 1}/{len(cells)} {c.task} lr {c.lr:g} seed {c.seed}: local job {job.job_id}",
                  flush=True)
        else:
            job = jobs[i]
        try:
            _wait(job)
        except LauncherError as e:
            failed.append(f"{c.task} lr {c.lr:g} seed {c.seed}: {str(e).splitlines()[-1]}")
    _, summary = aggregate(ns.out)
    print(format_table(summary))
    print(f"launcher: results {ns.out.resolve() / 'results.tsv'}, {ns.out.resolve() / 'summary.tsv'}, "
          f"{ns.out.resolve() / 'results.json'}", flush=True)
    for f in failed:
        print(f"launcher: failed: {f}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "aggregate":
            print(format_table(aggregate(ns.out)[1]))
            return 0
        if ns.command == "finetune-grid":
            return cmd_grid(ns, rest)
        return cmd_run(ns.command, ns, rest)
    except (LauncherError, FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"launcher {ns.command}: error: {e}", file=sys.stderr, flush=True)
        return 2
