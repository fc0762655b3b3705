"""Process-group environment and launch rules: what srun gives a task becomes what torch.distributed needs, and
the sbatch scripts take the same rules from gptscale.runtime.dist."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gptscale.runtime import dist
from helpers import PRETRAIN, REPO, base_config, child_env


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
                   "MASTER_PORT": str(dist.slurm_port("123456"))}


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
    assert env["MASTER_ADDR"] == "10.0.0.7" and env["MASTER_PORT"] == str(dist.slurm_port("4242"))
    with pytest.raises(dist.LaunchError, match="GPTSCALE_MASTER_PORT='http'"):
        dist.setup_env({**SRUN_LIKE, "GPTSCALE_MASTER_PORT": "http"})


LINUX_DEFAULT = (32768, 60999)


def test_derived_port_is_outside_the_ephemeral_range_for_every_job_and_restart():
    """Over job ids up to 200k (and huge ones) x 6 restarts x 4 ephemeral ranges: never in the ephemeral range, never below 10000; the same inputs give
    the same port (tasks agree without talking); each requeue of a job gets a port none of its runs had."""
    for eph in (LINUX_DEFAULT, (1024, 65000), (15000, 30000), (10000, 65535)):
        lo, hi = eph
        for job in [*range(2000), *range(2000, 200_000, 61), 2**31 - 1, 10**12 + 3]:
            ports = [dist.slurm_port(str(job), r, eph) for r in range(6)]
            assert len(set(ports)) == 6, (eph, job, ports)
            assert all(not lo <= p <= hi and p < 65536 for p in ports), (eph, job, ports)
            assert all(p >= 10000 for p in ports) or eph == (10000, 65535)
        assert ports == [dist.slurm_port(str(job), str(r), eph) for r in range(6)]
    assert dist.slurm_port("123456", 0, LINUX_DEFAULT) == 24240  # 10000 + 123456 % 27304 (22768 + 4536 ports)
    assert dist.slurm_port("123456", 1, LINUX_DEFAULT) == 32159  # + 7919 -> past 32767: the ports above 60999
    assert dist.slurm_port("5_3", 0, LINUX_DEFAULT) == 10053  # an array task's id: its digits
    assert dist.port_ranges((1024, 65535)) == [range(10000, 65536)]  # nothing outside: the old range


def test_nearby_jobs_get_different_ports():
    """Jobs sharing a first node have nearby ids: 20000 consecutive ids give 20000 different ports."""
    assert len({dist.slurm_port(str(j), 0, LINUX_DEFAULT) for j in range(987_000, 1_007_000)}) == 20000
    old = sum(32768 <= 10000 + j % 50000 <= 60999 for j in range(50000))  # the old rule: 54% ephemeral
    assert old == 27232


def test_ephemeral_range_is_read_from_proc_or_defaulted(tmp_path):
    f = tmp_path / "range"
    f.write_text("20000\t40000\n")
    assert dist.ephemeral_range(str(f)) == (20000, 40000)
    for bad in ("", "x y", "40000 20000", "0 100"):
        f.write_text(bad)
        assert dist.ephemeral_range(str(f)) == LINUX_DEFAULT, bad
    assert dist.ephemeral_range(str(tmp_path / "missing")) == LINUX_DEFAULT
    real = Path(dist.EPHEMERAL_FILE)
    if real.exists():  # this host's own range, as the kernel reports it
        assert dist.ephemeral_range() == tuple(int(x) for x in real.read_text().split())


def test_all_tasks_of_a_run_agree_and_a_requeue_moves(monkeypatch):
    monkeypatch.setattr(dist.shutil, "which", lambda name: None)
    ports = {dist.setup_env({**SRUN_LIKE, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r % 2)})["MASTER_PORT"]
             for r in range(2)}
    assert ports == {str(dist.slurm_port("4242"))}
    again = dist.setup_env({**SRUN_LIKE, "SLURM_RESTART_COUNT": "1"})["MASTER_PORT"]
    assert again == str(dist.slurm_port("4242", 1)) and again not in ports
    lo, hi = dist.ephemeral_range()
    assert not lo <= int(again) <= hi


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
    assert p.stdout.splitlines()[0].split()[2] == f"ib-3:{dist.slurm_port('123456')}"


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
            f"master node3:{dist.slurm_port('123456')}") in p.stdout
    launched = next(ln for ln in p.stdout.splitlines() if ln.startswith("srun "))
    assert launched.startswith("srun --kill-on-bad-exit=1 --unbuffered --cpus-per-task=3 ")
    assert launched.endswith(f"{sys.executable} -u -m gptscale {script} --config run.yaml --train.b=2 --train.a=1")
    assert f"env unset node3:{dist.slurm_port('123456')} 3" in p.stdout


def test_job_script_without_the_checkout_names_gptscale_repo(tmp_path):
    env = dict(_batch_env(tmp_path), GPTSCALE_REPO=str(tmp_path / "nowhere"))
    p = _run(["bash", str(REPO / "slurm" / "pretrain.sh"), "run.yaml"], env, cwd=tmp_path)
    assert p.returncode == 2
    assert f"{tmp_path / 'nowhere'}/slurm/common.sh not found" in p.stderr and "set GPTSCALE_REPO=" in p.stderr


def _stand_in_srun(tmp_path: Path) -> None:
    """srun that prints each argument it got between <>, one line (argument boundaries visible)."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    srun = tmp_path / "bin" / "srun"
    srun.write_text('#!/bin/bash\nprintf "srun"; printf " <%s>" "$@"; echo\n')
    srun.chmod(0o755)


