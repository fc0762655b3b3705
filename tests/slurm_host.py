"""The host side of the test cluster (tests/slurm_cluster.py): its Debian packages, the /etc/hosts line that
makes the node names resolve, and processes found and stopped by pid (never by name). A zombie counts as
gone: `kill -0` succeeds on zombies and this VM's init reaps slowly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "srun", "sacct", "munged", "mariadbd",
            "mariadb-install-db"]
HOSTS = Path("/etc/hosts")
INSTALL_CMD = ("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + " ".join(PACKAGES))


class ClusterError(RuntimeError):
    """The cluster could not be installed or started; the message names the command or log to look at."""


def alive(pid: int) -> bool:
    """True for a running process; a zombie counts as gone (kill -0 succeeds on zombies)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def pids_with_env(key: str, value: str) -> list[int]:
    """Pids whose environment has key=value (this process and its parents excluded)."""
    mine = {os.getpid(), os.getppid()}
    return sorted(int(p.name) for p in Path("/proc").iterdir()
                  if p.name.isdigit() and int(p.name) not in mine and environ_of(int(p.name)).get(key) == value
                  and alive(int(p.name)))


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL the survivors (each by pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return


def ensure_packages() -> None:
    """Install the Debian packages when a binary is missing; services must not start (policy-rc.d)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:  # stale package lists on a fresh machine
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False)
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise ClusterError(f"installing Slurm failed (exit {p.returncode}); run as root:\n  apt-get update && "
                               f"{INSTALL_CMD}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise ClusterError(f"still missing after apt-get install: {missing}; run: {INSTALL_CMD}")


def add_hosts_line(line: str) -> None:
    """Append `line` to /etc/hosts unless it is there (in place: /etc/hosts may be a bind mount)."""
    lines = HOSTS.read_text().splitlines()
    if line not in lines:
        with open(HOSTS, "a") as f:
            f.write(("" if not lines or HOSTS.read_text().endswith("\n") else "\n") + line + "\n")


def remove_hosts_line(line: str) -> None:
    try:
        text = HOSTS.read_text()
    except OSError:
        return
    kept = [ln for ln in text.splitlines() if ln != line]
    if len(kept) != len(text.splitlines()):
        with open(HOSTS, "w") as f:
            f.write("\n".join(kept) + "\n")
