"""slurm/pretrain.sh against real Slurm daemons (tests/slurm_cluster.py): two nodes, fake GPUs, CPU + gloo.

Each job is submitted exactly as users do (`sbatch [flags] slurm/pretrain.sh CONFIG [overrides]` from the
checkout); only the size flags differ from a GPU cluster (1 task and 1 fake GPU per node, 1 CPU per task).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from gptscale.runtime.dist import slurm_port
from helpers import REPO, base_config, fault_env, losses

pytest_plugins = ["slurm_cluster"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"]


def _steps(cluster, job_id: str) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    for r in cluster.sacct(job_id):
        rows.setdefault(r["JobID"], []).append(r)
    return rows


def test_sbatch_pretrain_on_two_nodes(slurm_cluster, slurm_pretrain_reference):
    """(a) 2 nodes x 1 task: trains to the end, checkpoints and TensorBoard events read back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # lazy: slow, one test

    jid, run, log, _ = slurm_pretrain_reference
    assert f"job {jid} (restart 0) pretrain on 2 node(s) [node[1-2]], 2 task(s), 1 GPU(s)/node" in log
    assert f"master node1:{slurm_port(jid)}" in log  # the nodes share this machine's ephemeral port range
    assert "world 2," in log and "done: step 8" in log
    assert slurm_cluster.sacct_states(jid) == ["COMPLETED"]
    steps = _steps(slurm_cluster, jid)
    assert steps[jid][-1]["ExitCode"] == "0:0"
    assert steps[f"{jid}.0"][-1]["NodeList"] == "node[1-2]"  # the srun step spanned both nodes
    ck = run / "checkpoints"
    assert (ck / "latest").read_text() == "step_00000008"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_00000004", "step_00000008"]
    meta = json.loads((ck / "step_00000008" / "gptscale.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 8
    ref = losses(run)
    assert sorted(ref) == list(range(1, 9)) and ref[8] < ref[1]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert [round(e.value, 5) for e in acc.Scalars("train/loss")] == [round(ref[s], 5) for s in range(1, 9)]
    assert [e.step for e in acc.Scalars("val/loss")] == [4, 8]


def test_gptscale_args_with_a_quoted_space_reach_the_run_as_one_argument(slurm_cluster, slurm_pretrain_reference,
                                                                         tmp_path):
    """GPTSCALE_ARGS="--train.run_dir='.../my run' ..." (shell quoting): the run writes into the folder `my run`."""
    _, _, _, cfg = slurm_pretrain_reference
    log = tmp_path / "job.out"
    run = tmp_path / "my run"
    args = f"--train.run_dir='{run}' --train.max_steps=2 --train.eval_interval=0 --train.checkpoint_interval=2"
    jid = slurm_cluster.sbatch(["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1",
                                "--time=10", f"--output={log}", "slurm/pretrain.sh", str(cfg)],
                               env=slurm_cluster.job_env(GPTSCALE_ARGS=args), cwd=REPO)
    info = slurm_cluster.wait_job(jid, timeout=300)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", text[-5000:]
    assert "--train.run_dir=" + str(run).replace(" ", "\\ ") + " --train.max_steps=2" in text
    assert sorted(losses(run)) == [1, 2] and (run / "checkpoints" / "latest").read_text() == "step_00000002"
    assert not (tmp_path / "my").exists()


def test_a_busy_master_port_fails_the_job_with_one_message(slurm_cluster, tmp_path, shard_dir, tok_dir):
    """2 nodes x 1 task, the rendezvous port held by another socket on node1: rank 0 says so once, srun ends the
    other rank (--kill-on-bad-exit), the job fails at once instead of hanging; rank 0's exit status is 2."""
    cfg = base_config(tmp_path, shard_dir, tok_dir)
    log = tmp_path / "job.out"
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        jid = slurm_cluster.sbatch([*TWO_NODES, f"--output={log}", "slurm/pretrain.sh", str(cfg)],
                                   env=slurm_cluster.job_env(GPTSCALE_MASTER_PORT=str(port)), cwd=REPO)
        info = slurm_cluster.wait_job(jid, timeout=300)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "FAILED", text[-5000:]
    assert "node1: task 0: Exited with exit code 2" in text  # the job's own status is srun's (143: rank 1 ended)
    assert text.count(f"gptscale pretrain: error: MASTER_PORT={port} is already in use on node1 (rank 0") == 1
    assert "GPTSCALE_MASTER_PORT=" in text and "Traceback" not in text, text[-5000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_usr2_from_slurm_checkpoints_requeues_and_resumes_exactly(slurm_cluster, slurm_pretrain_reference,
                                                                  tmp_path):
    """(c) `scancel --signal=USR2 JOB` mid-run (at step 3): every rank checkpoints, the job requeues itself,
    restarts (SLURM_RESTART_COUNT=1), resumes from step 3 and ends with the uninterrupted run's losses."""
    _, ref_run, _, cfg = slurm_pretrain_reference
    log = tmp_path / "job.out"
    run = tmp_path / "run"
    jid = slurm_cluster.sbatch([*TWO_NODES, f"--output={log}", "slurm/pretrain.sh", str(cfg),
                                f"--train.run_dir={run}"],
                               env=slurm_cluster.job_env(**fault_env(preempt_wait_at_step=3)), cwd=REPO)
    # both ranks finished step 3 and hold there, their handlers installed: now Slurm signals every task
    slurm_cluster.wait_for_text([log], "holding until a preemption signal", jid, count=2)
    slurm_cluster.run(["scancel", "--signal=USR2", jid])
    info = slurm_cluster.wait_job(jid, timeout=300)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", text[-5000:]
    assert info["Restarts"] == "1"
    assert "preempted at step 3" in text and f"job {jid} requeued" in text
    assert f"job {jid} (restart 1)" in text and "resumed from" in text and "at step 3" in text
    assert f"master node1:{slurm_port(jid, 0)}" in text and f"master node1:{slurm_port(jid, 1)}" in text  # moved
    assert slurm_cluster.sacct_states(jid) == ["REQUEUED", "COMPLETED"]
    got, ref = losses(run), losses(ref_run)
    assert sorted(got) == list(range(1, 9))
    assert got == ref  # exact: the same loss at every step as the uninterrupted run


def test_scancel_leaves_no_process_behind(slurm_cluster, slurm_pretrain_reference, tmp_path):
    """(d) A running 2-node job (one rank on node1, one on node2) is cancelled: no process of it remains."""
    _, _, _, cfg = slurm_pretrain_reference
    log = tmp_path / "job.out"
    jid = slurm_cluster.sbatch([*TWO_NODES, f"--output={log}", "slurm/pretrain.sh", str(cfg),
                                f"--train.run_dir={tmp_path / 'run'}"],
                               env=slurm_cluster.job_env(**fault_env(preempt_wait_at_step=2)), cwd=REPO)
    slurm_cluster.wait_for_text([log], "holding until a preemption signal", jid, count=2)

    ranks = [e for e in slurm_cluster.job_environs(jid) if e.get("SLURM_STEP_ID") == "0"]
    assert {e["SLURM_NODEID"] for e in ranks} == {"0", "1"}
    assert {e["SLURMD_NODENAME"] for e in ranks} == {"node1", "node2"}
    assert {e["SLURM_PROCID"] for e in ranks} == {"0", "1"}
    slurm_cluster.run(["scancel", jid])
    deadline = time.time() + 30
    while slurm_cluster.job_pids(jid) and time.time() < deadline:
        time.sleep(0.2)
    assert slurm_cluster.job_pids(jid) == [], "processes of the cancelled job are still running"
    assert slurm_cluster.wait_job(jid, timeout=60)["JobState"] == "CANCELLED"


def test_more_gpus_than_a_node_has_is_refused_at_submission(slurm_cluster, slurm_pretrain_reference):
    """(e) 16 GPUs per node on 8-GPU nodes: sbatch fails at once with Slurm's message, nothing pends."""
    _, _, _, cfg = slurm_pretrain_reference
    t = time.time()
    p = slurm_cluster.run(["sbatch", "--gpus-per-node=16", "slurm/pretrain.sh", str(cfg)], check=False,
                          env=slurm_cluster.job_env(), cwd=REPO)
    assert p.returncode != 0
    assert "Requested node configuration is not available" in p.stderr
    assert time.time() - t < 15
    assert slurm_cluster.run(["squeue", "-h", "-t", "PENDING"]).stdout.strip() == ""


def test_tasks_must_match_gpus(slurm_cluster, slurm_pretrain_reference, tmp_path):
    """One task per GPU: 2 GPUs but 1 task per node stops at once with a message naming both flags."""
    _, _, _, cfg = slurm_pretrain_reference
    log = tmp_path / "job.out"
    jid = slurm_cluster.sbatch(["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=2", "--cpus-per-task=1",
                                f"--output={log}", "slurm/pretrain.sh", str(cfg)], env=slurm_cluster.job_env(),
                               cwd=REPO)
    assert slurm_cluster.wait_job(jid, timeout=120)["JobState"] == "FAILED"
    assert "--ntasks-per-node=1 but --gpus-per-node=2" in log.read_text()


def test_sbatch_finetune_restarts_after_usr2(slurm_cluster, tmp_path, tok_dir, data_dir):
    """slurm/finetune.sh: a fine-tune has no mid-run checkpoint, so USR2 (time limit, preemption; sent to the
    batch shell) requeues the job and the run starts again, then completes with its metrics.json."""
    log = tmp_path / "job.out"
    run = tmp_path / "ft"
    args = ["--task", "rte", "--init", "none", "--data-dir", str(data_dir), f"--data.tokenizer={tok_dir}",
            "--model.preset=gpt2-tiny", "--model.vocab_size=2000", "--model.n_ctx=64", "--train.precision=fp32",
            "--finetune.train_samples=32", "--finetune.eval_samples=16", "--finetune.epochs=1",
            "--finetune.batch_size=8", "--finetune.micro_batch_size=4", f"--train.run_dir={run}"]
    jid = slurm_cluster.sbatch(["--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10",
                                f"--output={log}", "slurm/finetune.sh", *args], env=slurm_cluster.job_env(), cwd=REPO)
    slurm_cluster.wait_for_text([log], "-m gptscale finetune --task rte", jid)  # printed before srun starts
    slurm_cluster.run(["scancel", "--batch", "--signal=USR2", jid])
    info = slurm_cluster.wait_job(jid, timeout=300)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-4000:]
    assert "requeueing job" in text and f"job {jid} (restart 1) finetune" in text
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "rte" and len(m["epochs"]) == 1
