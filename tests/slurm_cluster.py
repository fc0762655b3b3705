"""A real Slurm 22.05 cluster on this machine for the tests: munged, MariaDB + slurmdbd, slurmctld and two
slurmd "nodes" (node1, node2: 8 CPUs and 8 fake GPUs each), everything under one temporary root.

    python tests/slurm_cluster.py up            # prints the root and `export SLURM_CONF=...`; Ctrl-C tears down
    python tests/slurm_cluster.py down ROOT     # tear down a cluster left behind (by its pid files)

Nothing is mocked: sbatch, srun, scancel, sacct and submitit talk to the real daemons. Needs root (daemons
run as root, device nodes, /etc/hosts). Missing Debian packages are installed with apt-get (services are
kept from starting by a temporary /usr/sbin/policy-rc.d). Teardown goes by pid only, never by process name:
daemons by their pid files, job processes by the cluster's marker (GPTSCALE_SLURM_ROOT=<root>) or a
SLURM_JOB_ID in /proc/<pid>/environ. Facts behind each setting: ../shared/notes/slurm-in-ci.md.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gptscale.runtime.dist import free_port

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "srun", "sacct", "munged", "mariadbd",
            "mariadb-install-db"]
NODES = ("node1", "node2")
CPUS_PER_NODE = 64  # like a real 8-GPU node; config_overrides lets a 2-core machine advertise it
GPUS_PER_NODE = 8
MARKER = "GPTSCALE_SLURM_ROOT"
HOSTS = Path("/etc/hosts")
INSTALL_CMD = ("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + " ".join(PACKAGES))


class ClusterError(RuntimeError):
    """The cluster could not be installed or started; the message names the command or log to look at."""


def _alive(pid: int) -> bool:
    """True for a running process; a zombie counts as gone (kill -0 succeeds on zombies)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def pids_with_env(key: str, value: str) -> list[int]:
    """Pids whose environment has key=value (this process and its parents excluded)."""
    mine = {os.getpid(), os.getppid()}
    return sorted(int(p.name) for p in Path("/proc").iterdir()
                  if p.name.isdigit() and int(p.name) not in mine and _environ(int(p.name)).get(key) == value
                  and _alive(int(p.name)))


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL the survivors (each by pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
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


class SlurmCluster:
    """One cluster under `root`. `start()` brings it up (idempotent teardown in `stop()`)."""

    def __init__(self, root: Path | None = None, name: str = "gptscaleci"):
        self.root = Path(root or tempfile.mkdtemp(prefix="gss-", dir="/tmp"))
        self.name = name
        self.host = socket.gethostname()
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.hosts_line = f"127.0.0.1 {' '.join(NODES)}  # {MARKER} {self.root}"
        self.env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))},
            "SLURM_CONF": str(self.conf), MARKER: str(self.root),
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self._stopped = False

    # ------------------------------------------------------------------------------------------ start
    def start(self, timeout: float = 90) -> SlurmCluster:
        if os.geteuid() != 0:
            raise ClusterError("the Slurm test cluster needs root (daemons as root, mknod, /etc/hosts)")
        ensure_packages()
        reap_stale_clusters()
        atexit.register(self.stop)
        try:
            (self.root / "run").mkdir(parents=True, exist_ok=True)
            (self.root / "run" / "owner").write_text(str(os.getpid()))  # not *.pid: stop() kills those
            self._write_config()
            self._add_hosts()
            self._start_munge()
            self._start_db()
            self._spawn("slurmdbd", ["slurmdbd", "-D"])
            self._wait_port(self.ports["dbd"], "slurmdbd", timeout)
            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._wait_port(self.ports["ctld"], "slurmctld", timeout)
            for n in NODES:
                self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> None:
        r = self.root
        for d in ("etc", "state", "run", "log", "munge", "dev", "mysql", *(f"spool/{n}" for n in NODES)):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)
        self.ports = {k: free_port() for k in ("ctld", "dbd", "mysql", *NODES)}
        for i in range(GPUS_PER_NODE):
            dev = r / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a char device like /dev/null
        first_job = int(time.time()) % 60_000_000 + 1000  # fresh ids (< MaxJobId): no stale submitit results
        nodes = "\n".join(
            f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={self.host} Port={self.ports[n]} CPUs={CPUS_PER_NODE} "
            f"RealMemory=8000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN" for n in NODES)
        self.conf.write_text(f"""\
ClusterName={self.name}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports['ctld']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
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
AccountingStoragePort={self.ports['dbd']}
AccountingStoragePass={self.munge_socket}
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")
        (r / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName=node[1-{len(NODES)}] Name=gpu File={r}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n")
        dbd = r / "etc" / "slurmdbd.conf"  # read from $SLURM_CONF's folder only; must be mode 600
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdAddr=127.0.0.1
DbdHost={self.host}
DbdPort={self.ports['dbd']}
SlurmUser=root
LogFile={r}/log/slurmdbd.log
PidFile={r}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mysql']}
StorageUser=root
StorageLoc=slurm_acct_{self.name}
""")
        dbd.chmod(0o600)

    def _add_hosts(self) -> None:
        """Node names must resolve (MASTER_ADDR=node1): one marked line in /etc/hosts, removed on stop."""
        lines = HOSTS.read_text().splitlines()
        if self.hosts_line not in lines:
            with open(HOSTS, "a") as f:  # in place: /etc/hosts may be a bind mount
                f.write(("" if not lines or HOSTS.read_text().endswith("\n") else "\n") + self.hosts_line + "\n")

    def _remove_hosts(self) -> None:
        try:
            text = HOSTS.read_text()
        except OSError:
            return
        kept = [ln for ln in text.splitlines() if ln != self.hosts_line]
        if len(kept) != len(text.splitlines()):
            with open(HOSTS, "w") as f:
                f.write("\n".join(kept) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start a daemon in the foreground of its own session; its pid goes to run/<name>.pid."""
        with open(self.root / "log" / f"{name}.out", "ab") as log:  # the daemon keeps its own copy of the fd
            p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=self.root)
        (self.root / "run" / f"{name}.launched.pid").write_text(str(p.pid))
        self.procs[name] = p
        return p

    def _check_alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            raise ClusterError(f"{name} exited {p.returncode} while starting:\n{self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 4000) -> str:
        out = []
        for f in sorted((self.root / "log").glob(f"{name}*")):
            out.append(f"--- {f}\n{f.read_text(errors='replace')[-n:]}")
        return "\n".join(out)

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chown(key, 0, 0)
        key.chmod(0o400)
        os.chmod(self.root / "munge", 0o755)
        self._spawn("munged", ["munged", "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={self.root}/run/munged.pid", f"--log-file={self.root}/log/munged.log",
                               f"--seed-file={self.root}/munge/seed", "--force"])
        self._wait(lambda: self.munge_socket.exists(), "munged", 20)

    def _start_db(self) -> None:
        data = self.root / "mysql"
        if not (data / "mysql").is_dir():
            p = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                                "--skip-test-db", "--auth-root-authentication-method=normal"],
                               capture_output=True, text=True, env=self.env, check=False)
            if p.returncode != 0:
                raise ClusterError(f"mariadb-install-db failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
                                 f"--socket={data}/mysqld.sock", f"--port={self.ports['mysql']}",
                                 "--bind-address=127.0.0.1", f"--pid-file={self.root}/run/mariadbd.pid",
                                 "--skip-grant-tables", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                                 "--innodb-log-file-size=8M", "--skip-log-bin"])
        self._wait_port(self.ports["mysql"], "mariadbd", 60)

    def _wait(self, cond, name: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            if name in self.procs:
                self._check_alive(name)
            time.sleep(0.1)
        raise ClusterError(f"{name} not ready after {timeout:.0f} s:\n{self.log_tail(name)}")

    def _wait_port(self, port: int, name: str, timeout: float) -> None:
        def listening() -> bool:
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", port)) == 0
        self._wait(listening, name, timeout)

    def _wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            for n in NODES:
                self._check_alive(f"slurmd-{n}")
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n) == "idle" for n in NODES)
        try:
            self._wait(idle, "slurmctld", timeout)
        except ClusterError as e:
            raise ClusterError(f"{e}\n{self.log_tail('slurmd')}") from None

    # ------------------------------------------------------------------------------------------ use
    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        p = subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=timeout,
                           check=False, **kw)
        if check and p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} exited {p.returncode}: {p.stdout}{p.stderr}")
        return p

    def sbatch(self, args: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None) -> str:
        """Submit; returns the job id (raises ClusterError with sbatch's message on refusal)."""
        p = self.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd)
        return p.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """scontrol's view (JobState, Restarts, ExitCode, ...); {} once the job has aged out."""
        p = self.run(["scontrol", "show", "job", "-o", job_id], check=False)
        return dict(re.findall(r"(\w+)=(\S*)", p.stdout)) if p.returncode == 0 else {}

    def sacct(self, job_id: str) -> list[dict[str, str]]:
        """Accounting rows (the job and its steps, with every requeued run: --duplicates)."""
        fields = "JobID,State,ExitCode,NodeList,Start,End"
        out = self.run(["sacct", "-n", "-P", "--duplicates", "-j", job_id, "-o", fields], check=False).stdout
        names = fields.split(",")
        return [dict(zip(names, ln.split("|"))) for ln in out.splitlines() if ln.strip()]

    def sacct_states(self, job_id: str, last: str = "COMPLETED", timeout: float = 60) -> list[str]:
        """The job's accounting states, oldest first (one per run: a requeue adds one), once the newest one
        is `last`; accounting reaches slurmdbd a little after scontrol shows the end."""
        deadline = time.time() + timeout
        while True:
            states = [r["State"] for r in self.sacct(job_id) if r["JobID"] == str(job_id)]
            if (states and states[-1] == last) or time.time() > deadline:
                return states
            time.sleep(0.5)

    def wait_job(self, job_id: str, timeout: float = 300, states: tuple[str, ...] = ()) -> dict[str, str]:
        """Wait until the job ends (or reaches one of `states`); returns scontrol's info."""
        end = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
        deadline, info = time.time() + timeout, {}
        while time.time() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in (states or end):
                return info
            time.sleep(0.5)
        raise ClusterError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s: {info}\n"
                           f"{self.log_tail('slurmctld', 3000)}")

    def job_pids(self, job_id: str) -> list[int]:
        """Live processes of a job, found by SLURM_JOB_ID in /proc/<pid>/environ."""
        return pids_with_env("SLURM_JOB_ID", str(job_id))

    def job_environs(self, job_id: str) -> list[dict[str, str]]:
        return [e for e in map(_environ, self.job_pids(job_id)) if e]

    def job_env(self, **extra: str) -> dict[str, str]:
        """Environment for sbatch / the launcher (sbatch exports it to the job): this venv's python first on PATH,
        the CPU accelerator, one thread per rank, no process-group variables from outside."""
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in self.env.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), GPTSCALE_PYTHON=sys.executable,
                   DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
        return env


    def wait_for_text(self, files: list[Path], text: str, job_id: str, count: int | None = None,
                          timeout: float = 300) -> str:
        """Poll until `text` occurs `count` times (default: once per file) in the files, e.g. once per rank;
        fail early, with the logs, if the job ended."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            contents = [f.read_text(errors="replace") if f.exists() else "" for f in files]
            if sum(c.count(text) for c in contents) >= (count or len(files)):
                return "\n".join(contents)
            state = self.job_info(job_id).get("JobState", "")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                tails = "\n".join(c[-3000:] for c in contents)
                raise ClusterError(f"job {job_id} ended ({state}) before {text!r} appeared:\n{tails}")
            time.sleep(0.3)
        raise ClusterError(f"{text!r} not in {files} after {timeout:.0f} s (job {job_id}: {self.job_info(job_id)})")

    # ------------------------------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Cancel jobs, stop daemons by pid, kill leftovers carrying this cluster's marker, restore /etc/hosts."""
        if self._stopped:
            return
        self._stopped = True
        pids = []
        for f in (self.root / "run").glob("*.pid"):
            try:
                pids.append(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        ctld = self.root / "run" / "slurmctld.launched.pid"
        try:
            if ctld.exists() and _alive(int(ctld.read_text())):
                self.run(["scancel", "--full", "--quiet", "--user=root"], check=False, timeout=20)
                deadline = time.time() + 15
                while time.time() < deadline and self.run(["squeue", "-h"], check=False, timeout=10).stdout.strip():
                    time.sleep(0.5)
        except Exception as e:  # noqa: BLE001 - teardown goes on regardless
            print(f"slurm_cluster: cancelling jobs at teardown failed ({e}); stopping the daemons", file=sys.stderr)
        # a pid file can outlive its process and the pid be reused: only processes carrying our marker
        kill_pids(sorted(p for p in set(pids) if _environ(p).get(MARKER) == str(self.root)))
        for p in self.procs.values():
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        kill_pids(pids_with_env(MARKER, str(self.root)), grace=2)  # job steps, slurmstepd, setsid'ed tasks
        self._remove_hosts()
        if (self.root / "run" / "owner").exists():  # only a root this harness set up
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ for the tests


try:
    import pytest
except ImportError:  # the harness also runs as a plain script
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster():
        """One real cluster for the whole session (test modules load this file with pytest_plugins)."""
        if os.geteuid() != 0:
            pytest.skip("the real-Slurm tests need root (they start slurmctld/slurmd/munged/slurmdbd here)")
        try:
            cluster = SlurmCluster().start()
        except ClusterError as e:
            pytest.fail(f"could not bring up the Slurm test cluster: {e}", pytrace=False)
        try:
            yield cluster
        finally:
            cluster.stop()

    @pytest.fixture(scope="session")
    def slurm_pretrain_reference(slurm_cluster, tmp_path_factory, shard_dir, tok_dir):
        """The tiny 8-step pre-training run, uninterrupted, started as users do on 2 nodes x 1 task:
        `sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=1 slurm/pretrain.sh CONFIG`. The preemption
        tests compare their losses with it. Returns (job id, run dir, log text, config file)."""
        from test_pretrain import REPO, base_config

        tmp = tmp_path_factory.mktemp("slurm_ref")
        cfg = base_config(tmp, shard_dir, tok_dir)
        log = tmp / "job.out"
        jid = slurm_cluster.sbatch(["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1",
                                    "--time=10", f"--output={log}", "slurm/pretrain.sh", str(cfg)],
                                   env=slurm_cluster.job_env(), cwd=REPO)
        info = slurm_cluster.wait_job(jid, timeout=300)
        text = log.read_text(errors="replace") if log.exists() else ""
        if info.get("JobState") != "COMPLETED":
            pytest.fail(f"reference job {jid} ended {info.get('JobState')}:\n{text[-6000:]}", pytrace=False)
        return jid, tmp / "run", text, cfg


def reap_stale_clusters() -> None:
    """Tear down clusters left by a session that died without teardown (SIGKILL): their /etc/hosts line
    names the root; a root whose owner process is gone is stopped by its pid files and marker."""
    try:
        lines = HOSTS.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        if f"# {MARKER} " not in line:
            continue
        root = Path(line.rsplit(" ", 1)[1])
        owner = root / "run" / "owner"
        try:
            alive = _alive(int(owner.read_text()))
        except (OSError, ValueError):
            alive = False
        if not alive:
            SlurmCluster(root).stop()


def teardown_root(root: str) -> None:
    """`down ROOT`: stop a cluster from another process (pid files + marker), as after a crashed session."""
    c = SlurmCluster(Path(root))
    c.stop()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "up":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` tears down too (atexit)
        cluster = SlurmCluster().start()
        print(f"cluster up under {cluster.root}\nexport SLURM_CONF={cluster.conf}\n(Ctrl-C tears it down)", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
    elif len(sys.argv) == 3 and sys.argv[1] == "down":
        teardown_root(sys.argv[2])
    else:
        sys.exit(__doc__)
