"""A real Slurm 22.05 cluster on this machine for the tests: munged, MariaDB + slurmdbd, slurmctld and two
slurmd "nodes" (node1, node2: 64 CPUs and 8 fake GPUs each), everything under one temporary root.

    python tests/slurm_cluster.py up            # prints the root and `export SLURM_CONF=...`; Ctrl-C tears down
    python tests/slurm_cluster.py down ROOT     # tear down a cluster left behind (by its pid files)

Nothing is mocked: sbatch, srun, scancel, sacct and submitit talk to the real daemons. Needs root (daemons
run as root, device nodes, /etc/hosts). Missing Debian packages are installed with apt-get (services are
kept from starting by a temporary /usr/sbin/policy-rc.d). Teardown goes by pid only, never by process name:
daemons by their pid files, job processes by the cluster's marker (GPTSCALE_SLURM_ROOT=<root>) or a
SLURM_JOB_ID in /proc/<pid>/environ. The cluster's files: tests/slurm_conf.py; packages, /etc/hosts and
processes by pid: tests/slurm_host.py. Facts behind each setting: ../shared/notes/slurm-in-ci.md.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slurm_conf import NODES, write_config
from slurm_host import (
    HOSTS,
    ClusterError,
    add_hosts_line,
    alive,
    ensure_packages,
    environ_of,
    kill_pids,
    pids_with_env,
    remove_hosts_line,
)

from gptscale.runtime.dist import DIST_VARS

MARKER = "GPTSCALE_SLURM_ROOT"


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
            self.ports = write_config(self.root, self.name, self.host, self.munge_socket)
            add_hosts_line(self.hosts_line)  # node names must resolve (MASTER_ADDR=node1); removed on stop
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

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start a daemon in the foreground of its own session; its pid goes to run/<name>.pid."""
        with open(self.root / "log" / f"{name}.out", "ab") as log:  # the daemon keeps its own copy of the fd
            p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=self.root)
        (self.root / "run" / f"{name}.launched.pid").write_text(str(p.pid))
        self.procs[name] = p
        return p

    def _checkalive(self, name: str) -> None:
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
                self._checkalive(name)
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
                self._checkalive(f"slurmd-{n}")
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
        return [e for e in map(environ_of, self.job_pids(job_id)) if e]

    def job_env(self, **extra: str) -> dict[str, str]:
        """Environment for sbatch / the launcher (sbatch exports it to the job): this venv's python first on PATH,
        the CPU accelerator, one thread per rank, no process-group variables from outside."""
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in self.env.items() if k not in DIST_VARS}
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
            if ctld.exists() and alive(int(ctld.read_text())):
                self.run(["scancel", "--full", "--quiet", "--user=root"], check=False, timeout=20)
                deadline = time.time() + 15
                while time.time() < deadline and self.run(["squeue", "-h"], check=False, timeout=10).stdout.strip():
                    time.sleep(0.5)
        except Exception as e:  # noqa: BLE001 - teardown goes on regardless
            print(f"slurm_cluster: cancelling jobs at teardown failed ({e}); stopping the daemons", file=sys.stderr)
        # a pid file can outlive its process and the pid be reused: only processes carrying our marker
        kill_pids(sorted(p for p in set(pids) if environ_of(p).get(MARKER) == str(self.root)))
        for p in self.procs.values():
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        kill_pids(pids_with_env(MARKER, str(self.root)), grace=2)  # job steps, slurmstepd, setsid'ed tasks
        remove_hosts_line(self.hosts_line)
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
        from helpers import REPO, base_config  # lazy: helpers needs pytest, numpy, pyarrow; `up`/`down` do not

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
            owner_alive = alive(int(owner.read_text()))
        except (OSError, ValueError):
            owner_alive = False
        if not owner_alive:
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
