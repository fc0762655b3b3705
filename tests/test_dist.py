"""Process-group environment and launch rules: what srun gives a task becomes what torch.distributed needs, and
the sbatch scripts take the same rules from gptscale.runtime.dist."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptscale.runtime import dist
from helpers import REPO


def test_first_slurm_host_without_scontrol(monkeypatch):
    monkeypatch.setattr(dist.shutil, "which", lambda name: None)
    assert dist.first_slurm_host("gpu[03-05,07],cpu1") == "gpu03"
    assert dist.first_slurm_host("node7") == "node7"
    assert dist.first_slurm_host("a-b[1,2]") == "a-b1"


def test_env_from_slurm(monkeypatch):
    monkeypatch.setattr(dist.shutil, "which", lambda name: None)
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[12-15]",
           "SLURM_JOB_ID": "123456"}
    assert dist.setup_env(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu12",
                   "MASTER_PORT": str(10000 + 123456 % 50000)}


def test_launcher_env_wins_over_slurm():
    env = dist.setup_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29999", "SLURM_PROCID": "7",
                          "SLURM_NTASKS": "16"})
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "2" and env["MASTER_PORT"] == "29999"


def test_multi_rank_without_port_is_refused():
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        dist.setup_env({"WORLD_SIZE": "4"})


# ------------------------------------------------------------------------------ the launch rules, one place

SRUN_LIKE = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
             "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_gptscale_master_overrides_are_honoured_under_srun(monkeypatch):
    """GPTSCALE_MASTER_ADDR/PORT reach every launch path through setup_env (srun, submitit), not only sbatch."""
    monkeypatch.setattr(dist.shutil, "which", lambda name: None)
    env = dist.setup_env({**SRUN_LIKE, "GPTSCALE_MASTER_PORT": "23456"})
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "gpu07", "MASTER_PORT": "23456"}
    env = dist.setup_env({**SRUN_LIKE, "GPTSCALE_MASTER_ADDR": "10.0.0.7"})
    assert env["MASTER_ADDR"] == "10.0.0.7" and env["MASTER_PORT"] == str(10000 + 4242 % 50000)
    with pytest.raises(dist.LaunchError, match="GPTSCALE_MASTER_PORT='http'"):
        dist.setup_env({**SRUN_LIKE, "GPTSCALE_MASTER_PORT": "http"})


def test_stale_process_group_variables_are_dropped():
    env = {**SRUN_LIKE, "RANK": "5", "WORLD_SIZE": "9", "LOCAL_WORLD_SIZE": "9", "MASTER_PORT": "1", "PATH": "/bin"}
    assert dist.drop_stale(env) == ["RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT"]
    assert dist.setup_env(env)["RANK"] == "1" and env["PATH"] == "/bin"  # srun's rank, not the stale one


def test_one_task_per_gpu():
    assert dist.tasks_per_node(8) == 8 and dist.tasks_per_node(0) == 1 and dist.tasks_per_node(4, 4) == 4
    assert dist.tasks_per_node(0, 3) == 3  # CPU-only runs choose freely
    with pytest.raises(dist.LaunchError, match=r"--ntasks-per-node=1 but --gpus-per-node=2: gptscale runs one task "
                                               r"per GPU; pass both, e.g. --gpus-per-node=2 --ntasks-per-node=2"):
        dist.tasks_per_node(2, 1)


def test_env_defaults_only_where_unset(monkeypatch):
    monkeypatch.setattr(dist.shutil, "which", lambda name: None)  # no nvidia-smi: a CPU node
    got = dist.env_defaults({"SLURM_JOB_ID": "1", "SLURM_CPUS_PER_TASK": "6", "NCCL_DEBUG": "INFO",
                             "PYTHONUNBUFFERED": ""})
    assert got == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "OMP_NUM_THREADS": "6", "PYTHONUNBUFFERED": "1",
                   "DS_ACCELERATOR": "cpu"}
    assert dist.env_defaults({}) == {"DS_ACCELERATOR": "cpu"}  # outside Slurm only the accelerator
    assert dist.env_defaults({"SLURM_JOB_ID": "1"})["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(dist.shutil, "which", lambda name: "/usr/bin/" + name)  # a GPU node
    assert "DS_ACCELERATOR" not in dist.env_defaults({"SLURM_JOB_ID": "1"})
    env = {"DS_ACCELERATOR": "cuda"}
    assert dist.apply_env_defaults(env) == {} and env == {"DS_ACCELERATOR": "cuda"}


def test_srun_options():
    assert dist.srun_options(8) == ["--kill-on-bad-exit=1", "--unbuffered", "--cpus-per-task=8"]
    assert dist.srun_options(None) == ["--kill-on-bad-exit=1", "--unbuffered"]


def test_the_module_loads_without_torch():
    """The batch shell runs `python -m gptscale.runtime.dist` before its srun: no torch import there."""
    p = subprocess.run([sys.executable, "-c", "import sys, gptscale.runtime.dist; print('torch' in sys.modules)"],
                       capture_output=True, text=True, check=True, cwd=REPO)
    assert p.stdout.strip() == "False"


# ------------------------------------------------------------------------------ the shell side, without Slurm

def _batch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A batch job's environment as sbatch gives it (no daemons behind it), with a stale RANK / WORLD_SIZE from
    the submitting shell and the user's own NCCL_DEBUG; then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPTSCALE_"))
           and k not in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="node[3-4]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="4",
               SLURM_GPUS_ON_NODE="2", SLURM_NTASKS_PER_NODE="2", SLURM_CPUS_PER_TASK="3",
               SLURM_SUBMIT_DIR=str(tmp_path), GPTSCALE_REPO=str(REPO), GPTSCALE_PYTHON=sys.executable,
               PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin", RANK="7", WORLD_SIZE="99", NCCL_DEBUG="INFO")
    return {**env, **extra}


def _run(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def _shell(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run(["bash", "-c", script], env)


def test_slurm_env_for_the_batch_shell(tmp_path):
    """What slurm/common.sh evals: stale RANK gone, the rendezvous, defaults only where unset, srun's flags."""
    (tmp_path / "bin").mkdir()
    show = ('eval "$(python -m gptscale.runtime.dist slurm-env pretrain)"; '
            'echo "rank=${RANK-unset} world=${WORLD_SIZE-unset} $MASTER_ADDR:$MASTER_PORT nccl=$NCCL_DEBUG '
            'async=$TORCH_NCCL_ASYNC_ERROR_HANDLING omp=$OMP_NUM_THREADS"; printf "<%s>" "${srun_opts[@]}"')
    env = _batch_env(tmp_path, GPTSCALE_MASTER_PORT="23456")
    p = _shell(show.replace("python", sys.executable), env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "rank=unset world=unset node3:23456 nccl=INFO async=1 omp=3",
        "<--kill-on-bad-exit=1><--unbuffered><--cpus-per-task=3>"]
    p = _shell(show.replace("python", sys.executable), dict(env, GPTSCALE_MASTER_PORT="", GPTSCALE_MASTER_ADDR="ib-3"))
    assert p.stdout.splitlines()[0].split()[2] == f"ib-3:{10000 + 123456 % 50000}"


