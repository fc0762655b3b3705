"""The test cluster's files (tests/slurm_cluster.py): its folders, fake GPU device nodes, slurm.conf, gres.conf
and slurmdbd.conf, all under one root. Writes files only; starts nothing. Facts behind each setting:
../shared/notes/slurm-in-ci.md.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from gptscale.runtime.dist import free_port

NODES = ("node1", "node2")
CPUS_PER_NODE = 64  # like a real 8-GPU node; config_overrides lets a 2-core machine advertise it
GPUS_PER_NODE = 8
PORTS = ("ctld", "dbd", "mysql", *NODES)


def make_layout(root: Path) -> None:
    """The folders (a spool per node) and the fake GPUs: character devices like /dev/null (plain files are
    refused by slurmd)."""
    for d in ("etc", "state", "run", "log", "munge", "dev", "mysql", *(f"spool/{n}" for n in NODES)):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for i in range(GPUS_PER_NODE):
        dev = root / "dev" / f"nvidia{i}"
        if not dev.exists():
            os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))


def slurm_conf(root: Path, name: str, host: str, ports: dict[str, int], munge_socket: Path) -> str:
    """slurm.conf: no cgroups, munge auth, accounting through slurmdbd, two nodes on 127.0.0.1 with 8 GPUs each."""
    first_job = int(time.time()) % 60_000_000 + 1000  # fresh ids (< MaxJobId): no stale submitit results
    nodes = "\n".join(
        f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={host} Port={ports[n]} CPUs={CPUS_PER_NODE} "
        f"RealMemory=8000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN" for n in NODES)
    return f"""\
ClusterName={name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports['ctld']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
GresTypes=gpu
FirstJobId={first_job}
KillWait=5
SchedulerParameters=sched_interval=2,bf_interval=2
MessageTimeout=20
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
AccountingStoragePass={munge_socket}
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(root: Path) -> str:
    return f"AutoDetect=off\nNodeName=node[1-{len(NODES)}] Name=gpu File={root}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n"


def slurmdbd_conf(root: Path, name: str, host: str, ports: dict[str, int], munge_socket: Path) -> str:
    return f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdAddr=127.0.0.1
DbdHost={host}
DbdPort={ports['dbd']}
SlurmUser=root
LogFile={root}/log/slurmdbd.log
PidFile={root}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mysql']}
StorageUser=root
StorageLoc=slurm_acct_{name}
"""


def write_config(root: Path, name: str, host: str, munge_socket: Path) -> dict[str, int]:
    """Every file of a cluster under `root`, on ports free right now; returns the ports (PORTS -> number)."""
    make_layout(root)
    ports = {k: free_port() for k in PORTS}
    (root / "etc" / "slurm.conf").write_text(slurm_conf(root, name, host, ports, munge_socket))
    (root / "etc" / "gres.conf").write_text(gres_conf(root))
    dbd = root / "etc" / "slurmdbd.conf"  # read from $SLURM_CONF's folder only; must be mode 600
    dbd.write_text(slurmdbd_conf(root, name, host, ports, munge_socket))
    dbd.chmod(0o600)
    return ports
