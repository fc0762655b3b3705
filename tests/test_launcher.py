"""`python -m launcher` (submitit): options, the grid table, a local run, and jobs on real Slurm daemons.

The Slurm tests run the launcher as users do (a subprocess on the "login node", SLURM_CONF pointing at the
test cluster of tests/slurm_cluster.py); the jobs it submits run gptscale on two nodes with fake GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptscale.launcher import executor as ex
from gptscale.launcher.cli import build_parser
from gptscale.launcher.executor import ExecutorOptions, LauncherError, make_executor, parse_time
from gptscale.launcher.grid import GridCell, aggregate, format_table, grid_cells, write_plan
from gptscale.launcher.jobs import export_dist_env, resolve_run
from helpers import REPO, fault_env, losses

pytest_plugins = ["slurm_cluster"]

TINY = ["--model.preset=gpt2-tiny", "--model.vocab_size=2000", "--model.n_ctx=64", "--train.precision=fp32",
        f"--train.ds_config={REPO / 'ds_configs' / 'zero2.json'}"]
CPU_SLURM = ["--gpus-per-node", "1", "--cpus-per-task", "1", "--time", "10"]


def finetune_args(tok_dir: Path, data_dir: Path) -> list[str]:
    """A fine-tune that takes seconds: RTE from a random init, 32 examples, one epoch."""
    return ["--init", "none", "--data-dir", str(data_dir), f"--data.tokenizer={tok_dir}", *TINY,
            "--finetune.train_samples=32", "--finetune.eval_samples=16", "--finetune.epochs=1",
            "--finetune.batch_size=8", "--finetune.micro_batch_size=4"]


def run_launcher(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


def result_of(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]
    line = next(ln for ln in p.stdout.splitlines() if "finished; result " in ln)
    return json.loads(line.split("finished; result ", 1)[1])


# ------------------------------------------------------------------------------------------ no cluster


def test_time_limits():
    assert [parse_time(t) for t in ("90", "1:30:00", "2-00:00:00", "45:30", "2-12", "0:00:30")] == \
        [90, 90, 2880, 46, 3600, 1]
    with pytest.raises(LauncherError, match="--time"):
        parse_time("two hours")


def test_options_are_checked_with_the_flag_named():
    assert ExecutorOptions(gpus_per_node=8).ntasks_per_node == 8  # one task per GPU
    assert ExecutorOptions(gpus_per_node=0).ntasks_per_node == 1
    with pytest.raises(LauncherError, match="one task per GPU"):
        ExecutorOptions(gpus_per_node=8, tasks_per_node=4)
    with pytest.raises(LauncherError, match="--nodes 1"):
        ExecutorOptions(executor="local", nodes=2)
    with pytest.raises(LauncherError, match=r"--tasks-per-node=4 but --gpus-per-node=8: .*; drop --tasks-per-node"):
        ExecutorOptions(gpus_per_node=8, tasks_per_node=4)


def test_comma_separated_flags(capsys):
    ns = build_parser().parse_args(["finetune-grid", "--tasks", "rte,mrpc,", "--seeds", "1, 2", "--lrs", "1e-4",
                                    "--out", "g"])
    assert (ns.tasks, ns.seeds, ns.lrs) == (["rte", "mrpc"], [1, 2], [1e-4])
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["finetune-grid", "--tasks", "rte", "--seeds", "1,x", "--out", "g"])
    assert e.value.code == 2
    assert "argument --seeds: expected a comma-separated list of int, got '1,x'" in capsys.readouterr().err


def test_srun_line_of_the_submission_script(tmp_path, monkeypatch):
    """submitit's srun gets gptscale.runtime.dist's flags once each; no shell setup lines (the job sets its own
    environment defaults, before torch loads)."""
    monkeypatch.setattr(ex.shutil, "which", lambda name: f"/usr/bin/{name}")  # as on a login node
    opts = ExecutorOptions(nodes=2, gpus_per_node=4, cpus_per_task=6, folder=str(tmp_path))
    text = make_executor(opts, name="x")._executor._make_submission_file_text("python -m submitit.core._submit x", "u")
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert srun.count("--unbuffered") == 1 and srun.count("--kill-on-bad-exit=1") == 1
    assert "--cpus-per-task=6" in srun and "OMP_NUM_THREADS" not in text


def test_a_task_gets_the_schedulers_rank_and_the_rendezvous_override(monkeypatch):
    """Under srun (submitit's Slurm executor) stale RANK / MASTER_PORT from the submitting shell are dropped;
    GPTSCALE_MASTER_PORT is honoured as with the sbatch scripts."""
    env = {"SLURM_JOB_ID": "777", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "node1", "GPTSCALE_MASTER_PORT": "24680", "RANK": "0", "WORLD_SIZE": "1",
           "MASTER_PORT": "29500", "SUBMITIT_EXECUTOR": "slurm", "PATH": os.environ["PATH"]}
    monkeypatch.setattr(os, "environ", env)  # the task's own environment (os.environ is replaced, then restored)
    export_dist_env()
    assert [env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")] == \
        ["3", "4", "1", "node1", "24680"]


def test_run_dir_is_pinned_and_config_checked_before_submitting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, run = resolve_run("finetune", ["--task", "mrpc", "--init", "none"])
    assert run == tmp_path / "runs" / "finetune" / "mrpc" and argv[-1] == f"--train.run_dir={run}"
    argv, run = resolve_run("pretrain", ["--train.run_dir=r1"])
    assert run == tmp_path / "r1"
    with pytest.raises(ValueError, match="train.lrr"):
        resolve_run("pretrain", ["--train.lrr=1"])


def test_grid_table_from_run_dirs(tmp_path):
    cells = grid_cells(["rte", "mrpc"], seeds=[1, 2], lrs=[1e-4, 6.25e-5], out=tmp_path)
    assert len(cells) == 8 and len({c.run_dir for c in cells}) == 8
    write_plan(tmp_path, cells, ["--init", "none"], {})
    scores = {("rte", 1e-4): [0.5, 0.7], ("rte", 6.25e-5): [0.55, 0.55], ("mrpc", 1e-4): [0.8]}
    for c in cells:
        vals = scores.get((c.task, c.lr), [])
        if c.seed <= len(vals):
            Path(c.run_dir).mkdir(parents=True)
            metric = "accuracy" if c.task == "rte" else "f1"
            best = {"epoch": 2, metric: vals[c.seed - 1]}
            (Path(c.run_dir) / "metrics.json").write_text(json.dumps({"task": c.task, "primary": metric,
                                                                      "best": best, "epochs": [best]}))
    rows, summary = aggregate(tmp_path)
    assert sum(r["status"] == "done" for r in rows) == 5 and len(rows) == 8
    by = {(s["task"], s["lr"]): s for s in summary}
    assert by[("rte", 1e-4)]["mean"] == pytest.approx(0.6) and by[("rte", 1e-4)]["std"] == pytest.approx(0.141421, 1e-4)
    assert by[("rte", 1e-4)]["best_lr"] and not by[("rte", 6.25e-5)]["best_lr"]
    assert by[("mrpc", 1e-4)]["n"] == 1 and by[("mrpc", 6.25e-5)]["mean"] is None
    text = format_table(summary)
    assert "rte" in text and "*" in text
    tsv = (tmp_path / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:5] == ["task", "lr", "seed", "metric", "value"] and len(tsv) == 9
    assert tsv[1].split("\t")[:7] == ["rte", "0.0001", "1", "accuracy", "0.5000", "2", "done"]
    assert [r.split("\t")[4:7] for r in tsv if r.startswith("mrpc\t6.25e-05")] == [["-", "-", "missing"]] * 2
    summary_tsv = (tmp_path / "summary.tsv").read_text().splitlines()
    assert "mrpc\t6.25e-05\t\t-\t-\t0\t2\tFalse" in summary_tsv
    assert json.loads((tmp_path / "results.json").read_text())["summary"]
    assert GridCell(**cells[0].__dict__).args[:2] == ["--task", cells[0].task]


def test_a_job_that_can_never_start_is_cancelled_not_left_pending(monkeypatch):
    """Clusters without EnforcePartLimits accept an impossible job and keep it PENDING (PartitionConfig)."""
    class FakeJob:
        job_id, cancelled = "123", False

        def cancel(self, check=True):
            self.cancelled = True

    monkeypatch.setattr(ex, "pending_reason", lambda job_id: "PartitionConfig")
    job = FakeJob()
    with pytest.raises(LauncherError, match=r"can never start \(Slurm: PartitionConfig\).*--gpus-per-node=16"):
        ex.refuse_never_starting([job], ExecutorOptions(gpus_per_node=16), wait_s=0)
    assert job.cancelled
    monkeypatch.setattr(ex, "pending_reason", lambda job_id: "Resources")  # merely busy: keep waiting
    ex.refuse_never_starting([FakeJob()], ExecutorOptions(gpus_per_node=16), wait_s=0)


@pytest.mark.slow
def test_local_executor_runs_a_finetune_here(tmp_path, tok_dir, data_dir):
    """`--executor local`: no Slurm; the launcher waits and prints the run's metrics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=str(Path(sys.executable).parent) + os.pathsep + env["PATH"], DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1")
    p = run_launcher(["finetune", "--executor", "local", "--gpus-per-node", "1", "--time", "10",
                      "--folder", str(tmp_path / "submitit"), "--", "--task", "rte",
                      *finetune_args(tok_dir, data_dir), f"--train.run_dir={tmp_path / 'ft'}"], env)
    res = result_of(p)
    assert res["metrics"]["task"] == "rte" and 0.0 <= res["metrics"]["best"]["accuracy"] <= 1.0
    assert res["run_dir"] == str(tmp_path / "ft") and "tensorboard --logdir" in p.stdout


# ------------------------------------------------------------------------------------------ real Slurm

@pytest.mark.slurm
@pytest.mark.slow
def test_submission_script_requeues_signals_and_runs_one_task_per_gpu(slurm_cluster, tmp_path):
    opts = ExecutorOptions(nodes=2, gpus_per_node=8, cpus_per_task=6, time="1-00:00:00", partition="gpu",
                           account="proj", signal_delay_s=240, folder=str(tmp_path))
    ex = make_executor(opts, name="gptscale-pretrain")
    text = ex._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --requeue", "#SBATCH --signal=USR2@240", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=6", "#SBATCH --time=1440",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "--kill-on-bad-exit=1"):
        assert line in text, (line, text)


@pytest.mark.slurm
@pytest.mark.slow
def test_finetune_job_on_slurm_returns_its_metrics(slurm_cluster, tmp_path, tok_dir, data_dir):
    """(b) One fine-tune submitted with sbatch by submitit; `--wait` prints rank 0's metrics.json."""
    p = run_launcher(["finetune", *CPU_SLURM, "--folder", str(tmp_path / "submitit"), "--wait", "--",
                      "--task", "rte", *finetune_args(tok_dir, data_dir), f"--train.run_dir={tmp_path / 'ft'}"],
                     slurm_cluster.job_env())
    res = result_of(p)
    jid = p.stdout.split("submitted finetune job ", 1)[1].split()[0]
    assert slurm_cluster.wait_job(jid, timeout=60)["JobState"] == "COMPLETED"
    assert res["metrics"]["task"] == "rte" and res["metrics"]["primary"] == "accuracy"
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["best"] == res["metrics"]["best"]
    assert (tmp_path / "submitit" / jid / f"{jid}_0_log.out").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_finetune_grid_is_one_job_array_and_one_table(slurm_cluster, tmp_path, tok_dir, data_dir):
    """(b) tasks x seeds x lrs -> a job array; every run's metrics end up in one results table."""
    out = tmp_path / "grid"
    p = run_launcher(["finetune-grid", "--tasks", "rte", "--seeds", "1,2", "--lrs", "1e-4", "--out", str(out),
                      *CPU_SLURM, "--folder", str(tmp_path / "submitit"), "--",
                      *finetune_args(tok_dir, data_dir)], slurm_cluster.job_env())
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "as job array" in p.stdout
    plan = json.loads((out / "grid.json").read_text())
    ids = [c["job_id"] for c in plan["cells"]]
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1  # one array, two tasks
    rows = (out / "results.tsv").read_text().splitlines()
    assert len(rows) == 3 and all("\tdone\t" in r for r in rows[1:])
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary[0]["n"] == 2 and summary[0]["metric"] == "accuracy" and summary[0]["best_lr"]
    assert "rte" in p.stdout and "results.tsv" in p.stdout
    again = run_launcher(["aggregate", str(out)], slurm_cluster.job_env())
    assert again.returncode == 0 and "rte" in again.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_interrupted_launcher_job_checkpoints_requeues_and_resumes_exactly(slurm_cluster, slurm_pretrain_reference,
                                                                           tmp_path):
    """(c) submitit's own `job._interrupt(timeout=True)` (scancel --signal USR2) at step 3 of a 2-node
    pre-training: checkpoint, submitit requeues the Checkpointable job, it resumes, the losses equal the
    uninterrupted run's, and `--wait` still returns the final result."""
    _, ref_run, _, cfg = slurm_pretrain_reference
    folder, run = tmp_path / "submitit", tmp_path / "run"
    cmd = [sys.executable, "-m", "launcher", "pretrain", "--nodes", "2", *CPU_SLURM, "--folder", str(folder),
           "--wait", "--", str(cfg), f"--train.run_dir={run}"]
    proc = subprocess.Popen(cmd, env=slurm_cluster.job_env(**fault_env(preempt_wait_at_step=3)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        head = ""
        while "submitted pretrain job" not in head:
            line = proc.stdout.readline()
            assert line, f"launcher exited: {head}"
            head += line
        jid = head.split("submitted pretrain job ", 1)[1].split()[0]
        logs = [folder / jid / f"{jid}_{r}_log.err" for r in (0, 1)]
        slurm_cluster.wait_for_text(logs, "holding until a preemption signal", jid)
        interrupt = f"import submitit; submitit.SlurmJob({str(folder / '%j')!r}, {jid!r})._interrupt(timeout=True)"
        subprocess.run([sys.executable, "-c", interrupt], env=slurm_cluster.job_env(), check=True, timeout=60)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, head + out
    res = json.loads(out.split("finished; result ", 1)[1].splitlines()[0])
    assert res["metrics"]["step"] == 8 and res["checkpoint"].endswith("step_00000008")
    info = slurm_cluster.wait_job(jid, timeout=60)  # the result pickles come just before the job ends
    assert info["Restarts"] == "1" and info["JobState"] == "COMPLETED"
    assert slurm_cluster.sacct_states(jid) == ["REQUEUED", "COMPLETED"]
    rank0 = (folder / jid / f"{jid}_0_log.out").read_text() + logs[0].read_text()
    assert "preempted at step 3" in rank0 and "submitit requeues job" in rank0 and "resumed from" in rank0
    got, ref = losses(run), losses(ref_run)
    assert sorted(got) == list(range(1, 9)) and got == ref


@pytest.mark.slurm
@pytest.mark.slow
def test_requests_the_cluster_cannot_hold_fail_with_the_flag_named(slurm_cluster, tmp_path):
    """(e) More GPUs per node than any node has: refused before sbatch, naming --gpus-per-node and the max;
    a request sbatch itself refuses (memory) comes back as a clear error too. Nothing is left pending."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_steps: 1\n")
    p = run_launcher(["pretrain", "--nodes", "2", "--gpus-per-node", "16", "--cpus-per-task", "1",
                      "--folder", str(tmp_path / "s"), "--", str(cfg)], slurm_cluster.job_env(), timeout=120)
    assert p.returncode == 2
    assert "--gpus-per-node=16" in p.stderr and "has 8 GPUs" in p.stderr and "Traceback" not in p.stderr
    p = run_launcher(["pretrain", "--gpus-per-node", "1", "--cpus-per-task", "1", "--mem", "100000G",
                      "--folder", str(tmp_path / "s"), "--", str(cfg)], slurm_cluster.job_env(), timeout=120)
    assert p.returncode == 2 and "Slurm refused the job" in p.stderr, p.stderr
    assert "Requested node configuration is not available" in p.stderr and "8 GPUs" in p.stderr
    assert slurm_cluster.run(["squeue", "-h", "-t", "PENDING"]).stdout.strip() == ""