def test_gptscale_args_follow_shell_quoting_and_nothing_in_them_runs(tmp_path):
    """GPTSCALE_ARGS="--train.run_dir='my run'" reaches the program as ONE argument `--train.run_dir=my run`;
    double quotes and backslashes work as in a shell; `$(...)` and `$VAR` are passed as written (split at the
    space like any text), never run."""
    _stand_in_srun(tmp_path)
    marker = tmp_path / "ran"
    args = (f"--train.run_dir='my run' --data.shards=\"a b\"/c --x=y\\ z --cmd=$(touch {marker}) --home=$HOME "
            "--train.lr=3e-4")
    p = _run(["bash", str(REPO / "slurm" / "pretrain.sh"), "run.yaml", "--train.a=1"],
             _batch_env(tmp_path, GPTSCALE_ARGS=args), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    launched = next(ln for ln in p.stdout.splitlines() if ln.startswith("srun "))
    assert launched.endswith(f"<gptscale> <pretrain> <--config> <run.yaml> <--train.run_dir=my run> "
                             f"<--data.shards=a b/c> <--x=y z> <--cmd=$(touch> <{marker})> <--home=$HOME> "
                             f"<--train.lr=3e-4> <--train.a=1>")
    assert not marker.exists()
    shown = next(ln for ln in p.stdout.splitlines() if " -m gptscale " in ln and ln.startswith("gptscale-slurm: /"))
    assert shown.endswith(r"-m gptscale pretrain --config run.yaml --train.run_dir=my\ run --data.shards=a\ b/c "
                          r"--x=y\ z --cmd=\$\(touch " + str(marker) + r"\) --home=\$HOME --train.lr=3e-4 --train.a=1")


@pytest.mark.parametrize("args", ["--train.run_dir='my run", '--train.run_dir="my run', "--x=a\\"])
def test_unbalanced_quotes_in_gptscale_args_are_an_error(tmp_path, args):
    _stand_in_srun(tmp_path)
    p = _run(["bash", str(REPO / "slurm" / "finetune.sh"), "--task", "rte"], _batch_env(tmp_path, GPTSCALE_ARGS=args),
             cwd=tmp_path)
    assert p.returncode == 2 and "srun" not in p.stdout, p.stdout
    assert p.stderr.startswith(f"gptscale-slurm: error: GPTSCALE_ARGS={args!r}: No ")  # closing quotation / escaped
    assert "balance the quotes, e.g. GPTSCALE_ARGS=\"--train.run_dir='my run' --train.lr=3e-4\"" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_split_args():
    assert dist.split_args("") == [] and dist.split_args("  --a=1\t--b=2 \n") == ["--a=1", "--b=2"]
    assert dist.split_args("--train.run_dir='my run' '--c=it''s'") == ["--train.run_dir=my run", "--c=its"]
    assert dist.split_args("--n=#1 --g=*.json") == ["--n=#1", "--g=*.json"]  # no comments, no globbing
    with pytest.raises(dist.LaunchError, match="No closing quotation"):
        dist.split_args("--a='x")


# ------------------------------------------------------------------------------ a busy rendezvous port

INIT_ONLY = ("import sys\nfrom gptscale.errors import run_cli\nfrom gptscale.runtime.dist import init_distributed\n"
             "sys.exit(run_cli('gptscale pretrain', init_distributed))\n")
BUSY = (r"gptscale pretrain: error: MASTER_PORT={port} is already in use on 127\.0\.0\.1 \(rank 0 on \S+ could not "
        r"open the rendezvous there\): another job or a stale process holds it \(`ss -ltnp \| grep :{port}` on that "
        r"host shows which\)\. Start again on a free port: GPTSCALE_MASTER_PORT=(\d+) \(sbatch scripts, launcher "
        r"jobs, srun\), or --master_port=\1 for the deepspeed launcher or torchrun")


def _held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _assert_busy_message(p: subprocess.CompletedProcess, port: int) -> None:
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "DistNetworkError" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if "error: MASTER_PORT" in ln]
    assert len(lines) == 1, p.stderr[-3000:]
    m = re.fullmatch(BUSY.format(port=port), lines[0])
    assert m, lines[0]
    alt = int(m.group(1))  # the suggested port is free and outside the ephemeral range
    lo, hi = dist.ephemeral_range()
    assert alt != port and not lo <= alt <= hi
    with socket.socket() as s:
        s.bind(("", alt))


def test_a_busy_master_port_is_one_message_and_exit_2(tmp_path):
    """One process whose MASTER_PORT another socket holds: rc 2 and the message, no torch traceback."""
    with _held_port() as held:
        port = held.getsockname()[1]
        p = subprocess.run([sys.executable, "-c", INIT_ONLY], capture_output=True, text=True, timeout=120, cwd=REPO,
                           check=False, env=child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1"))
    _assert_busy_message(p, port)


def test_two_rank_pretrain_on_a_busy_port_stops_with_the_message(tmp_path, shard_dir, tok_dir):
    """A real 2-rank `deepspeed --master_port PORT gptscale/pretrain.py` while PORT is held: rank 0 cannot open
    the rendezvous, says so once, the launcher stops the other rank; exit status 2, no run folder."""
    cfg = base_config(tmp_path, shard_dir, tok_dir)
    with _held_port() as held:
        port = held.getsockname()[1]
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(port),
               PRETRAIN, "--config", str(cfg)]
        p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO,
                           start_new_session=True, check=False)
    _assert_busy_message(p, port)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