def test_slurm_env_refuses_tasks_that_are_not_one_per_gpu(tmp_path):
    p = _run([sys.executable, "-m", "gptscale.runtime.dist", "slurm-env", "finetune"],
             _batch_env(tmp_path, SLURM_NTASKS_PER_NODE="1"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == ("gptscale-slurm: error: --ntasks-per-node=1 but --gpus-per-node=2: gptscale runs one "
                                "task per GPU; pass both, e.g. sbatch --gpus-per-node=2 --ntasks-per-node=2 "
                                "slurm/finetune.sh ...")


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_job_scripts_run_one_srun_with_the_rules_applied(tmp_path, script):
    """slurm/{pretrain,finetune}.sh up to srun (a stand-in that prints what it got): the arguments as documented,
    srun's flags and the environment from gptscale.runtime.dist."""
    (tmp_path / "bin").mkdir()
    srun = tmp_path / "bin" / "srun"
    srun.write_text('#!/bin/bash\necho "srun $*"\necho "env ${RANK-unset} $MASTER_ADDR:$MASTER_PORT $OMP_NUM_THREADS"\n')
    srun.chmod(0o755)
    env = _batch_env(tmp_path, GPTSCALE_ARGS="--train.b=2")
    p = _run(["bash", str(REPO / "slurm" / f"{script}.sh"), "run.yaml", "--train.a=1"], env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (f"gptscale-slurm: job 123456 (restart 0) {script} on 2 node(s) [node[3-4]], 4 task(s), 2 GPU(s)/node, "
            f"master node3:{10000 + 123456 % 50000}") in p.stdout
    launched = next(ln for ln in p.stdout.splitlines() if ln.startswith("srun "))
    assert launched.startswith("srun --kill-on-bad-exit=1 --unbuffered --cpus-per-task=3 ")
    assert launched.endswith(f"{sys.executable} -u -m gptscale {script} --config run.yaml --train.b=2 --train.a=1")
    assert f"env unset node3:{10000 + 123456 % 50000} 3" in p.stdout


def test_job_script_without_the_checkout_names_gptscale_repo(tmp_path):
    env = dict(_batch_env(tmp_path), GPTSCALE_REPO=str(tmp_path / "nowhere"))
    p = _run(["bash", str(REPO / "slurm" / "pretrain.sh"), "run.yaml"], env, cwd=tmp_path)
    assert p.returncode == 2
    assert f"{tmp_path / 'nowhere'}/slurm/common.sh not found" in p.stderr and "set GPTSCALE_REPO=" in p.stderr
