"""Process-group environment: what srun gives a task becomes what torch.distributed needs."""

import pytest

from gptscale.runtime import dist


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
